"""Issue 8.1: the agent on every node killed with SIGKILL and restarted five times, then stopped
for 30 s, while clients keep going: pod C to svc-1's ClusterIP, and outside client X to a NodePort
on node-2 whose backends are remote (SNATed). The data plane lives in the kernel and the restarted
agent takes the maps back as they are: not one request may fail, no connection may break.

Issue 15: while the agents are stopped the cluster changes (a Service deleted, another created);
the restarted agents delete what the deleted one left and program the new one, and the clients
still lose nothing."""
import re
import signal
import time

import pytest

from tests.apiserver import endpoint_slice, service
from tests.lab import NODE_IPS, NODES
from tests.reliability import Load, agents_on_api, seed_objects, start_agent
from tests.test_lab_api import frontend
from tests.test_lab_dataplane import VIP, wait_for

RESTARTS = 5
STOPPED_S = 30
NODEPORT_IP = "10.96.2.1"
NODEPORTS = {"http": 30180, "dns": 30153, "echo": 30190}
PORTS = [("http", 8080, "TCP"), ("dns", 5353, "UDP"), ("echo", 9000, "TCP")]
GONE_IP, NEW_IP = "10.96.3.1", "10.96.3.2"   # deleted / created while the agents are stopped


def plain_service(name: str, ip: str, backend: tuple[str, str]) -> list[dict]:
    return [service("default", name, ip, [("http", 8080, "TCP")]),
            endpoint_slice("default", f"{name}-a", name, [(*backend, True)], ports=[("http", 8080, "TCP")])]


def nodeport_service() -> list[dict]:
    svc = service("default", "svc-np", NODEPORT_IP, PORTS, type="NodePort")
    for port in svc["spec"]["ports"]:
        port["nodePort"] = NODEPORTS[port["name"]]
    return [svc, endpoint_slice("default", "svc-np-a", "svc-np", [("10.200.0.2", "node-0", True),
                                                                  ("10.200.1.2", "node-1", True)], ports=PORTS)]


@pytest.fixture(scope="module")
def kubeconfig(lab):
    server, kubeconfig = agents_on_api(lab, [*seed_objects(), *nodeport_service(),
                                             *plain_service("svc-gone", GONE_IP, ("10.200.0.3", "node-0"))])
    for n in NODES:
        wait_for(lambda: (frontend(lab, n, VIP, 8080) or (0,))[0] == 2
                 and frontend(lab, n, NODE_IPS[n], NODEPORTS["http"]) is not None
                 and frontend(lab, n, GONE_IP, 8080) is not None,
                 timeout=90, what=f"agent on {n}")
    yield server, kubeconfig
    for n in NODES:
        lab.stop_agent(n)


def restart_agents(lab, kubeconfig, sig: int, down_for: float = 0.0, meanwhile=lambda: None) -> dict[str, str]:
    """Stop every node's agent with sig, do meanwhile(), wait down_for, start them again; each one's
    first sync line."""
    logged = {n: len(lab.agent_log(n)) for n in NODES}
    for n in NODES:
        lab.stop_agent(n, sig)
    meanwhile()
    time.sleep(down_for)
    for n in NODES:
        start_agent(lab, n, kubeconfig)
    first_sync = {}
    for n in NODES:
        wait_for(lambda: "sync:" in lab.agent_log(n)[logged[n]:], timeout=60, interval=0.2,
                 what=f"restarted agent on {n} to sync")
        first_sync[n] = next(line for line in lab.agent_log(n)[logged[n]:].splitlines() if "sync:" in line)
    return first_sync


def test_sigkill_restarts_and_a_30s_stop_lose_no_request_and_no_connection(lab, kubeconfig, figure):
    server, kubeconfig = kubeconfig

    def change_the_cluster():
        server.delete("Service", "default", "svc-gone")
        server.delete("EndpointSlice", "default", "svc-gone-a")
        server.load(plain_service("svc-new", NEW_IP, ("10.200.1.2", "node-1")))

    inside = Load(lab, "C", VIP, "--long-lived", 4, "--udp-flows", 4)
    outside = Load(lab, "X", NODE_IPS["node-2"], "--http-port", NODEPORTS["http"],
                   "--echo-port", NODEPORTS["echo"], "--udp-port", NODEPORTS["dns"], "--long-lived", 4, "--udp-flows", 4)
    syncs = []
    try:
        for _ in range(RESTARTS):
            time.sleep(1)
            syncs.append(restart_agents(lab, kubeconfig, signal.SIGKILL))
        stopped = restart_agents(lab, kubeconfig, signal.SIGTERM, down_for=STOPPED_S, meanwhile=change_the_cluster)
        time.sleep(1)
        for n in NODES:
            assert frontend(lab, n, GONE_IP, 8080) is None, f"deleted svc-gone still in {n}'s maps"
            assert frontend(lab, n, NEW_IP, 8080) == (1, int(n == "node-1"), 0), n   # B is on node-1
        assert lab.http_get("C", NEW_IP, 8080).strip() == "B"
    finally:
        reports = {"C -> ClusterIP": inside.stop(), "X -> NodePort on node-2": outside.stop()}
    for what, report in reports.items():
        figure(f"restarts ({RESTARTS}x SIGKILL on every node, one {STOPPED_S} s stop), {what}: {report.summary()}")
    for report in reports.values():
        report.assert_nothing_lost()
    # The restarted agents found the maps as they had left them.
    for first_sync in syncs:
        for n, line in first_sync.items():
            assert "0 map writes, 0 deletes" in line, (n, line)
    # After the stop they found svc-gone to delete and svc-new to write.
    for n, line in stopped.items():
        writes, deletes = map(int, re.search(r"(\d+) map writes, (\d+) deletes", line).groups())
        assert writes and deletes, (n, line)
