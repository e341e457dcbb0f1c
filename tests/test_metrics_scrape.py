"""Issue 21: a metrics scrape reads the per-service counters in batches, not a lookup per service
(10k lookups at 10k services), renders them without prometheus_client's per-sample formatting,
and takes conntrack's size from the last sweep instead of walking a map of up to half a million
entries. The figures are still each service's sum over CPUs, in valid Prometheus text."""

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
