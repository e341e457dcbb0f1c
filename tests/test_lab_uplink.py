"""Traffic from outside the cluster in seed 004's lab: clients X (192.168.64.100) and Y (.101) on
the underlay reach NodePorts, a LoadBalancer IP and externalTrafficPolicy Local services, through
the uplink programs on each node's eth0."""
import json
import re
import time

import pytest
import yaml

from tests.apiserver import endpoint_slice, service
from tests.lab import LB_IP, NODE_IPS, NODES, HttpError
from tests.test_lab_dataplane import wait_for

A0, B = "10.200.0.2", "10.200.1.2"
NODEPORT, NODEPORT_LOCAL, NODEPORT_LB, NODEPORT_EMPTY, HEALTH_PORT = 30080, 30081, 30082, 30083, 30090
ENDPOINTS = [(A0, "node-0", True), (B, "node-1", True)]


def manifests() -> list[dict]:
    def nodeport(name, port, node_port, **spec):
        svc = service("default", name, spec.pop("ip"), [("http", port, "TCP")], type=spec.pop("type", "NodePort"), **spec)
        svc["spec"]["ports"][0].update(nodePort=node_port, targetPort=8080)
        return svc

    lb = nodeport("svc-lb", 80, NODEPORT_LB, ip="10.96.1.3", type="LoadBalancer",
                  loadBalancerSourceRanges=["192.168.64.100/32"])
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
    return [
        nodeport("svc-np", 8080, NODEPORT, ip="10.96.1.1"),
        nodeport("svc-local", 8080, NODEPORT_LOCAL, ip="10.96.1.2", type="LoadBalancer",
                 externalTrafficPolicy="Local", healthCheckNodePort=HEALTH_PORT),
        lb,
        nodeport("svc-empty-np", 8080, NODEPORT_EMPTY, ip="10.96.1.4"),
        *(endpoint_slice("default", f"{name}-a", name, ENDPOINTS) for name in ("svc-np", "svc-local", "svc-lb")),
    ]


@pytest.fixture(scope="module", params=["auto", "native", "off"], ids=["xdp-auto", "xdp-native", "xdp-off"])
def agents(lab, request):
    """The whole set runs three times: the default (--xdp auto, on the lab's plain veth uplinks:
    tc alone), with XDP in front of tc, and with tc alone. XDP's own path runs on purpose: uplink
    peers that take XDP frames (a NIC's wire) and clients sending frames as a wire carries them
    (whole checksums: what XDP finishes itself)."""
    path = lab.tmpdir / "uplink-manifests"
    path.mkdir(exist_ok=True)
    (path / "cluster.yaml").write_text(yaml.safe_dump_all(manifests()))
    senders = ("X", "Y", "A0", "B")
    if request.param == "native":
        lab.set_uplink_peers("xdp")
        for sender in senders:
            lab.send_as_a_wire_carries(sender)
    try:
        for node in NODES:
            lab.start_agent(node, path, "--uplinks", "eth0", "--xdp", request.param)
        for node in NODES:
            wait_for(lambda: f"{NODE_IPS[node]} port {NODEPORT} proto 6" in lab.agent_cli(node, "nat", "dump", check=False),
                     what=f"NodePorts on {node}")
        if request.param == "native":
            for node in NODES:
                wait_for(lambda: "xdp_uplink (native)" in lab.agent_log(node), timeout=10, what=f"XDP on {node}")
        yield request.param
    finally:
        for node in NODES:
            lab.stop_agent(node)
            lab.agent_cli(node, "cleanup")   # programs and maps afresh for the next mode
        if request.param == "native":
            lab.set_uplink_peers("plain")
            for sender in senders:
                lab.send_as_a_wire_carries(sender, on=False)


def test_xdp_did_the_work_where_it_runs(lab, agents):
    """Established SNATed flows finished in XDP (XDP_TX counted on the uplink) when XDP runs."""
    def sent_by_xdp():
        return sum(int(n) for n in re.findall(r"xdp_tx: (\d+)", lab.run("node-2", "ethtool", "-S", "eth0").stdout))
    before = sent_by_xdp()
    assert lab.echo("X", NODE_IPS["node-2"], NODEPORT, 1 << 20)[0]
    assert (sent_by_xdp() > before) == (agents == "native")


def answers(lab, client, ip, port, n=20, path="/"):
    return lab.http_get_many(client, ip, n, port=port, path=path)


@pytest.mark.parametrize("node", NODES)
def test_nodeport_reaches_every_backend_from_every_node(lab, agents, node):
    got = answers(lab, "X", NODE_IPS[node], NODEPORT, n=30)
    assert set(got) == {"A0", "B"}, got


def test_local_policy_keeps_the_client_address_and_only_local_backends(lab, agents):
    assert set(answers(lab, "X", NODE_IPS["node-0"], NODEPORT_LOCAL)) == {"A0"}
    seen = lab.http_get("X", NODE_IPS["node-0"], NODEPORT_LOCAL, path="/client")
    assert seen.split(":")[0] == "192.168.64.100"          # A0 sees the client itself
    with pytest.raises(HttpError) as dropped:
        lab.http_get("X", NODE_IPS["node-2"], NODEPORT_LOCAL, timeout=1)
    assert dropped.value.code == 28                        # dropped: a timeout, not a refusal


def test_a_pod_on_the_node_reaching_a_local_policy_nodeport_uses_every_backend(lab, agents):
    assert set(answers(lab, "A1", NODE_IPS["node-0"], NODEPORT_LOCAL, n=30)) == {"A0", "B"}


def test_cluster_policy_snats_so_a_remote_backend_sees_the_node(lab, agents):
    peers = {lab.http_get("X", NODE_IPS["node-2"], NODEPORT, path="/client").split(":")[0] for _ in range(10)}
    assert peers == {NODE_IPS["node-2"]}                    # both backends are remote to node-2


def test_source_ranges_guard_the_lb_ip_but_not_its_nodeport(lab, agents):
    assert set(answers(lab, "X", LB_IP, 80)) == {"A0", "B"}
    with pytest.raises(HttpError) as blocked:
        lab.http_get("Y", LB_IP, 80, timeout=1)
    assert blocked.value.code == 28
    assert set(answers(lab, "Y", NODE_IPS["node-1"], NODEPORT_LB)) == {"A0", "B"}


def test_health_check_node_port_answers_like_kube_proxy(lab, agents):
    def check(node):
        r = lab.run("X", "curl", "-s", "-m", "2", "-w", "\n%{http_code}", f"http://{NODE_IPS[node]}:{HEALTH_PORT}/")
        body, code = r.stdout.rsplit("\n", 1)
        return int(code), json.loads(body)
    wait_for(lambda: check("node-0")[0] == 200, timeout=5, what="health check on node-0")
    code, body = check("node-0")
    assert body == {"service": {"namespace": "default", "name": "svc-local"}, "localEndpoints": 1}
    assert check("node-2") == (503, {"service": {"namespace": "default", "name": "svc-local"}, "localEndpoints": 0})


def test_no_endpoint_is_refused_at_once(lab, agents):
    started = time.monotonic()
    with pytest.raises(HttpError) as refused:
        lab.http_get("X", NODE_IPS["node-2"], NODEPORT_EMPTY, timeout=5)
    assert refused.value.code == 7 and time.monotonic() - started < 1


def test_cluster_ips_are_not_served_to_the_outside(lab, agents):
    with pytest.raises(HttpError):
        lab.http_get("X", "10.96.1.1", 8080, timeout=1)
