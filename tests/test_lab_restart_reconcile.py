"""Issue 15's scenario: agents on two nodes from manifests, both killed with `kill -9`; while they are
down two Services are deleted and one is created; the agents start again. Afterwards no deleted
ClusterIP answers or appears in the dumps (its id went to the new Service once, and its frontend
forwarded there), and the new Service works."""
import signal

import pytest
import yaml

from tests.lab import HttpError
from tests.test_lab_dataplane import VIP, wait_for

AGENT_NODES = ("node-0", "node-2")   # pods A0, A1 on node-0; C on node-2
GONE = {"svc-gone-a": ("10.96.0.20", "10.200.0.3"), "svc-gone-b": ("10.96.0.21", "10.200.0.2")}
NEW = ("svc-new", "10.96.0.30", "10.200.1.2")   # answered by B


def service_yaml(name: str, vip: str, backend: str) -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
             "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip],
                      "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-a", "namespace": "default",
                          "labels": {"kubernetes.io/service-name": name}},
             "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
             "endpoints": [{"addresses": [backend], "conditions": {"ready": True}, "nodeName": "node-x"}]}]


def write_extra(manifests, services: dict[str, tuple[str, str]]) -> None:
    docs = [doc for name, (vip, backend) in sorted(services.items()) for doc in service_yaml(name, vip, backend)]
    (manifests / "extra.yaml").write_text(yaml.safe_dump_all(docs))


def answers(lab, pod: str, vip: str) -> str | None:
    try:
        return lab.http_get(pod, vip, 8080, timeout=1).strip()
    except HttpError:
        return None


def dumped(lab, node: str, vip: str) -> bool:
    dump = lab.agent_cli(node, "nat", "dump", check=False)   # fails until the agent pinned its maps
    return any(line.startswith(f"{vip} port ") for line in dump.splitlines())


@pytest.fixture
def agents(lab):
    manifests = lab.manifests_dir()
    write_extra(manifests, GONE)
    for n in AGENT_NODES:
        lab.start_agent(n, manifests)
    for n in AGENT_NODES:
        wait_for(lambda: all(dumped(lab, n, vip) for vip, _ in GONE.values()), timeout=60,
                 what=f"agent on {n} to program the services")
    yield manifests
    for n in AGENT_NODES:
        lab.stop_agent(n)


def test_services_deleted_and_created_while_the_agents_are_down(lab, agents):
    assert answers(lab, "C", GONE["svc-gone-a"][0]) == "A1"
    for n in AGENT_NODES:
        lab.stop_agent(n, signal.SIGKILL)
    name, vip, backend = NEW
    write_extra(agents, {name: (vip, backend)})
    logged = {n: len(lab.agent_log(n)) for n in AGENT_NODES}
    for n in AGENT_NODES:
        lab.start_agent(n, agents)
    for n in AGENT_NODES:
        wait_for(lambda: "sync:" in lab.agent_log(n)[logged[n]:], timeout=60, what=f"restarted agent on {n} to sync")
    for n in AGENT_NODES:
        dump = lab.agent_cli(n, "nat", "dump")
        for gone_vip, _ in GONE.values():
            assert not dumped(lab, n, gone_vip), f"{gone_vip} still in {n}'s maps:\n{dump}"
        assert dumped(lab, n, vip), dump
    for pod in ("C", "A1"):
        for gone_name, (gone_vip, _) in GONE.items():
            assert answers(lab, pod, gone_vip) is None, f"{pod} -> deleted {gone_name} ({gone_vip}) answered"
        assert answers(lab, pod, vip) == "B"
        assert answers(lab, pod, VIP) in ("A0", "B")
