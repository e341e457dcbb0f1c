"""Topology-aware routing in desired_state(), written from kube-proxy's CategorizeEndpoints
(pkg/proxy/topology.go) and its table tests: which endpoints serve a service port on this node
given the EndpointSlice hints, the node's zone and the traffic policies."""
import pytest

from ebpflb.core.services import desired_state
from ebpflb.core.tracker import ServiceTracker
from tests.test_core import NODE, OTHER_NODE, TCP, WEB_IP, be, ep, eps, port, svc

ZONE_A, ZONE_B, ZONE_C = "zone-a", "zone-b", "zone-c"
NODE_IP = "192.168.64.10"


def hinted(address, zones=(), nodes=(), node=OTHER_NODE, **conditions):
    """An endpoint with forZones/forNodes hints (left out when empty)."""
    endpoint = ep(address, node=node, **conditions)
    hints = {}
    if zones:
        hints["forZones"] = [{"name": z} for z in zones]
    if nodes:
        hints["forNodes"] = [{"name": n} for n in nodes]
    if hints:
        endpoint["hints"] = hints
    return endpoint


def run(services, slices, zone=ZONE_A, node_addresses=()):
    return desired_state(services, slices, node_name=NODE, known_ids={}, node_zone=zone,
                         node_addresses=node_addresses)


def serving(state, svc_id=1):
    """The addresses of the id's backend list, in order (local first, then by address)."""
    return [b.addr for b in state.backends[svc_id]]


def frontend(state, addr=WEB_IP, number=80):
    f = next(f for k, f in state.frontends.items() if (k.addr, k.port, k.proto) == (addr, number, TCP))
    return f.count, f.local


FOUR_ZONED = [hinted("10.1.2.3", [ZONE_A]), hinted("10.1.2.4", [ZONE_B]), hinted("10.1.2.5", [ZONE_C]),
              hinted("10.1.2.6", [ZONE_A])]
ALL_FOUR = ["10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]

# (service, endpoints, this node's zone, the service port's backends)
CLUSTER_CASES = [
    pytest.param(svc(), FOUR_ZONED, ZONE_A, ["10.1.2.3", "10.1.2.6"], id="zone-hints-keep-this-zones"),
    pytest.param(svc(), FOUR_ZONED, "", ALL_FOUR, id="node-without-zone-label-uses-all"),
    pytest.param(svc(), FOUR_ZONED, "zone-d", ALL_FOUR, id="no-endpoint-hinted-for-this-zone-uses-all"),
    pytest.param(svc(), FOUR_ZONED[:2] + [ep("10.1.2.5")] + FOUR_ZONED[3:], ZONE_A, ALL_FOUR,
                 id="a-ready-endpoint-without-hints-uses-all"),
    pytest.param(svc(), FOUR_ZONED[:3] + [hinted("10.1.2.6", [ZONE_A], ready=False)], ZONE_A, ["10.1.2.3"],
                 id="unready-endpoint-of-this-zone-left-out"),
    pytest.param(svc(), [hinted("10.1.2.3", [ZONE_A], ready=False), hinted("10.1.2.4", [ZONE_B]),
                         hinted("10.1.2.5", [ZONE_C]), hinted("10.1.2.6", [ZONE_A], ready=False)], ZONE_A,
                 ["10.1.2.4", "10.1.2.5"], id="only-unready-endpoints-in-this-zone-no-filtering"),
    pytest.param(svc(), FOUR_ZONED[:3] + [{"addresses": ["10.1.2.6"], "conditions": {"ready": False}}], ZONE_A,
                 ["10.1.2.3"], id="an-unready-endpoint-without-hints-takes-no-part"),
    pytest.param(svc(), [hinted("10.1.2.3", [ZONE_A, ZONE_B, ZONE_C]), hinted("10.1.2.4", [ZONE_B, ZONE_C]),
                         hinted("10.1.2.5", [ZONE_B, "zone-d"]), hinted("10.1.2.6", [ZONE_C])], ZONE_C,
                 ["10.1.2.3", "10.1.2.4", "10.1.2.6"], id="an-endpoint-hinted-for-several-zones"),
    # PreferSameNode: the controller hints each endpoint for its own node and zone.
    pytest.param(svc(), [hinted("10.1.2.3", [ZONE_A], [NODE]), hinted("10.1.2.4", [ZONE_A], [OTHER_NODE]),
                         hinted("10.1.2.5", [ZONE_B], ["node-c"])], ZONE_A, ["10.1.2.3"],
                 id="node-hints-keep-this-nodes"),
    pytest.param(svc(), [hinted("10.1.2.3", [ZONE_A], ["node-c"]), hinted("10.1.2.4", [ZONE_A], [OTHER_NODE]),
                         hinted("10.1.2.5", [ZONE_B], ["node-d"])], ZONE_A, ["10.1.2.3", "10.1.2.4"],
                 id="node-hints-for-other-nodes-fall-back-to-zone-hints"),
    pytest.param(svc(), [hinted("10.1.2.3", [ZONE_A], [NODE]), hinted("10.1.2.4", [ZONE_A]),
                         hinted("10.1.2.5", [ZONE_B], ["node-d"])], ZONE_A, ["10.1.2.3", "10.1.2.4"],
                 id="node-hints-on-some-endpoints-only-fall-back-to-zone-hints"),
    pytest.param(svc(), [hinted("10.1.2.3", nodes=[NODE]), hinted("10.1.2.4", nodes=[OTHER_NODE])], "",
                 ["10.1.2.3"], id="node-hints-need-no-zone-label"),
    # Only the hints decide (kube-proxy since 1.31): trafficDistribution and the topology-mode
    # annotation are the EndpointSlice controller's inputs, not kube-proxy's.
    pytest.param(svc(trafficDistribution="PreferClose"), [ep(a) for a in ALL_FOUR], ZONE_A, ALL_FOUR,
                 id="prefer-close-without-hints-uses-all"),
    pytest.param(svc(trafficDistribution="PreferSameZone"), FOUR_ZONED, ZONE_A, ["10.1.2.3", "10.1.2.6"],
                 id="prefer-same-zone-with-hints"),
    pytest.param({**svc(), "metadata": {"name": "web", "namespace": "default",
                                        "annotations": {"service.kubernetes.io/topology-mode": "Auto"}}},
                 FOUR_ZONED, ZONE_A, ["10.1.2.3", "10.1.2.6"], id="topology-mode-auto-with-hints"),
    pytest.param({**svc(), "metadata": {"name": "web", "namespace": "default",
                                        "annotations": {"service.kubernetes.io/topology-mode": "Disabled"}}},
                 FOUR_ZONED, ZONE_A, ["10.1.2.3", "10.1.2.6"], id="hints-decide-whatever-the-annotation-says"),
    # Serving terminating endpoints are the last resort, topology aside.
    pytest.param(svc(), [hinted("10.1.2.3", [ZONE_A], ready=False, serving=True, terminating=True),
                         hinted("10.1.2.4", [ZONE_B], ready=False, serving=True, terminating=True)], ZONE_A,
                 ["10.1.2.3", "10.1.2.4"], id="terminating-fallback-ignores-topology"),
    pytest.param(svc(publishNotReadyAddresses=True), FOUR_ZONED[:3] + [hinted("10.1.2.6", [ZONE_A], ready=False)],
                 ZONE_A, ["10.1.2.3", "10.1.2.6"], id="publish-not-ready-endpoints-count-as-ready"),
]


@pytest.mark.parametrize("service, endpoints, zone, backends", CLUSTER_CASES)
def test_cluster_set(service, endpoints, zone, backends):
    state = run([service], [eps(endpoints=endpoints)], zone=zone)
    assert not state.rejected
    assert serving(state) == backends
    assert frontend(state) == (len(backends), 0)


def test_hints_across_slices_are_judged_together():
    """Every ready endpoint of the service port, whichever slice lists it, must carry hints."""
    zoned = eps(name="web-a", endpoints=[hinted("10.1.2.3", [ZONE_A]), hinted("10.1.2.4", [ZONE_B])])
    assert serving(run([svc()], [zoned])) == ["10.1.2.3"]
    plain = eps(name="web-b", endpoints=[ep("10.1.2.5")])
    assert serving(run([svc()], [zoned, plain])) == ["10.1.2.3", "10.1.2.4", "10.1.2.5"]


LOCAL_A, LOCAL_B, REMOTE_A, REMOTE_B = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"
MIXED = [hinted(LOCAL_A, [ZONE_A], node=NODE), hinted(LOCAL_B, [ZONE_B], node=NODE),
         hinted(REMOTE_A, [ZONE_A]), hinted(REMOTE_B, [ZONE_B])]


def node_port_svc(**spec):
    return svc(type="NodePort", ports=[port(80, nodePort=30080)], **spec)


# (service, endpoints, backends, ClusterIP frontend (count, local), NodePort frontend (count, local))
POLICY_CASES = [
    pytest.param(svc(internalTrafficPolicy="Local"), MIXED, [LOCAL_A, LOCAL_B], (2, 2), None,
                 id="internal-local-ignores-topology"),
    pytest.param(node_port_svc(), MIXED, [LOCAL_A, REMOTE_A], (2, 1), (2, 1),
                 id="cluster-policies-both-narrowed-local-first"),
    # kube-proxy: cluster set {LOCAL_A, REMOTE_A} (topology), local set {LOCAL_A, LOCAL_B} (none).
    # One list holds both only when the cluster set takes every local endpoint: ClusterIP traffic
    # may also reach LOCAL_B here (documented in services._program).
    pytest.param(node_port_svc(externalTrafficPolicy="Local"), MIXED, [LOCAL_A, LOCAL_B, REMOTE_A], (3, 2), (3, 2),
                 id="external-local-keeps-every-local-endpoint"),
    pytest.param(node_port_svc(externalTrafficPolicy="Local"),
                 [hinted(LOCAL_A, [ZONE_A], node=NODE), hinted(REMOTE_A, [ZONE_A]), hinted(REMOTE_B, [ZONE_B])],
                 [LOCAL_A, REMOTE_A], (2, 1), (2, 1), id="external-local-exact-when-local-endpoints-are-this-zones"),
    pytest.param(node_port_svc(internalTrafficPolicy="Local"), MIXED, [LOCAL_A, LOCAL_B, REMOTE_A], (2, 2), (3, 2),
                 id="internal-local-with-node-port-cluster-set-narrowed"),
]


@pytest.mark.parametrize("service, endpoints, backends, cluster_ip, node_port", POLICY_CASES)
def test_traffic_policies_and_topology(service, endpoints, backends, cluster_ip, node_port):
    state = run([service], [eps(endpoints=endpoints)], node_addresses=(NODE_IP,))
    assert not state.rejected
    assert serving(state) == backends
    assert frontend(state) == cluster_ip
    if node_port:
        assert frontend(state, NODE_IP, 30080) == node_port


def test_health_check_counts_local_endpoints_whatever_the_hints():
    service = svc(type="LoadBalancer", ports=[port(80, nodePort=30080)], externalTrafficPolicy="Local",
                  healthCheckNodePort=30999)
    state = run([service], [eps(endpoints=MIXED)], node_addresses=(NODE_IP,))
    assert state.health_checks[30999].local_endpoints == 2


@pytest.mark.parametrize("hints, reason", [
    (["zone-a"], "bad_type"),
    ({"forZones": "zone-a"}, "bad_type"),
    ({"forZones": ["zone-a"]}, "bad_type"),
    ({"forZones": [{}]}, "missing_field"),
    ({"forNodes": [{"name": 7}]}, "bad_type"),
], ids=["hints-a-list", "for-zones-a-string", "zone-entry-a-string", "zone-without-name", "node-name-a-number"])
def test_malformed_hints_reject_the_slice(hints, reason):
    bad = eps(name="web-bad", endpoints=[{**ep("10.1.0.2"), "hints": hints}])
    state = run([svc()], [eps(endpoints=[ep("10.1.0.1")]), bad])
    assert [(r.kind, r.name, r.reason) for r in state.rejected] == [("EndpointSlice", "web-bad", reason)]
    assert serving(state) == ["10.1.0.1"]


def test_the_tracker_follows_the_node_zone_and_recomputes_only_hinted_services():
    tracker = ServiceTracker(NODE, node_zone=ZONE_A)
    tracker.replace_all([svc(), svc("plain", ip="10.96.0.11")],
                        [eps(endpoints=FOUR_ZONED), eps("plain", endpoints=[ep("10.1.3.1"), ep("10.1.3.2")])])
    tracker.flush()
    ids = {name.name: svc_id for name, svc_id in tracker.state.ids.items()}
    web, plain = ids["web"], ids["plain"]
    assert serving(tracker.state, web) == ["10.1.2.3", "10.1.2.6"]

    tracker.set_node_zone(ZONE_B)
    assert tracker.dirty == {("default", "web")}
    changes = tracker.flush()
    assert changes.ids == {web}
    assert serving(tracker.state, web) == ["10.1.2.4"]
    assert serving(tracker.state, plain) == ["10.1.3.1", "10.1.3.2"]

    tracker.set_node_zone("")   # the label went away: every endpoint again
    tracker.flush()
    assert serving(tracker.state, web) == ALL_FOUR
    tracker.set_node_zone("")
    assert not tracker.dirty
