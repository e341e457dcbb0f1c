"""Per-packet cost of the real entry programs with BPF_PROG_TEST_RUN, against a parse-only baseline.

    .venv/bin/python -m bench.packets [--repeat N] [--runs N] [--scales 1,1000,100000]

The programs are the real from_workload/to_workload (ebpflb.loader.Datapath, bcc, JIT on); the
baseline is bpf/baseline.c: the same parse_packet() and nothing else. The maps hold 1, 1k or
100k services (10 backends each, one conntrack flow each, so conntrack holds 2 entries per
service), written with ebpflb's MapWriter: three loaded copies of the programs, each with its
own pinned maps, measured in turn within every round so the machine's drift hits all alike.

BPF_PROG_TEST_RUN runs the program `repeat` times on ONE skb: what a run rewrites, the next run
sees (checked: run the real DNAT a million times and the service counter says 2, the rest took
the pass-through path). So each translating case is set up as a two-flow cycle that puts the
packet back where it started, every run doing the real work:

  established  ACK C:40000 -> VIP:80. Conntrack holds the flow's NAT_FWD entry (-> B:8080) and a
               second flow's, C:40000 -> B:8080 (-> VIP:80), both created by the program itself
               from two SYNs (the second through a "mirror" frontend B:8080 -> VIP:80). Every run
               is a conntrack hit, a touch, a counter and a DNAT of address and port with both
               checksums fixed: VIP -> B, then B -> VIP, ...
  new flow     the same, with SYN+FIN. The FIN marks each flow closed in its NAT_REV entry, so
               the next SYN of that flow is a reopen: frontend lookup, random backend, two
               conntrack writes, counter, DNAT: the whole new-flow path, every run. This costs
               a little more than a first SYN (a conntrack hit plus the twin's lookup instead of
               one miss, and the LRU writes replace entries): an upper bound. Cross-check below.
  reply        ACK B:8080 -> C:40000 through to_workload: NAT_REV hit, source back to VIP:80;
               the cycle's other NAT_REV entry (VIP:80 -> C:40000 -> B:8080) turns it back.
  pass-through pod to pod (C -> A0:8080) through from_workload (conntrack, frontend and service
               address lookups all miss) and its answer through to_workload (conntrack miss).
  baseline     bpf/baseline.c on the established packet: parse, return TC_ACT_NEXT (as the real programs do).
  floors       bpf/baseline.c again: what the goals cannot go below with a conntrack in hash maps,
               for each map design conntrack could have (DESIGNS: today's LRU, an LRU with
               BPF_F_NO_COMMON_LRU, a preallocated hash, a hash allocating on insert), side by side.
               ct_lookup_floor parses and looks the established packet's tuple up in an LRU hash of
               conntrack's types and size (holding it): any established packet costs that much.
               ct_writes_floor parses and makes the two LRU writes of a new flow (on the new-flow
               packet's tuples; the same keys every run, replaced, as in the new-flow cycle).

Each case checks first that every run took its path (service packet or connection counters
grow by exactly `repeat`, pass-through output equals input). The runs are interleaved (case
after case, scale after scale, round after round) on one CPU (the test run runs on the caller's
CPU, and this VM's two differ), one warm-up round is dropped, the figure is the median of the
runs' averages, and min-max is shown. The runs flip between a fast and a slow state (about 1.3x
apart, baseline included, on one pinned CPU: the VM's host), hence 15 of them; the ratio of the
fastest runs is shown beside each scale comparison as the figure least touched by that noise. The test-run loop's own overhead per run (a few ns) is in every
figure, baseline included.

New flow, genuine first SYN (cross-check): the flow's two conntrack entries are deleted from
user space, then one SYN runs once (repeat=1) and the kernel's duration for that one run is
taken; the baseline, and each design's writes floor on fresh keys (its two entries deleted
before), are timed the same way, one run each, interleaved. These single-run figures
include the timer's own reading (tens of ns) in both, and a cache made cold by the syscalls
in between.

The same key every run keeps the lookups cache-hot: this measures the programs' instructions and
the hash maps' algorithmic cost at each size, not cache misses of a busy node.
"""
import argparse
import shutil
import statistics
import sys
import time
import uuid

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from bench.common import Stopwatch, pinned_to_one_cpu, save_results, spread
from bench.objects import service_ip
from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath.libbpf import check, lib, prog_test_run
from ebpflb.datapath.loader import Datapath, program_text
from ebpflb.paths import BPF_DIR
from ebpflb.datapath.structs import ffi, ip_be, new, port_be
from ebpflb.sync.writer import MapWriter

TC_ACT_NEXT = -1   # TC_ACT_UNSPEC: the verdict of a packet the programs let go on (bpf/consts.h)
VIP, VIP_PORT = "10.95.0.1", 80          # outside bench.objects' 10.96.0.0+ service range
B, B_PORT = "10.200.1.2", 8080
C_POD, C_PORT = "10.200.2.2", 40000
A0 = "10.200.0.2"
POD_MAC, GW_MAC = "02:00:00:00:00:02", "02:00:00:00:00:01"
PAYLOAD = Raw(b"x" * 64)
ENDPOINTS = 10
# Conntrack's possible map designs (bpf/baseline.c's floors): "" is today's common LRU.
DESIGNS = {"": "LRU", "_nocommon": "LRU, BPF_F_NO_COMMON_LRU", "_hash": "hash, preallocated",
           "_hash_noprealloc": "hash, BPF_F_NO_PREALLOC"}
FLOOR_CASES = tuple(f"{kind}_floor{d}" for d in DESIGNS for kind in ("lookup", "writes"))
CASES = ("baseline", "established", "new_flow", "reply", "pass_from", "pass_to") + FLOOR_CASES
LABELS = {"baseline": "parse-only baseline", "established": "established TCP (from_workload)",
          **{f"lookup_floor{d}": f"floor: parse + one conntrack lookup ({name})" for d, name in DESIGNS.items()},
          **{f"writes_floor{d}": f"floor: parse + two conntrack writes ({name})" for d, name in DESIGNS.items()},
          "new_flow": "new flow SYN (from_workload)", "reply": "reply reverse NAT (to_workload)",
          "pass_from": "pass-through (from_workload)", "pass_to": "pass-through (to_workload)"}


def from_pod(l3):
    return bytes(Ether(src=POD_MAC, dst=GW_MAC) / l3)


def to_pod(l3):
    return bytes(Ether(src=GW_MAC, dst=POD_MAC) / l3)


PACKETS = {
    "established": from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=C_PORT, dport=VIP_PORT, flags="PA") / PAYLOAD),
    "new_flow": from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=C_PORT, dport=VIP_PORT, flags="SF")),
    "reply": to_pod(IP(src=B, dst=C_POD) / TCP(sport=B_PORT, dport=C_PORT, flags="PA") / PAYLOAD),
    "pass_from": from_pod(IP(src=C_POD, dst=A0) / TCP(sport=C_PORT, dport=8080, flags="PA") / PAYLOAD),
    "pass_to": to_pod(IP(src=A0, dst=C_POD) / TCP(sport=8080, dport=C_PORT, flags="PA") / PAYLOAD),
}
PACKETS["baseline"] = PACKETS["established"]
for _d in DESIGNS:
    PACKETS[f"lookup_floor{_d}"], PACKETS[f"writes_floor{_d}"] = PACKETS["established"], PACKETS["new_flow"]
SYN = from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=C_PORT, dport=VIP_PORT, flags="S"))
MIRROR_SYN = from_pod(IP(src=C_POD, dst=B) / TCP(sport=C_PORT, dport=B_PORT, flags="S"))
BASELINES = ("parse_only",) + tuple(f"ct_{case}" for case in FLOOR_CASES)   # bpf/baseline.c
PROGRAM = {"baseline": "parse_only", "established": "from_workload", "new_flow": "from_workload",
           "reply": "to_workload", "pass_from": "from_workload", "pass_to": "to_workload",
           **{case: f"ct_{case}" for case in FLOOR_CASES}}


def ct_key(src, sport, dst, dport, proto=6):
    return new("struct ct_key", src_addr=ip_be(src), dst_addr=ip_be(dst), src_port=port_be(sport),
               dst_port=port_be(dport), proto=proto)


def fill(dp, writer: MapWriter, have: int, services: int) -> None:
    """Grow the maps from `have` services to `services`: the test service (VIP:80 -> B:8080,
    id 1), its mirror (B:8080 -> VIP:80, id 2; not a service address), and services-1 others
    with ENDPOINTS backends and one conntrack flow each."""
    desired = DesiredState()
    desired.frontends[FrontendKey(VIP, VIP_PORT, 6)] = Frontend(1, 1, 0, 0)
    desired.backends[1] = (Backend(B, B_PORT),)
    desired.frontends[FrontendKey(B, B_PORT, 6)] = Frontend(2, 1, 0, 0)
    desired.backends[2] = (Backend(VIP, VIP_PORT),)
    ips = [VIP]
    for i in range(services - 1):
        ip = service_ip(i)
        ips.append(ip)
        desired.frontends[FrontendKey(ip, 80, 6)] = Frontend(3 + i, ENDPOINTS, 0, 0)
        desired.backends[3 + i] = tuple(Backend(f"10.{128 + j}.{(i // 256) % 256}.{i % 256}", 8080)
                                        for j in range(ENDPOINTS))
    desired.service_ips = frozenset(ips)
    writer.apply(desired)

    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    pairs = []
    for i in range(max(0, have - 1), services - 1):
        ip, client = service_ip(i), f"10.{200 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        backend = f"10.128.{(i // 256) % 256}.{i % 256}"
        fwd_k, rev_k = ct_key(client, 30000, ip, 80), ct_key(backend, 8080, client, 30000)
        common = dict(created_ns=now, last_seen_ns=now, svc_id=3 + i, tcp_seen=0)
        fwd_v = new("struct ct_value", type=1, nat_addr=ip_be(backend), nat_port=port_be(8080), **common)
        rev_v = new("struct ct_value", type=2, nat_addr=ip_be(ip), nat_port=port_be(80), **common)
        fwd_v.twin, rev_v.twin = rev_k[0], fwd_k[0]
        pairs += [(rev_k, rev_v), (fwd_k, fwd_v)]
    dp.maps.ct.update_many(ffi.new("struct ct_key[]", [k[0] for k, _ in pairs]),
                           ffi.new("struct ct_value[]", [v[0] for _, v in pairs]))

    if not have:
        # The test flows, made by the program itself: C -> VIP (NAT_FWD -> B) and C -> B (-> VIP).
        for pkt in (SYN, MIRROR_SYN):
            retval, _, _ = prog_test_run(dp.fds["from_workload"], pkt)
            assert retval == TC_ACT_NEXT, retval


def counters(dp) -> tuple[int, int]:
    packets = connections = 0
    for svc_id in (1, 2):
        for c in dp.maps.svc_counters.lookup(ffi.new("__u32 *", svc_id)):
            packets += c.packets
            connections += c.connections
    return packets, connections


def check_paths(dp, fds) -> None:
    """Each case does what it says on every run (see the module's docstring)."""
    n = 1000
    for case in ("established", "reply", "new_flow"):
        before = counters(dp)
        retval, _, _ = prog_test_run(fds[case], PACKETS[case], repeat=n)
        after = counters(dp)
        packets, conns = after[0] - before[0], after[1] - before[1]
        want_conns = (n - 2, n) if case == "new_flow" else (0, 0)
        if retval != TC_ACT_NEXT or packets != n or not want_conns[0] <= conns <= want_conns[1]:
            raise AssertionError(f"{case}: {n} runs counted {packets} packets, {conns} new connections"
                                 f" (verdict {retval}): not every run took the {case} path")
    for case in ("pass_from", "pass_to", "baseline"):
        before = counters(dp)
        retval, out, _ = prog_test_run(fds[case], PACKETS[case], repeat=n)
        if retval != TC_ACT_NEXT or out != PACKETS[case] or counters(dp) != before:
            raise AssertionError(f"{case}: the packet did not pass untouched")


def single_shot(dp, base_fds: dict, base_obj, samples: int) -> dict[str, list[int]]:
    """A genuine first SYN, one run each (conntrack entries deleted before), the baseline timed the
    same way, and each design's writes floor on fresh keys (its two entries deleted before),
    interleaved. {case: ns of each sample}."""
    fwd, rev = ct_key(C_POD, C_PORT, VIP, VIP_PORT), ct_key(B, B_PORT, C_POD, C_PORT)
    floor_keys = (ct_key(C_POD, C_PORT, VIP, VIP_PORT), ct_key(VIP, VIP_PORT, C_POD, C_PORT))
    tables = {d: base_obj.get_table(f"floor_ct{d}").get_fd() for d in DESIGNS}
    out = {"new_flow": [], "baseline": [], **{f"writes_floor{d}": [] for d in DESIGNS}}
    conns_before = counters(dp)[1]
    for _ in range(samples):
        dp.maps.ct.delete(fwd)
        dp.maps.ct.delete(rev)
        out["new_flow"].append(prog_test_run(dp.fds["from_workload"], SYN)[2])
        out["baseline"].append(prog_test_run(base_fds["parse_only"], SYN)[2])
        for d, fd in tables.items():
            for key in floor_keys:
                lib.bpf_map_delete_elem(fd, key)
            out[f"writes_floor{d}"].append(prog_test_run(base_fds[f"ct_writes_floor{d}"], SYN)[2])
    if counters(dp)[1] - conns_before != samples:
        raise AssertionError("single-shot SYNs were not all new flows")
    return out


def fds_of(dp, base_fds: dict) -> dict:
    return {case: base_fds.get(PROGRAM[case]) or dp.fds[PROGRAM[case]] for case in CASES}


def load_baseline():
    """bpf/baseline.c's programs (name -> fd), the floors' map holding the established packet's tuple."""
    from bcc import BPF
    obj = BPF(text=program_text(BPF_DIR / "baseline.c").encode())
    fds = {name: obj.load_func(name.encode(), BPF.SCHED_CLS).fd for name in BASELINES}
    value = new("struct ct_value", type=1, nat_addr=ip_be(B), nat_port=port_be(B_PORT))
    for design in DESIGNS:
        table = obj.get_table(f"floor_ct{design}")
        check(lib.bpf_map_update_elem(table.get_fd(), ct_key(C_POD, C_PORT, VIP, VIP_PORT), value, 0), "floor_ct")
    return obj, fds


def check_floors(fds: dict, obj) -> None:
    """The writes floor leaves its two entries (the forward one is the established packet's tuple);
    the lookup floor finds that tuple every run."""
    for design in DESIGNS:
        retval, _, _ = prog_test_run(fds[f"ct_writes_floor{design}"], PACKETS["new_flow"], repeat=1000)
        if retval != TC_ACT_NEXT or len(list(obj.get_table(f"floor_ct{design}").keys())) != 2:
            raise AssertionError(f"the writes floor{design} did not write its two entries")
        retval, _, _ = prog_test_run(fds[f"ct_lookup_floor{design}"], PACKETS["established"], repeat=1000)
        if retval != TC_ACT_NEXT:
            raise AssertionError(f"the lookup floor{design} missed")


def run(repeat: int = 1_000_000, runs: int = 15, scales=(1, 1000, 100_000), shots: int = 3000) -> dict:
    base_obj, base_fds = load_baseline()
    root = f"/sys/fs/bpf/elbbench-pkt-{uuid.uuid4().hex[:6]}"
    out = {"repeat": repeat, "runs": runs, "warmup_rounds": 1, "endpoints_per_service": ENDPOINTS,
           "unit": "ns per packet (BPF_PROG_TEST_RUN average over `repeat` runs)", "scales": {},
           "single_shot": {}}
    datapaths = {}
    try:
        check_floors(base_fds, base_obj)
        for services in scales:
            watch = Stopwatch()
            dp = datapaths[services] = Datapath(f"{root}/{services}").load()
            fill(dp, MapWriter(dp.maps), 0, services)
            check_paths(dp, fds_of(dp, base_fds))
            print(f"  {services} services loaded and checked ({watch})", flush=True)
        times = {services: {case: [] for case in CASES} for services in scales}
        watch = Stopwatch()
        with pinned_to_one_cpu() as cpu:
            out["cpu"] = cpu
            for round_ in range(1 + runs):           # round 0: warm-up, dropped
                for services, dp in datapaths.items():
                    fds = fds_of(dp, base_fds)
                    for case in CASES:
                        retval, _, ns = prog_test_run(fds[case], PACKETS[case], repeat=repeat)
                        if round_:
                            times[services][case].append(ns)
        for services, dp in datapaths.items():
            out["scales"][str(services)] = {case: spread(v) for case, v in times[services].items()}
            out["scales"][str(services)]["conntrack_entries"] = dp.maps.ct.count()
            line = ", ".join(f"{case} {statistics.median(v):.0f}" for case, v in times[services].items())
            print(f"  {services} services: {line} ns", flush=True)
        print(f"  ({runs} runs + 1 warm-up of every case at every scale, interleaved: {watch})", flush=True)

        dp = datapaths[scales[0]]
        shot_runs = {}
        with pinned_to_one_cpu():
            single_shot(dp, base_fds, base_obj, 200)    # warm-up
            for _ in range(3):
                for case, ns in single_shot(dp, base_fds, base_obj, shots // 3).items():
                    shot_runs.setdefault(case, []).append(statistics.median(ns))
        out["single_shot"] = {"services": scales[0], "samples_per_run": shots // 3,
                              **{case: spread(v) for case, v in shot_runs.items()}}
    finally:
        for dp in datapaths.values():
            dp.close()
        shutil.rmtree(root, ignore_errors=True)
        base_obj.cleanup()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.packets", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--scales", default="1,1000,100000")
    args = parser.parse_args(argv)
    print(f"per-packet cost, BPF_PROG_TEST_RUN x {args.repeat}, {args.runs} runs + 1 warm-up", flush=True)
    results = run(args.repeat, args.runs, tuple(int(s) for s in args.scales.split(",")))
    save_results("packets", results)
    from bench.report import print_table
    print_table(sections=("packets",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
