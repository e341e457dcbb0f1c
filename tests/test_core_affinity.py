"""Session affinity in the core: sessionAffinity ClientIP and its timeout become the desired
`affinity` map contents (service-port id -> timeout), per service port, as kube-proxy keeps it."""
import pytest

from ebpflb.core.ids import remap_ids
from ebpflb.core.services import desired_state
from ebpflb.core.tracker import ServiceTracker, split
from tests.test_core import NODE, WEB_IP, ep, eps, port, svc


def run(services, slices=(), node_addresses=()):
    return desired_state(services, slices, node_name=NODE, known_ids={}, node_addresses=node_addresses)


def client_ip(timeout=None):
    config = {} if timeout is None else {"clientIP": {"timeoutSeconds": timeout}}
    return {"sessionAffinity": "ClientIP", "sessionAffinityConfig": config}


TWO_PORTS = [port(80, "http"), port(443, "https")]

# (spec fields, the affinity map)
CASES = [
    pytest.param({}, {}, id="absent-is-none"),
    pytest.param({"sessionAffinity": "None"}, {}, id="none"),
    pytest.param({"sessionAffinity": "ClientIP"}, {1: 10800, 2: 10800}, id="client-ip-default-timeout"),
    pytest.param(client_ip(), {1: 10800, 2: 10800}, id="client-ip-empty-config-default-timeout"),
    pytest.param(client_ip(60), {1: 60, 2: 60}, id="client-ip-timeout-per-service-port"),
    pytest.param(client_ip(1), {1: 1, 2: 1}, id="shortest-timeout"),
    pytest.param(client_ip(86400), {1: 86400, 2: 86400}, id="longest-timeout"),
    pytest.param({"sessionAffinity": "None", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}, {},
                 id="config-without-client-ip-affinity-ignored"),
]


@pytest.mark.parametrize("spec, affinity", CASES)
def test_affinity(spec, affinity):
    state = run([svc(ports=TWO_PORTS, **spec)], [eps(endpoints=[ep("10.1.0.1")], ports=[port(8080, "http"),
                                                                                       port(8443, "https")])])
    assert not state.rejected
    assert state.affinity == affinity


def test_affinity_id_is_shared_with_the_external_frontends():
    service = svc(type="NodePort", ports=[port(80, nodePort=30080)], **client_ip(30))
    state = run([service], [eps(endpoints=[ep("10.1.0.1")])], node_addresses=("192.168.64.10",))
    assert {f.svc_id for f in state.frontends.values()} == {1} and state.affinity == {1: 30}


@pytest.mark.parametrize("spec", [
    {"sessionAffinity": "clientip"},
    {"sessionAffinity": "Sticky"},
    client_ip(0),
    client_ip(86401),
    client_ip(-5),
    client_ip("60"),
    client_ip(True),
    client_ip(60.5),
], ids=["lower-case", "unknown", "timeout-0", "timeout-too-long", "timeout-negative", "timeout-a-string",
        "timeout-a-bool", "timeout-a-float"])
def test_values_the_api_refuses_reject_the_service(spec):
    state = run([svc(), svc("bad", ip="10.96.0.20", **spec)], [eps(endpoints=[ep("10.1.0.1")])])
    assert [(r.name, r.reason) for r in state.rejected] == [("bad", "bad_value")]
    assert state.affinity == {}


@pytest.mark.parametrize("config", ["60", {"clientIP": 60}], ids=["config-a-string", "client-ip-a-number"])
def test_malformed_config_rejects_the_service(config):
    state = run([svc("bad", **{"sessionAffinity": "ClientIP", "sessionAffinityConfig": config})])
    assert [(r.name, r.reason) for r in state.rejected] == [("bad", "bad_type")]


def test_remapped_ids_carry_their_affinity():
    state = run([svc(**client_ip(60)), svc("other", ip="10.96.0.11")])
    [web] = [name for name in state.ids if name.name == "web"]
    moved = remap_ids(state, {web: 7})
    assert moved.affinity == {7: 60}


def test_tracker_switches_affinity_live_and_reports_the_id():
    tracker = ServiceTracker(NODE)
    tracker.replace_all([svc(), svc("other", ip="10.96.0.11", **client_ip(30))], [eps(endpoints=[ep("10.1.0.1")])])
    tracker.flush()
    ids = {name.name: svc_id for name, svc_id in tracker.state.ids.items()}
    assert tracker.state.affinity == {ids["other"]: 30}
    assert split(tracker.state)[("default", "other")].affinity == {ids["other"]: 30}

    tracker.set_service(svc(**client_ip(60)))
    changes = tracker.flush()
    assert ids["web"] in changes.ids
    assert tracker.state.affinity == {ids["web"]: 60, ids["other"]: 30}

    tracker.set_service(svc(**client_ip(90)))          # the timeout changed
    assert ids["web"] in tracker.flush().ids and tracker.state.affinity[ids["web"]] == 90

    tracker.set_service(svc())                          # switched off
    assert ids["web"] in tracker.flush().ids
    tracker.delete_service(("default", "other"))        # and gone
    tracker.flush()
    assert tracker.state.affinity == {}
