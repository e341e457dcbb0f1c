"""SYN flood against established flows, the real programs with BPF_PROG_TEST_RUN (issue 21).

    .venv/bin/python -m bench.synflood

conntrack at its default size (CT_MAX entries), filled with idle flows first (a busy node's map is
full: the established packets' cost before the flood is taken at the same fill). ESTABLISHED pod
flows through a VIP, then ROUNDS
rounds of a whole map's worth of SYNs from random sources and ports (each a new flow, two
entries), each round followed by one packet each way of every established flow. Figures: the
flood's new flows admitted and their cost per SYN (the kernel's duration of each single run,
so the timer's own reading is in it), i.e. the rate one CPU holds in the programs; the established
packets' cost during the flood against the same packets before it (same single-run timing); how
many established packets went untranslated and how many flows lost a half. On one pinned CPU.
Single runs: each starts cache-cold after a syscall, so these are µs where the repeat-mode
figures of bench/packets.py are tens of ns; compare them with each other only.
tests/test_syn_flood.py checks the same at a small map size.
"""
import json
import random
import shutil
import statistics
import sys
import time
import uuid

from scapy.layers.inet import IP, TCP

from bench.common import pinned_to_one_cpu, save_results
from bench.upkeep import fill_conntrack
from ebpflb.datapath.libbpf import prog_test_run
from ebpflb.datapath.loader import Datapath
from ebpflb.datapath.structs import ffi, ip_be, port_be

ESTABLISHED, ROUNDS = 1000, 2
VIP, B, C_POD = "10.96.0.2", "10.200.1.2", "10.200.2.2"


def frame(src, dst, sport, dport, flags, to_pod=False) -> bytes:
    from scapy.layers.l2 import Ether
    macs = ("02:00:00:00:00:01", "02:00:00:00:00:02") if to_pod else ("02:00:00:00:00:02", "02:00:00:00:00:01")
    return bytes(Ether(src=macs[0], dst=macs[1]) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


def key(src, sport, dst, dport):
    return ffi.new("struct ct_key *", {"src_addr": ip_be(src), "dst_addr": ip_be(dst), "src_port": port_be(sport),
                                       "dst_port": port_be(dport), "proto": 6})


def run() -> dict:
    from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
    from ebpflb.sync.writer import MapWriter

    pin_dir = f"/sys/fs/bpf/elbbench-flood-{uuid.uuid4().hex[:6]}"
    dp = Datapath(pin_dir).load(node_addr="192.168.64.6")
    try:
        MapWriter(dp.maps).apply(DesiredState(frontends={FrontendKey(VIP, 8080, 6): Frontend(1, 1, 0, 0)},
                                              backends={1: (Backend(B, 8080),)}, service_ips=frozenset([VIP])))
        fw, tw = dp.fds["from_workload"], dp.fds["to_workload"]
        fill_conntrack(dp.maps.ct, time.monotonic_ns())   # a full map of idle flows, before as during
        ports = range(20000, 20000 + ESTABLISHED)
        for p in ports:
            prog_test_run(fw, frame(C_POD, VIP, p, 8080, "S"))
            prog_test_run(tw, frame(B, C_POD, 8080, p, "SA", to_pod=True))
        acks = [(fw, frame(C_POD, VIP, p, 8080, "A"), "dst", B) for p in ports] + \
               [(tw, frame(B, C_POD, 8080, p, "A", to_pod=True), "src", VIP) for p in ports]

        def established() -> tuple[list[int], int]:
            ns, untranslated = [], 0
            for fd, pkt, field, want in acks:
                _, out, took = prog_test_run(fd, pkt)
                ns.append(took)
                untranslated += getattr(IP(out[14:]), field) != want
            return ns, untranslated

        rng, per_round = random.Random(21), dp.maps.ct.max_entries
        syn = bytearray(frame("10.201.0.1", VIP, 1, 8080, "S"))
        with pinned_to_one_cpu():
            before, lost_before = established()
            during, flood_ns, untranslated, admitted = [], [], 0, 0
            for _ in range(ROUNDS):
                for _ in range(per_round):
                    syn[26:30] = rng.getrandbits(32).to_bytes(4, "big")
                    syn[34:36] = rng.getrandbits(16).to_bytes(2, "big")
                    _, out, took = prog_test_run(fw, bytes(syn))
                    flood_ns.append(took)
                    admitted += out[30:34] == bytes(map(int, B.split(".")))
                ns, lost = established()
                during += ns
                untranslated += lost
        whole = sum(1 for p in ports if dp.maps.ct.lookup(key(C_POD, p, VIP, 8080)) and
                    dp.maps.ct.lookup(key(B, 8080, C_POD, p)))
    finally:
        dp.close()
        shutil.rmtree(pin_dir, ignore_errors=True)
    flood_mean = statistics.mean(flood_ns)
    return {"ct_entries_max": per_round, "established": ESTABLISHED, "rounds": ROUNDS, "flood_syns": len(flood_ns),
            "admitted": admitted, "flood_syn_ns_mean": flood_mean, "flood_syn_ns_median": statistics.median(flood_ns),
            "flood_syns_per_s_one_cpu": 1e9 / flood_mean,
            "established_ns_before": statistics.mean(before), "established_ns_during": statistics.mean(during),
            "established_untranslated": untranslated + lost_before, "established_whole_after": whole}


def main(argv=None) -> int:
    results = run()
    save_results("synflood", results)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
