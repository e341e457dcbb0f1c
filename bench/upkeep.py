"""The agent's upkeep: the conntrack sweep of a full map, and a metrics scrape at 10k services
(issue 21).

    .venv/bin/python -m bench.upkeep [--only sweep|scrape]

sweep   conntrack filled to its 512k entries (256k pairs, UDP, all idle past their timeout, written
        with the batch API), then swept: by sweep_in_kernel() (the agent's: keys read in batches,
        judged and deleted by bpf/ct_sweep.c's ct_sweep_keys), and as reference by sweep() (every
        entry a Python object, judged in Python, deleted by ct_delete_unchanged). Each run: the
        sweeping thread's CPU time (time.thread_time(); the kernel's work in the test runs is
        charged to it), the process's peak RSS growth (VmHWM, reset through /proc/self/clear_refs
        before), and the longest another thread waited for the GIL (a thread that wakes every
        millisecond records its largest lateness: what a sync would wait at most). SWEEP_RUNS each,
        alternating.

scrape  The agent runs in-process (tests/agent_harness.py: its own namespace and pins) on
        manifests of 10k services x 10 endpoints; every service's per-CPU counters are non-zero.
        A scrape is what /metrics serves (AgentMetrics.text()), timed as CPU time of the scraping
        thread (time.thread_time()), median of SCRAPES after one warm-up. The reference, in the
        same run: the scrape as before issue 21 (prometheus_client's formatting of every family,
        a lookup per service id, conntrack walked to count it: old_scrape()).
"""
import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import save_results, spread
from bench.objects import cluster
from ebpflb.datapath.structs import ffi

SERVICES, SCRAPES = 10_000, 15
SWEEP_RUNS = 3


def vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


class GilWatch:
    """A thread waking every millisecond; `worst_ms`: its largest lateness (waiting for the GIL)."""

    def __init__(self):
        import threading
        self.stop, self.worst_ms = threading.Event(), 0.0
        self.thread = threading.Thread(target=self._tick, daemon=True)

    def _tick(self):
        while not self.stop.is_set():
            before = time.perf_counter()
            time.sleep(0.001)
            self.worst_ms = max(self.worst_ms, (time.perf_counter() - before) * 1e3 - 1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def fill_conntrack(ct, now_ns: int) -> int:
    """ct's max_entries: UDP pairs idle for an hour (every one expired). Returns entries held."""
    pairs = ct.max_entries // 2
    keys = ffi.new("struct ct_key[]", 2 * pairs)
    values = ffi.new("struct ct_value[]", 2 * pairs)
    seen = max(1, now_ns - int(3600e9))   # idle past every timeout (the machine may be up for less)
    for i in range(pairs):
        client, port = 0x0AC80000 + i // 4, 30000 + i % 4   # any distinct tuples will do
        fwd_k, rev_k, fwd_v, rev_v = keys[2 * i + 1], keys[2 * i], values[2 * i + 1], values[2 * i]
        fwd_k.src_addr, fwd_k.dst_addr, fwd_k.src_port, fwd_k.dst_port, fwd_k.proto = client, 0x0A600001, port, 80, 17
        rev_k.src_addr, rev_k.dst_addr, rev_k.src_port, rev_k.dst_port, rev_k.proto = 0x0AC80102, client, 8080, port, 17
        for v, kind, twin in ((fwd_v, 1, rev_k), (rev_v, 2, fwd_k)):
            v.created_ns = v.last_seen_ns = seen
            v.type, v.svc_id, v.twin = kind, 1 + i % 1000, twin
    ct.update_many(keys, values)
    return ct.count()   # a full LRU map may have evicted a few already


def sweep(runs: int = SWEEP_RUNS) -> dict:
    import shutil
    import uuid

    from ebpflb.datapath.conntrack import Timeouts, in_kernel, sweep as python_sweep, sweep_in_kernel
    from ebpflb.datapath.loader import Datapath

    pin_dir = f"/sys/fs/bpf/elbbench-sweep-{uuid.uuid4().hex[:6]}"
    dp = Datapath(pin_dir).load()
    ways = {"kernel": lambda: sweep_in_kernel(dp.maps, dp.fds["ct_sweep_keys"], Timeouts()),
            "python": lambda: python_sweep(dp.maps, Timeouts(), delete=in_kernel(dp.fds["ct_delete_unchanged"]))}
    out = {way: {"cpu_ms": [], "rss_growth_mb": [], "gil_wait_max_ms": [], "deleted": []} for way in ways}
    try:
        for _ in range(runs):
            for way, run_sweep in ways.items():
                entries = fill_conntrack(dp.maps.ct, time.monotonic_ns())
                gc.collect()
                Path("/proc/self/clear_refs").write_text("5")
                rss_before = vm_hwm_kb()
                with GilWatch() as watch:
                    started = time.thread_time()
                    result = run_sweep()
                    cpu = time.thread_time() - started
                if result.deleted != entries or dp.maps.ct.count():
                    raise AssertionError(f"{way} sweep deleted {result.deleted} of {entries}")
                r = out[way]
                r["cpu_ms"].append(cpu * 1e3)
                r["rss_growth_mb"].append((vm_hwm_kb() - rss_before) / 1024)
                r["gil_wait_max_ms"].append(watch.worst_ms)
                r["deleted"].append(result.deleted)
                del result
    finally:
        dp.close()
        shutil.rmtree(pin_dir, ignore_errors=True)
    return {"entries": entries, **{way: {k: spread(v) if k != "deleted" else v for k, v in r.items()}
                                   for way, r in out.items()}}


def timed_cpu(fn) -> float:
    """ms of this thread's CPU time spent in fn()."""
    started = time.thread_time()
    fn()
    return (time.thread_time() - started) * 1e3


def old_scrape(agent) -> bytes:
    """The scrape as before issue 21: the registry, and the per-service families as
    prometheus_client's CounterMetricFamily filled by a lookup per service id; conntrack walked."""
    from prometheus_client import generate_latest
    from prometheus_client.core import CounterMetricFamily

    maps = agent.datapath.maps

    class PerServiceLookups:
        def collect(self):
            labels = ["namespace", "name", "port", "protocol"]
            families = [CounterMetricFamily(f"ebpflb_service_{what}", "", labels=labels)
                        for what in ("packets", "bytes", "connections")]
            for name, svc_id in sorted(agent.tracker.state.ids.items()):
                per_cpu = maps.svc_counters.lookup(ffi.new("__u32 *", svc_id)) or []
                label = [name.namespace, name.name, name.port, name.protocol]
                for family, field in zip(families, ("packets", "bytes", "connections")):
                    family.add_metric(label, sum(getattr(c, field) for c in per_cpu))
            yield from families

    maps.ct.count()
    return generate_latest(agent.metrics.registry) + generate_latest(PerServiceLookups())


def scrape(services: int = SERVICES, scrapes: int = SCRAPES) -> dict:
    from tests.agent_harness import running_agent

    svcs, slices = cluster(services)
    with tempfile.TemporaryDirectory(prefix="elbbench-scrape") as tmp:
        Path(tmp, "cluster.yaml").write_text(yaml.safe_dump_all(svcs + slices))
        with running_agent(tmp, sweep_interval=3600) as agent:
            maps = agent.datapath.maps
            ids = sorted(agent.tracker.state.ids.values())
            ncpus = maps.svc_counters.ncpus
            for svc_id in ids:
                maps.svc_counters.update(ffi.new("__u32 *", svc_id), ffi.new(
                    f"struct svc_counters[{ncpus}]", [(svc_id + cpu, 100 * svc_id, 1 + cpu) for cpu in range(ncpus)]))
            agent.ct_entries = maps.ct.count()   # as the sweep leaves it
            now, before = [], []
            for round_ in range(1 + scrapes):
                a = timed_cpu(agent.metrics.text)
                b = timed_cpu(lambda: old_scrape(agent))
                if round_:
                    now.append(a)
                    before.append(b)
            text = agent.metrics.text().decode()
            assert text.count("ebpflb_service_packets_total{") == len(ids) == services
    return {"services": services, "unit": "ms of the scraping thread's CPU", "scrape_ms": spread(now),
            "before_ms": spread(before)}


def run(only=None) -> dict:
    out = {}
    if only in (None, "sweep"):
        out["sweep"] = w = sweep()
        for way in ("kernel", "python"):
            print(f"  sweep of {w['entries']} entries, {way}: {w[way]['cpu_ms']['median']:.0f} ms CPU, peak RSS "
                  f"+{w[way]['rss_growth_mb']['median']:.1f} MB, GIL waited at most "
                  f"{w[way]['gil_wait_max_ms']['median']:.2f} ms", flush=True)
    if only in (None, "scrape"):
        out["scrape"] = scrape()
        s = out["scrape"]
        print(f"  scrape at {s['services']} services: {s['scrape_ms']['median']:.1f} ms CPU (as before issue 21: "
              f"{s['before_ms']['median']:.1f} ms)", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upkeep", description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("sweep", "scrape"))
    args = parser.parse_args(argv)
    results = run(args.only)
    save_results("upkeep", results)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if not isinstance(vv, dict)} for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
