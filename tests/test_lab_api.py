"""The agent fed by the Kubernetes API: the real `kubernetes` client in each node's agent against
tests/apiserver.py on the lab's control-plane host (192.168.64.1). Traffic, changes, 410s, an API
that goes away, malformed objects, metrics, and kill -9 with a connection open."""
import copy
import signal
import time

import pytest

from ebpflb.core.model import FrontendKey
from ebpflb.datapath.maps import Maps, MapsNotFound
from ebpflb.sources.manifest_files import load_manifests
from ebpflb.sync.writer import fe_key
from tests.apiserver import endpoint_slice, node, service
from tests.lab import EXAMPLES, NODE_IPS, NODES, HttpError
from tests.test_lab_dataplane import VIP, wait_for


def frontend(lab, node_name, addr, port, proto=6):
    """(count, local, flags) of a frontend in the node's maps; None if absent (or no maps yet)."""
    try:
        maps = Maps.open(str(lab.pin_dir(node_name)))
    except MapsNotFound:
        return None
    try:
        value = maps.nat_fe.lookup(fe_key(FrontendKey(addr, port, proto)))
        return None if value is None else (value.count, value.local, value.flags)
    finally:
        maps.close()


def metrics(lab, node_name) -> str:
    return lab.run(node_name, "curl", "-sS", "-m", "5", "http://127.0.0.1:10249/metrics").stdout


@pytest.fixture(scope="module")
def api(lab):
    server, kubeconfig = lab.start_apiserver(bookmark_interval=0.5)
    services, slices = load_manifests(EXAMPLES)
    server.load([*services, *slices, *(node(n, NODE_IPS[n]) for n in NODES)])
    for n in NODES:
        lab.start_agent(n, None, "--metrics-addr", "127.0.0.1:10249", kubeconfig=kubeconfig)
    for n in NODES:
        wait_for(lambda: frontend(lab, n, VIP, 8080) is not None and frontend(lab, n, VIP, 8080)[0] == 2,
                 what=f"agent on {n} to program svc-1 from the API")
    yield server
    for n in NODES:
        lab.stop_agent(n)


def test_initial_list_programs_every_node_and_traffic_flows(lab, api):
    assert set(lab.http_get_many("C", VIP, 30)) == {"A0", "B"}
    assert frontend(lab, "node-2", "10.96.0.3", 8080) == (0, 0, 0)


def test_add_modify_delete_reach_the_maps_quickly(lab, api):
    def apply_and_wait(do, check, what):
        """Seconds from the API change to the maps holding it, the agent at rest before."""
        time.sleep(1.1)   # past the min sync period, which only coalesces bursts
        started = time.monotonic()
        do()
        wait_for(check, timeout=5, interval=0.002, what=what)
        return time.monotonic() - started

    took = []
    for do, check, what in [
        (lambda: api.put(service("default", "svc-2", "10.96.0.5", [("http", 80, "TCP")])),
         lambda: frontend(lab, "node-2", "10.96.0.5", 80) == (0, 0, 0), "service added"),
        (lambda: api.put(endpoint_slice("default", "svc-2-a", "svc-2", [("10.200.0.3", "node-0", True)])),
         lambda: frontend(lab, "node-2", "10.96.0.5", 80) == (1, 0, 0), "slice added"),
        (lambda: api.put(endpoint_slice("default", "svc-2-a", "svc-2", [("10.200.0.3", "node-0", True),
                                                                         ("10.200.1.2", "node-1", True)])),
         lambda: frontend(lab, "node-2", "10.96.0.5", 80) == (2, 0, 0), "slice modified"),
    ]:
        took.append(apply_and_wait(do, check, what))
    wait_for(lambda: frontend(lab, "node-0", "10.96.0.5", 80) == (2, 1, 0), timeout=5,
             what="node-0 to count A1 as local")
    assert set(lab.http_get_many("C", "10.96.0.5", 20, port=80)) == {"A1", "B"}
    took.append(apply_and_wait(lambda: api.delete("EndpointSlice", "default", "svc-2-a"),
                               lambda: frontend(lab, "node-2", "10.96.0.5", 80) == (0, 0, 0), "slice deleted"))
    took.append(apply_and_wait(lambda: api.delete("Service", "default", "svc-2"),
                               lambda: frontend(lab, "node-2", "10.96.0.5", 80) is None, "service deleted"))
    # Only its own Node is watched (a field selector on its name, as kube-proxy does): another node's
    # coming is not even sent to it.
    api.put(node("node-3", "192.168.64.7"))
    own = node("node-2", NODE_IPS["node-2"])
    own["metadata"]["labels"]["touched"] = "yes"
    api.put(own)
    wait_for(lambda: 'ebpflb_watch_events_total{resource="nodes",type="MODIFIED"} 1.0' in metrics(lab, "node-2"),
             timeout=5, what="node MODIFIED event counted")
    assert 'ebpflb_watch_events_total{resource="nodes",type="ADDED"}' not in metrics(lab, "node-2")
    api.delete("Node", "", "node-3")
    # A single change at rest reaches the maps in milliseconds; 0.25 s leaves room for a loaded
    # CI machine (the printed figures are what to look at).
    print("API change -> maps (s):", [round(t, 4) for t in took])
    assert max(took) < 0.25, took


def test_410_gone_relists_and_converges(lab, api):
    api.gone_on_every_watch = True
    api.compact()
    api.cut_watches()
    api.put(endpoint_slice("default", "svc-1-abc", "svc-1", [("10.200.0.2", "node-0", True)],
                           ports=[("http", 8080, "TCP"), ("dns", 5353, "UDP"), ("echo", 9000, "TCP")]))
    time.sleep(1)
    api.gone_on_every_watch = False
    wait_for(lambda: frontend(lab, "node-2", VIP, 8080)[0] == 1, timeout=5, what="relist after 410")
    assert 'ebpflb_watch_restarts_total{reason="gone",resource="endpointslices"}' in metrics(lab, "node-2")
    restore_svc1(api)
    wait_for(lambda: frontend(lab, "node-2", VIP, 8080)[0] == 2, timeout=5, what="svc-1 restored")


def restore_svc1(api):
    _, slices = load_manifests(EXAMPLES)
    api.put(slices[0])


def test_api_away_changes_nothing_and_restart_converges(lab, api):
    before = lab.agent_cli("node-2", "nat", "dump")
    api.stop()
    time.sleep(2)
    assert lab.agent_cli("node-2", "nat", "dump") == before          # never flushed for an absent API
    assert set(lab.http_get_many("C", VIP, 10)) == {"A0", "B"}
    api.put(endpoint_slice("default", "svc-1-abc", "svc-1", [("10.200.1.2", "node-1", True)],
                           ports=[("http", 8080, "TCP"), ("dns", 5353, "UDP"), ("echo", 9000, "TCP")]))
    lab.restart_apiserver()
    started = time.monotonic()
    wait_for(lambda: frontend(lab, "node-2", VIP, 8080)[0] == 1, timeout=10, interval=0.01,
             what="convergence after the API came back")
    assert time.monotonic() - started < 2.0
    restore_svc1(api)
    wait_for(lambda: frontend(lab, "node-2", VIP, 8080)[0] == 2, timeout=5, what="svc-1 restored")


def test_watch_cut_mid_event_loses_nothing(lab, api):
    api.cut_watches(mid_event=True)
    api.put(service("default", "svc-3", "10.96.0.6", [("http", 80, "TCP")]))
    wait_for(lambda: frontend(lab, "node-1", "10.96.0.6", 80) == (0, 0, 0), timeout=5, what="svc-3 after a torn watch")
    api.delete("Service", "default", "svc-3")
    wait_for(lambda: frontend(lab, "node-1", "10.96.0.6", 80) is None, timeout=5, what="svc-3 gone")


def test_malformed_service_is_skipped_named_and_counted(lab, api):
    bad = service("default", "bad", "10.96.0.7", [("http", 80, "TCP")])
    bad["spec"]["clusterIP"] = bad["spec"]["clusterIPs"][0] = "999.1.1.1"
    api.put(bad)
    api.put(service("default", "good", "10.96.0.8", [("http", 80, "TCP")]))
    wait_for(lambda: frontend(lab, "node-0", "10.96.0.8", 80) is not None, timeout=5, what="good service")
    wait_for(lambda: 'ebpflb_objects_rejected{kind="Service",reason="bad_ip"} 1.0' in metrics(lab, "node-0"),
             timeout=5, what="rejection metric")
    assert "skipped Service default/bad" in lab.agent_log("node-0")
    assert frontend(lab, "node-0", VIP, 8080)[0] == 2
    api.delete("Service", "default", "bad")
    api.delete("Service", "default", "good")
    for n in NODES:   # before a later test kills an agent: a restart would find (and delete) it
        wait_for(lambda: frontend(lab, n, "10.96.0.8", 80) is None, timeout=5, what=f"good service gone on {n}")


def test_metrics_and_health(lab, api):
    lab.http_get_many("C", VIP, 5)
    text = metrics(lab, "node-2")
    counted = [line for line in text.splitlines()
               if line.startswith('ebpflb_service_connections_total{name="svc-1",namespace="default",port="http",protocol="TCP"}')]
    assert counted and float(counted[0].split()[-1]) >= 5, counted
    for name in ("ebpflb_sync_duration_seconds_count", "ebpflb_last_successful_sync_timestamp_seconds",
                 "ebpflb_services_programmed", "ebpflb_backends_programmed",
                 'ebpflb_map_capacity{map="conntrack"} 524288.0', 'ebpflb_map_entries{map="frontends"}'):
        assert name in text, name
    for path, code in (("/healthz", "200"), ("/readyz", "200"), ("/nope", "404")):
        out = lab.run("node-2", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                      f"http://127.0.0.1:10249{path}").stdout
        assert out == code, (path, out)


def test_kill_9_and_restart_keep_an_open_connection_and_write_nothing(lab, api):
    session = lab.tcp_session("C", VIP)
    try:
        first = session.request()
        assert first in ("A0", "B")
        lab.stop_agent("node-2", signal.SIGKILL)
        assert session.request() == first
        log_before = len(lab.agent_log("node-2"))
        lab.start_agent("node-2", None, "--metrics-addr", "127.0.0.1:10249", kubeconfig=str(lab.tmpdir / "kubeconfig"))
        wait_for(lambda: "sync:" in lab.agent_log("node-2")[log_before:], what="restarted agent's first sync")
        assert "0 map writes, 0 deletes" in lab.agent_log("node-2")[log_before:], lab.agent_log("node-2")[log_before:][-3000:]
        assert [session.request() for _ in range(5)] == [first] * 5
    finally:
        session.close()
