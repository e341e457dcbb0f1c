"""make bench: every figure of issue 7 (items 1-5) in one run, then the table, results.json, plots.

    .venv/bin/python -m bench [--skip packets,e2e,iptables,controlplane,xdp]

  packets       per-packet cost with BPF_PROG_TEST_RUN vs a parse-only baseline   (bench/packets.py)
  e2e, iptables the lab: pod->VIP vs pod->pod; kube-proxy iptables vs ebpflb         (bench/dataplane.py)
  controlplane  cold start, EndpointSlice change latency, RSS                        (bench/controlplane.py)
  xdp           NodePort via XDP vs tc: BPF_PROG_TEST_RUN, and the lab (veth uplinks)  (bench/xdp.py)
  upkeep        conntrack sweep of a full map, metrics scrape at 10k services           (bench/upkeep.py)
  synflood      a SYN flood against established flows: BPF_PROG_TEST_RUN, then the lab  (bench/synflood.py)
"""
import argparse
import sys
import time

from bench import controlplane, dataplane, packets, synflood, upkeep, xdp
from bench.common import Stopwatch, load_results, save_results
from bench.report import print_table

SECTIONS = ("packets", "e2e", "iptables", "controlplane", "xdp", "upkeep", "synflood")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--skip", default="", help="comma-separated sections to leave as they are")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    total = Stopwatch()

    if "packets" not in skip:
        watch = Stopwatch()
        print("== 1. per-packet cost (BPF_PROG_TEST_RUN)", flush=True)
        save_results("packets", packets.run())
        print(f"   ({watch})", flush=True)
    lab_parts = [s for s in ("e2e", "iptables") if s not in skip]
    if lab_parts:
        watch = Stopwatch()
        print("== 2./3. the lab: pod->VIP vs pod->pod, kube-proxy iptables vs ebpflb", flush=True)
        results = dataplane.run(None if len(lab_parts) == 2 else lab_parts[0])
        for key, value in results.items():
            save_results(key, value)
        print(f"   ({watch})", flush=True)
    if "controlplane" not in skip:
        watch = Stopwatch()
        print("== 4. control plane: 10k services x 10 endpoints", flush=True)
        save_results("controlplane", controlplane.run())
        print(f"   ({watch})", flush=True)
    if "xdp" not in skip:
        watch = Stopwatch()
        print("== 5. NodePort: XDP vs tc (BPF_PROG_TEST_RUN, then the lab)", flush=True)
        save_results("xdp", xdp.run())
        print(f"   ({watch})", flush=True)
    if "upkeep" not in skip:
        watch = Stopwatch()
        print("== 6. upkeep: conntrack sweep of a full map, metrics scrape at 10k services", flush=True)
        save_results("upkeep", upkeep.run())
        print(f"   ({watch})", flush=True)
    if "synflood" not in skip:
        watch = Stopwatch()
        print("== 7. a SYN flood against established flows (BPF_PROG_TEST_RUN, then the lab)", flush=True)
        save_results("synflood", {**synflood.run(), "lab": synflood.run_lab()})
        print(f"   ({watch})", flush=True)

    merged = load_results()
    merged_meta = merged.get("meta", {})
    elapsed = time.monotonic() - total.started
    save_results("run", {"date": time.strftime("%Y-%m-%d"), "total_s": round(elapsed, 1),
                         "skipped": sorted(skip), "machine": {k: merged_meta.get(k) for k in
                                                               ("kernel", "cpus", "cpu_model", "memory_gib")}})
    print_table()
    print(f"\nmake bench took {elapsed / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
