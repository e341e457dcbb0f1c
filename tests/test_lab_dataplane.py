"""The data plane in seed 004's lab: one agent per node namespace, real TCP and UDP between pods
through the service address."""
import hashlib
import json
import signal
import socket
import struct
import threading
import time
from collections import Counter

import pytest

from tests.lab import HttpError, in_netns

VIP, VIP_EMPTY = "10.96.0.2", "10.96.0.3"
NODES = ("node-0", "node-1", "node-2")


def wait_for(predicate, timeout=30.0, interval=0.1, what="condition") -> float:
    """Seconds until predicate() holds; AssertionError after timeout."""
    started = time.monotonic()
    while time.monotonic() < started + timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def programmed_backends(lab, node) -> int:
    dump = lab.agent_cli(node, "nat", "dump", check=False)
    lines = dump.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{VIP} port 8080 proto 6 "):
            return int(line.split(" count ")[1].split()[0])
    return -1


@pytest.fixture(scope="module")
def manifests(lab):
    path = lab.manifests_dir()
    for node in NODES:
        lab.start_agent(node, path)
    for node in NODES:
        wait_for(lambda: programmed_backends(lab, node) == 2, what=f"agent on {node} to program svc-1")
    yield path
    for node in NODES:
        lab.stop_agent(node)


@pytest.mark.parametrize("client", ["C", "A1", "A0"])
def test_100_requests_through_the_vip_all_succeed_and_spread(lab, manifests, client):
    answers = lab.http_get_many(client, VIP, 100)
    assert len(answers) == 100
    served = Counter(answers)
    assert set(served) == {"A0", "B"}, served
    assert served["A0"] >= 25 and served["B"] >= 25, served


def test_udp_through_the_vip_from_a_connected_socket(lab, manifests):
    session = lab.udp_session("C", VIP)
    try:
        first = session.request()
        assert first in ("A0", "B")
        assert [session.request() for _ in range(10)] == [first] * 10
    finally:
        session.close()


@pytest.mark.parametrize("ip,port", [(VIP_EMPTY, 8080), (VIP, 9999)], ids=["no-endpoints", "unused-port"])
def test_service_without_endpoints_is_refused_at_once(lab, manifests, ip, port):
    started = time.monotonic()
    with pytest.raises(HttpError) as refused:
        lab.http_get("C", ip, port, timeout=5)
    assert refused.value.code == 7   # connection refused, not a timeout
    assert time.monotonic() - started < 1.0


def test_a_cluster_ip_is_not_pingable_and_the_drop_is_counted(lab, manifests):
    from tests.test_lab_api import metrics   # that module imports this one

    def dropped(reason):
        rows = map(json.loads, lab.agent_cli("node-2", "drops", "--json").splitlines())
        return next(r["packets"] for r in rows if r["reason"] == reason)

    before = dropped("not-l4-to-service")
    assert lab.ping("C", "10.200.0.2")
    assert not lab.ping("C", VIP, timeout=1)
    assert dropped("not-l4-to-service") == before + 1
    metric = f'ebpflb_dropped_packets_total{{reason="not-l4-to-service"}} {before + 1}.0'
    assert metric in metrics(lab, "node-2")


def test_dumps_show_the_flow_the_client_made(lab, manifests):
    answer = lab.http_get("C", VIP)
    backend = {"A0": "10.200.0.2", "B": "10.200.1.2"}[answer]
    nat = lab.agent_cli("node-2", "nat", "dump")
    assert f"{VIP} port 8080 proto 6 id " in nat and "10.200.0.2:8080" in nat and "10.200.1.2:8080" in nat
    flows = lab.agent_cli("node-2", "conntrack", "dump")
    assert any(line.startswith(f"TCP 10.200.2.2:") and f" -> {VIP}:8080 -> {backend}:8080  Active ago " in line
               for line in flows.splitlines()), flows


def test_data_plane_outlives_the_agent_and_a_restart_writes_nothing(lab, manifests):
    lab.stop_agent("node-2", signal.SIGTERM)
    assert set(lab.http_get_many("C", VIP, 20)) <= {"A0", "B"}
    log_before = len(lab.agent_log("node-2"))
    lab.start_agent("node-2", manifests)
    wait_for(lambda: "sync:" in lab.agent_log("node-2")[log_before:], what="restarted agent's first sync")
    assert "0 map writes, 0 deletes" in lab.agent_log("node-2")[log_before:]
    assert set(lab.http_get_many("C", VIP, 20)) <= {"A0", "B"}


def ebpflb_filters(lab, node, dev) -> str:
    out = lab.run(node, "tc", "filter", "show", "dev", dev, "ingress").stdout
    out += lab.run(node, "tc", "filter", "show", "dev", dev, "egress").stdout
    return out


def test_a_pod_veth_created_later_gets_the_programs(lab, manifests):
    lab.run("node-2", "ip", "link", "add", "veth-new", "type", "veth", "peer", "name", "new-peer")
    try:
        wait_for(lambda: ebpflb_filters(lab, "node-2", "veth-new").count("ebpflb:") == 2,
                 timeout=5, what=f"programs on veth-new; agent log:\n{lab.agent_log('node-2')[-1500:]}")
        assert "ebpflb:from_workload" in ebpflb_filters(lab, "node-2", "veth-new")
        # A link the regex does not match is left alone.
        lab.run("node-2", "ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1")
        time.sleep(0.5)
        assert "ebpflb" not in lab.run("node-2", "tc", "filter", "show", "dev", "other0", "ingress").stdout
    finally:
        lab.run("node-2", "ip", "link", "del", "veth-new", check=False)
        lab.run("node-2", "ip", "link", "del", "other0", check=False)


SOL_PACKET, PACKET_AUXDATA, TP_STATUS_CSUMNOTREADY = 263, 8, 8   # linux/if_packet.h
ETH_P_ALL = 3


def received_checksum_partial(lab, node: str, dev: str, dst: str, send) -> bool:
    """Whether the first TCP packet to `dst` that `dev` receives while send() runs is
    CHECKSUM_PARTIAL (the kernel says so in PACKET_AUXDATA, seen before tc ingress)."""
    with in_netns(lab.ns(node)):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with sock:
        sock.bind((dev, 0))
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.settimeout(5)
        send()
        while True:
            frame, ancillary, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(20))
            if frame[12:14] == b"\x08\x00" and frame[23] == 6 and socket.inet_ntoa(frame[30:34]) == dst:
                status = next(struct.unpack("=I", data[:4])[0] for level, kind, data in ancillary
                              if level == SOL_PACKET and kind == PACKET_AUXDATA)
                return bool(status & TP_STATUS_CSUMNOTREADY)


@pytest.fixture
def pods_with_checksum_offload(lab):
    """A0 and A1 send as pods do on a veth (the lab's default): TCP/UDP checksums left to
    "offload" (CHECKSUM_PARTIAL, the field holding only the pseudo-header sum, and TSO). node-0's
    devices compute them in software as packets leave (tx off), after the programs translated
    them, so each receiver checks a real checksum: a wrong translation of a partial one is a lost
    packet."""
    devices = ("eth0", "veth-a0", "veth-a1")
    try:
        for dev in devices:
            lab.run("node-0", "ethtool", "-K", dev, "tx", "off")
        yield
    finally:
        for dev in devices:
            lab.run("node-0", "ethtool", "-K", dev, "tx", "on", check=False)


def test_partial_checksums_are_translated_right(lab, manifests, pods_with_checksum_offload):
    assert received_checksum_partial(lab, "node-0", "veth-a1", VIP, lambda: lab.http_get("A1", VIP)), \
        "A1's packets are not CHECKSUM_PARTIAL: this test would not test what it says"
    for client in ("A1", "A0"):   # A0 meets itself too: hairpin
        answers = Counter(lab.http_get_many(client, VIP, 60))
        assert set(answers) == {"A0", "B"}, answers
    # Large answers and requests: TSO-sized segments, translated as one and cut up afterwards.
    served = set()
    for _ in range(6):
        body = lab.http_get("A1", VIP, path="/pad/1000000", timeout=10)
        name, _, pad = body.partition("\n")
        assert pad == "x" * 1_000_000, (name, len(pad))
        served.add(name)
    upload = b"y" * 1_000_000
    for _ in range(4):
        reply = lab.run("A1", "curl", "-sS", "--fail", "--noproxy", "*", "-m", "10", "--data-binary", "@-",
                        f"http://{VIP}:8080/", input=upload.decode(), timeout=20).stdout
        name, length, digest = reply.split()
        assert (int(length), digest) == (len(upload), hashlib.sha256(upload).hexdigest())
        served.add(name)
    assert served == {"A0", "B"}, served
    with lab.udp_session("A1", VIP) as session:
        assert session.request() in ("A0", "B")
        assert all(session.request() for _ in range(10))


def test_backend_removed_mid_run(lab, manifests):
    """Runs last in this module: it takes B out of the service for good."""
    sessions = [lab.udp_session("C", VIP) for _ in range(20)]
    try:
        on_b = next((s for s in sessions if s.request() == "B"), None)
        assert on_b is not None, "no UDP flow landed on B in 20 tries"

        during: list[str] = []
        load = threading.Thread(target=lambda: during.extend(lab.http_get_many("C", VIP, 150)))
        load.start()
        time.sleep(0.3)
        lab.remove_endpoint(manifests, "10.200.1.2")
        wait_for(lambda: all(programmed_backends(lab, n) == 1 for n in NODES), what="B to leave svc-1")
        load.join()
        assert len(during) == 150 and set(during) <= {"A0", "B"}, Counter(during)

        assert on_b.request() == "A0"   # the UDP flow that was on B continues on a live backend
        assert set(lab.http_get_many("C", VIP, 30)) == {"A0"}
    finally:
        for s in sessions:
            s.close()


def test_cleanup_detaches_and_removes_pins(lab, manifests):
    """Runs after everything else in this module: it takes the data plane off node-2."""
    lab.stop_agent("node-2")
    out = lab.agent_cli("node-2", "cleanup")
    assert "veth-c" in out
    assert "ebpflb" not in ebpflb_filters(lab, "node-2", "veth-c")
    assert not lab.pin_dir("node-2").exists()
    with pytest.raises(HttpError):
        lab.http_get("C", VIP, timeout=1)
    refused = lab.agent_cli("node-2", "nat", "dump", check=False)
    assert refused == ""


# IPv6 beside the programs (issue 19): until the data plane serves IPv6, every program on the pod
# veths and the uplinks (tc and XDP) passes it untouched: pod to pod across nodes and on one node,
# neighbour discovery included, and outside clients to the nodes.
@pytest.mark.parametrize("client,server", [("C", "A0"), ("A0", "B"), ("A1", "A0")])
def test_ipv6_between_pods_passes_the_programs_untouched(lab, manifests, client, server):
    assert lab.http_get_many(client, lab.POD_IPS6[server], 20) == [server] * 20
    with lab.udp_session(client, lab.POD_IPS6[server]) as session:
        assert [session.request() for _ in range(3)] == [server] * 3
    # the server sees the client's own address: nothing rewrote it on the way
    assert lab.http_get(client, lab.POD_IPS6[server], path="/client").startswith(lab.POD_IPS6[client] + ":")
    assert lab.ping(client, lab.POD_IPS6[server])


def test_ipv6_from_outside_reaches_a_node_through_its_uplink_programs(lab, manifests):
    assert all(lab.ping("X", lab.NODE_IPS6[node]) for node in NODES)
