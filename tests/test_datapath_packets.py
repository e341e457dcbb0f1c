"""Packets through the real programs with BPF_PROG_TEST_RUN: build a packet, fill the maps, run
the entry point, check the bytes that come out, the verdict and the conntrack entries."""
import time
from collections import Counter

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.datapath.conntrack import (Timeouts, delete_unchanged, entries_of, expired, forget_udp_flows_to, in_kernel,
                                       sweep, sweep_in_kernel)
from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath.libbpf import prog_test_run
from ebpflb.datapath.loader import DEFAULT_HAIRPIN_ADDR
from ebpflb.datapath.structs import C, ffi, ip_be, ip_str, port_be, port_int
from ebpflb.views.drops import drop_totals
from ebpflb.sync.writer import MapWriter
from tests.conftest import loaded_both_ways
from tests.fuzz_packets import l4_sum, ones_sum

# Every test under both ways of fixing L4 checksums (conftest.CSUM_MODES).
loaded = loaded_both_ways

TC_ACT_NEXT, TC_ACT_SHOT, TC_ACT_REDIRECT = -1, 2, 7   # TC_ACT_NEXT: TC_ACT_UNSPEC, the next filter sees it (bpf/consts.h)
VIP, VIP_EMPTY, VIP_LOCAL = "10.96.0.2", "10.96.0.3", "10.96.0.4"
A0, B, C_POD = "10.200.0.2", "10.200.1.2", "10.200.2.2"
POD_MAC, GW_MAC = "02:00:00:00:00:02", "02:00:00:00:00:01"
HAIRPIN = DEFAULT_HAIRPIN_ADDR
LO = 1   # skb->ifindex for redirects: test runs transmit nothing


def program(dp, *services, ips=(VIP, VIP_EMPTY, VIP_LOCAL)):
    """services: (vip, port, proto, [backend ips], flags). Backend port is 8080 (5353 for UDP)."""
    desired = DesiredState(service_ips=frozenset(ips))
    for svc_id, (vip, port, proto, backends, flags) in enumerate(services, start=1):
        be_port = 5353 if proto == 17 else 8080
        desired.frontends[FrontendKey(vip, port, proto)] = Frontend(svc_id, len(backends), 0, flags)
        desired.backends[svc_id] = tuple(Backend(ip, be_port) for ip in backends)
    writer = MapWriter(dp.maps)
    writer.apply(desired)
    return writer


def from_pod(l3):
    return Ether(src=POD_MAC, dst=GW_MAC) / l3


def to_pod(l3):
    return Ether(src=GW_MAC, dst=POD_MAC) / l3


def run(dp, prog, pkt, ifindex=LO):
    retval, out, _ = prog_test_run(dp.fds[prog], bytes(pkt), ifindex=ifindex)
    return retval, out


def with_checksums(pkt) -> bytes:
    pkt = Ether(bytes(pkt))
    for layer in (IP, TCP, UDP, ICMP):
        if pkt.haslayer(layer):
            del pkt[layer].chksum
    return bytes(pkt)


def checksums_valid(raw: bytes) -> bool:
    return with_checksums(Ether(raw)) == raw


def drops(dp) -> dict[str, tuple[int, int]]:
    """{reason: (packets, bytes)} the programs have counted so far (nonzero only)."""
    return {reason: n for reason, n in drop_totals(dp.maps.drops.items()).items() if n[0]}


def dropped_since(dp, before: dict) -> dict[str, int]:
    """{reason: packets} counted since `before` (a drops() of earlier)."""
    return {reason: n - before.get(reason, (0, 0))[0] for reason, (n, _) in drops(dp).items()
            if n != before.get(reason, (0, 0))[0]}


def ct_entries(dp):
    return {(ip_str(k.src_addr), port_int(k.src_port), ip_str(k.dst_addr), port_int(k.dst_port), k.proto): v
            for k, v in dp.maps.ct.items()}


SYN = dict(sport=40000, dport=8080, flags="S", seq=1000)


def test_first_packet_is_dnated_with_checksums_and_conntrack(dp):
    program(dp, (VIP, 8080, 6, [B], 0))
    pkt = from_pod(IP(src=C_POD, dst=VIP, id=7) / TCP(**SYN))
    verdict, out = run(dp, "from_workload", pkt)
    assert verdict == TC_ACT_NEXT
    assert out == with_checksums(from_pod(IP(src=C_POD, dst=B, id=7) / TCP(**SYN)))
    entries = ct_entries(dp)
    fwd = entries[(C_POD, 40000, VIP, 8080, 6)]
    rev = entries[(B, 8080, C_POD, 40000, 6)]
    assert (fwd.type, ip_str(fwd.nat_addr), port_int(fwd.nat_port)) == (C.CT_TYPE_NAT_FWD, B, 8080)
    assert (rev.type, ip_str(rev.nat_addr), port_int(rev.nat_port)) == (C.CT_TYPE_NAT_REV, VIP, 8080)
    assert rev.tcp_seen == C.CT_TCP_SYN_FWD
    assert fwd.svc_id == rev.svc_id == 1
    counters = dp.maps.svc_counters.lookup(ffi.new("__u32 *", 1))
    assert sum(c.connections for c in counters) == 1 and sum(c.packets for c in counters) == 1


def test_established_packets_follow_the_first_ones_backend(dp):
    program(dp, (VIP, 8080, 6, [A0, B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    chosen = ip_str(ct_entries(dp)[(C_POD, 40000, VIP, 8080, 6)].nat_addr)
    for seq in range(20):
        pkt = from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=8080, flags="A", seq=seq) / Raw(b"x" * seq))
        verdict, out = run(dp, "from_workload", pkt)
        assert verdict == TC_ACT_NEXT
        assert Ether(out)[IP].dst == chosen and checksums_valid(out)


def test_backends_are_chosen_uniformly(dp):
    program(dp, (VIP, 8080, 6, [A0, B], 0))
    for sport in range(1000, 1400):
        run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=sport, dport=8080, flags="S")))
    chosen = [ip_str(v.nat_addr) for v in ct_entries(dp).values() if v.type == C.CT_TYPE_NAT_FWD]
    assert len(chosen) == 400
    assert 140 <= chosen.count(A0) <= 260


def test_reply_is_reverse_nated_to_the_vip(dp):
    program(dp, (VIP, 8080, 6, [B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    reply = to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA", seq=5, ack=1001) / Raw(b"hi"))
    verdict, out = run(dp, "to_workload", reply)
    assert verdict == TC_ACT_NEXT
    assert out == with_checksums(to_pod(IP(src=VIP, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA", seq=5, ack=1001) / Raw(b"hi")))
    rev = ct_entries(dp)[(B, 8080, C_POD, 40000, 6)]
    assert rev.tcp_seen & C.CT_TCP_SYN_REV


def test_traffic_that_is_not_for_a_service_passes_untouched(dp):
    program(dp, (VIP, 8080, 6, [B], 0))
    for pkt in (from_pod(IP(src=C_POD, dst=B) / TCP(**SYN)),
                from_pod(IP(src=C_POD, dst="10.96.0.9") / UDP(sport=1, dport=53)),
                from_pod(IP(src=C_POD, dst=B) / ICMP()),
                Ether(src=POD_MAC, dst=GW_MAC, type=0x86DD) / Raw(b"\x60" + b"\0" * 60)):
        for prog in ("from_workload", "to_workload"):
            assert run(dp, prog, pkt) == (TC_ACT_NEXT, bytes(pkt))
    assert not ct_entries(dp)


@pytest.mark.parametrize("vip,port", [(VIP_EMPTY, 8080), (VIP, 9999)], ids=["no-endpoints", "unused-port"])
@pytest.mark.parametrize("l4", [TCP(sport=40000, dport=0, flags="S"), UDP(sport=40000, dport=0) / Raw(b"q")],
                         ids=["tcp", "udp"])
def test_no_endpoints_gets_icmp_port_unreachable(dp, vip, port, l4):
    program(dp, (VIP, 8080, 6, [B], 0), (VIP_EMPTY, 8080, 6, [], 0), (VIP_EMPTY, 8080, 17, [], 0))
    l4 = l4.copy()
    l4.dport = port
    original = IP(src=C_POD, dst=vip, id=99, ttl=63) / l4
    verdict, out = run(dp, "from_workload", from_pod(original))
    assert verdict == TC_ACT_REDIRECT
    quote = bytes(IP(bytes(original)))[:28]
    expected = Ether(src=GW_MAC, dst=POD_MAC) / IP(src=vip, dst=C_POD, id=0, ttl=64, flags=0) / \
        ICMP(type=3, code=3) / Raw(quote)
    assert out == with_checksums(expected)


def test_local_policy_without_local_endpoint_drops(dp):
    program(dp, (VIP_LOCAL, 8080, 6, [], C.NAT_FLG_INTERNAL_LOCAL))
    before = drops(dp)
    pkt = from_pod(IP(src=C_POD, dst=VIP_LOCAL) / TCP(**SYN))
    assert run(dp, "from_workload", pkt)[0] == TC_ACT_SHOT
    assert dropped_since(dp, before) == {"no-local-endpoint": 1}
    assert drops(dp)["no-local-endpoint"][1] - before.get("no-local-endpoint", (0, 0))[1] == len(pkt)


@pytest.mark.parametrize("l4", [ICMP(type=8), Raw(b"\0" * 20)], ids=["ping", "other-protocol"])
def test_service_ip_answers_no_ping_and_no_other_protocol(dp, l4):
    program(dp, (VIP, 8080, 6, [B], 0))
    pkt = from_pod(IP(src=C_POD, dst=VIP, proto=1 if isinstance(l4, ICMP) else 47) / l4)
    before = drops(dp)
    assert run(dp, "from_workload", pkt)[0] == TC_ACT_SHOT
    assert dropped_since(dp, before) == {"not-l4-to-service": 1}


def test_udp_checksum_zero_stays_zero_and_nonzero_is_fixed(dp):
    program(dp, (VIP, 5353, 17, [B], 0))
    raw = bytearray(bytes(from_pod(IP(src=C_POD, dst=VIP) / UDP(sport=5000, dport=5353) / Raw(b"query"))))
    raw[14 + 20 + 6: 14 + 20 + 8] = b"\0\0"   # UDP checksum 0: "not computed"
    verdict, out = run(dp, "from_workload", bytes(raw))
    assert verdict == TC_ACT_NEXT
    udp = Ether(out)[UDP]
    assert udp.chksum == 0 and Ether(out)[IP].dst == B and udp.dport == 5353
    verdict, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / UDP(sport=5001, dport=5353) / Raw(b"query")))
    assert Ether(out)[IP].dst == B and checksums_valid(out)


@pytest.mark.parametrize("l4", [TCP(**SYN) / Raw(b"abc"), UDP(sport=5000, dport=8080) / Raw(b"query")],
                         ids=["tcp", "udp"])
def test_a_wrong_checksum_is_translated_keeping_its_error(dp, l4):
    """Incremental updates: the translation neither repairs nor worsens a checksum (the receiver
    must still see a corrupted packet as corrupted)."""
    program(dp, (VIP, 8080, 6, [B], 0), (VIP, 8080, 17, [B], 0))
    raw = bytearray(with_checksums(from_pod(IP(src=C_POD, dst=VIP) / l4)))
    field = 14 + 20 + (16 if TCP in l4 else 6)
    raw[field] ^= 0x10
    raw[24] ^= 0x01   # and the IP checksum
    tot = len(raw) - 14
    verdict, out = run(dp, "from_workload", bytes(raw))
    assert verdict == TC_ACT_NEXT and Ether(out)[IP].dst == B and Ether(out).dport == (8080 if TCP in l4 else 5353)
    assert ones_sum(out[14:34]) == ones_sum(bytes(raw[14:34])) != 0
    assert l4_sum(out, 34, tot, raw[23]) == l4_sum(bytes(raw), 34, tot, raw[23]) != 0


def test_ip_options_are_kept_and_the_header_length_respected(dp):
    program(dp, (VIP, 8080, 6, [B], 0))
    opts = [IPOption_RR(routers=["1.2.3.4"])]
    verdict, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP, options=opts) / TCP(**SYN)))
    assert verdict == TC_ACT_NEXT
    assert out == with_checksums(from_pod(IP(src=C_POD, dst=B, options=opts) / TCP(**SYN)))
    assert Ether(out)[IP].ihl > 5


@pytest.mark.parametrize("cut", [14 + 20 + 5, 14 + 20 + 19], ids=["tcp-ports", "tcp-flags"])
def test_truncated_packets_pass_untouched(dp, cut):
    program(dp, (VIP, 8080, 6, [B], 0))
    pkt = bytes(from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))[:cut]
    for prog in ("from_workload", "to_workload"):
        assert run(dp, prog, pkt) == (TC_ACT_NEXT, pkt)
    assert not ct_entries(dp)


def test_ip_header_longer_than_the_packet_passes_untouched(dp):
    program(dp, (VIP, 8080, 6, [B], 0))
    pkt = bytearray(bytes(from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN))))
    pkt[14] = 0x4F   # IHL 15: 60 bytes of header claimed, 40 bytes of packet present
    pkt = bytes(pkt)
    for prog in ("from_workload", "to_workload"):
        assert run(dp, prog, pkt) == (TC_ACT_NEXT, pkt)
    assert not ct_entries(dp)


def test_lying_ip_length_passes_untouched(dp):
    program(dp, (VIP, 8080, 6, [B], 0))
    pkt = bytes(from_pod(IP(src=C_POD, dst=VIP, len=400) / TCP(**SYN)))
    assert run(dp, "from_workload", pkt) == (TC_ACT_NEXT, pkt)


@pytest.mark.parametrize("frag,reason", [(dict(flags="MF", frag=0), "not-l4-to-service"),
                                         (dict(flags=0, frag=10), "fragment-unknown")], ids=["first", "later"])
def test_fragments_to_a_service_that_cannot_be_translated_are_dropped_others_untouched(dp, frag, reason):
    """A first fragment is a packet like any (here of no protocol a service carries); a later one
    whose first was never seen has no flow to follow (tests/test_icmp_frag_packets.py: the rest)."""
    program(dp, (VIP, 8080, 6, [B], 0))
    to_vip = from_pod(IP(src=C_POD, dst=VIP, **frag) / Raw(b"\0" * 40))
    before = drops(dp)
    assert run(dp, "from_workload", to_vip)[0] == TC_ACT_SHOT
    assert dropped_since(dp, before) == {reason: 1}
    other = from_pod(IP(src=C_POD, dst=B, **frag) / Raw(b"\0" * 40))
    assert run(dp, "from_workload", other) == (TC_ACT_NEXT, bytes(other))


def test_hairpin_is_snated_and_sent_straight_back_both_ways(dp):
    program(dp, (VIP, 8080, 6, [A0], 0))
    verdict, out = run(dp, "from_workload", from_pod(IP(src=A0, dst=VIP) / TCP(**SYN)))
    assert verdict == TC_ACT_REDIRECT
    # sent back past the stack's forwarding: one hop, the TTL one lower (bpf/forward.h)
    assert out == with_checksums(to_pod(IP(src=HAIRPIN, dst=A0, ttl=63) / TCP(**SYN)))
    reply = from_pod(IP(src=A0, dst=HAIRPIN) / TCP(sport=8080, dport=40000, flags="SA", ack=1001))
    verdict, out = run(dp, "from_workload", reply)
    assert verdict == TC_ACT_REDIRECT
    assert out == with_checksums(to_pod(IP(src=VIP, dst=A0, ttl=63) /
                                        TCP(sport=8080, dport=40000, flags="SA", ack=1001)))


def test_removed_backend_moves_udp_flows_but_keeps_tcp_flows_and_late_udp_answers(dp):
    writer = program(dp, (VIP, 5353, 17, [B], 0), (VIP, 8080, 6, [B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / UDP(sport=5000, dport=5353)))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    desired = DesiredState(
        frontends={FrontendKey(VIP, 5353, 17): Frontend(1, 1, 0, 0), FrontendKey(VIP, 8080, 6): Frontend(2, 1, 0, 0)},
        backends={1: (Backend(A0, 5353),), 2: (Backend(A0, 8080),)}, service_ips=frozenset([VIP]))
    stats = writer.apply(desired)
    assert stats.removed_backends == {(1, Backend(B, 5353)), (2, Backend(B, 8080))}
    assert stats.removed_udp_backends == {(1, Backend(B, 5353))}   # only these make the agent scan
    udp_gone = {(i, b.addr, b.port) for i, b in stats.removed_udp_backends}
    assert forget_udp_flows_to(dp.maps, udp_gone) == 1
    # an answer already on its way back is still translated (its NAT_REV half stays until it expires)
    _, out = run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / UDP(sport=5353, dport=5000)))
    assert Ether(out)[IP].src == VIP
    _, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / UDP(sport=5000, dport=5353)))
    assert Ether(out)[IP].dst == A0
    _, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=8080, flags="A")))
    assert Ether(out)[IP].dst == B


def test_the_backend_is_the_flows_hash_so_an_evicted_flow_comes_back_to_it(dp):
    backends = [A0, B, "10.200.1.3", "10.200.1.4"]
    program(dp, (VIP, 8080, 6, backends, 0))
    picked = {}
    for sport in range(41000, 42000):
        _, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=sport, dport=8080, flags="S")))
        picked[sport] = Ether(out)[IP].dst
    spread = Counter(picked.values())
    assert set(spread) == set(backends) and min(spread.values()) > 200, spread   # 250 each, give or take
    for sport in (41000, 41001, 41002, 41003):   # the LRU evicted the flow's NAT_FWD half
        dp.maps.ct.delete(ffi.new("struct ct_key *", {"src_addr": ip_be(C_POD), "dst_addr": ip_be(VIP),
                                                      "src_port": port_be(sport), "dst_port": port_be(8080),
                                                      "proto": 6}))
        _, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=sport, dport=8080, flags="A")))
        assert Ether(out)[IP].dst == picked[sport]


def test_syn_on_a_closed_flow_picks_again(dp):
    program(dp, (VIP, 8080, 6, [B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="R")))
    assert ct_entries(dp)[(B, 8080, C_POD, 40000, 6)].tcp_seen & C.CT_TCP_RST
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    assert ct_entries(dp)[(B, 8080, C_POD, 40000, 6)].tcp_seen == C.CT_TCP_SYN_FWD


@pytest.mark.parametrize("where", ["kernel", "userspace"])
def test_sweep_expires_by_state(dp, where):
    """Established once the client's ACK follows the backend's SYN-ACK (3,600 s); a flow the backend
    answered but whose client never did (a spoofed SYN's) is half-open: tcp_syn_sent (20 s)."""
    program(dp, (VIP, 8080, 6, [B], 0), (VIP, 5353, 17, [B], 0))
    for sport in (40000, 40001):
        run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=sport, dport=8080, flags="S")))
        run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=sport, flags="SA")))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=8080, flags="A")))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / UDP(sport=5000, dport=5353)))
    now = max(v.last_seen_ns for v in ct_entries(dp).values())
    t = Timeouts()
    swept = (lambda at: sweep_in_kernel(dp.maps, dp.fds["ct_sweep_keys"], t, at)) if where == "kernel" else \
        (lambda at: sweep(dp.maps, t, at))
    assert swept(now + int(19e9)).deleted == 0
    assert swept(now + int(21e9)).deleted == 2          # the half-open flow (client port 40001)
    assert {(k[1], k[3]) for k in ct_entries(dp)} == {(40000, 8080), (5000, 5353), (8080, 40000), (5353, 5000)}
    assert swept(now + int(61e9)).deleted == 2          # UDP idle 61 s; TCP established stays
    assert {k[4] for k in ct_entries(dp)} == {6}
    assert swept(now + int(3601e9)).deleted == 2


def deleter(dp, where):
    return in_kernel(dp.fds["ct_delete_unchanged"]) if where == "kernel" else delete_unchanged


@pytest.mark.parametrize("where", ["kernel", "userspace"])
def test_sweep_spares_a_flow_reopened_after_it_was_judged(dp, where):
    """The sweep reads the map, then deletes: a SYN reusing the closed flow's port in between makes
    a new flow at the same keys, which must survive (its SYN-ACK still translated)."""
    delete = deleter(dp, where)
    program(dp, (VIP, 8080, 6, [B], 0))
    fin = dict(sport=40000, dport=8080, flags="FA")
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA")))
    run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="FA")))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**fin)))
    now = max(v.last_seen_ns for v in ct_entries(dp).values())
    judged = expired(dp.maps.ct.items(), Timeouts(), now + int(31e9))
    assert entries_of(judged) == 2                            # closed, idle past tcp_fin

    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))   # the port reused
    assert delete(dp.maps.ct, judged) == 0
    _, out = run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA")))
    assert Ether(out)[IP].src == VIP

    judged = expired(dp.maps.ct.items(), Timeouts(), now + int(3601e9))
    assert delete(dp.maps.ct, judged) == 2 and not ct_entries(dp)


def test_sweep_in_kernel_takes_many_batches_and_skips_only_what_changed(dp):
    program(dp, (VIP, 5353, 17, [B], 0))
    flows = 3 * C.CT_SWEEP_BATCH + 5
    for sport in range(5000, 5000 + flows):
        run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / UDP(sport=sport, dport=5353)))
    now = max(v.last_seen_ns for v in ct_entries(dp).values())
    judged = expired(dp.maps.ct.items(), Timeouts(), now + int(61e9))
    assert len(judged) == flows and entries_of(judged) == 2 * flows
    key, value, _ = judged[-1]
    touched = ffi.new("struct ct_value *", value[0])
    touched.last_seen_ns += 1                     # a packet came in after the sweep read it
    dp.maps.ct.update(key, touched)
    assert deleter(dp, "kernel")(dp.maps.ct, judged) == 2 * flows - 2
    assert len(ct_entries(dp)) == 2               # that flow keeps both halves


def test_timeouts_parse():
    assert Timeouts.parse("tcp-established=600, udp=30") == Timeouts(tcp_established=600, udp=30)
    with pytest.raises(ValueError, match="unknown conntrack timeout"):
        Timeouts.parse("tcp-bogus=1")


def test_per_cpu_items_past_one_batch_keep_their_values(dp):
    """svc_counters holds SVC_COUNTERS_MAX entries: read in many batches, each value must stay its own."""
    ncpus = dp.maps.svc_counters.ncpus
    for svc_id in (5, 120000):
        per_cpu = ffi.new(f"struct svc_counters[{ncpus}]")
        for c in range(ncpus):
            per_cpu[c].packets = svc_id + c
        dp.maps.svc_counters.update(ffi.new("__u32 *", svc_id), per_cpu)
    values = {k[0]: v for k, v in dp.maps.svc_counters.items()}
    assert [c.packets for c in values[5]] == [5 + c for c in range(ncpus)]
    assert [c.packets for c in values[120000]] == [120000 + c for c in range(ncpus)]


def test_a_direct_connection_reusing_a_closed_vip_flows_port_is_left_alone(dp):
    """C talked to B through the VIP from port 40000 and closed; C now connects to B directly
    from the same port. B's SYN-ACK must not come out as the VIP (found by the benchmarks)."""
    program(dp, (VIP, 8080, 6, [B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA")))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=8080, flags="FA")))
    run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="FA")))
    direct = [to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA", seq=99)),
              to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="A", seq=100) / Raw(b"data"))]
    for pkt in direct:
        assert run(dp, "to_workload", pkt) == (TC_ACT_NEXT, bytes(pkt))
    assert (B, 8080, C_POD, 40000, 6) not in ct_entries(dp)   # the stale pair is gone


def test_a_retransmitted_syn_ack_of_a_live_flow_is_still_translated(dp):
    program(dp, (VIP, 8080, 6, [B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    for _ in range(2):
        _, out = run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA")))
        assert Ether(out)[IP].src == VIP


def test_a_stale_pair_is_forgotten_without_its_twin_when_the_twin_moved_on(dp):
    """A SYN-ACK meeting a closed NAT_REV forgets it; its NAT_FWD twin only while that still names it
    (here the client's tuple already carries a newer flow, whose reply entry is elsewhere)."""
    program(dp, (VIP, 8080, 6, [B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))          # C:40000 -> B
    entries = ct_entries(dp)
    fwd_key = (C_POD, 40000, VIP, 8080, 6)
    stale = ffi.new("struct ct_value *", entries[(B, 8080, C_POD, 40000, 6)][0])
    stale.tcp_seen |= C.CT_TCP_RST
    stale_key = ffi.new("struct ct_key *", {"src_addr": ip_be(A0), "dst_addr": ip_be(C_POD),
                                            "src_port": port_be(8080), "dst_port": port_be(40000), "proto": 6})
    dp.maps.ct.update(stale_key, stale)     # an old pair's reply half, naming the client's tuple
    verdict, _ = run(dp, "to_workload", to_pod(IP(src=A0, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA")))
    assert verdict == TC_ACT_NEXT
    entries = ct_entries(dp)
    assert (A0, 8080, C_POD, 40000, 6) not in entries           # the stale half is gone
    assert fwd_key in entries and (B, 8080, C_POD, 40000, 6) in entries   # the live flow is whole
