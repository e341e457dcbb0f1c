"""Issue 15.3: a packet never sees a change half made. The writer's map writes are done one entry at a
time, and after each one probe packets go through the real programs (BPF_PROG_TEST_RUN): every
packet must be translated as in the state before the sync or as in the state after it, never by a
frontend's count or local with slots of the other state (an externalTrafficPolicy Local flow sent
to a remote backend without SNAT, a SNATed flow to a local pod)."""
import dataclasses

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath.structs import C, ip_be, new, port_be
from ebpflb.sync.writer import MapWriter
from tests.conftest import NODE_ADDR
from tests.test_datapath_packets import TC_ACT_SHOT, VIP, from_pod, run
from tests.test_uplink_packets import CLIENT, NODEPORT, inbound, routed, run_routed  # noqa: F401 (fixture)

EXT, EXT_LOCAL = C.NAT_FLG_EXTERNAL, C.NAT_FLG_EXTERNAL_LOCAL
L1, L2 = "10.200.2.3", "10.200.2.4"                                     # on this node (node-2)
R1, R2, R3, R4 = "10.200.1.2", "10.200.1.3", "10.200.1.4", "10.200.1.5"  # on node-1: SNATed from the uplink
C_POD = "10.200.2.2"
PROBES = 32   # source ports: every ordinal of these lists is hashed to by several


def state(backends, local, external_local=False, svc_id=1) -> DesiredState:
    """One service port: its ClusterIP and a NodePort on this node, backends local first."""
    return DesiredState(
        frontends={FrontendKey(VIP, 8080, 6): Frontend(svc_id, len(backends), local, 0),
                   FrontendKey(NODE_ADDR, NODEPORT, 6): Frontend(svc_id, len(backends), local,
                                                                 EXT | (EXT_LOCAL if external_local else 0))},
        backends={svc_id: tuple(Backend(a, 8080) for a in backends)}, service_ips=frozenset([VIP]))


TRANSITIONS = {
    # the case: ordinal 1 turns remote while the frontend still says 2 are local
    "local-one-less": (state([L1, L2, R1], 2, True), state([L1, R1, R2], 1, True)),
    "local-one-more": (state([L1, R1, R2], 1, True), state([L1, L2, R1], 2, True)),
    "cluster-middle-removed": (state([L1, R1, R2, R3], 1), state([L1, R1, R3], 1)),
    "cluster-middle-added": (state([L1, R1, R3], 1), state([L1, R1, R2, R3], 1)),
    "appended": (state([R1], 0), state([R1, R2], 0)),
    "last-removed": (state([R1, R2, R3], 0), state([R1, R2], 0)),
    "all-replaced": (state([R1, R2], 0), state([L1, R3, R4], 1)),
    "emptied": (state([L1, R1], 1, True), state([], 0, True)),
    "another-service-takes-the-frontends": (state([L1, R1], 1), state([R2, R3], 0, svc_id=2)),
}


class OneAtATime:
    """A pinned map whose writes go in one entry at a time, `between()` after each."""

    def __init__(self, bpf_map, between):
        self.map, self.between = bpf_map, between

    def __getattr__(self, name):
        return getattr(self.map, name)

    def update(self, key, value, flags=0):
        self.map.update(key, value, flags)
        self.between()

    def update_many(self, keys, values):
        for i in range(len(keys)):
            self.map.update(keys + i, values + i * self.map.ncpus)
            self.between()

    def delete(self, key):
        deleted = self.map.delete(key)
        self.between()
        return deleted

    def delete_many(self, keys):
        return sum(self.delete(keys + i) for i in range(len(keys)))


def probes():
    """(name, program, packet): new flows from outside to the NodePort and from a pod to the ClusterIP."""
    for sport in range(41000, 41000 + PROBES):
        yield (f"uplink:{sport}", "from_uplink",
               inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=sport, dport=NODEPORT, flags="S")))
        yield f"pod:{sport}", "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=sport, dport=8080, flags="S"))


def forget(dp, pkt) -> None:
    """The conntrack pair a probe made: the next probe is a new flow again."""
    ip, tcp = pkt[IP], pkt[TCP]
    key = new("struct ct_key", src_addr=ip_be(ip.src), dst_addr=ip_be(ip.dst), src_port=port_be(tcp.sport),
              dst_port=port_be(tcp.dport), proto=6)
    entry = dp.maps.ct.lookup(key)
    if entry is not None:
        dp.maps.ct.delete(new("struct ct_key", **{f: getattr(entry.twin, f) for f in
                                                   ("src_addr", "dst_addr", "src_port", "dst_port", "proto")}))
        dp.maps.ct.delete(key)


def outcomes(dp, routed) -> dict[str, tuple]:
    """What each probe became: dropped, or (source, destination) after translation."""
    seen = {}
    for name, prog, pkt in probes():
        verdict, out = run_routed(dp, routed, prog, pkt) if prog == "from_uplink" else run(dp, prog, pkt)
        seen[name] = ("dropped",) if verdict == TC_ACT_SHOT else (Ether(out)[IP].src, Ether(out)[IP].dst)
        forget(dp, pkt)
    return seen


@pytest.mark.parametrize("before, after", TRANSITIONS.values(), ids=TRANSITIONS.keys())
def test_every_packet_sees_the_old_state_or_the_new_one_between_any_two_writes(dp, routed, before, after):
    MapWriter(dp.maps).apply(before)
    old = outcomes(dp, routed)
    writer = MapWriter(dp.maps)
    writer.apply(after)
    new_ = outcomes(dp, routed)
    MapWriter(dp.maps).apply(before)
    assert outcomes(dp, routed) == old

    mixed, writes = [], []

    def between():
        writes.append(1)
        for name, seen in outcomes(dp, routed).items():
            if seen not in (old[name], new_[name]):
                mixed.append((len(writes), name, seen, old[name], new_[name]))

    maps = dp.maps
    one_at_a_time = dataclasses.replace(maps, **{name: OneAtATime(getattr(maps, name), between)
                                                 for name in ("nat_fe", "nat_be", "svc_ips", "src_ranges",
                                                              "svc_addr_bits", "svc_counters")})
    MapWriter(one_at_a_time).apply(after)
    assert writes, "the sync wrote nothing"
    assert not mixed, f"after write n, probe: seen (before, after): {mixed[:5]} ({len(mixed)} in all)"
    assert outcomes(dp, routed) == new_
