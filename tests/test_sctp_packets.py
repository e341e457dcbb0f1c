"""SCTP through the real programs (BPF_PROG_TEST_RUN): served like TCP and UDP, to ClusterIPs from
pods and to NodePorts from outside (tc and XDP). Its CRC32c covers no pseudo-header: a new address
leaves it valid, a new port is folded into it (bpf/sctp.h), keeping a wrong one exactly as wrong."""
import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkData, SCTPChunkInit, SCTPChunkInitAck
from scapy.packet import Raw

from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath.sctp_crc import crc32c
from ebpflb.datapath.structs import C, ip_str
from ebpflb.sync.writer import MapWriter
from tests.conftest import NODE_ADDR, loaded_both_ways
from tests.test_datapath_packets import (TC_ACT_NEXT, TC_ACT_REDIRECT, VIP, VIP_EMPTY, ct_entries, from_pod, run,
                                         to_pod)
from tests.test_uplink_packets import (CLIENT, NEXT_HOP_MAC, NODE_MAC, NODEPORT, ROUTER_MAC, XDP_PASS, XDP_TX, inbound,
                                       routed, run_routed, run_xdp)  # noqa: F401 (fixture)

loaded = loaded_both_ways   # both ways of fixing checksums (conftest.CSUM_MODES)

SCTP_PROTO = 132
B, C_POD = "10.200.1.2", "10.200.2.2"
SERVICE_PORT, TARGET_PORT, SAME_PORT = 9000, 9001, 7000


def program(dp, backends=(B,), external=False):
    """VIP:9000/SCTP -> backends:9001, VIP:7000/SCTP -> backends:7000 (the port kept), VIP_EMPTY:9000
    without endpoints; with `external`, NodePort 30080/SCTP on the node's address -> VIP:9000's."""
    frontends = {FrontendKey(VIP, SERVICE_PORT, SCTP_PROTO): Frontend(1, len(backends), 0, 0),
                 FrontendKey(VIP, SAME_PORT, SCTP_PROTO): Frontend(2, len(backends), 0, 0),
                 FrontendKey(VIP_EMPTY, SERVICE_PORT, SCTP_PROTO): Frontend(3, 0, 0, 0)}
    if external:
        frontends[FrontendKey(NODE_ADDR, NODEPORT, SCTP_PROTO)] = Frontend(1, len(backends), 0, C.NAT_FLG_EXTERNAL)
    MapWriter(dp.maps).apply(DesiredState(
        frontends=frontends, service_ips=frozenset([VIP, VIP_EMPTY]),
        backends={1: tuple(Backend(b, TARGET_PORT) for b in backends),
                  2: tuple(Backend(b, SAME_PORT) for b in backends), 3: ()}))


def crc_of(frame: bytes) -> tuple[int, int]:
    """(the CRC32c field, the CRC32c the SCTP packet's bytes call for) of an Ethernet/IPv4/SCTP frame."""
    ihl = (frame[14] & 15) * 4
    tot = int.from_bytes(frame[16:18], "big")
    sctp = bytearray(frame[14 + ihl:14 + tot])
    field = int.from_bytes(sctp[8:12], "little")
    sctp[8:12] = bytes(4)
    return field, crc32c(bytes(sctp))


def crc_valid(frame: bytes) -> bool:
    field, wanted = crc_of(frame)
    return field == wanted


CHUNKS = {
    "init": SCTPChunkInit(init_tag=0x1234, n_in_streams=1, n_out_streams=1),
    "header-only": Raw(b""),
    "data-1-byte": SCTPChunkData(tsn=1, data=b"x"),
    "data-odd": SCTPChunkData(tsn=2, data=b"y" * 301),
    "data-mtu": SCTPChunkData(tsn=3, data=bytes(range(256)) * 5 + b"z" * 164),
}


@pytest.mark.parametrize("chunk", CHUNKS.values(), ids=CHUNKS.keys())
def test_a_pods_sctp_to_a_cluster_ip_is_dnated_with_its_crc_made_to_match_the_new_port(dp, chunk):
    program(dp)
    pkt = from_pod(IP(src=C_POD, dst=VIP) / SCTP(sport=40000, dport=SERVICE_PORT, tag=7) / chunk)
    assert crc_valid(bytes(pkt))
    verdict, out = run(dp, "from_workload", pkt)
    assert verdict == TC_ACT_NEXT
    sent = Ether(out)
    assert (sent[IP].dst, sent[SCTP].sport, sent[SCTP].dport, sent[SCTP].tag) == (B, 40000, TARGET_PORT, 7)
    assert crc_valid(out) and crc_of(out)[0] != crc_of(bytes(pkt))[0]
    assert bytes(sent[SCTP].payload) == bytes(pkt[SCTP].payload)
    fwd = ct_entries(dp)[(C_POD, 40000, VIP, SERVICE_PORT, SCTP_PROTO)]
    assert (fwd.type, ip_str(fwd.nat_addr)) == (C.CT_TYPE_NAT_FWD, B)


def test_the_backends_answer_is_reverse_nated_to_the_service_with_a_valid_crc(dp):
    program(dp)
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / SCTP(sport=40000, dport=SERVICE_PORT) / CHUNKS["init"]))
    answer = to_pod(IP(src=B, dst=C_POD) / SCTP(sport=TARGET_PORT, dport=40000, tag=0x1234) /
                    SCTPChunkInitAck(init_tag=0x4321))
    verdict, out = run(dp, "to_workload", answer)
    assert verdict == TC_ACT_NEXT
    assert (Ether(out)[IP].src, Ether(out)[SCTP].sport) == (VIP, SERVICE_PORT) and crc_valid(out)
    # and the client's next packet follows the flow
    _, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / SCTP(sport=40000, dport=SERVICE_PORT, tag=0x4321) /
                                               CHUNKS["data-odd"]))
    assert (Ether(out)[IP].dst, Ether(out)[SCTP].dport) == (B, TARGET_PORT) and crc_valid(out)


def test_an_address_only_translation_leaves_the_crc_as_it_was(dp):
    program(dp)
    pkt = from_pod(IP(src=C_POD, dst=VIP) / SCTP(sport=40000, dport=SAME_PORT) / CHUNKS["data-odd"])
    _, out = run(dp, "from_workload", pkt)
    assert Ether(out)[IP].dst == B and out[34:] == bytes(pkt)[34:]   # the SCTP packet byte for byte


def test_a_wrong_crc_stays_exactly_as_wrong(dp):
    program(dp)
    raw = bytearray(bytes(from_pod(IP(src=C_POD, dst=VIP) / SCTP(sport=40000, dport=SERVICE_PORT) / CHUNKS["data-odd"])))
    raw[34 + 8] ^= 0x5a
    field, wanted = crc_of(bytes(raw))
    _, out = run(dp, "from_workload", bytes(raw))
    out_field, out_wanted = crc_of(out)
    assert Ether(out)[SCTP].dport == TARGET_PORT and out_field ^ out_wanted == field ^ wanted != 0


def test_a_crc_of_zero_is_left_for_the_stack_to_compute(dp):
    """How Linux's SCTP hands down a packet whose CRC the stack or the NIC computes on its way out."""
    program(dp)
    raw = bytearray(bytes(from_pod(IP(src=C_POD, dst=VIP) / SCTP(sport=40000, dport=SERVICE_PORT) / CHUNKS["init"])))
    raw[34 + 8:34 + 12] = bytes(4)
    _, out = run(dp, "from_workload", bytes(raw))
    assert Ether(out)[SCTP].dport == TARGET_PORT and out[34 + 8:34 + 12] == bytes(4)


def test_a_service_without_endpoints_answers_port_unreachable(dp):
    program(dp)
    original = IP(src=C_POD, dst=VIP_EMPTY, id=5) / SCTP(sport=40000, dport=SERVICE_PORT) / CHUNKS["init"]
    verdict, out = run(dp, "from_workload", from_pod(original))
    assert verdict == TC_ACT_REDIRECT
    icmp = Ether(out)
    assert (icmp[IP].src, icmp[IP].dst, icmp[ICMP].type, icmp[ICMP].code) == (VIP_EMPTY, C_POD, 3, 3)


def test_a_truncated_sctp_header_to_a_service_passes_untouched(dp):
    program(dp)
    pkt = bytes(from_pod(IP(src=C_POD, dst=VIP, proto=SCTP_PROTO) / Raw(b"\x9c\x40\x23\x28\0\0")))
    assert run(dp, "from_workload", pkt) == (TC_ACT_NEXT, pkt)
    assert not ct_entries(dp)


def test_sctp_from_outside_to_a_node_port_is_dnated_and_snated_and_xdp_translates_it_the_same(dp, routed):
    program(dp, external=True)
    init = inbound(IP(src=CLIENT, dst=NODE_ADDR) / SCTP(sport=40000, dport=NODEPORT) / CHUNKS["init"])
    assert run_xdp(dp, routed, init) == (XDP_PASS, bytes(init))           # a new flow is tc's
    verdict, out = run_routed(dp, routed, "from_uplink", init)
    assert verdict == TC_ACT_REDIRECT
    sent = Ether(out)
    assert (sent.dst, sent[IP].src, sent[IP].dst, sent[SCTP].dport) == (NEXT_HOP_MAC, NODE_ADDR, B, TARGET_PORT)
    assert crc_valid(out)
    data = inbound(IP(src=CLIENT, dst=NODE_ADDR) / SCTP(sport=40000, dport=NODEPORT, tag=9) / CHUNKS["data-mtu"])
    verdict, by_xdp = run_xdp(dp, routed, data)
    assert verdict == XDP_TX and crc_valid(by_xdp)
    assert by_xdp == run_routed(dp, routed, "from_uplink", data)[1]      # tc sends the same bytes
    snat_port = Ether(by_xdp)[SCTP].sport
    reply = inbound(IP(src=B, dst=NODE_ADDR) / SCTP(sport=TARGET_PORT, dport=snat_port, tag=9) / CHUNKS["data-1-byte"])
    verdict, out = run_xdp(dp, routed, reply)
    assert verdict == XDP_TX and crc_valid(out)
    back = Ether(out)
    assert (back.src, back.dst, back[IP].src, back[IP].dst, back[SCTP].sport, back[SCTP].dport) == \
        (NODE_MAC, ROUTER_MAC, NODE_ADDR, CLIENT, NODEPORT, 40000)
