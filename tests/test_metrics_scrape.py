"""Issue 21: a metrics scrape reads the per-service counters in batches, not a lookup per service
(10k lookups at 10k services), renders them without prometheus_client's per-sample formatting,
and takes conntrack's size from the last sweep instead of walking a map of up to half a million
entries. The figures are still each service's sum over CPUs, in valid Prometheus text."""

import yaml
from prometheus_client.parser import text_string_to_metric_families

from ebpflb.datapath.maps import BpfMap
from ebpflb.datapath.structs import ffi
from tests.agent_harness import running_agent, service_manifest

SERVICES = 300


def scrape(agent) -> dict[str, float]:
    """{sample line's name and labels: value}, from what /metrics serves, checked by
    prometheus_client's own parser (the per-service families are rendered by hand)."""
    text = agent.metrics.text().decode()
    parsed = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    assert {"ebpflb_service_packets_total", "ebpflb_map_entries", "ebpflb_services_programmed"} <= parsed
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_a_scrape_reads_counters_in_batches_and_sums_every_cpu(tmp_path, monkeypatch):
    (tmp_path / "svcs.yaml").write_text("---\n".join(
        service_manifest(f"s{i}", f"10.96.{i // 250}.{1 + i % 250}") for i in range(SERVICES)))
    with running_agent(tmp_path) as agent:
        counters, ncpus = agent.datapath.maps.svc_counters, agent.datapath.maps.svc_counters.ncpus
        assert ncpus >= 2
        ids = {name.name: svc_id for name, svc_id in agent.tracker.state.ids.items()}
        assert len(ids) == SERVICES
        for svc_id in ids.values():   # different figures on each CPU: the scrape must add them all up
            per_cpu = ffi.new(f"struct svc_counters[{ncpus}]",
                              [(svc_id * 10 + cpu, svc_id * 1000 + cpu, svc_id + cpu) for cpu in range(ncpus)])
            counters.update(ffi.new("__u32 *", svc_id), per_cpu)

        lookups, walks = [], []
        monkeypatch.setattr(BpfMap, "lookup", lambda self, key, real=BpfMap.lookup: lookups.append(self.path) or
                            real(self, key))
        monkeypatch.setattr(BpfMap, "count", lambda self, real=BpfMap.count: walks.append(self.path) or real(self))
        agent.ct_entries = 7   # as the last sweep counted them
        figures = scrape(agent)

        assert not [p for p in lookups if p.endswith("/svc_counters")], "one lookup per service"
        assert not walks, "the scrape walked a map to count it"
        assert figures['ebpflb_map_entries{map="conntrack"}'] == 7
        spread = sum(range(ncpus))
        for name, svc_id in ids.items():
            label = f'{{name="{name}",namespace="default",port="http",protocol="TCP"}}'
            assert figures[f"ebpflb_service_packets_total{label}"] == ncpus * svc_id * 10 + spread
            assert figures[f"ebpflb_service_bytes_total{label}"] == ncpus * svc_id * 1000 + spread
            assert figures[f"ebpflb_service_connections_total{label}"] == ncpus * svc_id + spread


def test_a_dual_stack_port_is_one_series_summing_both_families(tmp_path):
    """Issue 19: a dual-stack port has an id per family; two series with one label set would be
    invalid Prometheus text (and the scraper would keep one at random)."""
    (tmp_path / "svc.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dual", "namespace": "default"},
         "spec": {"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7", "fd00:96::7"], "ipFamilies": ["IPv4", "IPv6"],
                  "ipFamilyPolicy": "RequireDualStack",
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}]))
    with running_agent(tmp_path) as agent:
        counters, ncpus = agent.datapath.maps.svc_counters, agent.datapath.maps.svc_counters.ncpus
        ids = {name.family: svc_id for name, svc_id in agent.tracker.state.ids.items()}
        assert set(ids) == {4, 6} and ids[4] != ids[6]
        for family, svc_id in ids.items():
            per_cpu = ffi.new(f"struct svc_counters[{ncpus}]", [(family, 100 * family, 1)] * ncpus)
            counters.update(ffi.new("__u32 *", svc_id), per_cpu)
        text = agent.metrics.text().decode()
        label = '{name="dual",namespace="default",port="http",protocol="TCP"}'
        assert [line for line in text.splitlines() if line.startswith("ebpflb_service_packets_total{")] == [
            f"ebpflb_service_packets_total{label} {10 * ncpus}"]
        figures = scrape(agent)
        assert figures[f"ebpflb_service_bytes_total{label}"] == 1000 * ncpus
        assert figures[f"ebpflb_service_connections_total{label}"] == 2 * ncpus
