"""The cluster the packet fuzzer runs against: Services and EndpointSlices as the Kubernetes API
gives them, turned into map contents by the agent's own pure core and written by its MapWriter,
then conntrack filled by real flows through the real programs.

This node is node-a (192.168.64.6, pods 10.200.0.0/24). node-b (192.168.64.5) holds 10.200.1.0/24;
10.200.2.0/24 (node-c) has no route from the uplink, so flows SNATed to it are dropped. Outside
clients sit on the uplink's /24 and behind its router (default route).
"""
import contextlib
import subprocess
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.core.model import DesiredState
from ebpflb.core.services import desired_state
from ebpflb.datapath.loader import DEFAULT_HAIRPIN_ADDR
from ebpflb.datapath.structs import C, ip_str, port_int
from ebpflb.sync.writer import MapWriter
from tests.conftest import NODE_ADDR
from tests.lab import routed_uplink

NODE, OTHER_NODE, FAR_NODE = "node-a", "node-b", "node-c"
HAIRPIN = DEFAULT_HAIRPIN_ADDR
NODE_MAC, ROUTER_MAC, NEXT_HOP_MAC = "02:00:00:00:01:06", "02:00:00:00:01:00", "02:00:00:00:01:05"
POD_MAC, GW_MAC = "02:00:00:00:00:02", "02:00:00:00:00:01"
ROUTER, NODE_B = "192.168.64.1", "192.168.64.5"
CLIENT, OTHER_CLIENT, FAR_CLIENT = "192.168.64.100", "192.168.64.120", "203.0.113.7"   # CLIENT in the LB ranges
LOCAL_CLIENT_POD = "10.200.0.9"
LB_IP, GUARDED_LB_IP, EXTERNAL_IP = "192.168.64.200", "192.168.64.201", "192.168.64.210"

# The uplink namespace (tests.lab.routed_uplink): neighbours and routes the FIB lookups resolve.
UPLINK_NEIGHBOURS = {ROUTER: ROUTER_MAC, NODE_B: NEXT_HOP_MAC, CLIENT: ROUTER_MAC, OTHER_CLIENT: ROUTER_MAC}
UPLINK_ROUTES = {"10.200.1.0/24": NODE_B, "default": ROUTER}
UNREACHABLE = "10.200.2.0/24"   # a backend there cannot be reached by FIB: the SNAT path drops


@contextlib.contextmanager
def uplink_namespace():
    """This node's uplink as a namespace (tests.lab.routed_uplink) with UNREACHABLE unreachable:
    yields (namespace, uplink ifindex) for the uplink programs' FIB lookups."""
    with routed_uplink(NODE_ADDR, NODE_MAC, UPLINK_NEIGHBOURS, UPLINK_ROUTES) as (ns, index):
        subprocess.run(["ip", "-n", ns, "route", "add", "unreachable", UNREACHABLE], check=True)
        yield ns, index


def _service(name, cluster_ip, ports, lb_ip=None, **spec):
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "fuzz"},
               "spec": {"clusterIP": cluster_ip, "ports": ports, **spec}}
    if lb_ip:
        service["status"] = {"loadBalancer": {"ingress": [{"ip": lb_ip}]}}
    return service


def _port(name, number, protocol="TCP", **fields):
    return {"name": name, "port": number, "protocol": protocol, **fields}


def _slice(service, ports, endpoints):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service}-x", "namespace": "fuzz",
                         "labels": {"kubernetes.io/service-name": service}},
            "ports": ports, "endpoints": [{"addresses": [addr], "nodeName": node} for addr, node in endpoints]}


SERVICES = [
    # ClusterIP + NodePort, Cluster policy, two local and two remote backends.
    _service("web", "10.96.0.10", [_port("http", 80, targetPort=8080, nodePort=30080)], type="NodePort"),
    # UDP and TCP on one address; UDP DNS is where a zero checksum happens.
    _service("dns", "10.96.0.53", [_port("dns", 53, "UDP"), _port("dns-tcp", 53, "TCP")]),
    # LoadBalancer with externalTrafficPolicy Local: one local backend, one remote; session affinity,
    # whose entries from pods (any backend) meet outside clients (local ones only).
    _service("shop", "10.96.0.20", [_port("https", 443, targetPort=8443, nodePort=30443)], type="LoadBalancer",
             externalTrafficPolicy="Local", healthCheckNodePort=32000, lb_ip=LB_IP, sessionAffinity="ClientIP"),
    # LoadBalancer with source ranges, backends only elsewhere: SNAT from outside.
    _service("guarded", "10.96.0.30", [_port("http", 80, nodePort=30081), _port("dns", 53, "UDP", nodePort=30053)],
             type="LoadBalancer", loadBalancerSourceRanges=["192.168.64.96/28"], lb_ip=GUARDED_LB_IP),
    # No endpoints: ICMP port unreachable, from pods and from outside.
    _service("empty", "10.96.0.40", [_port("http", 80, nodePort=30090), _port("udp", 80, "UDP")], type="NodePort"),
    # internalTrafficPolicy Local without a local endpoint: dropped from pods.
    _service("internal-local", "10.96.0.50", [_port("http", 80)], internalTrafficPolicy="Local"),
    # externalTrafficPolicy Local without a local endpoint: dropped from outside.
    _service("remote-only", "10.96.0.51", [_port("http", 80, nodePort=30091)], type="NodePort",
             externalTrafficPolicy="Local"),
    # SCTP, to another port: the programs fold the port into its CRC32c.
    _service("sctp", "10.96.0.60", [_port("sctp", 9000, "SCTP", targetPort=9001)]),
    # externalIPs, UDP, the backend on a node the uplink cannot route to.
    _service("far", "10.96.0.70", [_port("udp", 8080, "UDP")], externalIPs=[EXTERNAL_IP]),
    # One backend, local: its own connections through the service are hairpinned.
    _service("self", "10.96.0.80", [_port("http", 80, targetPort=8080)]),
]

SLICES = [
    _slice("web", [_port("http", 8080)], [("10.200.0.2", NODE), ("10.200.0.3", NODE),
                                          ("10.200.1.2", OTHER_NODE), ("10.200.1.3", OTHER_NODE)]),
    _slice("dns", [_port("dns", 53, "UDP"), _port("dns-tcp", 53, "TCP")], [("10.200.0.4", NODE),
                                                                           ("10.200.1.4", OTHER_NODE)]),
    _slice("shop", [_port("https", 8443)], [("10.200.0.5", NODE), ("10.200.1.5", OTHER_NODE)]),
    _slice("guarded", [_port("http", 80), _port("dns", 53, "UDP")], [("10.200.1.6", OTHER_NODE)]),
    _slice("empty", [_port("http", 80), _port("udp", 80, "UDP")], []),
    _slice("internal-local", [_port("http", 80)], [("10.200.1.8", OTHER_NODE)]),
    _slice("remote-only", [_port("http", 80)], [("10.200.1.9", OTHER_NODE)]),
    _slice("sctp", [_port("sctp", 9001, "SCTP")], [("10.200.1.7", OTHER_NODE)]),
    _slice("far", [_port("udp", 8080, "UDP")], [("10.200.2.9", FAR_NODE)]),
    _slice("self", [_port("http", 8080)], [("10.200.0.2", NODE)]),
]


def cluster_state() -> DesiredState:
    state = desired_state(SERVICES, SLICES, node_name=NODE, known_ids={}, node_addresses=(NODE_ADDR,))
    assert not state.rejected, state.rejected
    return state


def program_cluster(maps) -> DesiredState:
    state = cluster_state()
    MapWriter(maps).apply(state)
    return state


@dataclass(frozen=True)
class Flow:
    """A connection opened through the programs; `entry` is the program that took its first packet."""
    name: str
    entry: str
    src: str
    sport: int
    dst: str
    dport: int
    proto: int


# Connections the fuzzer finds established, opened as real clients would: a pod to a ClusterIP
# (TCP and UDP), a pod to itself through its service (hairpin), outside clients to a NodePort, a
# LoadBalancer IP (SNAT), a Local-policy NodePort (client address kept), and one flow closed by FINs.
FLOWS = [
    Flow("pod-web", "from_workload", LOCAL_CLIENT_POD, 41000, "10.96.0.10", 80, 6),
    Flow("pod-dns", "from_workload", LOCAL_CLIENT_POD, 41001, "10.96.0.53", 53, 17),
    Flow("pod-dns-tcp", "from_workload", "10.200.0.3", 41002, "10.96.0.53", 53, 6),
    Flow("hairpin", "from_workload", "10.200.0.2", 41003, "10.96.0.80", 80, 6),
    Flow("pod-nodeport", "from_workload", LOCAL_CLIENT_POD, 41004, NODE_ADDR, 30080, 6),
    Flow("closed", "from_workload", LOCAL_CLIENT_POD, 41005, "10.96.0.10", 80, 6),
    Flow("outside-nodeport", "from_uplink", FAR_CLIENT, 42000, NODE_ADDR, 30080, 6),
    Flow("outside-lb-snat", "from_uplink", CLIENT, 42001, GUARDED_LB_IP, 80, 6),
    Flow("outside-nodeport-snat", "from_uplink", OTHER_CLIENT, 42002, NODE_ADDR, 30081, 6),
    Flow("outside-udp-snat", "from_uplink", FAR_CLIENT, 42003, NODE_ADDR, 30053, 17),
    Flow("outside-local", "from_uplink", CLIENT, 42004, LB_IP, 443, 6),
]


def flow_packet(src, sport, dst, dport, proto, flags="A", payload=b""):
    l4 = TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=2000) if proto == 6 else UDP(sport=sport, dport=dport)
    return Ether(src=POD_MAC, dst=GW_MAC) / IP(src=src, dst=dst) / l4 / Raw(payload)


@dataclass(frozen=True)
class Opened:
    """A flow as conntrack holds it: the backend chosen and where the backend's answer goes."""
    flow: Flow
    backend: str
    backend_port: int
    reply_dst: str
    reply_port: int
    reply_entry: str   # the program that takes the backend's answer


def open_flows(maps, run) -> list[Opened]:
    """Open FLOWS through the programs: the client's first packet, then the backend's answer
    through the program that takes it; "closed" also sees FINs both ways. run(program, packet)."""
    opened = []
    for flow in FLOWS:
        run(flow.entry, bytes(flow_packet(flow.src, flow.sport, flow.dst, flow.dport, flow.proto, "S")))
        fwd = nat_fwd_entry(maps, flow)
        snat = fwd.flags & C.CT_FLAG_SNAT
        if fwd.flags & C.CT_FLAG_UPLINK:
            reply_entry = "from_uplink" if snat else "to_uplink"
        else:
            reply_entry = "from_workload" if snat else "to_workload"
        o = Opened(flow, ip_str(fwd.nat_addr), port_int(fwd.nat_port), ip_str(fwd.twin.dst_addr),
                   port_int(fwd.twin.dst_port), reply_entry)
        run(reply_entry, bytes(flow_packet(o.backend, o.backend_port, o.reply_dst, o.reply_port, flow.proto, "SA")))
        if flow.name == "closed":
            run(flow.entry, bytes(flow_packet(flow.src, flow.sport, flow.dst, flow.dport, flow.proto, "FA")))
            run(reply_entry, bytes(flow_packet(o.backend, o.backend_port, o.reply_dst, o.reply_port, flow.proto, "FA")))
        opened.append(o)
    return opened


def nat_fwd_entry(maps, flow: Flow):
    for key, value in maps.ct.items():
        if (ip_str(key.src_addr), port_int(key.src_port), ip_str(key.dst_addr), port_int(key.dst_port),
                key.proto) == (flow.src, flow.sport, flow.dst, flow.dport, flow.proto) and \
                value.type == C.CT_TYPE_NAT_FWD:
            return value
    raise AssertionError(f"flow {flow.name} has no NAT_FWD entry")
