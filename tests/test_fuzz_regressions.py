"""What the packet fuzzer (tests/test_packet_fuzz.py) found, each kept as the packets that showed it,
through the real programs with the fuzzer's cluster in the maps (tests/fuzz_cluster.py)."""
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ebpflb.datapath.structs import C, ffi, ip_be, ip_str, new, port_be, port_int, to_bytes
from tests.conftest import NODE_ADDR
from tests.fuzz_cluster import (CLIENT, EXTERNAL_IP, GUARDED_LB_IP, LOCAL_CLIENT_POD, OTHER_CLIENT, flow_packet,
                                program_cluster, uplink_namespace)
from tests.lab import in_netns
from tests.test_datapath_packets import LO, TC_ACT_NEXT, TC_ACT_SHOT, ct_entries, dropped_since, drops, run

WEB_VIP, GUARDED_VIP = "10.96.0.10", "10.96.0.30"


@pytest.fixture(scope="module")
def uplink():
    with uplink_namespace() as ns_index:
        yield ns_index


@pytest.fixture
def cluster(dp, uplink):
    """The fuzzer's services in the maps; run(prog, packet) in the uplink's namespace."""
    program_cluster(dp.maps)
    ns, index = uplink

    def run_prog(prog, pkt):
        with in_netns(ns):
            return run(dp, prog, bytes(pkt), ifindex=index if "uplink" in prog else LO)
    return run_prog


def flows(dp):
    """Conntrack without the clocks: {tuple: (type, flags, nat, snat, twin)}."""
    return {key: (v.type, v.flags, v.nat_addr, v.nat_port, v.snat_addr, v.snat_port, to_bytes(ffi.addressof(v, "twin")))
            for key, v in ct_entries(dp).items()}


# --- Each side translates only its own flows

def test_from_workload_leaves_an_outside_clients_flow_to_the_uplink(dp, cluster):
    """Seed 8004, packet 19 (base 'outside-udp-snat/client-nocsum', unmutated): an outside client's
    SNATed UDP flow, its own packet seen by from_workload (a pod claiming the client's address).
    from_workload applied the uplink flow's NAT_FWD entry half: source to the node's address but
    with the client's port instead of the entry's SNAT port, then sent it back into the pod."""
    packet = bytes.fromhex("02000000000102000000000208004500001d0001000040113e19cb007107c0a84006a41375650009000071")
    cluster("from_uplink", flow_packet(CLIENT, 42003, NODE_ADDR, 30053, 17))   # takes SNAT port 42003
    cluster("from_uplink", packet)                                             # so this flow gets another
    before = flows(dp)
    assert cluster("from_workload", packet) == (TC_ACT_NEXT, packet)
    assert flows(dp) == before


def test_to_workload_leaves_a_node_snated_reply_to_the_uplink(dp, cluster):
    """Seed 8004, packet 35 (base 'outside-nodeport-snat/backend-R'): the remote backend's RST to the
    node's SNAT port, seen by to_workload. It applied the NAT_REV entry half: destination back to
    the client's address but not its port, sent back out of the veth, and marked the flow reset."""
    packet = bytes.fromhex("0200000000010200000000020800450000280001000040066e530ac80106c0a840060050a412000003e8"
                           "0000000050042000db190000")
    cluster("from_uplink", flow_packet(OTHER_CLIENT, 42002, NODE_ADDR, 30081, 6, "S"))
    before = flows(dp)
    assert cluster("to_workload", packet) == (TC_ACT_NEXT, packet)
    assert flows(dp) == before
    rev = ct_entries(dp)[("10.200.1.6", 80, NODE_ADDR, 42002, 6)]
    assert not rev.tcp_seen & C.CT_TCP_RST


def test_from_uplink_leaves_a_pods_flow_alone(dp, cluster):
    """A pod's UDP flow to an externalIP; the same tuple arriving on the uplink (a spoofed source)
    replaced the pod's NAT_FWD with an SNATed uplink flow and left the pod's NAT_REV behind, naming
    a flow that no longer pointed back (the fuzzer's "NAT_REV whose NAT_FWD belongs to another
    flow", e.g. 10.200.2.9:8080->10.200.0.9:43065/17)."""
    packet = bytes(flow_packet(LOCAL_CLIENT_POD, 43065, EXTERNAL_IP, 8080, 17, payload=b"q"))
    assert cluster("from_workload", packet)[0] == TC_ACT_NEXT
    before = flows(dp)
    assert cluster("from_uplink", packet) == (TC_ACT_NEXT, packet)
    assert flows(dp) == before


# --- Conntrack pairs stay pairs

def test_a_reopened_flow_takes_its_old_reply_entry_with_it(dp, cluster):
    """Base 'closed/client-S': a SYN on a closed flow picks a backend again. The old backend's
    NAT_REV stayed behind, still naming the flow; a SYN-ACK from that backend then took it for a
    stale pair and deleted the new flow's NAT_FWD (the fuzzer's "NAT_REV without its NAT_FWD")."""
    client = (LOCAL_CLIENT_POD, 41005, WEB_VIP, 80, 6)

    def backend():
        fwd = ct_entries(dp)[client]
        return ip_str(fwd.nat_addr), port_int(fwd.nat_port)

    def close(be_addr, be_port):
        cluster("from_workload", flow_packet(*client[:4], 6, "FA"))
        cluster("to_workload", flow_packet(be_addr, be_port, LOCAL_CLIENT_POD, 41005, 6, "FA"))

    cluster("from_workload", flow_packet(*client[:4], 6, "S"))
    first = backend()
    close(*first)
    # The choice is the flow's hash: the reopened flow lands elsewhere once its backend has left
    # (here every slot of the service now names one of the others).
    fe = dp.maps.nat_fe.lookup(new("struct nat_fe_key", addr=ip_be(WEB_VIP), port=port_be(80), proto=6))
    slots = [new("struct nat_be_key", id=fe.id, gen=fe.gen, ordinal=i) for i in range(fe.count)]
    other = next(v for v in map(dp.maps.nat_be.lookup, slots) if (ip_str(v.addr), port_int(v.port)) != first)
    for slot in slots:
        dp.maps.nat_be.update(slot, other)
    cluster("from_workload", flow_packet(*client[:4], 6, "S"))
    second = backend()
    assert second != first
    entries = ct_entries(dp)
    assert (*first, LOCAL_CLIENT_POD, 41005, 6) not in entries
    stale_syn_ack = flow_packet(*first, LOCAL_CLIENT_POD, 41005, 6, "SA")
    assert cluster("to_workload", stale_syn_ack) == (TC_ACT_NEXT, bytes(stale_syn_ack))
    assert backend() == second


def test_a_new_flow_never_takes_the_reply_entry_of_a_live_one(dp, cluster):
    """A pod's DNS flow to the guarded service's ClusterIP, then the same source port to the same
    service's LoadBalancer IP (fuzzer: 10.200.0.9:44000->192.168.64.201:53/17). One backend, so both
    answer as 10.200.1.6:53 -> 10.200.0.9:44000: the second flow overwrote the first one's NAT_REV
    and the first flow's answers came back from the wrong address. The second is dropped now (the
    client's retry picks again; with one backend it waits until the first flow is gone)."""
    first = flow_packet(LOCAL_CLIENT_POD, 44000, GUARDED_VIP, 53, 17, payload=b"q")
    second = flow_packet(LOCAL_CLIENT_POD, 44000, GUARDED_LB_IP, 53, 17, payload=b"q")
    assert cluster("from_workload", first)[0] == TC_ACT_NEXT
    before = drops(dp)
    assert cluster("from_workload", second)[0] == TC_ACT_SHOT
    assert dropped_since(dp, before) == {"ct-clash": 1}
    answer = flow_packet("10.200.1.6", 53, LOCAL_CLIENT_POD, 44000, 17, payload=b"a")
    verdict, out = cluster("to_workload", answer)
    assert verdict == TC_ACT_NEXT and (Ether(out)[IP].src, Ether(out)[UDP].sport) == (GUARDED_VIP, 53)


# --- ICMP errors only to one host

@pytest.mark.parametrize("prog,packet", [
    # seed 8004 packet 2967: 0.0.0.0 -> the empty service's ClusterIP, TCP SYN
    ("from_workload", "0200000001060200000001000800450000280001000040067048000000000a600028a80a0050000003e8"
                      "0000000050022000d9180000"),
    # seed 8004 packet 3706: 255.255.255.255 -> an unused UDP port of a service address
    ("from_workload", "02000000000102000000000208004500001d000100004011703bffffffff0a600035abe1270f0009b15671"),
    # seed 8004 packet 33065: 224.0.0.1 -> the empty NodePort from outside
    ("from_uplink", "0200000001060200000001000800450000280001000040069a1fe0000001c0a84006a84b758a000003e8"
                    "00000000500220008d740000"),
    # seed 8004 packet 7254: 127.0.0.1 -> the empty NodePort, from outside and from a pod
    ("from_uplink", "020000000106020000000100080045000028000100004006fb1f7f000001c0a84006a84b758a000003e8"
                    "0000000050022000ee740000"),
    ("from_workload", "020000000106020000000100080045000028000100004006fb1f7f000001c0a84006a84b758a000003e8"
                      "0000000050022000ee740000"),
], ids=["zero-source", "broadcast-source", "multicast-source", "loopback-source-outside", "loopback-source-pod"])
def test_no_icmp_error_goes_to_a_source_that_is_not_one_host(dp, cluster, prog, packet):
    """RFC 1122 3.2.2: no ICMP error for a datagram whose source is not one host (0/8, 127/8,
    multicast, 240/4 and broadcast); the programs sent port unreachable there. Dropped now, as
    iptables' REJECT does (icmp_send refuses, the packet is dropped)."""
    before = drops(dp)
    assert cluster(prog, bytes.fromhex(packet))[0] == TC_ACT_SHOT
    assert dropped_since(dp, before) == {"no-endpoints": 1}

