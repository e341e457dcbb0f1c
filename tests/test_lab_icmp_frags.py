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
from tests.lab import NODE_IPS, NODES, PODSERVER
from tests.test_lab_dataplane import wait_for

B = "10.200.1.2"
SVC_BIG, SVC_CLOSED = "10.96.2.1", "10.96.2.2"
NODEPORT_TCP, NODEPORT_UDP = 30100, 30101
CLOSED_PORT = 5400           # the Service's; its backend port 5999 has no listener
SIZES = (1000, 3000, 8000)   # one datagram, two fragments, six
NARROW_MTU = 1200            # node-1's last hop to B (veth-b's host side)


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
