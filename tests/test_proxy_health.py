"""kube-proxy's health endpoints as ebpflb serves them (ebpflb/agent/proxy_health.py), checked against
kube-proxy's pkg/proxy/healthcheck/proxy_health.go: its bodies byte for byte, 200 while changes are
synced in time, 503 once one waits past the timeout or the node is being deleted; /proxyMode on the
metrics port; a port kube-proxy still holds is taken once it is free."""
import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from ebpflb.agent import http as agent_http
from ebpflb.agent import metrics, proxy_health
from ebpflb.agent.proxy_health import ProxyHealth, go_time

START = 1_767_225_600 * 10**9   # 2026-01-01 00:00:00 UTC, ns
S = 10**9


class Clock:
    def __init__(self):
        self.elapsed = 0.0

    def wall(self):
        return START + int(self.elapsed * S)

    def monotonic(self):
        return 100 * S + int(self.elapsed * S)


def health(timeout=60.0):
    clock = Clock()
    return ProxyHealth(timeout, wall=clock.wall, monotonic=clock.monotonic, process_start=95.0), clock


def test_times_are_printed_as_go_prints_a_time():
    assert go_time(None, None) == "0001-01-01 00:00:00 +0000 UTC"
    assert go_time(START, 5 * S) == "2026-01-01 00:00:00 +0000 UTC m=+5.000000000"
    assert go_time(START + 1_500_000_000, 12_250_000_000) == "2026-01-01 00:00:01.5 +0000 UTC m=+12.250000000"
    assert go_time(START + 123, 123) == "2026-01-01 00:00:00.000000123 +0000 UTC m=+0.000000123"


def test_healthy_from_the_start_and_while_changes_are_synced_in_time():
    h, clock = health()
    code, body = h.healthz()
    assert (code, body) == (200, b'{"lastUpdated": "2026-01-01 00:00:00 +0000 UTC m=+5.000000000",'
                                 b'"currentTime": "2026-01-01 00:00:00 +0000 UTC m=+5.000000000", "nodeEligible": true}')
    h.queued()
    clock.elapsed = 59
    assert h.healthz()[0] == 200
    h.updated()
    clock.elapsed = 500   # nothing queued: however long since the last sync
    assert h.healthz()[0] == h.livez()[0] == 200
    assert json.loads(h.livez()[1]) == {"lastUpdated": "2026-01-01 00:08:20 +0000 UTC m=+505.000000000",
                                        "currentTime": "2026-01-01 00:08:20 +0000 UTC m=+505.000000000"}


def test_a_change_waiting_past_the_timeout_fails_both_naming_the_last_sync():
    h, clock = health(timeout=60)
    clock.elapsed = 10
    h.updated()
    clock.elapsed = 20
    h.queued()
    clock.elapsed = 30
    h.queued()   # a later change does not restart the wait
    clock.elapsed = 80
    code, body = h.healthz()
    assert code == 503 and json.loads(body) == {
        "lastUpdated": "2026-01-01 00:00:10 +0000 UTC m=+15.000000000",
        "currentTime": "2026-01-01 00:01:20 +0000 UTC m=+85.000000000", "nodeEligible": True}
    assert h.livez()[0] == 503
    h.updated()
    assert h.healthz()[0] == h.livez()[0] == 200


def test_never_synced_and_stalled_names_go_s_zero_time():
    h, clock = health(timeout=1)
    h.queued()
    clock.elapsed = 2
    assert json.loads(h.livez()[1])["lastUpdated"] == "0001-01-01 00:00:00 +0000 UTC"


def test_a_node_being_deleted_fails_healthz_but_not_livez():
    h, _ = health()
    h.set_node_eligible(False)
    code, body = h.healthz()
    assert code == 503 and body.endswith(b'"nodeEligible": false}')
    assert h.livez()[0] == 200
    h.set_node_eligible(True)
    assert h.healthz()[0] == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def test_served_over_http_as_kube_proxy_serves_them():
    h, _ = health()
    port = free_port()
    listener = proxy_health.serve(f"127.0.0.1:{port}", h)
    try:
        code, ctype, body = get(port, "/healthz")
        assert (code, ctype) == (200, "application/json")
        assert body == h.healthz()[1]   # the clock stands still
        h.set_node_eligible(False)
        assert get(port, "/healthz")[0] == 503 and get(port, "/livez")[0] == 200
        assert get(port, "/metrics")[0] == 404
    finally:
        listener.shutdown()


def test_the_metrics_port_tells_the_proxy_mode():
    port = free_port()
    listener = metrics.serve(f"127.0.0.1:{port}", CollectorRegistry(), metrics.Health())
    try:
        assert get(port, "/proxyMode") == (200, "text/plain; charset=utf-8", b"ebpf")
        assert get(port, "/healthz")[0] == 200
    finally:
        listener.shutdown()


def test_a_port_in_use_is_taken_as_soon_as_it_is_free(monkeypatch):
    """kube-proxy holds 10249 and 10256 until it leaves the node: the agent starts anyway and takes them."""
    monkeypatch.setattr(agent_http, "RETRY_S", 0.1)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    h, _ = health()
    listener = proxy_health.serve(f"127.0.0.1:{port}", h)
    try:
        assert listener.server is None
        holder.close()
        deadline = time.monotonic() + 5
        while listener.server is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(port, "/livez")[0] == 200
    finally:
        holder.close()
        listener.shutdown()


@pytest.mark.parametrize("text", ["10256", "host:port", "1.2.3.4:0", "1.2.3.4:65536"])
def test_addresses_are_host_and_port(text):
    with pytest.raises(ValueError):
        agent_http.split_address(text)
