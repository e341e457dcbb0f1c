"""Packet fuzzing (issue 8, item 4): a million mutated packets through every entry program
with BPF_PROG_TEST_RUN (JIT on, one run per packet), the maps filled with a realistic cluster and
established flows. Each mutated packet goes through all five programs, so every program meets
every kind of input and the state the others leave. Every run must end untouched, dropped,
translated or rejected as tests/fuzz_oracle.py defines them, and the maps must stay consistent.

The packets are deterministic for a seed: EBPFLB_FUZZ_SEED (default below, printed) and
EBPFLB_FUZZ_PACKETS (default 1,000,000) explore further. The programs pick backends at random, so
outcome counts vary a little between runs; the rules hold for all of them. A violation names the
seed, the packet's number, its base packet, the mutations and the bytes in and out: what a
regression test needs (tests/test_fuzz_regressions.py holds those found so far).
"""
import os
import time
from collections import Counter

import pytest

from ebpflb.datapath.libbpf import check, ffi as bpf_ffi, lib
from tests.conftest import NODE_ADDR
from tests.fuzz_cluster import (HAIRPIN, NEXT_HOP_MAC, NODE_MAC, ROUTER_MAC, open_flows, program_cluster,
                                uplink_namespace)
from tests.fuzz_oracle import (TC_ACT_REDIRECT, Oracle, Violation, check_conntrack, check_counters, counters,
                               snapshot)
from tests.fuzz_packets import Mutator, corpus
from tests.lab import in_netns
from tests.test_datapath_packets import dropped_since, drops

SEED = int(os.environ.get("EBPFLB_FUZZ_SEED", "8004"))
PACKETS = int(os.environ.get("EBPFLB_FUZZ_PACKETS", "1000000"))
PROGRAMS = ("from_workload", "to_workload", "from_uplink", "to_uplink", "xdp_uplink")
CHECKPOINTS = 4            # conntrack is checked this many times during the run
MAX_EXAMPLES = 3           # packets kept per kind of violation


class Runner:
    """BPF_PROG_TEST_RUN with buffers made once: per packet only the syscall and two copies."""

    def __init__(self, fds: dict[str, int], uplink_ifindex: int):
        self.fds = fds
        self.out = bpf_ffi.new("char[]", 4096)
        self.opts = bpf_ffi.new("struct bpf_test_run_opts *")
        self.opts.sz = bpf_ffi.sizeof("struct bpf_test_run_opts")
        self.data_in = bpf_ffi.new("char[]", 4096)
        # skb->ifindex for the tc programs (offset 40 of struct __sk_buff): the uplink's for the
        # uplink programs (their FIB lookups start there), lo for the workload ones.
        self.skb_ctx = {}
        for ifindex in (1, uplink_ifindex):
            ctx = bpf_ffi.new("__u32[48]")
            ctx[10] = ifindex
            self.skb_ctx[ifindex] = ctx
        self.xdp_ctx = bpf_ffi.new("__u32[6]", [0, 0, 0, uplink_ifindex, 0, 0])
        self.uplink_ifindex = uplink_ifindex

    @staticmethod
    def kernel_refuses(prog: str, pkt: bytes) -> bool:
        """The kernel's tc test run refuses an IPv4 frame shorter than Ethernet + IPv4 header and an
        IPv6 one shorter than Ethernet + IPv6 header (EINVAL); XDP takes them (and sees them)."""
        if prog == "xdp_uplink":
            return False
        ethertype = pkt[12:14]
        return (ethertype == b"\x08\x00" and len(pkt) < 34) or (ethertype == b"\x86\xdd" and len(pkt) < 54)

    def __call__(self, prog: str, pkt: bytes) -> tuple[int, bytes]:
        opts, n = self.opts, len(pkt)
        bpf_ffi.memmove(self.data_in, pkt, n)
        opts.data_in, opts.data_size_in = self.data_in, n
        opts.data_out, opts.data_size_out = self.out, 4096
        opts.repeat = 1
        if prog == "xdp_uplink":
            self.xdp_ctx[1] = n
            opts.ctx_in, opts.ctx_size_in = self.xdp_ctx, 24
        else:
            ctx = self.skb_ctx[self.uplink_ifindex if "uplink" in prog else 1]
            opts.ctx_in, opts.ctx_size_in = ctx, 192
        check(lib.bpf_prog_test_run_opts(self.fds[prog], opts), f"test run of {prog}")
        retval = opts.retval - (1 << 32) if opts.retval >= 1 << 31 else opts.retval   # TC_ACT_UNSPEC is -1
        return retval, bpf_ffi.buffer(self.out, opts.data_size_out)[:]


@pytest.fixture(scope="module")
def uplink():
    with uplink_namespace() as ns_index:
        yield ns_index


class Findings:
    """Violations by kind, a few packets each, in a form that makes a regression test."""

    def __init__(self):
        self.examples: dict[str, list[str]] = {}
        self.count = Counter()

    def add(self, kind: str, detail: str) -> None:
        self.count[kind] += 1
        if self.count[kind] <= MAX_EXAMPLES:
            self.examples.setdefault(kind, []).append(detail)

    def report(self) -> str:
        return "\n".join(f"{self.count[kind]} x {kind}\n  " + "\n  ".join(examples)
                         for kind, examples in self.examples.items())


def fuzz_one(run: Runner, oracle: Oracle, prog: str, pkt: bytes) -> int:
    """One packet through one program, judged; XDP's translations also through from_uplink, which
    must send the same bytes (XDP only finishes early what tc would do). Returns the runs made."""
    before = oracle.before(prog, pkt)
    verdict, out = run(prog, pkt)
    try:
        outcome = oracle.after(before, verdict, out)
    except Violation as violation:
        raise Violation(f"{violation}; verdict {verdict}, out {out.hex()}") from None
    if prog != "xdp_uplink" or outcome not in ("dnat", "reverse-nat"):
        return 1
    tc_before = oracle.before("from_uplink", pkt)
    tc_verdict, tc_out = run("from_uplink", pkt)
    if (tc_verdict, tc_out) != (TC_ACT_REDIRECT, out):
        raise Violation(f"from_uplink does not send what xdp_uplink sent; verdict {tc_verdict}, "
                        f"out {tc_out.hex()}, XDP's {out.hex()}")
    oracle.after(tc_before, tc_verdict, tc_out)
    return 2


def test_a_million_fuzzed_packets_through_every_program(dp, uplink, figure):
    ns, ifindex = uplink
    maps = dp.maps
    findings = Findings()
    refused = 0
    ct_sizes = []
    with in_netns(ns):
        run = Runner(dp.fds, ifindex)
        state = program_cluster(maps)
        opened = open_flows(maps, run)
        bases = corpus(state, opened)
        mutator = Mutator(SEED, state, opened)
        oracle = Oracle(state, maps.ct.fd, hairpin=HAIRPIN, node_addr=NODE_ADDR, node_mac=NODE_MAC,
                        next_hop_macs={NEXT_HOP_MAC, ROUTER_MAC})
        read_only = snapshot(maps)
        counted_before = counters(maps)
        drops_before = drops(dp)
        started = time.perf_counter()
        packets = runs = cross_checks = 0
        next_checkpoint = PACKETS // CHECKPOINTS
        while packets < PACKETS:
            name, base = bases[mutator.rng.randrange(len(bases))]
            pkt, ops = mutator.mutate(base)
            packets += 1
            for prog in PROGRAMS:   # the same bytes through every program: each sees every kind
                if run.kernel_refuses(prog, pkt):
                    refused += 1
                    continue
                runs += 1
                try:
                    cross_checks += fuzz_one(run, oracle, prog, pkt) - 1
                except (Violation, OSError) as error:
                    findings.add(f"{prog}: {str(error).split(';')[0]}",
                                 f"seed {SEED} packet {packets} base {name!r} ops {ops} in {pkt.hex()}: {error}")
            if packets >= next_checkpoint:
                next_checkpoint += PACKETS // CHECKPOINTS
                problems, kinds = check_conntrack(maps, oracle)
                ct_sizes.append(sum(kinds.values()))
                for problem in problems:
                    findings.add(f"conntrack: {problem.split(':')[0]}", f"after {packets} packets: {problem}")
        seconds = time.perf_counter() - started

    tally = oracle.tally
    by_prog = Counter()
    for (prog, _), n in tally.outcomes.items():
        by_prog[prog] += n
    outcomes = sorted({outcome for _, outcome in tally.outcomes})
    figure(f"packet fuzz, seed {SEED}: {packets} packets from {len(bases)} base packets, {runs} runs "
           f"(+{cross_checks} from_uplink runs cross-checking XDP) in {seconds:.1f} s ({runs / seconds:,.0f}/s); "
           f"{refused} runs of short frames the kernel's tc test run refuses; "
           f"conntrack entries at checkpoints {ct_sizes}; translated with a wrong checksum kept wrong: "
           f"{tally.wrong_checksum_kept}, with UDP checksum 0 kept 0: {tally.zero_udp_checksum_kept}")
    width = max(map(len, outcomes)) + 2
    figure(f"  {'program':<14}{'runs':>9}" + "".join(f"{o:>{width}}" for o in outcomes))
    for prog in PROGRAMS:
        figure(f"  {prog:<14}{by_prog[prog]:>9}" + "".join(f"{tally.outcomes[(prog, o)]:>{width}}" for o in outcomes))

    assert snapshot(maps) == read_only, "the programs changed a map they only read"
    for problem in check_counters(counted_before, counters(maps), tally, oracle.ids):
        findings.add(f"counters: {problem}", problem)
    assert not findings.count, f"fuzzing found violations (seed {SEED}):\n{findings.report()}"
    # every drop counted, under a reason: the drops map grew by exactly the runs that dropped
    counted_drops = dropped_since(dp, drops_before)
    figure(f"  drops by reason: {counted_drops}")
    assert sum(counted_drops.values()) == sum(tally.outcomes[(prog, "dropped")] for prog in PROGRAMS), counted_drops
    for prog in PROGRAMS:   # every program saw its share, and had real work among it
        assert by_prog[prog] >= PACKETS * 0.85   # all but the short frames tc's test run refuses
        assert sum(tally.outcomes[(prog, o)] for o in ("dnat", "reverse-nat", "fragment-nat", "icmp-nat")) > 0
