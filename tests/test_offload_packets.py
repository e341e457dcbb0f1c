"""Packets as a real node's programs get them (issue 14, items 1 and 5): GSO super-packets (a TSO
sender's, or GRO's on the uplink) through every path that rewrites or redirects, a packet really
too big for the egress, and the verdict that lets the next tc filter see what ebpflb lets go on.

The test-run API makes an skb GSO from __sk_buff's gso_size and gso_segs; it cannot set the
checksum state (CHECKSUM_PARTIAL), so the lab (tests/test_lab_node.py) sends those, with real
offloads."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath.libbpf import prog_test_run
from ebpflb.datapath.structs import C
from ebpflb.sync.writer import MapWriter
from tests.conftest import NODE_ADDR, loaded_both_ways
from tests.lab import in_netns
from tests.test_datapath_packets import (A0, B, C_POD, HAIRPIN, LO, SYN, TC_ACT_NEXT, TC_ACT_REDIRECT, TC_ACT_SHOT,
                                         VIP, checksums_valid, dropped_since, drops, from_pod,
                                         program as program_services, run, to_pod)
from tests.test_uplink_packets import (CLIENT, EXT, NODEPORT, XDP_PASS, inbound, program, routed,  # noqa: F401
                                       run_routed, run_xdp, syn)

loaded = loaded_both_ways

MSS = 1448
PAYLOAD = 2 * MSS + 100      # three segments' worth, in one skb of ~3 KB (a test run takes up to a page)


def run_gso(dp, prog, pkt, ifindex=LO, routed_ns=None):
    """One test run of a GSO skb holding pkt's payload for len(payload) / MSS segments."""
    frame = bytes(pkt)
    segs = -(-len(Ether(frame)[Raw].load) // MSS)
    if routed_ns:
        with in_netns(routed_ns):
            retval, out, _ = prog_test_run(dp.fds[prog], frame, ifindex=ifindex, gso_size=MSS, gso_segs=segs)
    else:
        retval, out, _ = prog_test_run(dp.fds[prog], frame, ifindex=ifindex, gso_size=MSS, gso_segs=segs)
    return retval, out


def data(l3_src, l3_dst, sport, dport, flags="A"):
    return IP(src=l3_src, dst=l3_dst) / TCP(sport=sport, dport=dport, flags=flags, seq=8) / Raw(b"d" * PAYLOAD)


def snat_port_of(dp, routed):
    """X's connection through the NodePort, to its client's ACK (through tc: XDP forwards a TCP flow
    only once it has that ACK): its SNAT port."""
    verdict, out = run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))
    assert verdict == TC_ACT_REDIRECT
    ack = inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=40000, dport=NODEPORT, flags="A"))
    assert run_routed(dp, routed, "from_uplink", ack)[0] == TC_ACT_REDIRECT
    return Ether(out)[TCP].sport


def uplink_snat_forward(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    snat_port = snat_port_of(dp, routed)
    return ("from_uplink", inbound(data(CLIENT, NODE_ADDR, 40000, NODEPORT)), True,
            TC_ACT_REDIRECT, (NODE_ADDR, snat_port, B, 8080))


def uplink_snat_reply(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    snat_port = snat_port_of(dp, routed)
    return ("from_uplink", inbound(data(B, NODE_ADDR, 8080, snat_port)), True,
            TC_ACT_REDIRECT, (NODE_ADDR, NODEPORT, CLIENT, 40000))


def uplink_local_forward(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [A0], local=1)
    run(dp, "from_uplink", syn(CLIENT, NODE_ADDR))
    return ("from_uplink", inbound(data(CLIENT, NODE_ADDR, 40000, NODEPORT)), False,
            TC_ACT_NEXT, (CLIENT, 40000, A0, 8080))


def uplink_local_reply(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [A0], local=1)
    run(dp, "from_uplink", syn(CLIENT, NODE_ADDR))
    return ("to_uplink", Ether() / data(A0, CLIENT, 8080, 40000), False,
            TC_ACT_NEXT, (NODE_ADDR, NODEPORT, CLIENT, 40000))


def pod_forward(dp, routed):
    program_services(dp, (VIP, 8080, 6, [B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    return ("from_workload", from_pod(data(C_POD, VIP, 40000, 8080)), False, TC_ACT_NEXT, (C_POD, 40000, B, 8080))


def pod_reply(dp, routed):
    program_services(dp, (VIP, 8080, 6, [B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    return ("to_workload", to_pod(data(B, C_POD, 8080, 40000)), False, TC_ACT_NEXT, (VIP, 8080, C_POD, 40000))


def hairpin(dp, routed):
    program_services(dp, (VIP, 8080, 6, [A0], 0))
    run(dp, "from_workload", from_pod(IP(src=A0, dst=VIP) / TCP(**SYN)))
    return ("from_workload", from_pod(data(A0, VIP, 40000, 8080)), False, TC_ACT_REDIRECT, (HAIRPIN, 40000, A0, 8080))


def uplink_reject(dp, routed):
    """No endpoints: the super-packet becomes one ICMP port unreachable (its GSO state reset)."""
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [])
    return ("from_uplink", inbound(data(CLIENT, NODE_ADDR, 40000, NODEPORT)), True, TC_ACT_REDIRECT, "icmp")


PATHS = {"uplink SNAT forward": uplink_snat_forward, "uplink SNAT reply": uplink_snat_reply,
         "uplink local forward": uplink_local_forward, "uplink local reply": uplink_local_reply,
         "pod DNAT": pod_forward, "pod reverse NAT": pod_reply, "hairpin": hairpin, "uplink reject": uplink_reject}


@pytest.mark.parametrize("path", PATHS)
def test_gso_super_packets_are_translated_and_sent_on_by_every_path(dp, routed, path):
    """A GSO skb of three segments, on an established flow: translated as one (the stack or the
    NIC cuts it up afterwards) and sent on, never dropped. The egress MTU (1500) is below the
    skb's length: only a GSO-aware check lets it through."""
    prog, pkt, by_fib, verdict_wanted, wanted = PATHS[path](dp, routed)
    before = drops(dp)
    verdict, out = run_gso(dp, prog, pkt, ifindex=routed[1] if by_fib else LO,
                           routed_ns=routed[0] if by_fib else None)
    assert dropped_since(dp, before) == {}
    assert verdict == verdict_wanted
    got = Ether(out)
    if wanted == "icmp":
        assert (got[IP].dst, got[ICMP].type, got[ICMP].code) == (CLIENT, 3, 3) and checksums_valid(out)
        assert len(out) == 14 + 20 + 8 + 20 + 8
        return
    assert (got[IP].src, got[TCP].sport, got[IP].dst, got[TCP].dport) == wanted
    assert len(out) == len(bytes(pkt)) and checksums_valid(out)


def test_a_packet_really_too_big_for_the_egress_goes_to_the_stack_to_fragment_never_silently_lost(dp, routed):
    """Not GSO, 3 KB without DF, towards a 1500-byte link: the stack fragments it (its destination
    translated, its source not: test_icmp_frag_packets.py follows the fragments). XDP leaves it to
    tc, untouched."""
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    snat_port_of(dp, routed)
    pkt = inbound(data(CLIENT, NODE_ADDR, 40000, NODEPORT))
    assert run_xdp(dp, routed, pkt) == (XDP_PASS, bytes(pkt))
    before = drops(dp)
    verdict, out = run_routed(dp, routed, "from_uplink", pkt)
    assert verdict == TC_ACT_NEXT and dropped_since(dp, before) == {}
    got = Ether(out)
    assert (got[IP].src, got[TCP].sport, got[IP].dst, got[TCP].dport) == (CLIENT, 40000, B, 8080)
    assert checksums_valid(out)


# --- chaining: the next filter sees what ebpflb lets go on

def passed_on_cases(dp):
    """(program, packet, translated?) for packets each tc program lets go on."""
    program_services(dp, (VIP, 8080, 6, [B], 0), (VIP, 5353, 17, [B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    return [
        ("from_workload", from_pod(IP(src=C_POD, dst=A0) / TCP(sport=1, dport=8080, flags="S")), False),
        ("from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=8080, flags="A")), True),
        ("from_workload", from_pod(IP(src=C_POD, dst=VIP) / UDP(sport=5000, dport=5353) / Raw(b"q")), True),
        ("from_workload", Ether(type=0x86dd) / Raw(b"\x60" + bytes(60)), False),
        ("to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA")), True),
        ("to_workload", to_pod(IP(src=A0, dst=C_POD) / TCP(sport=8080, dport=1, flags="SA")), False),
        ("from_uplink", inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=1, dport=22, flags="S")), False),
        ("to_uplink", Ether() / IP(src=NODE_ADDR, dst=CLIENT) / TCP(sport=22, dport=1, flags="SA"), False),
    ]


def test_what_the_programs_let_go_on_is_left_to_the_next_filter(dp):
    """TC_ACT_UNSPEC, not TC_ACT_OK: with cls_bpf in direct-action mode TC_ACT_OK ends the hook's
    filter list, and a CNI's policy program or a monitoring tool behind ebpflb would never see the
    packet. Translated or not, what is not dropped or redirected goes on."""
    for prog, pkt, translated in passed_on_cases(dp):
        verdict, out = run(dp, prog, pkt)
        assert verdict == TC_ACT_NEXT, (prog, pkt.summary())
        assert (out != bytes(pkt)) == translated, (prog, pkt.summary())


def with_partial_checksum(frame: bytes) -> bytes:
    """The frame as a CHECKSUM_PARTIAL skb carries it: the TCP checksum field holds only the
    pseudo-header's sum (the rest is left to offload)."""
    ip = frame[14:34]
    l4_len = int.from_bytes(ip[2:4], "big") - 20
    words = [int.from_bytes(ip[i:i + 2], "big") for i in (12, 14, 16, 18)] + [6, l4_len]
    total = sum(words)
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    out = bytearray(frame)
    out[50:52] = total.to_bytes(2, "big")
    return bytes(out)


def test_xdp_leaves_a_frame_whose_checksum_is_left_to_offload_to_tc(dp, routed):
    """A veth uplink's peer sends what its stack left to checksum offload (CHECKSUM_PARTIAL: the
    field holds the pseudo-header sum); XDP cannot see that state and fixed it as a whole checksum,
    which the backend then refused: the lab's 2 MB echo through XDP stalled. Such a frame is tc's."""
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    snat_port_of(dp, routed)
    frame = with_partial_checksum(bytes(inbound(IP(src=CLIENT, dst=NODE_ADDR) /
                                                TCP(sport=40000, dport=NODEPORT, flags="A") / Raw(b"GET"))))
    assert run_xdp(dp, routed, frame) == (XDP_PASS, frame)
    whole = bytes(inbound(IP(src=CLIENT, dst=NODE_ADDR) / TCP(sport=40000, dport=NODEPORT, flags="A") / Raw(b"GET")))
    assert run_xdp(dp, routed, whole)[0] != XDP_PASS          # a whole checksum is XDP's to finish
