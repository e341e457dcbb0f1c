"""The lab itself, without any agent: seed 004's pod-to-pod connectivity, and clean teardown."""
import subprocess

import pytest

from tests.lab import PODS, Lab

pytestmark = pytest.mark.lab


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def lab_namespaces(lab: Lab) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [l.split()[0] for l in out.splitlines() if l.split() and l.startswith(lab.prefix)]


@pytest.mark.parametrize("client", ["C", "A1", "A0"])
@pytest.mark.parametrize("server", ["A0", "B"])
def test_http_by_pod_ip(lab, client, server):
    assert lab.http_get(client, lab.POD_IPS[server]) == server


def test_every_pod_reaches_every_pod(lab):
    for client in PODS:
        for server in PODS:
            assert lab.http_get(client, lab.POD_IPS[server]) == server, (client, server)


def test_many_requests_are_quick(lab):
    answers = lab.http_get_many("C", lab.POD_IPS["A0"], 100)
    assert answers == ["A0"] * 100


def test_udp_session_keeps_one_source_port(lab):
    with lab.udp_session("C", lab.POD_IPS["B"]) as s:
        replies = [s.request(timeout=1) for _ in range(5)]
        assert replies == ["B"] * 5
        peers = lab.http_get("C", lab.POD_IPS["B"], path="/udp-peers")
    assert f"{lab.POD_IPS['C']}:{s.sport} 5" in peers.splitlines()


def test_udp_to_closed_port_reports_refused(lab):
    with lab.udp_session("C", lab.POD_IPS["B"], 9999) as s:
        assert s.request(timeout=1) is None
        assert s.last_error == "error ECONNREFUSED"


def test_ping_c_to_a0(lab):
    assert lab.ping("C", lab.POD_IPS["A0"])


def test_service_ip_unreachable_without_agent(lab):
    with pytest.raises(Exception) as e:
        lab.http_get("C", lab.SVC_IP, timeout=2)
    assert e.value.code == 7          # node-2 has no route for the ClusterIP: ICMP unreachable


def test_node_settings(lab):
    for node in lab.NODES:
        out = lab.run(node, "sysctl", "-n", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter",
                      "net.ipv4.conf.eth0.rp_filter").stdout.split()
        assert out == ["1", "0", "0"], node
        links = lab.run(node, "ip", "-o", "link", "show", "master", lab.NODE_BRIDGES[node]).stdout
        ports = {l.split(": ")[1].split("@")[0] for l in links.splitlines()}
        assert ports == {lab.POD_VETHS[p] for p in PODS if lab.POD_NODES[p] == node}


def test_ns_names(lab):
    assert lab.ns("A0") == lab.ns("a0") == lab.pod_ns["A0"] == lab.prefix + "a0"
    assert lab.ns("node-1") == lab.node_ns["node-1"] == lab.prefix + "node1"
    assert lab.ns(lab.underlay_ns) == lab.underlay_ns


def test_teardown_removes_everything():
    before = root_links()
    lab = Lab()
    try:
        lab.build()
        lab.start_pod_servers()
        assert sorted(lab_namespaces(lab)) == sorted(lab.namespaces)
        assert lab.http_get("A1", lab.POD_IPS["B"]) == "B"
        assert root_links() == before, "the lab created interfaces in the root namespace"
        tmpdir = lab.tmpdir
    finally:
        lab.teardown()
    lab.teardown()  # idempotent
    assert lab_namespaces(lab) == []
    assert not tmpdir.exists()
    assert not lab.bpf_dir.exists()
    assert root_links() == before


def test_partial_build_is_cleaned_up(monkeypatch):
    lab = Lab()

    def boom(pod):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(lab, "_build_pod", boom)
    with pytest.raises(RuntimeError, match="injected"):
        lab.build()
    assert lab_namespaces(lab) == []


# Dual stack (issue 19): the lab's IPv6 twin addresses, routed like IPv4's.
@pytest.mark.parametrize("client", PODS)
def test_every_pod_reaches_every_pod_over_ipv6(lab, client):
    for server in PODS:
        assert lab.http_get(client, lab.POD_IPS6[server]) == server, (client, server)


def test_ipv6_udp_session_keeps_one_source_port(lab):
    with lab.udp_session("C", lab.POD_IPS6["B"]) as s:
        assert [s.request(timeout=1) for _ in range(3)] == ["B"] * 3
        peers = lab.http_get("C", lab.POD_IPS6["B"], path="/udp-peers")
    assert f"{lab.POD_IPS6['C']}:{s.sport} 3" in peers.splitlines()


def test_ipv6_ping_pod_to_pod_and_outside_to_node(lab):
    assert lab.ping("C", lab.POD_IPS6["A0"])
    assert lab.ping("X", lab.NODE_IPS6["node-1"])
