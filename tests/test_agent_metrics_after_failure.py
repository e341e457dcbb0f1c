"""Issue 15.8: the metrics collector follows the writer. A failed sync makes the agent a new writer
(from what the maps hold); the map gauges must follow it, not freeze at the old one's last count."""
from prometheus_client import generate_latest

import ebpflb.sync.writer
from tests.agent_harness import running_agent, service_manifest, wait_until


def gauge(agent, line_start: str) -> float:
    text = generate_latest(agent.metrics.registry).decode()
    return float(next(line for line in text.splitlines() if line.startswith(line_start)).split()[-1])


def test_map_gauges_follow_the_writer_after_a_failed_sync(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text(service_manifest("a", "10.96.0.1"))
    with running_agent(tmp_path) as agent:
        assert gauge(agent, 'ebpflb_map_entries{map="frontends"}') == 1
        real_apply, failures = ebpflb.sync.writer.MapWriter.apply, []

        def apply_failing_once(self, *args, **kwargs):
            if not failures:
                failures.append(1)
                raise RuntimeError("injected: the sync fails once")
            return real_apply(self, *args, **kwargs)

        monkeypatch.setattr(ebpflb.sync.writer.MapWriter, "apply", apply_failing_once)
        (tmp_path / "b.yaml").write_text(service_manifest("b", "10.96.0.2", backends=("10.1.0.2", "10.1.0.3")))
        # services_programmed is set by each good sync itself, not read from the writer
        wait_until(lambda: failures and gauge(agent, "ebpflb_services_programmed") == 2,
                   what="a failed sync, then a good one")
        assert gauge(agent, 'ebpflb_map_entries{map="frontends"}') == 2
        assert gauge(agent, 'ebpflb_map_entries{map="backends"}') == 3
        (tmp_path / "b.yaml").unlink()
        wait_until(lambda: gauge(agent, "ebpflb_services_programmed") == 1, what="b deleted")
        assert gauge(agent, 'ebpflb_map_entries{map="frontends"}') == 1
