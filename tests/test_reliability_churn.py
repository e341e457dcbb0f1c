"""Issue 8.2: a service's backends scaled 3 -> 1 -> 3 ten times through the API server while pod C
keeps using it. New connections never fail (the frontend's count shrinks before backends go and
grows after they are written), TCP connections keep their backend, and UDP flows on a removed
backend move to a live one within 1 s (kube-proxy forgets their conntrack entries the same way)."""
import time

import pytest

from tests.apiserver import endpoint_slice, service
from tests.lab import NODES, POD_IPS, POD_NODES
from tests.reliability import Load, agents_on_api, seed_objects
from tests.test_lab_api import frontend
from tests.test_lab_dataplane import wait_for

CYCLES = 10
SVC_IP = "10.96.3.1"
PORTS = [("http", 8080, "TCP"), ("dns", 5353, "UDP"), ("echo", 9000, "TCP")]
SURVIVOR, LEAVING = "A0", ("A1", "B")
AT_REST_S = 1.2   # past the agent's min sync period: each change is written at once


def churn_slice(pods) -> dict:
    return endpoint_slice("default", "churn-a", "churn", [(POD_IPS[p], POD_NODES[p], True) for p in pods], ports=PORTS)


@pytest.fixture(scope="module")
def api(lab):
    server, _ = agents_on_api(lab, [*seed_objects(), service("default", "churn", SVC_IP, PORTS),
                                    churn_slice((SURVIVOR, *LEAVING))])
    for n in NODES:
        wait_for(lambda: (frontend(lab, n, SVC_IP, 8080) or (0,))[0] == 3, timeout=90, what=f"agent on {n}")
    yield server
    for n in NODES:
        lab.stop_agent(n)


def test_scaling_3_1_3_ten_times_fails_no_request_and_moves_udp_flows_within_1s(lab, api, figure):
    load = Load(lab, "C", SVC_IP, "--long-lived", 6, "--udp-flows", 6)
    removals, written = [], []
    time.sleep(AT_REST_S)   # the agents' first sync just happened
    try:
        for _ in range(CYCLES):
            on = load.reopen_udp()        # fresh flows, spread over all three backends
            assert set(on) <= {SURVIVOR, *LEAVING}, on
            at = time.monotonic()
            api.put(churn_slice((SURVIVOR,)))
            written.append(wait_for(lambda: frontend(lab, "node-2", SVC_IP, 8080)[0] == 1, timeout=5,
                                    interval=0.002, what="scale down in node-2's maps"))
            removals.append(at)
            time.sleep(AT_REST_S)
            api.put(churn_slice((SURVIVOR, *LEAVING)))
            written.append(wait_for(lambda: frontend(lab, "node-2", SVC_IP, 8080)[0] == 3, timeout=5,
                                    interval=0.002, what="scale up in node-2's maps"))
            time.sleep(AT_REST_S)
    finally:
        report = load.stop()
    moves = [d for at in removals for d in report.udp_moves(at, set(LEAVING))]
    on_survivor = [c for c in report.long_lived if c["backend"] == SURVIVOR]
    figure(f"churn ({CYCLES}x 3 -> 1 -> 3): {report.summary()}; HTTP answers by backend {report.http_backends}; "
          f"API change -> node-2's maps max {1e3 * max(written):.1f} ms; {len(moves)} UDP flows on removed "
          f"backends moved in max {1e3 * max(d for d in moves if d is not None):.0f} ms; "
          f"{len(on_survivor)} long-lived connections on the surviving backend")
    report.assert_nothing_lost()
    assert max(written) < 1.0, "a change at rest reaches the maps at once (milliseconds; 1 s for a busy CI machine)"
    assert len(moves) >= CYCLES, "every cycle should have caught some UDP flows on a leaving backend"
    assert all(d is not None and d <= 1.0 for d in moves), moves
    assert set(report.http_backends) == {SURVIVOR, *LEAVING}
