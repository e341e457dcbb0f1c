"""Packets through the uplink programs (from_uplink, to_uplink) with BPF_PROG_TEST_RUN: NodePort,
LB and external traffic, as kube-proxy serves it."""
import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath.structs import C, ffi, ip_be, ip_str, new, port_int
from ebpflb.sync.writer import MapWriter
from tests.conftest import NODE_ADDR, loaded_both_ways
from tests.lab import in_netns, routed_uplink
from tests.test_datapath_packets import (TC_ACT_NEXT, TC_ACT_REDIRECT, TC_ACT_SHOT, VIP, ct_entries, dropped_since,
                                         drops, from_pod, run, with_checksums)

# Every test under both ways of fixing L4 checksums (conftest.CSUM_MODES).
loaded = loaded_both_ways

CLIENT, OTHER_CLIENT = "192.168.64.100", "192.168.64.101"
LB_IP, NODEPORT = "192.168.64.200", 30080
A0, B = "10.200.0.2", "10.200.1.2"
EXT, EXT_LOCAL, SRC_RANGES = C.NAT_FLG_EXTERNAL, C.NAT_FLG_EXTERNAL_LOCAL, C.NAT_FLG_SRC_RANGES
ROUTER_MAC, NODE_MAC, NEXT_HOP_MAC = "02:00:00:00:01:00", "02:00:00:00:01:06", "02:00:00:00:01:05"


@pytest.fixture(scope="module")
def routed():
    """node-2's uplink: its address, a route to B's node, fixed neighbours. SNATed packets leave
    by FIB lookup + redirect, so their MACs depend on these."""
    with routed_uplink(NODE_ADDR, NODE_MAC, {"192.168.64.5": NEXT_HOP_MAC, CLIENT: ROUTER_MAC,
                                             OTHER_CLIENT: ROUTER_MAC},
                       {"10.200.1.0/24": "192.168.64.5"}) as ns_index:
        yield ns_index


def run_routed(dp, routed, prog, pkt):
    ns, index = routed
    with in_netns(ns):
        return run(dp, prog, pkt, ifindex=index)


def outbound(l3, to_mac):
    return Ether(src=NODE_MAC, dst=to_mac) / l3


def inbound(l3):
    return Ether(src=ROUTER_MAC, dst=NODE_MAC) / l3


def program(dp, frontends, backends, local=0, ranges=()):
    """frontends: [(addr, port, flags)] of service id 1; backends: addresses (port 8080), local first."""
    desired = DesiredState(
        frontends={FrontendKey(addr, port, 6): Frontend(1, len(backends), local, flags)
                   for addr, port, flags in frontends},
        backends={1: tuple(Backend(a, 8080) for a in backends)},
        service_ips=frozenset([VIP]))
    MapWriter(dp.maps).apply(desired)
    for cidr_addr, bits in ranges:
        dp.maps.src_ranges.update(new("struct src_range_key", prefixlen=C.SRC_RANGE_PREFIX_BASE + bits, id=1, addr=ip_be(cidr_addr)),
                                  ffi.new("__u32 *", 1))


def syn(src, dst, sport=40000, dport=NODEPORT):
    return inbound(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=7))


def test_nodeport_to_a_remote_backend_is_dnated_and_snated_and_the_reply_translated_back(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    verdict, out = run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))
    assert verdict == TC_ACT_REDIRECT   # by FIB lookup: the stack would call our own source a martian
    assert out == with_checksums(outbound(IP(src=NODE_ADDR, dst=B, ttl=63) /   # forwarded past the stack: TTL - 1
                                          TCP(sport=40000, dport=8080, flags="S", seq=7), NEXT_HOP_MAC))
    entries = ct_entries(dp)
    fwd, rev = entries[(CLIENT, 40000, NODE_ADDR, NODEPORT, 6)], entries[(B, 8080, NODE_ADDR, 40000, 6)]
    assert fwd.flags == rev.flags == C.CT_FLAG_UPLINK | C.CT_FLAG_SNAT
    reply = inbound(IP(src=B, dst=NODE_ADDR) / TCP(sport=8080, dport=40000, flags="SA", ack=8) / Raw(b"hello"))
    verdict, out = run_routed(dp, routed, "from_uplink", reply)
    assert verdict == TC_ACT_REDIRECT
    assert out == with_checksums(outbound(IP(src=NODE_ADDR, dst=CLIENT, ttl=63) /
                                          TCP(sport=NODEPORT, dport=40000, flags="SA", ack=8) / Raw(b"hello"), ROUTER_MAC))
    # and the client's next packet follows the same translation
    _, out = run_routed(dp, routed, "from_uplink",
                        inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=40000, dport=NODEPORT, flags="A")))
    assert (Ether(out)[IP].src, Ether(out)[IP].dst, Ether(out)[TCP].dport) == (NODE_ADDR, B, 8080)


def test_snat_port_taken_by_another_flow_picks_a_free_one(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))
    verdict, out = run_routed(dp, routed, "from_uplink", syn(OTHER_CLIENT, NODE_ADDR))   # same source port 40000
    assert verdict == TC_ACT_REDIRECT
    port = Ether(out)[TCP].sport
    assert port != 40000 and port >= 32768
    assert (B, 8080, NODE_ADDR, port, 6) in ct_entries(dp)


def test_a_closed_flows_snat_port_serves_a_new_flow_at_once_and_the_old_pair_is_forgotten(dp, routed):
    """Found by the reliability suite: at ~900 NodePort connections/s closed flows (kept 30 s) held
    most SNAT ports, eight random tries found none free and the SYN was dropped (a 1 s stall)."""
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))
    for flags, sender in (("FA", "client"), ("FA", "backend")):
        if sender == "client":
            pkt = inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=40000, dport=NODEPORT, flags=flags))
        else:
            pkt = inbound(IP(src=B, dst=NODE_ADDR) / TCP(sport=8080, dport=40000, flags=flags))
        assert run_routed(dp, routed, "from_uplink", pkt)[0] == TC_ACT_REDIRECT
    verdict, out = run_routed(dp, routed, "from_uplink", syn(OTHER_CLIENT, NODE_ADDR))   # same source port 40000
    assert verdict == TC_ACT_REDIRECT and Ether(out)[TCP].sport == 40000
    entries = ct_entries(dp)
    assert entries[(B, 8080, NODE_ADDR, 40000, 6)].snat_addr == ip_be(OTHER_CLIENT)
    assert (CLIENT, 40000, NODE_ADDR, NODEPORT, 6) not in entries    # the closed flow's twin went with it


def test_a_half_closed_flow_keeps_its_snat_port(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))
    run_routed(dp, routed, "from_uplink", inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=40000, dport=NODEPORT, flags="FA")))
    _, out = run_routed(dp, routed, "from_uplink", syn(OTHER_CLIENT, NODE_ADDR))
    assert Ether(out)[TCP].sport != 40000     # the backend may still be sending to the first client
    assert (CLIENT, 40000, NODE_ADDR, NODEPORT, 6) in ct_entries(dp)


def test_local_policy_keeps_the_client_address_and_to_uplink_translates_the_reply(dp):
    program(dp, [(NODE_ADDR, NODEPORT, EXT | EXT_LOCAL)], [A0, B], local=1)
    for sport in range(40000, 40020):   # always the local one
        verdict, out = run(dp, "from_uplink", syn(CLIENT, NODE_ADDR, sport=sport))
        assert verdict == TC_ACT_NEXT and (Ether(out)[IP].src, Ether(out)[IP].dst) == (CLIENT, A0)
    reply = Ether() / IP(src=A0, dst=CLIENT) / TCP(sport=8080, dport=40000, flags="SA")
    verdict, out = run(dp, "to_uplink", reply)
    assert verdict == TC_ACT_NEXT
    assert out == with_checksums(Ether() / IP(src=NODE_ADDR, dst=CLIENT) / TCP(sport=NODEPORT, dport=40000, flags="SA"))


def test_cluster_policy_local_backend_is_not_snated(dp):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [A0], local=1)
    verdict, out = run(dp, "from_uplink", syn(CLIENT, NODE_ADDR))
    assert (Ether(out)[IP].src, Ether(out)[IP].dst) == (CLIENT, A0)


def test_local_policy_without_local_backend_drops(dp):
    program(dp, [(NODE_ADDR, NODEPORT, EXT | EXT_LOCAL)], [B], local=0)
    before = drops(dp)
    assert run(dp, "from_uplink", syn(CLIENT, NODE_ADDR))[0] == TC_ACT_SHOT
    assert dropped_since(dp, before) == {"no-local-endpoint": 1}


def test_without_its_tail_calls_from_uplink_drops_new_flows_counted_and_keeps_established_ones(dp, routed):
    """from_uplink hands a flow's first packet to from_uplink_new_flow, and that one a SNATed flow's
    to from_uplink_snat (the pinned uplink_calls the loader fills). A slot left empty drops the
    packet as no-new-flow-program, never lets it pass untranslated; established flows need no slot."""
    from ebpflb.datapath import libbpf
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    assert run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))[0] == TC_ACT_REDIRECT
    calls = libbpf.obj_get(f"{dp.pin_dir}/uplink_calls")
    try:
        for slot, program_name in ((1, "from_uplink_snat"), (0, "from_uplink_new_flow")):
            key = ffi.new("int *", slot)
            libbpf.check(libbpf.lib.bpf_map_delete_elem(calls, key), "uplink_calls delete")
            try:
                before = drops(dp)
                assert run_routed(dp, routed, "from_uplink", syn(OTHER_CLIENT, NODE_ADDR))[0] == TC_ACT_SHOT
                assert dropped_since(dp, before) == {"no-new-flow-program": 1}
                assert (OTHER_CLIENT, 40000, NODE_ADDR, NODEPORT, 6) not in ct_entries(dp)
                verdict, out = run_routed(dp, routed, "from_uplink",
                                          inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=40000, dport=NODEPORT, flags="A")))
                assert verdict == TC_ACT_REDIRECT and Ether(out)[IP].dst == B
            finally:
                libbpf.check(libbpf.lib.bpf_map_update_elem(calls, key, ffi.new("int *", dp.fds[program_name]), 0),
                             "uplink_calls update")
    finally:
        os.close(calls)


def test_cluster_policy_without_endpoints_gets_port_unreachable(dp):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [])
    verdict, out = run(dp, "from_uplink", syn(CLIENT, NODE_ADDR))
    assert verdict == TC_ACT_REDIRECT
    icmp = Ether(out)
    assert (icmp[IP].src, icmp[IP].dst, icmp[IP].proto, bytes(icmp[IP].payload)[:2]) == (NODE_ADDR, CLIENT, 1, b"\x03\x03")
    assert (icmp.src, icmp.dst) == (NODE_MAC, ROUTER_MAC)


def test_cluster_ips_are_not_served_from_outside(dp):
    program(dp, [(VIP, 8080, 0)], [B])
    pkt = syn(CLIENT, VIP, dport=8080)
    assert run(dp, "from_uplink", pkt) == (TC_ACT_NEXT, bytes(pkt))
    assert not ct_entries(dp)


def test_source_ranges_guard_the_lb_ip_but_not_the_nodeport(dp, routed):
    program(dp, [(LB_IP, 80, EXT | SRC_RANGES), (NODE_ADDR, NODEPORT, EXT)], [B], ranges=[(CLIENT, 32)])
    assert run_routed(dp, routed, "from_uplink", syn(CLIENT, LB_IP, dport=80))[0] == TC_ACT_REDIRECT
    before = drops(dp)
    assert run_routed(dp, routed, "from_uplink", syn(OTHER_CLIENT, LB_IP, dport=80, sport=41000))[0] == TC_ACT_SHOT
    assert dropped_since(dp, before) == {"source-range": 1}
    verdict, out = run_routed(dp, routed, "from_uplink", syn(OTHER_CLIENT, NODE_ADDR, sport=41000))
    assert verdict == TC_ACT_REDIRECT and Ether(out)[IP].dst == B


def test_udp_nodeport_keeps_a_zero_checksum(dp, routed):
    MapWriter(dp.maps).apply(DesiredState(frontends={FrontendKey(NODE_ADDR, NODEPORT, 17): Frontend(1, 1, 0, EXT)},
                                          backends={1: (Backend(B, 8080),)}))
    raw = bytearray(bytes(inbound(IP(src=CLIENT, dst=NODE_ADDR) / UDP(sport=5000, dport=NODEPORT) / Raw(b"q"))))
    raw[14 + 20 + 6:14 + 20 + 8] = b"\0\0"   # "no checksum"
    verdict, out = run_routed(dp, routed, "from_uplink", bytes(raw))
    assert verdict == TC_ACT_REDIRECT and Ether(out)[UDP].chksum == 0 and Ether(out)[IP].dst == B


def test_other_traffic_on_the_uplink_passes_untouched(dp):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    for pkt in (syn(CLIENT, NODE_ADDR, dport=22), inbound(IP(src=CLIENT, dst=A0) / UDP(sport=1, dport=2)),
                inbound(IP(src=CLIENT, dst=NODE_ADDR) / Raw(b"\0" * 8))):
        for prog in ("from_uplink", "to_uplink"):
            assert run(dp, prog, pkt) == (TC_ACT_NEXT, bytes(pkt))


def test_a_pod_flows_reply_passes_the_uplink_for_its_veth_to_translate(dp):
    program(dp, [(VIP, 8080, 0)], [B])
    run(dp, "from_workload", from_pod(IP(src="10.200.2.2", dst=VIP) / TCP(sport=40000, dport=8080, flags="S")))
    reply = inbound(IP(src=B, dst="10.200.2.2") / TCP(sport=8080, dport=40000, flags="SA"))
    assert run(dp, "from_uplink", reply) == (TC_ACT_NEXT, bytes(reply))
    verdict, out = run(dp, "to_workload", reply)
    assert verdict == TC_ACT_NEXT and (Ether(out)[IP].src, Ether(out)[TCP].sport) == (VIP, 8080)


def test_no_route_to_the_backend_drops_instead_of_sending_it_astray(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], ["10.250.0.9"])   # no route to it from the uplink
    before = drops(dp)
    assert run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))[0] == TC_ACT_SHOT
    assert dropped_since(dp, before) == {"no-route": 1}


# --- XDP: the same flows, finished before the stack when XDP can; otherwise passed on untouched

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3


def run_xdp(dp, routed, pkt):
    from ebpflb.datapath.libbpf import prog_test_run
    ns, index = routed
    with in_netns(ns):
        retval, out, _ = prog_test_run(dp.fds["xdp_uplink"], bytes(pkt), ifindex=index, xdp=True)
    return retval, out


def test_xdp_translates_established_snated_flows_both_ways_like_tc(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    first = syn(CLIENT, NODE_ADDR)
    assert run_xdp(dp, routed, first) == (XDP_PASS, bytes(first))          # a new flow is tc's
    _, by_tc = run_routed(dp, routed, "from_uplink", first)
    data = inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=40000, dport=NODEPORT, flags="A", seq=8) / Raw(b"GET"))
    assert run_xdp(dp, routed, data) == (XDP_PASS, bytes(data))           # the client's first ACK is tc's too
    run_routed(dp, routed, "from_uplink", data)
    verdict, by_xdp = run_xdp(dp, routed, data)
    assert verdict == XDP_TX
    assert by_xdp == with_checksums(outbound(IP(src=NODE_ADDR, dst=B, ttl=63) /
                                             TCP(sport=40000, dport=8080, flags="A", seq=8) / Raw(b"GET"), NEXT_HOP_MAC))
    reply = inbound(IP(src=B, dst=NODE_ADDR) / TCP(sport=8080, dport=40000, flags="A") / Raw(b"200 OK"))
    verdict, by_xdp = run_xdp(dp, routed, reply)
    assert verdict == XDP_TX
    assert by_xdp == run_routed(dp, routed, "from_uplink", reply)[1]       # tc would send the same bytes
    assert by_xdp == with_checksums(outbound(IP(src=NODE_ADDR, dst=CLIENT, ttl=63) /
                                             TCP(sport=NODEPORT, dport=40000, flags="A") / Raw(b"200 OK"), ROUTER_MAC))


def test_xdp_udp_zero_checksum_stays_zero_and_others_stay_valid(dp, routed):
    MapWriter(dp.maps).apply(DesiredState(frontends={FrontendKey(NODE_ADDR, NODEPORT, 17): Frontend(1, 1, 0, EXT)},
                                          backends={1: (Backend(B, 8080),)}))
    for payload in (b"q", b"longer payload"):
        pkt = inbound(IP(src=CLIENT, dst=NODE_ADDR) / UDP(sport=5000, dport=NODEPORT) / Raw(payload))
        run_routed(dp, routed, "from_uplink", pkt)                           # tc makes the flow
        verdict, out = run_xdp(dp, routed, pkt)
        assert verdict == XDP_TX and out == with_checksums(
            outbound(IP(src=NODE_ADDR, dst=B, ttl=63) / UDP(sport=5000, dport=8080) / Raw(payload), NEXT_HOP_MAC))
    raw = bytearray(bytes(inbound(IP(src=CLIENT, dst=NODE_ADDR) / UDP(sport=5000, dport=NODEPORT) / Raw(b"q"))))
    raw[14 + 20 + 6:14 + 20 + 8] = b"\0\0"
    verdict, out = run_xdp(dp, routed, bytes(raw))
    assert verdict == XDP_TX and Ether(out)[UDP].chksum == 0


def test_xdp_drops_sources_outside_the_lb_ranges_before_the_stack(dp, routed):
    program(dp, [(LB_IP, 80, EXT | SRC_RANGES), (NODE_ADDR, NODEPORT, EXT)], [B], ranges=[(CLIENT, 32)])
    before = drops(dp)
    pkt = syn(OTHER_CLIENT, LB_IP, dport=80)
    assert run_xdp(dp, routed, pkt)[0] == XDP_DROP
    assert dropped_since(dp, before) == {"source-range": 1}
    assert drops(dp)["source-range"][1] - before.get("source-range", (0, 0))[1] == len(pkt)
    for allowed in (syn(CLIENT, LB_IP, dport=80), syn(OTHER_CLIENT, NODE_ADDR)):
        assert run_xdp(dp, routed, allowed) == (XDP_PASS, bytes(allowed))


def test_xdp_leaves_what_it_cannot_finish_to_tc_untouched(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT | EXT_LOCAL)], [A0, B], local=1)
    run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))           # local backend: no SNAT
    for pkt in (inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=40000, dport=NODEPORT, flags="A")),
                inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=1, dport=22, flags="S")),
                inbound(IP(src=CLIENT, dst=NODE_ADDR, flags="MF") / Raw(b"\0" * 30)),
                bytes(syn(CLIENT, NODE_ADDR))[:40]):
        assert run_xdp(dp, routed, pkt) == (XDP_PASS, bytes(pkt))
