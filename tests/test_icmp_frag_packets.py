"""ICMP errors and IPv4 fragments through the NAT, with BPF_PROG_TEST_RUN (issue 17).

An ICMP error quotes the packet it is about; a NATed flow's sender only recognises it when the
quote is the packet it sent. Each error here is built by scapy from the packet as the far side got
it, and must come out quoting the packet exactly as its sender sent it: every byte, so every
checksum (the outer IP header's, the quoted IP header's, the quoted L4 checksum where quoted, and
the ICMP checksum) is checked against one scapy computed from scratch."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath.structs import C
from ebpflb.sync.writer import MapWriter
from tests.conftest import NODE_ADDR, loaded_both_ways
from tests.lab import in_netns, routed_uplink
from tests.test_datapath_packets import (A0, B, C_POD, HAIRPIN, POD_MAC, TC_ACT_NEXT, TC_ACT_REDIRECT, VIP,
                                         ct_entries, drops, dropped_since, from_pod, program, run, to_pod)

# Every test under both ways of fixing L4 checksums (conftest.CSUM_MODES).
loaded = loaded_both_ways

ROUTER = "10.200.9.1"                  # a router on the way: its own address stays
CLIENT, NODEPORT = "192.168.64.100", 30080
ROUTER_MAC, NODE_MAC, NEXT_HOP_MAC = "02:00:00:00:01:00", "02:00:00:00:01:06", "02:00:00:00:01:05"
EXT = C.NAT_FLG_EXTERNAL
PAYLOAD = b"x" * 100
UNREACH, TIME_EXCEEDED, PARAM_PROBLEM = 3, 11, 12
ERRORS = [(UNREACH, 3), (UNREACH, 1), (UNREACH, 4), (TIME_EXCEEDED, 0), (PARAM_PROBLEM, 0)]
ERROR_IDS = ["port-unreachable", "host-unreachable", "frag-needed", "time-exceeded", "parameter-problem"]


def udp(src, sport, dst, dport, payload=PAYLOAD, ttl=63, **ip):
    """A UDP datagram as it is on the wire: scapy's checksums, computed whole."""
    return bytes(IP(src=src, dst=dst, id=77, ttl=ttl, **ip) / UDP(sport=sport, dport=dport) / Raw(payload))


def tcp(src, sport, dst, dport, payload=PAYLOAD, ttl=63, **ip):
    return bytes(IP(src=src, dst=dst, id=78, ttl=ttl, **ip) /
                 TCP(sport=sport, dport=dport, flags="PA", seq=1000, ack=2000) / Raw(payload))


def error(src, dst, quoted: bytes, type_=UNREACH, code=3, quote_len=None, ttl=64, **icmp):
    """An ICMP error quoting quote_len bytes (all by default) of the packet `quoted`."""
    return IP(src=src, dst=dst, id=5, ttl=ttl) / ICMP(type=type_, code=code, **icmp) / Raw(quoted[:quote_len])


def translated(out: bytes) -> bytes:
    return bytes(Ether(out)[IP])


def udp_service(dp):
    """VIP:53/UDP -> B:5353; a pod client C sent C:40000 -> VIP:53, so the flow is in conntrack."""
    program(dp, (VIP, 53, 17, [B], 0))
    first = from_pod(IP(udp(C_POD, 40000, VIP, 53)))
    verdict, out = run(dp, "from_workload", first)
    assert verdict == TC_ACT_NEXT and Ether(out)[IP].dst == B


def tcp_service(dp):
    program(dp, (VIP, 80, 6, [B], 0))
    first = from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=80, flags="S"))
    assert run(dp, "from_workload", first)[0] == TC_ACT_NEXT


# --- errors from the backend's side about the client's packets (at the client's veth: to_workload)

@pytest.mark.parametrize("type_,code", ERRORS, ids=ERROR_IDS)
def test_backends_error_about_a_clients_datagram_names_the_vip(dp, type_, code):
    """B's port unreachable (a closed UDP port): the client's socket, connected to VIP:53, must see
    it, or it waits for its timeout instead of ECONNREFUSED."""
    udp_service(dp)
    got = error(B, C_POD, udp(C_POD, 40000, B, 5353), type_, code)
    verdict, out = run(dp, "to_workload", to_pod(got))
    assert verdict == TC_ACT_NEXT
    assert translated(out) == bytes(error(VIP, C_POD, udp(C_POD, 40000, VIP, 53), type_, code))


def test_routers_frag_needed_about_a_tcp_segment_keeps_the_routers_address(dp):
    """Path MTU discovery through a ClusterIP: a router before B says the segment is too big; the
    quote (whole TCP header: its checksum too) must name VIP:80 for the client's socket to learn
    the MTU. The next-hop MTU in the ICMP header is kept."""
    tcp_service(dp)
    got = error(ROUTER, C_POD, tcp(C_POD, 40000, B, 8080, b"y" * 1300, flags="DF"), UNREACH, 4,
                quote_len=20 + 20 + 64, nexthopmtu=1200)
    verdict, out = run(dp, "to_workload", to_pod(got))
    assert verdict == TC_ACT_NEXT
    assert translated(out) == bytes(error(ROUTER, C_POD, tcp(C_POD, 40000, VIP, 80, b"y" * 1300, flags="DF"),
                                          UNREACH, 4, quote_len=20 + 20 + 64, nexthopmtu=1200))


@pytest.mark.parametrize("quote_l4", [8, 12, 17, 18], ids=lambda n: f"{n}-bytes-of-tcp")
def test_a_short_quote_without_the_tcp_checksum_is_translated_around_it(dp, quote_l4):
    """RFC 792 promises 8 bytes of L4: TCP's checksum (bytes 16-17) is then not quoted, and what
    is quoted must still come out right, the ICMP checksum included."""
    tcp_service(dp)
    got = error(ROUTER, C_POD, tcp(C_POD, 40000, B, 8080), TIME_EXCEEDED, 0, quote_len=20 + quote_l4)
    verdict, out = run(dp, "to_workload", to_pod(got))
    vip, backend = tcp(C_POD, 40000, VIP, 80), tcp(C_POD, 40000, B, 8080)
    # a checksum field quoted only in part stays as quoted (the backend's tuple's)
    expected = vip[:min(36, 20 + quote_l4)] + (vip if quote_l4 >= 18 else backend)[36:20 + quote_l4]
    assert verdict == TC_ACT_NEXT
    assert translated(out) == bytes(error(ROUTER, C_POD, expected, TIME_EXCEEDED, 0))


def test_a_zero_udp_checksum_in_the_quote_stays_zero(dp):
    udp_service(dp)
    sent = bytearray(udp(C_POD, 40000, B, 5353))
    sent[26:28] = b"\0\0"
    verdict, out = run(dp, "to_workload", to_pod(error(B, C_POD, bytes(sent))))
    expected = bytearray(udp(C_POD, 40000, VIP, 53))
    expected[26:28] = b"\0\0"
    assert verdict == TC_ACT_NEXT
    assert translated(out) == bytes(error(VIP, C_POD, bytes(expected)))


def test_a_quote_with_ip_options_is_translated(dp):
    from scapy.layers.inet import IPOption_RR
    udp_service(dp)
    got = error(B, C_POD, udp(C_POD, 40000, B, 5353, options=[IPOption_RR()]))
    verdict, out = run(dp, "to_workload", to_pod(got))
    assert translated(out) == bytes(error(VIP, C_POD, udp(C_POD, 40000, VIP, 53, options=[IPOption_RR()])))


# --- errors from the client's side about the backend's replies (at the client's veth: from_workload)

def test_clients_error_about_a_reply_goes_to_the_backend_naming_it(dp):
    """The client closed its socket; its port unreachable is about VIP:53's reply, and belongs to B."""
    udp_service(dp)
    got = error(C_POD, VIP, udp(VIP, 53, C_POD, 40000))
    verdict, out = run(dp, "from_workload", from_pod(got))
    assert verdict == TC_ACT_NEXT
    assert translated(out) == bytes(error(C_POD, B, udp(B, 5353, C_POD, 40000)))


def test_hairpin_errors_are_translated_both_ways_and_sent_straight_back(dp):
    program(dp, (VIP, 53, 17, [A0], 0))
    run(dp, "from_workload", from_pod(IP(udp(A0, 40000, VIP, 53))))
    # A0 as the backend refuses the datagram it got from the hairpin address
    # (sent back past the stack's forwarding: one hop, the TTL one lower)
    verdict, out = run(dp, "from_workload", from_pod(error(A0, HAIRPIN, udp(HAIRPIN, 40000, A0, 5353))))
    assert verdict == TC_ACT_REDIRECT
    assert translated(out) == bytes(error(VIP, A0, udp(A0, 40000, VIP, 53), ttl=63))
    # A0 as the client refuses the reply it got from VIP:53
    verdict, out = run(dp, "from_workload", from_pod(error(A0, VIP, udp(VIP, 53, A0, 40000))))
    assert verdict == TC_ACT_REDIRECT
    assert translated(out) == bytes(error(HAIRPIN, A0, udp(A0, 5353, HAIRPIN, 40000), ttl=63))


# --- what is not ours, or not whole, passes untouched

def unknown_and_broken():
    flow = udp(C_POD, 40000, B, 5353)
    other = udp(C_POD, 40001, B, 5353)   # not a flow conntrack knows
    yield "unknown-flow", error(B, C_POD, other)
    yield "unknown-tcp", error(B, C_POD, tcp(C_POD, 40000, B, 8080))
    yield "not-to-the-quotes-source", error(B, A0, flow)
    yield "quote-of-an-echo", IP(src=B, dst=C_POD) / ICMP(type=3, code=1) / IP(src=C_POD, dst=B) / ICMP()
    yield "echo-reply", IP(src=B, dst=C_POD) / ICMP(type=0) / Raw(flow)
    yield "later-fragment", error(B, C_POD, udp(C_POD, 40000, B, 5353, frag=5))
    for cut in (0, 10, 19, 20, 24, 27):
        yield f"quote-cut-at-{cut}", error(B, C_POD, flow, quote_len=cut)
    bad = bytearray(flow)
    bad[0] = 0x44   # ihl 4
    yield "quoted-ihl-4", error(B, C_POD, bytes(bad))
    bad = bytearray(flow)
    bad[0] = 0x4f   # options past the quote's end
    yield "quoted-ihl-past-the-quote", error(B, C_POD, bytes(bad), quote_len=40)
    bad = bytearray(flow)
    bad[2:4] = (24).to_bytes(2, "big")   # a packet of 4 L4 bytes cannot have had ports
    yield "quoted-total-length-too-short", error(B, C_POD, bytes(bad))
    lying = IP(bytes(error(B, C_POD, flow)))
    lying.len = 20 + 8 + 24   # the outer packet ends inside the quoted UDP header
    yield "outer-length-ends-in-the-quote", IP(bytes(lying)) / Raw(b"\0" * 30)


@pytest.mark.parametrize("name,pkt", list(unknown_and_broken()), ids=[n for n, _ in unknown_and_broken()])
def test_errors_not_about_our_flows_or_not_whole_pass_untouched(dp, name, pkt):
    udp_service(dp)
    for prog, frame in (("to_workload", to_pod(pkt)), ("from_workload", from_pod(pkt)),
                        ("from_uplink", Ether() / pkt), ("to_uplink", Ether() / pkt)):
        before = drops(dp)
        assert run(dp, prog, frame) == (TC_ACT_NEXT, bytes(frame)), prog
        assert dropped_since(dp, before) == {}, prog


def test_an_error_neither_touches_nor_makes_conntrack_entries(dp):
    udp_service(dp)
    before = {k: (v.last_seen_ns, v.tcp_seen) for k, v in ct_entries(dp).items()}
    run(dp, "to_workload", to_pod(error(B, C_POD, udp(C_POD, 40000, B, 5353))))
    run(dp, "from_workload", from_pod(error(C_POD, VIP, udp(VIP, 53, C_POD, 40000))))
    run(dp, "from_workload", from_pod(error(C_POD, VIP, udp(VIP, 53, C_POD, 40009))))
    assert {k: (v.last_seen_ns, v.tcp_seen) for k, v in ct_entries(dp).items()} == before


# --- the uplinks: NodePort flows, SNATed to a remote backend or kept to a local one

@pytest.fixture(scope="module")
def routed():
    with routed_uplink(NODE_ADDR, NODE_MAC, {"192.168.64.5": NEXT_HOP_MAC, CLIENT: ROUTER_MAC},
                       {"10.200.1.0/24": "192.168.64.5", "10.200.9.0/24": "192.168.64.5"}) as ns_index:
        yield ns_index


def run_routed(dp, routed, prog, pkt):
    ns, index = routed
    with in_netns(ns):
        return run(dp, prog, pkt, ifindex=index)


def nodeport(dp, backend, local):
    MapWriter(dp.maps).apply(DesiredState(
        frontends={FrontendKey(NODE_ADDR, NODEPORT, 17): Frontend(1, 1, int(local), EXT)},
        backends={1: (Backend(backend, 5353),)}))


def inbound(l3):
    return Ether(src=ROUTER_MAC, dst=NODE_MAC) / l3


def test_uplink_snat_flow_a_routers_error_about_the_forwarded_datagram_reaches_the_client(dp, routed):
    """An outside client's NodePort flow, SNATed to a backend on another node: a router towards B
    answers frag-needed to this node's address; it goes on to the client, naming the NodePort."""
    nodeport(dp, B, local=False)
    verdict, out = run_routed(dp, routed, "from_uplink", inbound(IP(udp(CLIENT, 40000, NODE_ADDR, NODEPORT))))
    assert verdict == TC_ACT_REDIRECT
    sent = bytes(Ether(out)[IP])   # as B's side got it: NODE_ADDR:snat -> B:5353
    snat_port = Ether(out)[UDP].sport
    for src, outer_src in ((ROUTER, ROUTER), (B, NODE_ADDR)):
        got = error(src, NODE_ADDR, sent, UNREACH, 4, nexthopmtu=1200)
        verdict, out = run_routed(dp, routed, "from_uplink", inbound(got))
        assert verdict == TC_ACT_REDIRECT   # by FIB lookup, like the flow's replies
        assert (Ether(out).src, Ether(out).dst) == (NODE_MAC, ROUTER_MAC)
        # both forwarded past the stack: the datagram's TTL one lower as B's side got it, the error's too
        assert translated(out) == bytes(error(outer_src, CLIENT, udp(CLIENT, 40000, NODE_ADDR, NODEPORT, ttl=62),
                                              UNREACH, 4, ttl=63, nexthopmtu=1200))
    # the client's own error about a reply goes to B, from this node's address and SNAT port
    got = error(CLIENT, NODE_ADDR, udp(NODE_ADDR, NODEPORT, CLIENT, 40000))
    verdict, out = run_routed(dp, routed, "from_uplink", inbound(got))
    assert verdict == TC_ACT_REDIRECT and Ether(out).dst == NEXT_HOP_MAC
    assert translated(out) == bytes(error(NODE_ADDR, B, udp(B, 5353, NODE_ADDR, snat_port), ttl=63))


def test_uplink_local_backend_its_error_to_an_outside_client_names_the_nodeport(dp):
    nodeport(dp, A0, local=True)
    verdict, out = run(dp, "from_uplink", inbound(IP(udp(CLIENT, 40000, NODE_ADDR, NODEPORT))))
    assert verdict == TC_ACT_NEXT and Ether(out)[IP].dst == A0
    got = Ether() / error(A0, CLIENT, udp(CLIENT, 40000, A0, 5353))
    verdict, out = run(dp, "to_uplink", got)
    assert verdict == TC_ACT_NEXT
    assert translated(out) == bytes(error(NODE_ADDR, CLIENT, udp(CLIENT, 40000, NODE_ADDR, NODEPORT)))
    # and the outside client's error about the reply reaches A0, naming A0:5353
    got = inbound(error(CLIENT, NODE_ADDR, udp(NODE_ADDR, NODEPORT, CLIENT, 40000)))
    verdict, out = run(dp, "from_uplink", got)
    assert verdict == TC_ACT_NEXT
    assert translated(out) == bytes(error(CLIENT, A0, udp(A0, 5353, CLIENT, 40000)))


def test_a_pods_flow_is_not_translated_at_the_uplink(dp):
    udp_service(dp)
    got = inbound(error(B, C_POD, udp(C_POD, 40000, B, 5353)))
    assert run(dp, "from_uplink", got) == (TC_ACT_NEXT, bytes(got))


# --- IPv4 fragments: the first one's translation, remembered for the later ones

from scapy.layers.inet import fragment  # noqa: E402

BIG = bytes(range(256)) * 12   # 3,072 bytes: three fragments of 1,400


def fragments(src, sport, dst, dport, ip_id=4321, proto=UDP, ttl=63, **ip):
    """A 3 kB datagram in fragments of 1,400 bytes, as a sender's stack cuts it (same id, MF, offsets)."""
    return [bytes(f) for f in fragment(IP(src=src, dst=dst, id=ip_id, ttl=ttl, **ip) /
                                        proto(sport=sport, dport=dport) / Raw(BIG), fragsize=1400)]


def test_fragments_to_a_vip_in_order_are_all_translated(dp):
    program(dp, (VIP, 53, 17, [B], 0))
    sent = fragments(C_POD, 40000, VIP, 53)
    assert len(sent) == 3
    outs = []
    for frag in sent:
        verdict, out = run(dp, "from_workload", from_pod(IP(frag)))
        assert verdict == TC_ACT_NEXT
        outs.append(translated(out))
    # every byte as if the client had sent the datagram to B:5353 itself: the UDP checksum (in the
    # first fragment) over the whole datagram, each fragment's IP checksum, ids and offsets kept
    assert outs == fragments(C_POD, 40000, B, 5353)


def test_a_tcp_first_fragment_carries_the_translation_too(dp):
    program(dp, (VIP, 80, 6, [B], 0))
    first = from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=80, flags="S"))
    run(dp, "from_workload", first)
    outs = [translated(run(dp, "from_workload", from_pod(IP(f)))[1])
            for f in fragments(C_POD, 40000, VIP, 80, proto=TCP)]
    assert outs == fragments(C_POD, 40000, B, 8080, proto=TCP)


def test_a_later_fragment_before_its_first_is_dropped_then_the_datagram_goes_through(dp):
    program(dp, (VIP, 53, 17, [B], 0))
    first, second, third = fragments(C_POD, 40000, VIP, 53)
    before = drops(dp)
    assert run(dp, "from_workload", from_pod(IP(third)))[0] == 2   # TC_ACT_SHOT
    assert dropped_since(dp, before) == {"fragment-unknown": 1}
    expected = fragments(C_POD, 40000, B, 5353)
    # the sender's retransmission (or the first arriving late) makes the rest go through
    assert [translated(run(dp, "from_workload", from_pod(IP(f)))[1]) for f in (first, third, second)] == \
        [expected[0], expected[2], expected[1]]


def test_a_backends_fragmented_reply_is_reverse_nated_whole(dp):
    udp_service(dp)
    outs = [run(dp, "to_workload", to_pod(IP(f))) for f in fragments(B, 5353, C_POD, 40000, ip_id=999)]
    assert [v for v, _ in outs] == [TC_ACT_NEXT] * 3
    assert [translated(o) for _, o in outs] == fragments(VIP, 53, C_POD, 40000, ip_id=999)


def test_a_direct_datagram_reusing_a_translated_ones_ip_id_is_left_alone(dp):
    """B answers C through the service, then sends C a direct datagram from another port with the
    same IP id: its later fragments must not take the service's translation."""
    udp_service(dp)
    for f in fragments(B, 5353, C_POD, 40000, ip_id=7):
        run(dp, "to_workload", to_pod(IP(f)))
    program(dp, (VIP, 53, 17, [B], 0))   # (the flow stays)
    run(dp, "from_workload", from_pod(IP(udp(C_POD, 40001, B, 6000))))
    for f in fragments(B, 6000, C_POD, 40001, ip_id=7):
        pkt = to_pod(IP(f))
        assert run(dp, "to_workload", pkt) == (TC_ACT_NEXT, bytes(pkt))


def test_fragments_not_to_a_service_pass_untouched_in_any_order(dp):
    udp_service(dp)
    for prog in ("from_workload", "to_workload", "from_uplink", "to_uplink"):
        for f in reversed(fragments(C_POD, 41000, A0, 9999, ip_id=11)):
            pkt = from_pod(IP(f))
            assert run(dp, prog, pkt) == (TC_ACT_NEXT, bytes(pkt)), prog


def test_sctp_fragments_to_a_service_are_still_dropped(dp):
    from scapy.layers.sctp import SCTP
    program(dp, (VIP, 80, 132, [B], 0))
    before = drops(dp)
    for f in fragments(C_POD, 40000, VIP, 80, proto=SCTP):
        assert run(dp, "from_workload", from_pod(IP(f)))[0] == 2
    assert dropped_since(dp, before) == {"fragment-to-service": 3}


def test_uplink_fragments_snated_to_a_remote_backend_and_its_fragmented_reply(dp, routed):
    nodeport(dp, B, local=False)
    outs = [run_routed(dp, routed, "from_uplink", inbound(IP(f))) for f in fragments(CLIENT, 40000, NODE_ADDR, NODEPORT)]
    assert [v for v, _ in outs] == [TC_ACT_REDIRECT] * 3
    assert all(Ether(o).dst == NEXT_HOP_MAC for _, o in outs)
    snat_port = Ether(outs[0][1])[UDP].sport
    # forwarded past the stack: the TTL one lower, in every fragment
    assert [translated(o) for _, o in outs] == fragments(NODE_ADDR, snat_port, B, 5353, ttl=62)
    replies = [run_routed(dp, routed, "from_uplink", inbound(IP(f)))
               for f in fragments(B, 5353, NODE_ADDR, snat_port, ip_id=555)]
    assert [v for v, _ in replies] == [TC_ACT_REDIRECT] * 3
    assert [translated(o) for _, o in replies] == fragments(NODE_ADDR, NODEPORT, CLIENT, 40000, ip_id=555, ttl=62)


def test_uplink_local_backends_fragmented_reply_names_the_nodeport(dp):
    nodeport(dp, A0, local=True)
    for f in fragments(CLIENT, 40000, NODE_ADDR, NODEPORT):
        run(dp, "from_uplink", inbound(IP(f)))
    outs = [run(dp, "to_uplink", Ether() / IP(f)) for f in fragments(A0, 5353, CLIENT, 40000, ip_id=556)]
    assert [translated(o) for _, o in outs] == fragments(NODE_ADDR, NODEPORT, CLIENT, 40000, ip_id=556)


def test_xdp_leaves_every_fragment_to_tc(dp, routed):
    from ebpflb.datapath.libbpf import prog_test_run
    nodeport(dp, B, local=False)
    ns, index = routed
    for f in fragments(CLIENT, 40000, NODE_ADDR, NODEPORT):
        run_routed(dp, routed, "from_uplink", inbound(IP(f)))
    for f in fragments(CLIENT, 40000, NODE_ADDR, NODEPORT):
        pkt = bytes(inbound(IP(f)))
        with in_netns(ns):
            verdict, out, _ = prog_test_run(dp.fds["xdp_uplink"], pkt, ifindex=index, xdp=True)
        assert (verdict, out) == (2, pkt)   # XDP_PASS, untouched


def test_an_error_to_a_clusterip_about_no_flow_of_ours_is_dropped_as_before(dp):
    """A ClusterIP carries nothing but its ports: an error about a flow we do not know is not let
    through to it untranslated (a translated one is: test_clients_error_about_a_reply...)."""
    udp_service(dp)
    before = drops(dp)
    assert run(dp, "from_workload", from_pod(error(C_POD, VIP, udp(VIP, 53, C_POD, 40009))))[0] == 2
    assert dropped_since(dp, before) == {"not-l4-to-service": 1}


# --- what the uplink forwards past the stack (FIB redirect): the stack's MTU and TTL answers

def gso_run(dp, routed, pkt, mss):
    from ebpflb.datapath.libbpf import prog_test_run
    ns, index = routed
    segs = -(-len(Ether(bytes(pkt))[Raw].load) // mss)
    with in_netns(ns):
        retval, out, _ = prog_test_run(dp.fds["from_uplink"], bytes(pkt), ifindex=index, gso_size=mss, gso_segs=segs)
    return retval, out


def tcp_nodeport(dp, routed, backend=B, local=False):
    MapWriter(dp.maps).apply(DesiredState(
        frontends={FrontendKey(NODE_ADDR, NODEPORT, 6): Frontend(1, 1, int(local), EXT)},
        backends={1: (Backend(backend, 8080),)}))
    verdict, out = run_routed(dp, routed, "from_uplink",
                              inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=40000, dport=NODEPORT, flags="S")))
    assert verdict == TC_ACT_REDIRECT
    # The client's ACK, through tc (XDP forwards a TCP flow only once it has it).
    run_routed(dp, routed, "from_uplink", inbound(IP(src=CLIENT, dst=NODE_ADDR) /
                                                  TCP(sport=40000, dport=NODEPORT, flags="A")))
    return Ether(out)[TCP].sport


def big_segment(src, dst, sport, dport, size=3000, **ip):
    return IP(src=src, dst=dst, id=9, ttl=60, **ip) / TCP(sport=sport, dport=dport, flags="A", seq=8) / Raw(b"d" * size)


@pytest.mark.parametrize("direction", ["client-to-backend", "backend-to-client"])
def test_too_big_with_df_gets_frag_needed_with_the_egress_mtu_quoting_what_was_sent(dp, routed, direction):
    """Path MTU discovery through a NodePort SNATed to another node: what the stack's forwarding
    would answer, from the address the sender sent to, quoting its packet as it sent it."""
    snat_port = tcp_nodeport(dp, routed)
    if direction == "client-to-backend":
        sent = big_segment(CLIENT, NODE_ADDR, 40000, NODEPORT, flags="DF")
    else:
        sent = big_segment(B, NODE_ADDR, 8080, snat_port, flags="DF")
    before = drops(dp)
    verdict, out = run_routed(dp, routed, "from_uplink", inbound(sent))
    assert verdict == TC_ACT_REDIRECT and dropped_since(dp, before) == {}
    assert (Ether(out).src, Ether(out).dst) == (NODE_MAC, ROUTER_MAC)   # back the way it came
    expected = IP(src=NODE_ADDR, dst=sent[IP].src, id=0, ttl=64) / ICMP(type=3, code=4, nexthopmtu=1500) / \
        Raw(bytes(sent)[:20 + 8])
    assert translated(out) == bytes(expected)


def udp_snat_flow(dp, routed):
    """An outside client's UDP flow to the NodePort, SNATed to B on another node: its SNAT port."""
    nodeport(dp, B, local=False)
    verdict, out = run_routed(dp, routed, "from_uplink", inbound(IP(udp(CLIENT, 40000, NODE_ADDR, NODEPORT))))
    assert verdict == TC_ACT_REDIRECT
    return Ether(out)[UDP].sport


def as_the_stack_cuts(l3: bytes, fragsize=1400):
    """What the stack's forwarding sends on for a packet too big for its egress: the TTL one lower,
    cut into fragments (same id, MF, offsets), checksums computed whole."""
    pkt = IP(l3)
    pkt.ttl -= 1
    del pkt.chksum
    return [bytes(f) for f in fragment(IP(bytes(pkt)), fragsize=fragsize)]


@pytest.mark.parametrize("direction", ["client-to-backend", "backend-to-client"])
def test_too_big_without_df_goes_to_the_stack_to_fragment_and_leaves_snated(dp, routed, direction):
    """The stack fragments what is too big for the egress without DF, as its forwarding does for any
    packet; it refuses one from our own SNAT address, so it gets it with only the destination
    translated, and to_uplink puts the source NAT on every fragment it cut (the first: address,
    port and the UDP checksum over the datagram; the later ones: address and IP checksum)."""
    snat_port = udp_snat_flow(dp, routed)
    if direction == "client-to-backend":
        sent, handed, leaves = (udp(CLIENT, 40000, NODE_ADDR, NODEPORT, BIG), udp(CLIENT, 40000, B, 5353, BIG),
                                udp(NODE_ADDR, snat_port, B, 5353, BIG))
    else:
        sent, handed, leaves = (udp(B, 5353, NODE_ADDR, snat_port, BIG), udp(B, 5353, CLIENT, 40000, BIG),
                                udp(NODE_ADDR, NODEPORT, CLIENT, 40000, BIG))
    before = drops(dp)
    pkt = inbound(IP(sent))
    verdict, out = run_routed(dp, routed, "from_uplink", pkt)
    # to the stack: MACs and TTL as they came (the stack routes it and takes the hop)
    assert verdict == TC_ACT_NEXT and dropped_since(dp, before) == {}
    assert Ether(out).src == ROUTER_MAC and translated(out) == handed
    cut = as_the_stack_cuts(handed)
    assert len(cut) == 3
    outs = [run_routed(dp, routed, "to_uplink", Ether(src=NODE_MAC, dst=NEXT_HOP_MAC) / IP(f)) for f in cut]
    assert [v for v, _ in outs] == [TC_ACT_NEXT] * 3
    assert [translated(o) for _, o in outs] == as_the_stack_cuts(leaves)


def test_too_big_fragments_without_df_go_to_the_stack_too(dp, routed):
    """A datagram that comes already in fragments larger than the egress (a jumbo-frame client): the
    fragments too big go to the stack, the first and the later ones alike, and leave SNATed; one
    that fits goes on by FIB as before."""
    snat_port = udp_snat_flow(dp, routed)
    big = BIG * 2   # 6 kB in fragments of 2,400 bytes: two too big for the 1,500-byte egress
    sent = [bytes(f) for f in fragment(IP(udp(CLIENT, 40000, NODE_ADDR, NODEPORT, big)), fragsize=2400)]
    handed = [bytes(f) for f in fragment(IP(udp(CLIENT, 40000, B, 5353, big)), fragsize=2400)]
    leaves = [bytes(f) for f in fragment(IP(udp(NODE_ADDR, snat_port, B, 5353, big)), fragsize=2400)]
    outs = [run_routed(dp, routed, "from_uplink", inbound(IP(f))) for f in sent]
    assert [v for v, _ in outs] == [TC_ACT_NEXT, TC_ACT_NEXT, TC_ACT_REDIRECT]
    assert [translated(o) for _, o in outs[:2]] == handed[:2]
    assert translated(outs[2][1]) == as_the_stack_cuts(leaves[2], fragsize=2400)[0]   # by FIB: one hop
    cut = [piece for f in handed[:2] for piece in as_the_stack_cuts(f)]
    outs = [run_routed(dp, routed, "to_uplink", Ether(src=NODE_MAC, dst=NEXT_HOP_MAC) / IP(f)) for f in cut]
    assert [translated(o) for _, o in outs] == [piece for f in leaves[:2] for piece in as_the_stack_cuts(f)]


def test_a_too_big_gso_packet_without_df_is_still_dropped_and_counted(dp, routed):
    """The stack would cut it into segments first, each with an IP id of its own: to_uplink could not
    tell their fragments, so it is not handed up."""
    tcp_nodeport(dp, routed)
    before = drops(dp)
    assert gso_run(dp, routed, inbound(big_segment(CLIENT, NODE_ADDR, 40000, NODEPORT)), 2000)[0] == 2
    assert dropped_since(dp, before) == {"frag-needed": 1}


def test_fragments_the_stack_cuts_from_other_packets_leave_untouched(dp, routed):
    """Only the datagrams from_uplink handed up get a source NAT at to_uplink: the same addresses
    with another IP id, or a pod's, pass as they are."""
    udp_snat_flow(dp, routed)
    run_routed(dp, routed, "from_uplink", inbound(IP(udp(CLIENT, 40000, NODE_ADDR, NODEPORT, BIG))))
    for other in (IP(src=CLIENT, dst=B, id=78) / UDP(sport=40000, dport=5353) / Raw(BIG),
                  IP(udp(C_POD, 40000, B, 5353, BIG))):
        for f in fragment(other, fragsize=1400):
            pkt = Ether(src=NODE_MAC, dst=NEXT_HOP_MAC) / IP(bytes(f))
            assert run_routed(dp, routed, "to_uplink", pkt) == (TC_ACT_NEXT, bytes(pkt))


def test_a_gso_packet_is_checked_by_its_segments(dp, routed):
    """3 KB in one skb of 1,448-byte segments fits a 1,500-byte egress; of 2,000-byte ones it does
    not, and with DF (TCP's) its sender hears so."""
    snat_port = tcp_nodeport(dp, routed)
    pkt = inbound(big_segment(CLIENT, NODE_ADDR, 40000, NODEPORT, flags="DF"))
    verdict, out = gso_run(dp, routed, pkt, 1448)
    assert verdict == TC_ACT_REDIRECT and Ether(out)[IP].dst == B and Ether(out)[TCP].sport == snat_port
    verdict, out = gso_run(dp, routed, pkt, 2000)
    assert verdict == TC_ACT_REDIRECT and (Ether(out)[ICMP].type, Ether(out)[ICMP].code) == (3, 4)
    assert Ether(out)[IP].dst == CLIENT


def test_the_ttl_is_decremented_and_time_exceeded_answered_at_one(dp, routed):
    snat_port = tcp_nodeport(dp, routed)
    for ttl in (64, 2):
        sent = IP(src=CLIENT, dst=NODE_ADDR, id=9, ttl=ttl) / TCP(sport=40000, dport=NODEPORT, flags="A")
        verdict, out = run_routed(dp, routed, "from_uplink", inbound(sent))
        assert verdict == TC_ACT_REDIRECT
        assert translated(out) == bytes(IP(src=NODE_ADDR, dst=B, id=9, ttl=ttl - 1) /
                                        TCP(sport=snat_port, dport=8080, flags="A"))
    for ttl in (1, 0):
        sent = IP(src=CLIENT, dst=NODE_ADDR, id=9, ttl=ttl) / TCP(sport=40000, dport=NODEPORT, flags="A")
        verdict, out = run_routed(dp, routed, "from_uplink", inbound(sent))
        assert verdict == TC_ACT_REDIRECT
        assert translated(out) == bytes(IP(src=NODE_ADDR, dst=CLIENT, id=0, ttl=64) / ICMP(type=11, code=0) /
                                        Raw(bytes(sent)[:28]))
    # no time exceeded to a source that is not one host: dropped, counted
    sent = IP(src="224.0.0.9", dst=NODE_ADDR, ttl=1) / TCP(sport=40000, dport=NODEPORT, flags="A")
    before = drops(dp)
    assert run_routed(dp, routed, "from_uplink", inbound(sent))[0] == 2
    assert dropped_since(dp, before) == {"ttl-exceeded": 1}


def test_xdp_decrements_the_ttl_too_and_leaves_ttl_one_to_tc(dp, routed):
    from ebpflb.datapath.libbpf import prog_test_run
    tcp_nodeport(dp, routed)
    ns, index = routed
    for ttl, wanted in ((64, 3), (1, 2)):   # XDP_TX, XDP_PASS
        pkt = bytes(inbound(IP(src=CLIENT, dst=NODE_ADDR, ttl=ttl) / TCP(sport=40000, dport=NODEPORT, flags="A")))
        with in_netns(ns):
            verdict, out, _ = prog_test_run(dp.fds["xdp_uplink"], pkt, ifindex=index, xdp=True)
        assert verdict == wanted
        if verdict == 3:
            assert out == run_routed(dp, routed, "from_uplink", pkt)[1] and Ether(out)[IP].ttl == 63
        else:
            assert out == pkt


# --- the ICMP errors the programs send, rate limited node-wide (--icmp-rate, --icmp-burst)

@pytest.fixture
def icmp_limit(dp):
    """set(rate, burst): the config as the agent writes it, the bucket as new; defaults again after."""
    from ebpflb.datapath.structs import ffi

    def set_limit(rate, burst):
        dp.write_config(node_addr=NODE_ADDR, icmp_rate=rate, icmp_burst=burst)
        dp.maps.icmp_bucket.update(ffi.new("__u32 *", 0), ffi.new("struct icmp_bucket *"))
    yield set_limit
    set_limit(C.ICMP_RATE_DEFAULT, C.ICMP_BURST_DEFAULT)


def reject_some(dp, n):
    """n packets to a port of a service address that no service uses: each one's answer is ICMP."""
    return [run(dp, "from_workload", from_pod(IP(udp(C_POD, 41000 + i, VIP, 9999))))[0] for i in range(n)]


def test_icmp_errors_beyond_the_burst_are_dropped_and_counted(dp, icmp_limit):
    program(dp, (VIP, 53, 17, [B], 0))
    icmp_limit(0, 3)   # the burst once, never refilled: no clock in the outcome
    before = drops(dp)
    assert reject_some(dp, 5) == [TC_ACT_REDIRECT] * 3 + [2] * 2
    assert dropped_since(dp, before) == {"icmp-rate-limited": 2}


def test_the_bucket_refills_at_the_rate(dp, icmp_limit):
    import time
    program(dp, (VIP, 53, 17, [B], 0))
    icmp_limit(1000, 2)
    assert reject_some(dp, 2) == [TC_ACT_REDIRECT] * 2   # the burst: the bucket is empty now
    time.sleep(0.05)   # 50 ms at 1,000 a second: full again, never more than the burst
    assert reject_some(dp, 3)[:2] == [TC_ACT_REDIRECT] * 2


def test_frag_needed_and_time_exceeded_are_limited_too(dp, routed, icmp_limit):
    tcp_nodeport(dp, routed)
    icmp_limit(0, 1)
    too_big = inbound(big_segment(CLIENT, NODE_ADDR, 40000, NODEPORT, flags="DF"))
    last_hop = inbound(IP(src=CLIENT, dst=NODE_ADDR, ttl=1) / TCP(sport=40000, dport=NODEPORT, flags="A"))
    before = drops(dp)
    assert run_routed(dp, routed, "from_uplink", too_big)[0] == TC_ACT_REDIRECT
    assert run_routed(dp, routed, "from_uplink", last_hop)[0] == 2
    assert run_routed(dp, routed, "from_uplink", too_big)[0] == 2
    assert dropped_since(dp, before) == {"icmp-rate-limited": 2}


# --- every redirect past the stack's forwarding takes one hop: the TTL one lower, time exceeded at 1
# (bpf/forward.h, one helper for the uplink's FIB redirect above and the hairpin's straight back)

def time_exceeded(frm, sent):
    """What the programs answer a packet arriving with TTL <= 1: from the address it was sent to,
    quoting it as it was sent."""
    sent = bytes(sent)
    return bytes(IP(src=frm, dst=IP(sent).src, id=0, ttl=64) / ICMP(type=11, code=0) / Raw(sent[:28]))


def hairpin_flow(dp):
    """A0 reaches its own service VIP:53 and lands on itself: SNATed to the hairpin address."""
    program(dp, (VIP, 53, 17, [A0], 0))
    verdict, out = run(dp, "from_workload", from_pod(IP(udp(A0, 40000, VIP, 53))))
    assert verdict == TC_ACT_REDIRECT


@pytest.mark.parametrize("packet", ["first", "established", "reply"])
def test_hairpin_takes_one_hop_and_answers_time_exceeded_at_one(dp, packet):
    """The hairpin sends straight back out of the pod's veth, past the stack's forwarding, which
    would have taken one from the TTL and answered the last hop: so does the program."""
    program(dp, (VIP, 53, 17, [A0], 0))
    if packet != "first":
        run(dp, "from_workload", from_pod(IP(udp(A0, 40000, VIP, 53))))
    if packet == "reply":   # A0 as the backend answers the hairpin address
        sent, leaves, frm = (lambda ttl: udp(A0, 5353, HAIRPIN, 40000, ttl=ttl)), \
            (lambda ttl: udp(VIP, 53, A0, 40000, ttl=ttl)), HAIRPIN
    else:
        sent, leaves, frm = (lambda ttl: udp(A0, 40000, VIP, 53, ttl=ttl)), \
            (lambda ttl: udp(HAIRPIN, 40000, A0, 5353, ttl=ttl)), VIP
    for ttl in (64, 2):
        verdict, out = run(dp, "from_workload", from_pod(IP(sent(ttl))))
        assert verdict == TC_ACT_REDIRECT and translated(out) == leaves(ttl - 1)
    for ttl in (1, 0):
        before = drops(dp)
        verdict, out = run(dp, "from_workload", from_pod(IP(sent(ttl))))
        assert verdict == TC_ACT_REDIRECT and translated(out) == time_exceeded(frm, sent(ttl))
        assert Ether(out).dst == POD_MAC and dropped_since(dp, before) == {}
    # none to a source that names no single host: dropped, counted
    program(dp, (VIP, 53, 17, ["224.0.0.9"], 0))
    before = drops(dp)
    assert run(dp, "from_workload", from_pod(IP(udp("224.0.0.9", 40000, VIP, 53, ttl=1))))[0] == 2
    assert dropped_since(dp, before) == {"ttl-exceeded": 1}


def test_hairpin_errors_and_later_fragments_take_one_hop_and_go_no_further_at_one(dp):
    """No ICMP error is about an ICMP error or a later fragment (RFC 1812 4.3.2.7): at TTL 1 they are
    dropped and counted; otherwise they leave one hop older, as the flow's own packets."""
    hairpin_flow(dp)
    err = lambda ttl: error(A0, HAIRPIN, udp(HAIRPIN, 40000, A0, 5353), ttl=ttl)   # noqa: E731
    verdict, out = run(dp, "from_workload", from_pod(err(9)))
    assert verdict == TC_ACT_REDIRECT and IP(translated(out)).ttl == 8
    first, *later = fragments(A0, 40000, VIP, 53, ttl=9)
    run(dp, "from_workload", from_pod(IP(first)))
    verdict, out = run(dp, "from_workload", from_pod(IP(later[0])))
    assert verdict == TC_ACT_REDIRECT
    assert translated(out) == fragments(HAIRPIN, 40000, A0, 5353, ttl=8)[1]
    before = drops(dp)
    assert run(dp, "from_workload", from_pod(err(1)))[0] == 2
    assert run(dp, "from_workload", from_pod(IP(fragments(A0, 40000, VIP, 53, ttl=1)[1])))[0] == 2
    assert dropped_since(dp, before) == {"ttl-exceeded": 2}


def test_uplink_errors_and_later_fragments_go_no_further_at_one(dp, routed):
    """The uplink's FIB path: the same helper, the same rule (the flow's own packets: above)."""
    snat_port = udp_snat_flow(dp, routed)
    before = drops(dp)
    got = inbound(error(B, NODE_ADDR, udp(NODE_ADDR, snat_port, B, 5353), UNREACH, 3, ttl=1))
    assert run_routed(dp, routed, "from_uplink", got)[0] == 2
    first, second, _ = fragments(CLIENT, 40000, NODE_ADDR, NODEPORT, ttl=1)
    run_routed(dp, routed, "from_uplink", inbound(IP(first)))   # its time exceeded
    assert run_routed(dp, routed, "from_uplink", inbound(IP(second)))[0] == 2
    assert dropped_since(dp, before) == {"ttl-exceeded": 2}
