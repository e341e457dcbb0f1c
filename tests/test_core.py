"""desired_state(): Services and EndpointSlices in, exact map contents out."""
import copy
import dataclasses
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.core import services as services_module
from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey, ServicePortName, family_of
from ebpflb.core.services import desired_state
from ebpflb.datapath.structs import C

NODE = "node-a"
OTHER_NODE = "node-b"
TCP, UDP, SCTP = 6, 17, 132
INTERNAL_LOCAL = C.NAT_FLG_INTERNAL_LOCAL
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
WEB_IP = "10.96.0.10"


# --- Building input: Kubernetes API JSON ---

def svc(name="web", namespace="default", *, ip=WEB_IP, ips=None, ports=None, labels=None, **spec_fields):
    """A Service; keyword arguments in camelCase go to its spec."""
    spec = {"clusterIP": ip, "ports": [port(80)] if ports is None else list(ports), **spec_fields}
    if ips is not None:
        spec["clusterIPs"] = list(ips)
    metadata = {"name": name, "namespace": namespace}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


def port(number, name=None, protocol=None, **fields):
    """A Service port or an EndpointSlice port: name and protocol left out unless given."""
    entry = {"port": number, **fields}
    if name is not None:
        entry["name"] = name
    if protocol is not None:
        entry["protocol"] = protocol
    return entry


def eps(service="web", name=None, namespace="default", *, endpoints=(), ports=(port(8080),), address_type="IPv4"):
    """An EndpointSlice of `service`."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": address_type,
            "metadata": {"name": name or f"{service}-abcde", "namespace": namespace,
                         "labels": {SERVICE_NAME_LABEL: service}},
            "endpoints": list(endpoints), "ports": list(ports)}


def ep(*addresses, node=OTHER_NODE, **conditions):
    """An endpoint; conditions (ready, serving, terminating) left out unless given."""
    endpoint = {"addresses": list(addresses)}
    if node is not None:
        endpoint["nodeName"] = node
    if conditions:
        endpoint["conditions"] = conditions
    return endpoint


# --- Building expectations ---

def spn(name="web", port_name="", protocol="TCP", namespace="default", family=4):
    return ServicePortName(namespace, name, port_name, protocol, family)


def be(addr, number=8080):
    return Backend(addr, number)


@dataclass
class Programmed:
    """One service port as it should come out."""
    name: ServicePortName = spn()
    svc_id: int = 1
    frontends: tuple = ((WEB_IP, 80, TCP),)   # (addr, port, proto)
    backends: tuple = ()
    local: int = 0
    flags: int = 0


def expected(*ports: Programmed, service_ips=None) -> DesiredState:
    state = DesiredState()
    for p in ports:
        state.ids[p.name] = p.svc_id
        state.backends[p.svc_id] = p.backends
        for addr, number, proto in p.frontends:
            state.frontends[FrontendKey(addr, number, proto, family_of(addr))] = Frontend(p.svc_id, len(p.backends), p.local, p.flags)
    addresses = {key.addr for key in state.frontends} if service_ips is None else service_ips
    state.service_ips = frozenset(addresses)
    return state


def run(services=(), slices=(), known_ids=None, proxy_name=None, **options) -> DesiredState:
    return desired_state(services, slices, node_name=NODE, known_ids=known_ids or {}, proxy_name=proxy_name,
                         **options)


def assert_state(actual: DesiredState, want: DesiredState, rejected=()):
    """Exact contents; a rejection is compared by (kind, namespace, name, reason), its detail is prose."""
    assert [(r.kind, r.namespace, r.name, r.reason) for r in actual.rejected] == list(rejected)
    assert all(isinstance(r.detail, str) and r.detail for r in actual.rejected)
    assert dataclasses.replace(actual, rejected=[]) == want


# --- Frontends: cluster IPs x ports ---

FRONTEND_CASES = [
    pytest.param([svc()], [], expected(Programmed()), id="no-endpoints-count-0-means-reject"),
    pytest.param(
        [svc(ips=[WEB_IP, "10.96.0.11"], ports=[port(80, "http"), port(443, "https")])], [],
        expected(Programmed(spn(port_name="http"), 1, ((WEB_IP, 80, TCP), ("10.96.0.11", 80, TCP))),
                 Programmed(spn(port_name="https"), 2, ((WEB_IP, 443, TCP), ("10.96.0.11", 443, TCP)))),
        id="every-cluster-ip-times-every-port-one-id-per-port"),
    pytest.param([svc(ip="10.96.0.99", ips=[WEB_IP])], [], expected(Programmed()),
                 id="cluster-ips-win-over-cluster-ip"),
    pytest.param(
        [svc(ports=[port(53, "dns", "TCP"), port(53, "dns", "UDP")])],
        [eps(ports=[port(5353, "dns", "TCP"), port(5354, "dns", "UDP")], endpoints=[ep("10.1.0.1")])],
        expected(Programmed(spn(port_name="dns", protocol="TCP"), 1, ((WEB_IP, 53, TCP),), (be("10.1.0.1", 5353),)),
                 Programmed(spn(port_name="dns", protocol="UDP"), 2, ((WEB_IP, 53, UDP),), (be("10.1.0.1", 5354),))),
        id="same-port-number-tcp-and-udp-matched-by-protocol"),
    pytest.param(
        [svc(ports=[port(9000, protocol="SCTP")])],
        [eps(ports=[port(9001, protocol="SCTP")], endpoints=[ep("10.1.0.1")])],
        expected(Programmed(spn(protocol="SCTP"), 1, ((WEB_IP, 9000, SCTP),), (be("10.1.0.1", 9001),))),
        id="sctp"),
    pytest.param([svc(ips=[WEB_IP, "fd00::10"])], [],
                 expected(Programmed(), Programmed(spn(family=6), 2, (("fd00::10", 80, TCP),))),
                 id="dual-stack-cluster-ips-an-id-per-family"),
    pytest.param([svc(ip="fd00::10", ips=["fd00::10"])], [], expected(Programmed(spn(family=6), 1, (("fd00::10", 80, TCP),))),
                 id="ipv6-only-service"),
    pytest.param([svc(ips=[WEB_IP, WEB_IP])], [], expected(Programmed()), id="repeated-cluster-ip-once"),
    pytest.param([svc(ports=[])], [], expected(service_ips={WEB_IP}), id="service-without-ports-owns-its-ip"),
]


@pytest.mark.parametrize("services, slices, want", FRONTEND_CASES)
def test_frontends(services, slices, want):
    assert_state(run(services, slices), want)


# --- Backends: slices merged, ports matched by name and protocol ---

BACKEND_CASES = [
    pytest.param(
        [svc(ports=[port(80, targetPort=8080)])],
        [eps(endpoints=[ep("10.1.0.2"), ep("10.1.0.1")])],
        expected(Programmed(backends=(be("10.1.0.1"), be("10.1.0.2")))),
        id="numeric-target-port-through-unnamed-slice-port"),
    pytest.param(
        [svc(ports=[port(80, "http", targetPort="web")])],
        [eps(name="web-a", ports=[port(8080, "http"), port(9100, "metrics")], endpoints=[ep("10.1.0.1")]),
         eps(name="web-b", ports=[port(9090, "http")], endpoints=[ep("10.1.0.2")])],
        expected(Programmed(spn(port_name="http"), backends=(be("10.1.0.1", 8080), be("10.1.0.2", 9090)))),
        id="named-target-port-resolved-per-slice"),
    pytest.param([svc(ports=[port(80, "http")])], [eps(ports=[port(9100, "metrics")], endpoints=[ep("10.1.0.1")])],
                 expected(Programmed(spn(port_name="http"))), id="slice-port-of-another-name-ignored"),
    pytest.param([svc()], [eps(ports=[port(8080, protocol="UDP")], endpoints=[ep("10.1.0.1")])],
                 expected(Programmed()), id="slice-port-of-another-protocol-ignored"),
    pytest.param([svc()], [eps(ports=[{"name": "", "port": None}, port(8080)], endpoints=[ep("10.1.0.1")])],
                 expected(Programmed(backends=(be("10.1.0.1"),))), id="slice-port-without-number-skipped"),
    pytest.param([svc()], [eps(ports=[], endpoints=[ep("10.1.0.1")])], expected(Programmed()),
                 id="slice-without-ports-gives-nothing"),
    pytest.param(
        [svc()],
        [eps(name="web-a", endpoints=[ep("10.1.0.3")]), eps(name="web-b", endpoints=[ep("10.1.0.1"), ep("10.1.0.2")])],
        expected(Programmed(backends=(be("10.1.0.1"), be("10.1.0.2"), be("10.1.0.3")))),
        id="several-slices-merged"),
    pytest.param(
        [svc()], [eps(name="web-a", endpoints=[ep("10.1.0.1")]), eps(name="web-b", endpoints=[ep("10.1.0.1")])],
        expected(Programmed(backends=(be("10.1.0.1"),))), id="same-endpoint-in-two-slices-counts-once"),
    pytest.param(
        [svc()],
        [eps(name="web-a", endpoints=[ep("10.1.0.1", ready=False)]), eps(name="web-b", endpoints=[ep("10.1.0.1")])],
        expected(Programmed(backends=(be("10.1.0.1"),))), id="endpoint-in-two-slices-keeps-its-ready-state"),
    pytest.param(
        [svc()], [eps(name="web-a", endpoints=[ep("10.1.0.1")]),
                  eps(name="web-b", ports=[port(8081)], endpoints=[ep("10.1.0.1")])],
        expected(Programmed(backends=(be("10.1.0.1", 8080), be("10.1.0.1", 8081)))),
        id="same-address-other-port-is-another-backend"),
    pytest.param([svc()], [eps(endpoints=[ep("10.1.0.1", "10.1.0.2")])],
                 expected(Programmed(backends=(be("10.1.0.1"),))), id="first-address-of-an-endpoint-only"),
    # One slice is the core's quick case (_only_slice_endpoints); these leave it for the merge.
    pytest.param([svc()], [eps(endpoints=[ep("10.1.0.1", ready=False), ep("10.1.0.1")])],
                 expected(Programmed(backends=(be("10.1.0.1"),))),
                 id="same-endpoint-twice-in-one-slice-keeps-its-ready-state"),
    pytest.param([svc()], [eps(ports=[port(8080), port(8081)], endpoints=[ep("10.1.0.1")])],
                 expected(Programmed(backends=(be("10.1.0.1", 8080), be("10.1.0.1", 8081)))),
                 id="slice-port-matched-twice-gives-a-backend-per-number"),
    pytest.param([svc()], [eps(endpoints=[ep(), ep("10.1.0.1"), ep()])],
                 expected(Programmed(backends=(be("10.1.0.1"),))), id="endpoints-without-an-address-skipped"),
    pytest.param([svc()], [eps(endpoints=[ep("10.1.0.10"), ep("10.1.0.9")])],
                 expected(Programmed(backends=(be("10.1.0.9"), be("10.1.0.10")))), id="addresses-sorted-numerically"),
    pytest.param(
        [svc()], [eps(service="api", endpoints=[ep("10.1.0.1")]), eps(namespace="other", endpoints=[ep("10.1.0.2")])],
        expected(Programmed()), id="slices-of-other-services-and-namespaces-ignored"),
    pytest.param([svc()], [eps(address_type="IPv6", endpoints=[ep("fd00::1")])], expected(Programmed()),
                 id="ipv6-slice-skipped"),
    pytest.param([svc()], [eps(address_type="FQDN", endpoints=[ep("example.com")])], expected(Programmed()),
                 id="fqdn-slice-skipped"),
]


@pytest.mark.parametrize("services, slices, want", BACKEND_CASES)
def test_backends(services, slices, want):
    assert_state(run(services, slices), want)


# --- Conditions (KEP-1669), cluster policy ---

def web_with(*endpoints, **spec_fields):
    """(services, slices) for the one web service with these endpoints."""
    return [svc(**spec_fields)], [eps(endpoints=endpoints)]


CONDITION_CASES = [
    pytest.param(web_with(ep("10.1.0.1")), (be("10.1.0.1"),), id="absent-conditions-mean-ready"),
    pytest.param(web_with({"addresses": ["10.1.0.1"], "conditions": {"ready": None}}), (be("10.1.0.1"),),
                 id="null-ready-means-ready"),
    pytest.param(web_with(ep("10.1.0.1", ready=True), ep("10.1.0.2", ready=False)), (be("10.1.0.1"),),
                 id="not-ready-left-out"),
    pytest.param(web_with(ep("10.1.0.1"), ep("10.1.0.2", ready=False, serving=True, terminating=True)),
                 (be("10.1.0.1"),), id="terminating-left-out-while-one-is-ready"),
    pytest.param(web_with(ep("10.1.0.1", ready=False, serving=True, terminating=True),
                          ep("10.1.0.2", ready=False, serving=False, terminating=True),
                          ep("10.1.0.3", ready=False, serving=True)),
                 (be("10.1.0.1"),), id="none-ready-falls-back-to-serving-terminating"),
    pytest.param(web_with(ep("10.1.0.1", ready=False, serving=False, terminating=True),
                          ep("10.1.0.2", ready=False, terminating=False)),
                 (), id="never-a-non-serving-one"),
    pytest.param(web_with(ep("10.1.0.1", ready=False, terminating=True)), (),
                 id="absent-serving-follows-not-ready"),
    pytest.param(web_with(ep("10.1.0.1", ready=False, serving=True)), (),
                 id="absent-terminating-means-not-terminating"),
    pytest.param(web_with(ep("10.1.0.1", ready=False), ep("10.1.0.2", ready=False, serving=False),
                          ep("10.1.0.3", ready=False, serving=False, terminating=True),
                          publishNotReadyAddresses=True),
                 (be("10.1.0.1"), be("10.1.0.2"), be("10.1.0.3")), id="publish-not-ready-addresses-all-ready"),
]


@pytest.mark.parametrize("inputs, backends", CONDITION_CASES)
def test_conditions(inputs, backends):
    assert_state(run(*inputs), expected(Programmed(backends=backends)))


# --- Local endpoints and internalTrafficPolicy ---

LOCALITY_CASES = [
    pytest.param(web_with(ep("10.1.0.1"), ep("10.1.0.9", node=NODE), ep("10.1.0.2", node=NODE), ep("10.1.0.3")),
                 Programmed(backends=(be("10.1.0.2"), be("10.1.0.9"), be("10.1.0.1"), be("10.1.0.3")), local=2),
                 id="local-first-each-group-sorted"),
    pytest.param(web_with(ep("10.1.0.2", node=NODE), ep("10.1.0.1", node=None)),
                 Programmed(backends=(be("10.1.0.2"), be("10.1.0.1")), local=1), id="no-node-name-is-remote"),
    pytest.param(web_with(ep("10.1.0.1", node=NODE, ready=False, serving=True, terminating=True), ep("10.1.0.2")),
                 Programmed(backends=(be("10.1.0.2"),)), id="cluster-policy-prefers-remote-ready-to-local-terminating"),
    pytest.param(web_with(ep("10.1.0.1", ready=False, serving=True, terminating=True),
                          ep("10.1.0.2", node=NODE, ready=False, serving=True, terminating=True)),
                 Programmed(backends=(be("10.1.0.2"), be("10.1.0.1")), local=1),
                 id="cluster-policy-fallback-takes-every-node"),
    pytest.param(web_with(ep("10.1.0.1", node=NODE), ep("10.1.0.2", node=NODE, ready=False), ep("10.1.0.3"),
                          internalTrafficPolicy="Local"),
                 Programmed(backends=(be("10.1.0.1"),), local=1, flags=INTERNAL_LOCAL),
                 id="internal-local-takes-local-ready-only"),
    pytest.param(web_with(ep("10.1.0.3"), internalTrafficPolicy="Local"),
                 Programmed(flags=INTERNAL_LOCAL), id="internal-local-without-local-endpoint-count-0-means-drop"),
    pytest.param(web_with(ep("10.1.0.1", node=NODE, ready=False, serving=True, terminating=True), ep("10.1.0.3"),
                          internalTrafficPolicy="Local"),
                 Programmed(backends=(be("10.1.0.1"),), local=1, flags=INTERNAL_LOCAL),
                 id="internal-local-falls-back-to-local-serving-terminating"),
    pytest.param(web_with(ep("10.1.0.1", node=NODE, ready=False, serving=False, terminating=True), ep("10.1.0.3"),
                          internalTrafficPolicy="Local"),
                 Programmed(flags=INTERNAL_LOCAL), id="internal-local-never-a-non-serving-one"),
    pytest.param(web_with(ep("10.1.0.1", node=NODE), ep("10.1.0.3"), internalTrafficPolicy="Cluster"),
                 Programmed(backends=(be("10.1.0.1"), be("10.1.0.3")), local=1), id="internal-cluster-is-the-default"),
]


@pytest.mark.parametrize("inputs, want", LOCALITY_CASES)
def test_locality(inputs, want):
    assert_state(run(*inputs), expected(want))


# --- Services left to others ---

NOT_PROGRAMMED_CASES = [
    pytest.param(svc("skip", ip="None"), None, id="headless-cluster-ip-none"),
    pytest.param(svc("skip", ip="None", ips=["None"]), None, id="headless-cluster-ips-none"),
    pytest.param(svc("skip", ip=""), None, id="cluster-ip-empty"),
    pytest.param(svc("skip", ip=None), None, id="cluster-ip-absent"),
    pytest.param(svc("skip", ip="None", ports=[port(0)]), None, id="headless-ports-not-checked"),
    pytest.param(svc("skip", ip="10.96.0.20", type="ExternalName", externalName="example.com"), None,
                 id="external-name"),
    pytest.param(svc("skip", ip="10.96.0.20", labels={"service.kubernetes.io/headless": ""}), None,
                 id="headless-label"),
    pytest.param(svc("skip", ip="10.96.0.20", labels={"service.kubernetes.io/service-proxy-name": "ebpflb"}), None,
                 id="proxy-name-label-and-no-proxy-name"),
    pytest.param(svc("skip", ip="10.96.0.20", labels={"service.kubernetes.io/service-proxy-name": "other"}), "ebpflb",
                 id="proxy-name-label-of-another-proxy"),
]


@pytest.mark.parametrize("skipped, proxy_name", NOT_PROGRAMMED_CASES)
def test_not_programmed(skipped, proxy_name):
    state = run([skipped, svc()], [eps(service="skip", endpoints=[ep("10.1.0.1")])], proxy_name=proxy_name)
    assert_state(state, expected(Programmed()))


def test_proxy_name_label_naming_this_proxy_is_programmed():
    labelled = svc(labels={"service.kubernetes.io/service-proxy-name": "ebpflb"})
    assert_state(run([labelled], proxy_name="ebpflb"), expected(Programmed()))


# --- Service ids ---

def named(*names, ip_base=20):
    """Services called `names`, each with its own cluster IP."""
    return [svc(name, ip=f"10.96.0.{ip_base + i}") for i, name in enumerate(names)]


def ids_of(state: DesiredState) -> dict[str, int]:
    return {name.name: svc_id for name, svc_id in state.ids.items()}


ID_CASES = [
    pytest.param(named("web", "api"), {}, {"api": 1, "web": 2}, id="new-names-numbered-from-1-in-name-order"),
    pytest.param(named("web", "api"), {spn("web"): 7}, {"api": 1, "web": 7}, id="known-id-kept"),
    pytest.param(named("a", "b", "c"), {spn("a"): 1, spn("c"): 3}, {"a": 1, "b": 2, "c": 3},
                 id="new-name-takes-smallest-unused"),
    pytest.param(named("b", "c"), {spn("a"): 1, spn("b"): 2}, {"b": 2, "c": 1}, id="freed-id-reused"),
    pytest.param(named("web"), {spn("gone"): 1, spn("old"): 2}, {"web": 1}, id="vanished-names-leave-ids"),
    pytest.param(named("a", "b", "c"), {spn("a"): 0, spn("b"): C.SVC_COUNTERS_MAX, spn("c"): True},
                 {"a": 1, "b": 2, "c": 3}, id="out-of-range-known-ids-replaced"),
    pytest.param(named("a", "b"), {spn("a"): 5, spn("b"): 5}, {"a": 5, "b": 1}, id="known-id-claimed-twice-kept-once"),
]


@pytest.mark.parametrize("services, known_ids, want", ID_CASES)
def test_ids(services, known_ids, want):
    state = run(services, known_ids=known_ids)
    assert ids_of(state) == want
    assert set(state.backends) == set(want.values())
    assert {fe.svc_id for fe in state.frontends.values()} == set(want.values())


def test_ids_stay_below_the_counters_map_size(monkeypatch):
    monkeypatch.setattr(services_module, "C", SimpleNamespace(SVC_COUNTERS_MAX=3, NAT_FLG_INTERNAL_LOCAL=2))
    state = run(named("a", "b", "c"))
    assert ids_of(state) == {"a": 1, "b": 2}
    assert [(r.name, r.reason) for r in state.rejected] == [("c", "no_free_id")]


def lb(name, ips, ports, ingress, ranges):
    service = svc(name, ip=ips[0], ips=ips, ports=ports, type="LoadBalancer", loadBalancerSourceRanges=ranges)
    service["status"] = {"loadBalancer": {"ingress": [{"ip": ingress}]}}
    return service


# What each service takes:  frontends  backends  service addresses  source-range entries
#   a, c (1 port)               2          2            1                    1
#   b (2 ports, 2 cluster IPs)  6          4            2                    4
# Each capacity lets a and c in, not b beside a; b turned away takes nothing, so c still fits.
ROOM_CASES = [
    pytest.param(services_module.Usage(4, 99, 99, 99), id="frontends"),
    pytest.param(services_module.Usage(99, 5, 99, 99), id="backends"),
    pytest.param(services_module.Usage(99, 99, 2, 99), id="service-addresses"),
    pytest.param(services_module.Usage(99, 99, 99, 4), id="source-range-entries"),
]


@pytest.mark.parametrize("capacity", ROOM_CASES)
def test_a_service_the_maps_cannot_hold_is_turned_away_whole(capacity):
    """Written anyway, it failed the writer's batch at every sync, and every other change with it (a
    Service with 100 ports and 656 source ranges needs more src_ranges entries than the map holds).
    The capacity is made small here; test_malformed_maps fills the real maps."""
    services = [lb("a", ["10.96.0.1"], [port(80)], "203.0.113.1", ["10.0.0.0/8"]),
                lb("b", ["10.96.0.2", "10.96.0.4"], [port(80, "x"), port(81, "y")], "203.0.113.2",
                   ["10.0.0.0/8", "172.16.0.0/12"]),
                lb("c", ["10.96.0.3"], [port(80)], "203.0.113.3", ["10.0.0.0/8"])]
    slices = [eps(name, ports=[port(8080, n) for n in names], endpoints=[ep("10.1.0.1"), ep("10.1.0.2")])
              for name, names in (("a", [None]), ("b", ["x", "y"]), ("c", [None]))]
    state = run(services, slices, capacity=capacity)
    assert [(r.name, r.reason) for r in state.rejected] == [("b", "map_full")]
    assert {n.name for n in state.ids} == {"a", "c"} and state.service_ips == {"10.96.0.1", "10.96.0.3"}


# --- Malformed objects: rejected whole, the rest still programmed ---

def with_spec(**fields):
    service = svc("bad", ip="10.96.0.20")
    service["spec"].update(fields)
    return service


def bad_port(**fields):
    return svc("bad", ip="10.96.0.20", ports=[port(**{"number": 81, **fields})])


def without(path, obj):
    """`obj` without the field at `path` (a tuple of keys)."""
    obj = copy.deepcopy(obj)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return obj


REJECTED_SERVICE_CASES = [
    pytest.param(without(("metadata",), svc("bad")), ("", "", "missing_field"), id="no-metadata"),
    pytest.param(without(("metadata", "name"), svc("bad")), ("default", "", "missing_field"), id="no-name"),
    pytest.param(without(("metadata", "namespace"), svc("bad")), ("", "bad", "missing_field"), id="no-namespace"),
    pytest.param(without(("spec",), svc("bad")), ("default", "bad", "missing_field"), id="no-spec"),
    pytest.param({"metadata": ["bad"], "spec": {}}, ("", "", "bad_type"), id="metadata-a-list"),
    pytest.param({"metadata": {"name": "bad", "namespace": "default"}, "spec": "x"}, ("default", "bad", "bad_type"),
                 id="spec-a-string"),
    pytest.param(svc("bad", labels=["a"]), ("default", "bad", "bad_type"), id="labels-a-list"),
    pytest.param(with_spec(ports={"port": 80}), ("default", "bad", "bad_type"), id="ports-a-dict"),
    pytest.param(with_spec(ports=["80"]), ("default", "bad", "bad_type"), id="port-entry-a-string"),
    pytest.param(bad_port(name=7), ("default", "bad", "bad_type"), id="port-name-a-number"),
    pytest.param(with_spec(clusterIP="10.96.0.300"), ("default", "bad", "bad_ip"), id="cluster-ip-invalid"),
    pytest.param(with_spec(clusterIP=167772170), ("default", "bad", "bad_ip"), id="cluster-ip-a-number"),
    pytest.param(with_spec(clusterIPs=["10.96.0.20", "nonsense"]), ("default", "bad", "bad_ip"),
                 id="second-cluster-ip-invalid"),
    pytest.param(with_spec(clusterIPs="10.96.0.20"), ("default", "bad", "bad_type"), id="cluster-ips-a-string"),
    pytest.param(bad_port(number=0), ("default", "bad", "bad_port"), id="port-0"),
    pytest.param(bad_port(number=65536), ("default", "bad", "bad_port"), id="port-65536"),
    pytest.param(bad_port(number="80"), ("default", "bad", "bad_port"), id="port-a-string"),
    pytest.param(bad_port(number=True), ("default", "bad", "bad_port"), id="port-a-bool"),
    pytest.param(bad_port(number=None), ("default", "bad", "bad_port"), id="port-missing"),
    pytest.param(bad_port(nodePort=70000), ("default", "bad", "bad_port"), id="node-port-out-of-range"),
    pytest.param(bad_port(nodePort=0), ("default", "bad", "bad_port"), id="node-port-0"),
    pytest.param(bad_port(protocol="ICMP"), ("default", "bad", "bad_protocol"), id="protocol-icmp"),
    pytest.param(bad_port(protocol="tcp"), ("default", "bad", "bad_protocol"), id="protocol-lower-case"),
    pytest.param(bad_port(protocol=["TCP"]), ("default", "bad", "bad_protocol"), id="protocol-a-list"),
    pytest.param(bad_port(targetPort=0), ("default", "bad", "bad_port"), id="target-port-0"),
    pytest.param(bad_port(targetPort=70000), ("default", "bad", "bad_port"), id="target-port-out-of-range"),
    pytest.param(bad_port(targetPort=""), ("default", "bad", "bad_port"), id="target-port-empty-name"),
    pytest.param(bad_port(targetPort=8080.5), ("default", "bad", "bad_port"), id="target-port-a-float"),
    pytest.param(svc("bad", ip="10.96.0.20", ports=[port(80, "a"), port(80, "b")]),
                 ("default", "bad", "duplicate_port"), id="duplicate-port-and-protocol"),
    pytest.param(svc("bad", ip="10.96.0.20", ports=[port(80, "http"), port(81, "http")]),
                 ("default", "bad", "duplicate_port"), id="duplicate-port-name"),
    # A value the API refuses is not read as the default (it was: "local" gave Cluster, "Nodeport" ClusterIP).
    pytest.param(with_spec(type="Nodeport"), ("default", "bad", "bad_value"), id="type-unknown"),
    pytest.param(with_spec(type="NodePort", externalTrafficPolicy="local"), ("default", "bad", "bad_value"),
                 id="external-traffic-policy-lower-case"),
    pytest.param(with_spec(internalTrafficPolicy="Node"), ("default", "bad", "bad_value"),
                 id="internal-traffic-policy-unknown"),
    pytest.param(with_spec(internalTrafficPolicy=["Local"]), ("default", "bad", "bad_value"),
                 id="internal-traffic-policy-a-list"),
    pytest.param(with_spec(publishNotReadyAddresses="true"), ("default", "bad", "bad_type"),
                 id="publish-not-ready-addresses-a-string"),
    pytest.param(svc("zzz"), ("default", "zzz", "duplicate_frontend"), id="cluster-ip-and-port-of-another-service"),
    pytest.param(svc("web", ip="10.96.0.20"), ("default", "web", "duplicate_service"), id="same-service-twice"),
]


@pytest.mark.parametrize("bad, rejection", REJECTED_SERVICE_CASES)
def test_malformed_service_rejected_others_programmed(bad, rejection):
    state = run([svc(), bad], [eps(endpoints=[ep("10.1.0.1")]), eps("bad", endpoints=[ep("10.1.0.2")])])
    assert_state(state, expected(Programmed(backends=(be("10.1.0.1"),))), [("Service", *rejection)])


def bad_slice(**fields):
    """A slice of web named web-bad, `fields` set on it; its endpoint 10.1.0.2 must not be used."""
    endpoint_slice = eps(name="web-bad", endpoints=[ep("10.1.0.2")])
    endpoint_slice.update(fields)
    return endpoint_slice


def bad_endpoint(**fields):
    return bad_slice(endpoints=[{**ep("10.1.0.2"), **fields}])


REJECTED_SLICE_CASES = [
    pytest.param(without(("metadata", "name"), bad_slice()), ("default", "", "missing_field"), id="no-name"),
    pytest.param(without(("metadata", "namespace"), bad_slice()), ("", "web-bad", "missing_field"), id="no-namespace"),
    pytest.param(without(("metadata", "labels"), bad_slice()), ("default", "web-bad", "missing_field"),
                 id="no-labels"),
    pytest.param(bad_slice(metadata={"name": "web-bad", "namespace": "default", "labels": {"app": "web"}}),
                 ("default", "web-bad", "missing_field"), id="no-service-name-label"),
    pytest.param(bad_slice(metadata="web-bad"), ("", "", "bad_type"), id="metadata-a-string"),
    pytest.param(bad_slice(endpoints={"addresses": ["10.1.0.2"]}), ("default", "web-bad", "bad_type"),
                 id="endpoints-a-dict"),
    pytest.param(bad_slice(ports=[8080]), ("default", "web-bad", "bad_type"), id="port-entry-a-number"),
    pytest.param(bad_endpoint(addresses=["10.1.0.999"]), ("default", "web-bad", "bad_ip"), id="address-invalid"),
    pytest.param(bad_endpoint(addresses=["fd00::2"]), ("default", "web-bad", "bad_ip"), id="ipv6-in-ipv4-slice"),
    pytest.param(bad_endpoint(addresses=[167837698]), ("default", "web-bad", "bad_ip"), id="address-a-number"),
    pytest.param(bad_endpoint(addresses="10.1.0.2"), ("default", "web-bad", "bad_type"), id="addresses-a-string"),
    pytest.param(bad_endpoint(conditions={"ready": "true"}), ("default", "web-bad", "bad_type"),
                 id="ready-a-string"),
    pytest.param(bad_endpoint(nodeName=["node-a"]), ("default", "web-bad", "bad_type"), id="node-name-a-list"),
    # Endpoint addresses the API refuses: a backend there takes connections and answers none.
    pytest.param(bad_endpoint(addresses=["127.0.0.1"]), ("default", "web-bad", "bad_ip"), id="address-loopback"),
    pytest.param(bad_endpoint(addresses=["0.0.0.0"]), ("default", "web-bad", "bad_ip"), id="address-unspecified"),
    pytest.param(bad_endpoint(addresses=["169.254.42.1"]), ("default", "web-bad", "bad_ip"),
                 id="address-link-local-the-hairpin-source"),
    pytest.param(bad_endpoint(addresses=["224.0.0.251"]), ("default", "web-bad", "bad_ip"),
                 id="address-link-local-multicast"),
    # addressType was read as "not IPv4, skip" when absent or unknown: the slice vanished unnamed.
    pytest.param(without(("addressType",), bad_slice()), ("default", "web-bad", "missing_field"),
                 id="no-address-type"),
    pytest.param(bad_slice(addressType="ipv4"), ("default", "web-bad", "bad_value"), id="address-type-lower-case"),
    pytest.param(bad_slice(ports=[port(0)]), ("default", "web-bad", "bad_port"), id="port-0"),
    pytest.param(bad_slice(ports=[port(65536)]), ("default", "web-bad", "bad_port"), id="port-65536"),
    pytest.param(bad_slice(ports=[port("8080")]), ("default", "web-bad", "bad_port"), id="port-a-string"),
    pytest.param(bad_slice(ports=[port(8080, protocol="HTTP")]), ("default", "web-bad", "bad_protocol"),
                 id="protocol-http"),
]


@pytest.mark.parametrize("bad, rejection", REJECTED_SLICE_CASES)
def test_malformed_slice_rejected_others_used(bad, rejection):
    state = run([svc()], [eps(endpoints=[ep("10.1.0.1")]), bad])
    assert_state(state, expected(Programmed(backends=(be("10.1.0.1"),))), [("EndpointSlice", *rejection)])


def test_enormous_port_list_is_checked_in_linear_time():
    """Duplicate ports were found by comparing each port with every one before it: a Service with
    20,000 ports (about 1 MB, which the API admits) took minutes. Now milliseconds."""
    ports = [port(n, f"p{n}") for n in range(1, 20_001)] + [port(1, "again")]
    started = time.perf_counter()
    state = run([svc("big", ip="10.96.0.20", ports=ports), svc()])
    assert time.perf_counter() - started < 2.0
    assert [(r.name, r.reason) for r in state.rejected] == [("big", "duplicate_port")]
    assert spn() in state.ids


# --- Garbage never raises ---

GARBAGE = [None, "service", 42, 1.5, True, [], [{}], {}, {"metadata": None}, {"metadata": {}, "spec": None},
           {"metadata": {"name": {}, "namespace": []}, "spec": {}}]


@pytest.mark.parametrize("garbage", GARBAGE, ids=repr)
def test_garbage_objects_rejected(garbage):
    state = run([garbage, svc()], [garbage, eps(endpoints=[ep("10.1.0.1")])])
    assert_state(dataclasses.replace(state, rejected=[]), expected(Programmed(backends=(be("10.1.0.1"),))))
    assert [r.kind for r in state.rejected] == ["Service", "EndpointSlice"]
    assert {r.reason for r in state.rejected} <= {"bad_type", "missing_field"}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 70000) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)
FULL_SERVICE = svc(ips=[WEB_IP, "fd00::10"], ports=[port(80, "http", targetPort="web", nodePort=30080)],
                   labels={"app": "web"}, internalTrafficPolicy="Local", publishNotReadyAddresses=False,
                   sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
FULL_SLICE = eps(ports=[port(8080, "http", "TCP")],
                 endpoints=[{**ep("10.1.0.1", node=NODE, ready=True, serving=True, terminating=False),
                             "hints": {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": NODE}]}}])
REASONS = {"bad_type", "missing_field", "bad_ip", "bad_port", "bad_protocol", "duplicate_port", "bad_value"}


def field_paths(obj, prefix=()):
    """The path of `obj` itself and of everything inside it."""
    yield prefix
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, child in children:
        yield from field_paths(child, prefix + (key,))


def replaced(obj, path, value):
    if not path:
        return value
    obj = copy.deepcopy(obj)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return obj


@settings(max_examples=300, deadline=None)
@given(service_path=st.sampled_from(list(field_paths(FULL_SERVICE))), service_value=JSON_VALUES,
       slice_path=st.sampled_from(list(field_paths(FULL_SLICE))), slice_value=JSON_VALUES)
def test_any_field_replaced_by_anything_never_raises(service_path, service_value, slice_path, slice_value):
    bystander = svc("bystander", ip="10.96.0.99")  # a name and IP the mutations (max 5 chars) cannot reach
    state = run([replaced(FULL_SERVICE, service_path, service_value), bystander],
                [replaced(FULL_SLICE, slice_path, slice_value)])
    assert {r.reason for r in state.rejected} <= REASONS
    assert spn("bystander") in state.ids


# --- One slice: the quick case gives what the merge gives ---

ENDPOINT = st.tuples(st.sampled_from([None, *(f"10.1.0.{i}" for i in range(1, 13))]),
                     st.sampled_from([NODE, OTHER_NODE, None]), st.sampled_from([None, True, False]),
                     st.sampled_from([None, True, False]), st.sampled_from([None, True, False]),
                     st.sampled_from([None, "zone-a", "zone-b"]))
ENDPOINTS = st.lists(ENDPOINT, max_size=6, unique_by=lambda e: e[0]) | st.lists(ENDPOINT, max_size=6)


def endpoint_of(address, node, ready, serving, terminating, zone=None):
    conditions = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating))
                  if v is not None}
    endpoint = ep(*([address] if address else []), node=node, **conditions)
    if zone:
        endpoint["hints"] = {"forZones": [{"name": zone}]}
    return endpoint


@settings(max_examples=300, deadline=None)
@given(endpoints=ENDPOINTS,
       slice_ports=st.just([port(8080)]) | st.lists(st.sampled_from([port(8080), port(8081), port(8080, "http"),
                                                                     port(8080, protocol="UDP")]), max_size=3),
       publish_not_ready=st.booleans(), policy=st.sampled_from(["Cluster", "Local"]),
       external_policy=st.sampled_from(["Cluster", "Local"]))
def test_one_slice_gives_what_the_merge_of_slices_gives(endpoints, slice_ports, publish_not_ready, policy,
                                                        external_policy):
    """An empty second slice sends the core through its general merge: the result must not change."""
    service = svc(type="LoadBalancer", ports=[port(80, nodePort=30080)], publishNotReadyAddresses=publish_not_ready,
                  internalTrafficPolicy=policy, externalTrafficPolicy=external_policy, healthCheckNodePort=30999)
    one = eps(name="web-a", ports=slice_ports, endpoints=[endpoint_of(*e) for e in endpoints])
    empty = eps(name="web-b", ports=slice_ports)
    quick = run([service], [one], node_addresses=("192.0.2.1",), node_zone="zone-a")
    assert not quick.rejected
    assert quick == run([service], [one, empty], node_addresses=("192.0.2.1",), node_zone="zone-a")
