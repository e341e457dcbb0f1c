"""Issue 8.5: full maps. A flood of new flows far beyond the conntrack map's capacity: the LRU
evicts idle flows, new and active ones keep working, the pressure shows in a metric and a log
line warns once. NAT maps too small for every service: a clear error and metric, the services
that fit keep working, none is half programmed."""
import sys
import time

import pytest

from tests.apiserver import endpoint_slice, service
from tests.lab import POD_IPS, POD_NODES
from tests.reliability import Load, agents_on_api, seed_objects
from tests.test_lab_api import frontend, metrics
from tests.test_lab_dataplane import VIP, wait_for

CT_MAP_MAX = 8192
FLOOD_FLOWS = 40000            # 80k entries into 8k
FLOOD_RATE = 5000              # new flows a second: the map turns over every ~0.8 s
FRONTEND_MAP_MAX = 12          # svc-1's 3 + svc-empty's 1 + room for two 3-port services, not three

FLOOD = f"""
import socket, sys, time
started = time.monotonic()
for i in range({FLOOD_FLOWS}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("{VIP}", 5353))
    s.close()
    ahead = started + i / {FLOOD_RATE} - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
print(time.monotonic() - started)
"""


def gauge(text: str, name: str) -> float:
    line = next(l for l in text.splitlines() if l.startswith(name))
    return float(line.split()[-1])


@pytest.fixture(scope="module")
def api(lab):
    server, _ = agents_on_api(lab, seed_objects(), "--ct-map-max", CT_MAP_MAX, "--ct-sweep-interval", 1,
                              "--frontend-map-max", FRONTEND_MAP_MAX)
    for n in ("node-0", "node-1", "node-2"):
        wait_for(lambda: (frontend(lab, n, VIP, 8080) or (0,))[0] == 2, timeout=90, what=f"agent on {n}")
    yield server
    for n in ("node-0", "node-1", "node-2"):
        lab.stop_agent(n)


def test_a_conntrack_flood_evicts_idle_flows_keeps_active_ones_and_warns_once(lab, api, figure):
    load = Load(lab, "C", VIP, "--long-lived", 4, "--udp-flows", 4)
    try:
        time.sleep(1)
        took = float(lab.run("C", sys.executable, "-c", FLOOD, timeout=60).stdout)
        wait_for(lambda: "conntrack map is" in lab.agent_log("node-2"), timeout=5, what="the pressure warning")
        pressure = gauge(metrics(lab, "node-2"), 'ebpflb_map_pressure{map="conntrack"}')
        time.sleep(2)
    finally:
        report = load.stop()
    warnings = [l for l in lab.agent_log("node-2").splitlines() if "conntrack map is" in l and "WARNING" in l]
    figure(f"conntrack flood: {FLOOD_FLOWS} new UDP flows in {took:.1f} s into a {CT_MAP_MAX}-entry map "
          f"(pressure {pressure:.2f}); {report.summary()}; warning: {warnings}")
    report.assert_nothing_lost()
    assert pressure > 0.9
    assert len(warnings) == 1, warnings


def three_port_service(i: int) -> list[dict]:
    ports = [("http", 8080, "TCP"), ("dns", 5353, "UDP"), ("echo", 9000, "TCP")]
    return [service("default", f"big-{i}", f"10.96.5.{i}", ports),
            endpoint_slice("default", f"big-{i}-a", f"big-{i}", [(POD_IPS["B"], POD_NODES["B"], True)], ports=ports)]


def test_services_beyond_the_frontend_map_are_left_out_whole_and_named(lab, api):
    for i in (1, 2, 3):
        api.load(three_port_service(i))
        time.sleep(0.3)   # in order: the first two fit
    wait_for(lambda: 'ebpflb_objects_rejected{kind="Service",reason="map_full"} 1.0' in metrics(lab, "node-2"),
             timeout=5, what="the map_full metric")
    for i in (1, 2):
        for port in (8080, 9000):
            assert frontend(lab, "node-2", f"10.96.5.{i}", port) == (1, 0, 0)
        assert lab.http_get("C", f"10.96.5.{i}") == "B"
    assert all(frontend(lab, "node-2", "10.96.5.3", port, proto) is None
               for port, proto in ((8080, 6), (5353, 17), (9000, 6)))          # none of its ports, not some
    assert "skipped Service default/big-3: needs 3 frontends entries" in lab.agent_log("node-2")
    assert gauge(metrics(lab, "node-2"), 'ebpflb_map_pressure{map="frontends"}') == 10 / FRONTEND_MAP_MAX
    assert set(lab.http_get_many("C", VIP, 10)) == {"A0", "B"}                  # the services that fit
    api.delete("Service", "default", "big-1")                                   # room frees: big-3 gets in
    wait_for(lambda: frontend(lab, "node-2", "10.96.5.3", 8080) == (1, 0, 0), timeout=5, what="big-3 programmed")
    assert "sync failed" not in lab.agent_log("node-2")   # the writer made room before taking it
    assert lab.http_get("C", "10.96.5.3") == "B"
