"""Issue 17 in seed 004's lab, as a user meets it: datagrams larger than the MTU, path MTU discovery
and a refused UDP port, through a ClusterIP (client pod C on node-2) and a NodePort (outside client
X, SNATed by node-2 to the backend B on node-1). Each fails on the code before issue 17: the larger
datagrams never came back, the transfer stalled in a PMTU black hole, the refusal was a timeout."""
import json
import subprocess
import sys
import time

import pytest
import yaml

from tests.apiserver import endpoint_slice, service
from tests.lab import NODE_IPS, NODE_SUBNETS, NODES, OUTSIDE, PODSERVER
from tests.test_lab_dataplane import wait_for

B = "10.200.1.2"
SVC_BIG, SVC_CLOSED = "10.96.2.1", "10.96.2.2"
NODEPORT_TCP, NODEPORT_UDP = 30100, 30101
CLOSED_PORT = 5400           # the Service's; its backend port 5999 has no listener
SIZES = (1000, 3000, 8000)   # one datagram, two fragments, six
NARROW_MTU = 1200            # node-1's last hop to B (veth-b's host side)
NARROW_MTU_BETWEEN_NODES = 1400


def manifests() -> list[dict]:
    big = service("default", "svc-big", SVC_BIG, [("http", 8080, "TCP"), ("dns", 5353, "UDP")], type="NodePort")
    big["spec"]["ports"][0]["nodePort"] = NODEPORT_TCP
    big["spec"]["ports"][1]["nodePort"] = NODEPORT_UDP
    return [
        big,
        endpoint_slice("default", "svc-big-a", "svc-big", [(B, "node-1", True)],
                       ports=[("http", 8080, "TCP"), ("dns", 5353, "UDP")]),
        service("default", "svc-closed", SVC_CLOSED, [("dns", CLOSED_PORT, "UDP", 5999)]),
        endpoint_slice("default", "svc-closed-a", "svc-closed", [(B, "node-1", True)], ports=[("dns", 5999, "UDP")]),
    ]


@pytest.fixture(scope="module")
def agents(lab):
    path = lab.tmpdir / "icmp-frag-manifests"
    path.mkdir(exist_ok=True)
    (path / "cluster.yaml").write_text(yaml.safe_dump_all(manifests()))
    try:
        for node in NODES:
            lab.start_agent(node, path, "--uplinks", "eth0")
        for node in NODES:
            wait_for(lambda: f"{NODE_IPS[node]} port {NODEPORT_UDP} proto 17" in lab.agent_cli(node, "nat", "dump", check=False),
                     what=f"the NodePorts on {node}")
        yield
    finally:
        for node in NODES:
            lab.stop_agent(node)
            lab.agent_cli(node, "cleanup")


def podserver(lab, client, *args, timeout=30):
    r = lab.run(client, sys.executable, str(PODSERVER), *map(str, args), timeout=timeout, check=False)
    return r.stdout.strip() or r.stderr.strip()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("via", ["clusterip", "nodeport"])
def test_udp_datagrams_larger_than_the_mtu_come_back(lab, agents, via, size):
    """The client's stack cuts the datagram into fragments; so does B's for its echo. Every one is
    translated: to the Service, and back from it."""
    client, ip, port = ("C", SVC_BIG, 5353) if via == "clusterip" else ("X", NODE_IPS["node-2"], NODEPORT_UDP)
    out = podserver(lab, client, "udp-echo", ip, port, size, 3)
    assert out.startswith("ok "), out


OVERLAY = {"node-1": "172.31.12.1", "node-2": "172.31.12.2"}   # a /30 on the link "ovl" between them


@pytest.fixture
def narrow_between_nodes(lab, agents):
    """A link between node-1 and node-2 narrower (1,400 bytes) than the 1,500-byte ones the
    datagrams come in on, as an overlay or a tunnel is, carrying the pods' traffic between them:
    node-2 forwards X's fragments of 1,500 bytes to B (SNATed, past the stack) too big for it and
    without DF. It is one of node-2's uplinks, as a tunnel device carrying SNATed traffic must be
    (its agent restarted with --uplinks eth0,ovl). B's answers come back by the underlay; node-2's
    way back to X is narrowed by a locked route MTU (which the FIB lookup follows:
    ip_mtu_from_fib_result()), so they are too big there in turn (the reverse SNAT)."""
    ns = {node: lab.node_ns[node] for node in OVERLAY}
    lab.run("node-2", "ip", "link", "add", "ovl", "mtu", NARROW_MTU_BETWEEN_NODES, "type", "veth",
            "peer", "name", "ovl", "netns", ns["node-1"], "mtu", NARROW_MTU_BETWEEN_NODES)
    routes = {"node-2": (NODE_SUBNETS["node-1"], NODE_IPS["node-1"], OVERLAY["node-1"]),
              "node-1": (NODE_SUBNETS["node-2"], NODE_IPS["node-2"], OVERLAY["node-2"])}
    try:
        for node, address in OVERLAY.items():
            lab.run(node, "ip", "addr", "add", f"{address}/30", "dev", "ovl")
            lab.run(node, "ip", "link", "set", "ovl", "up")
        for node, (subnet, _, via) in routes.items():
            lab.run(node, "ip", "route", "replace", subnet, "via", via, "dev", "ovl")
        lab.run("node-2", "ip", "route", "add", f"{OUTSIDE['X']}/32", "dev", "eth0", "mtu", "lock",
                NARROW_MTU_BETWEEN_NODES)
        restart_agent(lab, "node-2", "eth0,ovl")
        yield
    finally:
        lab.run("node-2", "ip", "route", "del", f"{OUTSIDE['X']}/32", check=False)
        for node, (subnet, underlay, _) in routes.items():
            lab.run(node, "ip", "route", "replace", subnet, "via", underlay, check=False)
        lab.run("node-2", "ip", "link", "del", "ovl", check=False)
        restart_agent(lab, "node-2", "eth0")


def restart_agent(lab, node, uplinks):
    """The new agent has synced and holds every uplink. (The NodePorts in `nat dump` say nothing of
    it: the pinned maps kept the old agent's; waiting for them let a test send before the new agent
    had attached to "ovl", and the fragments left it without their source NAT.)"""
    syncs = lab.agent_log(node).count("first full sync done")
    lab.stop_agent(node)
    lab.start_agent(node, lab.tmpdir / "icmp-frag-manifests", "--uplinks", uplinks)
    wait_for(lambda: lab.agent_log(node).count("first full sync done") > syncs, what=f"the new agent on {node}")
    for uplink in uplinks.split(","):
        wait_for(lambda: "from_uplink" in lab.run(node, "tc", "filter", "show", "dev", uplink, "ingress").stdout,
                 what=f"from_uplink on {node}'s {uplink}")
    wait_for(lambda: f"{NODE_IPS[node]} port {NODEPORT_UDP} proto 17" in lab.agent_cli(node, "nat", "dump", check=False),
             what=f"the NodePorts on {node}")


@pytest.fixture(params=[0, 2], ids=["rp_filter-off", "rp_filter-loose"])
def node2_rp_filter(lab, request):
    """node-2's reverse-path filter as real nodes have it: off (the kernel's default, the lab's) or
    loose (systemd's, Ubuntu's). What it hands the stack keeps its source (X, or B), which loose
    mode accepts on any link with a route back. (Strict mode, RHEL's, accepts X's datagrams, but
    drops B's answers arriving by the underlay while B's pods are routed by the overlay, on the
    stack's input path, where netfilter's un-SNATed answers meet the same check.)"""
    keys = ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.eth0.rp_filter")
    lab.run("node-2", "sysctl", "-qw", *(f"{k}={request.param}" for k in keys))
    try:
        yield request.param
    finally:
        lab.run("node-2", "sysctl", "-qw", *(f"{k}=0" for k in keys))


@pytest.mark.parametrize("size", (3000, 8000))
def test_datagrams_too_big_for_the_way_between_nodes_come_back_through_a_nodeport(
        lab, agents, narrow_between_nodes, node2_rp_filter, size):
    """X -> node-2's NodePort -> B on node-1 (SNAT, forwarded past the stack) and B's echo back: each
    fragment is too big for its way out of node-2 and lets itself be fragmented; node-2's stack cuts
    it (its destination translated, its source not, which the stack would call a martian), and
    to_uplink puts the source NAT on every piece."""
    out = podserver(lab, "X", "udp-echo", NODE_IPS["node-2"], NODEPORT_UDP, size, 3)
    assert out.startswith("ok "), out


@pytest.mark.parametrize("size", (3000, 8000))
def test_datagrams_too_big_for_the_way_between_nodes_come_back_through_a_clusterip(
        lab, agents, narrow_between_nodes, size):
    """C on node-2 -> ClusterIP -> B on node-1, the same narrow way: DNAT only, so node-2's stack
    forwards and fragments the pod's datagrams itself, as it did before."""
    out = podserver(lab, "C", "udp-echo", SVC_BIG, 5353, size, 3)
    assert out.startswith("ok "), out


@pytest.fixture
def narrow_hop(lab):
    """node-1's link to B narrowed to 1,200 bytes, its bridge with it (B's own stays 1,500, so its
    SYN-ACK says MSS 1,460): node-1 answers the client's full-sized segments (and GRO's merges of
    them) with frag-needed, as a router on the way would."""
    for dev in ("veth-b", "br1"):
        lab.run("node-1", "ip", "link", "set", dev, "mtu", NARROW_MTU)
    try:
        assert f"mtu {NARROW_MTU}" in lab.run("node-1", "ip", "link", "show", "br1").stdout
        yield
    finally:
        for dev in ("veth-b", "br1"):
            lab.run("node-1", "ip", "link", "set", dev, "mtu", 1500)


def frag_needed_sent(lab) -> int:
    """ICMP destination unreachable node-1 has sent (its frag-needed among them)."""
    snmp = lab.run("node-1", "cat", "/proc/net/snmp").stdout.splitlines()
    names, values = [line.split() for line in snmp if line.startswith("IcmpMsg:")][:2] or ([], [])
    return int(dict(zip(names, values)).get("OutType3", 0))


def upload_seconds(lab, client, ip, port):
    out = podserver(lab, client, "upload", ip, port, 200_000, 15)
    assert out.startswith("ok ") and out.endswith(" B"), f"200 kB to {ip}:{port} from {client}: {out}"
    return float(out.split()[1])


def test_path_mtu_discovery_through_the_service_is_no_black_hole(lab, agents, narrow_hop, figure):
    """200 kB through a ClusterIP and a NodePort to B behind the narrow hop: node-1's frag-needed
    quotes the backend's tuple; translated, the client's socket (connected to the Service) learns
    the path MTU as fast as one connected to B directly."""
    sent = frag_needed_sent(lab)
    direct = upload_seconds(lab, "C", B, 8080)   # (X has no route to the pods: C's is the direct one)
    assert frag_needed_sent(lab) > sent, "the narrow hop did not answer: nothing here needed path MTU discovery"
    clusterip = upload_seconds(lab, "C", SVC_BIG, 8080)
    nodeport = upload_seconds(lab, "X", NODE_IPS["node-2"], NODEPORT_TCP)
    figure(f"issue 17, 200 kB to a backend behind a {NARROW_MTU}-byte hop: C direct {direct:.3f} s, "
           f"C via ClusterIP {clusterip:.3f} s, X via NodePort {nodeport:.3f} s")
    assert clusterip < max(5 * direct, 1.0)
    assert nodeport < max(5 * direct, 1.0)


def test_a_closed_udp_backend_port_is_refused_at_once(lab, agents):
    """B's port unreachable, translated to name the Service: the connected socket gets ECONNREFUSED
    instead of waiting out its timeout."""
    started = time.monotonic()
    answer = json.loads(podserver(lab, "C", "udp-ask", SVC_CLOSED, CLOSED_PORT, "connected", 1, 3).splitlines()[0])
    elapsed = time.monotonic() - started
    assert answer["error"] == "ECONNREFUSED", answer
    assert elapsed < 2.0, elapsed
