"""Issue 19, first increment: the agent computes both families and programs IPv4 only. A real agent
(in-process, its own namespace, real pinned maps) fed dual-stack and IPv6-only Services: the maps hold
the IPv4 frontends, the IPv6 ones are counted in a metric and logged once per service, and nothing
fails."""
import logging

import yaml
from prometheus_client import generate_latest

from tests.agent_harness import running_agent, wait_until


def gauge(agent, line_start: str) -> float:
    text = generate_latest(agent.metrics.registry).decode()
    return float(next(line for line in text.splitlines() if line.startswith(line_start)).split()[-1])


def manifest(name: str, cluster_ips: list[str], slices: dict[str, list[str]]) -> str:
    families = ["IPv6" if ":" in ip else "IPv4" for ip in cluster_ips]
    return yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
         "spec": {"clusterIP": cluster_ips[0], "clusterIPs": cluster_ips, "ipFamilies": families,
                  "ipFamilyPolicy": "RequireDualStack" if len(cluster_ips) == 2 else "SingleStack",
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
        *({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": address_type,
           "metadata": {"name": f"{name}-{address_type.lower()}", "namespace": "default",
                        "labels": {"kubernetes.io/service-name": name}},
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": [{"addresses": [a], "conditions": {"ready": True}, "nodeName": "node-b"} for a in addresses]}
          for address_type, addresses in slices.items())])


def test_ipv6_is_computed_counted_and_logged_but_only_ipv4_reaches_the_maps(tmp_path, caplog):
    (tmp_path / "dual.yaml").write_text(manifest("dual", ["10.96.0.1", "fd00::1"],
                                                 {"IPv4": ["10.1.0.1", "10.1.0.2"], "IPv6": ["fd01::1"]}))
    (tmp_path / "v6.yaml").write_text(manifest("v6", ["fd00::2"], {"IPv6": ["fd01::2"]}))
    with caplog.at_level(logging.INFO, logger="ebpflb.sync.family"), running_agent(tmp_path) as agent:
        writer = agent.session.writer
        assert {(k.addr, k.port) for k in writer.frontends} == {("10.96.0.1", 80)}
        assert sorted(b.addr for slots in writer.slots.values() for gen in slots.values() for b in gen) == \
            ["10.1.0.1", "10.1.0.2"]
        assert writer.service_ips == {"10.96.0.1"}
        assert gauge(agent, "ebpflb_ipv6_frontends_unprogrammed") == 2
        assert gauge(agent, "ebpflb_services_programmed") == 1
        assert {k.addr for k in agent.tracker.state.frontends} == {"10.96.0.1", "fd00::1", "fd00::2"}
        (tmp_path / "v6.yaml").unlink()
        wait_until(lambda: gauge(agent, "ebpflb_ipv6_frontends_unprogrammed") == 1, what="the IPv6-only service gone")
        (tmp_path / "dual.yaml").write_text(manifest("dual", ["10.96.0.1", "fd00::1"], {"IPv4": ["10.1.0.1"]}))
        wait_until(lambda: sum(len(gen) for slots in agent.session.writer.slots.values() for gen in slots.values())
                   == 1, what="the IPv4 backend gone")
        assert gauge(agent, "ebpflb_ipv6_frontends_unprogrammed") == 1
    lines = [r.getMessage() for r in caplog.records if "not yet programmed" in r.getMessage()]
    assert sorted(lines) == ["service default/dual: IPv6 frontends are computed but not yet programmed",
                             "service default/v6: IPv6 frontends are computed but not yet programmed"]
