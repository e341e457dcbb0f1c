"""Services and EndpointSlices broken anywhere: the named breakages and the hypothesis strategies that
the malformed-object tests share (core, tracker, maps, lab).

Valid objects come first: small clusters of ClusterIP, NodePort and LoadBalancer services with their
slices, addresses drawn so that services sometimes claim the same frontend. Then breakages: each is
named and says what the core must make of the broken object: the reason it is rejected for, SKIPPED
(not ours to program: headless, ExternalName...) or VALID (odd but fine: unicode names, huge
lists). `anywhere()` replaces or deletes any field with any JSON value, for shapes no table foresaw.

Hypothesis runs derandomized (the same examples on every run, as CI needs); EBPFLB_FUZZ=<factor>
explores instead: random seeds and factor times the examples, e.g.
    EBPFLB_FUZZ=20 .venv/bin/python -m pytest -q tests/test_malformed_objects.py
"""
import copy
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ebpflb.core.model import REJECT_REASONS
from ebpflb.core.services import desired_state

NODE, OTHER_NODE = "node-a", "node-b"
NODE_ADDRESSES = ("192.168.64.10", "10.0.0.5")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SKIPPED, VALID = "skipped", "valid"
# Rejected only for what another object holds (the object is fine alone).
CONFLICT_REASONS = frozenset({"duplicate_frontend", "duplicate_health_check_port", "duplicate_service",
                              "no_free_id", "map_full"})

_FUZZ = int(os.environ.get("EBPFLB_FUZZ", "0") or 0)


def fuzz_settings(max_examples: int) -> settings:
    """Deterministic by default; EBPFLB_FUZZ=<factor> for random seeds and more examples."""
    return settings(max_examples=max_examples * max(_FUZZ, 1), derandomize=not _FUZZ,
                    database=settings.default.database if _FUZZ else None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- Valid objects ---

def service_name(i: int) -> str:
    """Longer than any text `anywhere` draws: a mutation never forges another object's name."""
    return f"svc-{i:02d}-generated"


def cluster_ip(i: int) -> str:
    return f"10.96.{i}.10"


def base_service(i: int, namespace: str = "default", ports=(("http", 80, "TCP"),), **spec) -> dict:
    """A plain valid ClusterIP service number i; ports are (name, port, protocol)."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service_name(i), "namespace": namespace},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip(i), "clusterIPs": [cluster_ip(i)],
                     "ports": [{"name": n, "port": p, "protocol": pr, "targetPort": 8080} for n, p, pr in ports],
                     **spec}}


def base_slice(i: int, j: int = 0, namespace: str = "default", addresses=None, nodes=(OTHER_NODE,),
               ports=(("http", 8080, "TCP"),)) -> dict:
    """A plain valid slice j of service i, every endpoint ready."""
    addresses = addresses or [f"10.1.{i}.{k + 1}" for k in range(2)]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service_name(i)}-{j}", "namespace": namespace,
                         "labels": {SERVICE_NAME_LABEL: service_name(i)}},
            "ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports],
            "endpoints": [{"addresses": [a], "nodeName": nodes[k % len(nodes)],
                           "conditions": {"ready": True, "serving": True, "terminating": False}}
                          for k, a in enumerate(addresses)]}


NAMESPACES = ("default", "kube-system", "équipe-ü")    # names are opaque to the agent: any text will do
# Small shared pools: services sometimes claim the same frontend, health check port or node port.
SHARED_CLUSTER_IP = "10.96.99.10"
EXTERNAL_IPS = ("198.51.100.1", "198.51.100.2")
LB_IPS = ("203.0.113.1", "203.0.113.2")
PORT_NUMBERS = (53, 80, 443, 8080)
HEALTH_CHECK_PORTS = (32000, 32001)


@st.composite
def valid_services(draw, i: int) -> dict:
    """Service number i: any type, 1-3 ports, every optional field sometimes set."""
    kind = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    node_ports = kind != "ClusterIP"
    numbers = draw(st.lists(st.sampled_from(PORT_NUMBERS), min_size=1, max_size=3, unique=True))
    ports = []
    for j, number in enumerate(numbers):
        entry = {"port": number}
        if len(numbers) > 1 or draw(st.booleans()):
            entry["name"] = f"p{j}"
        protocol = draw(st.sampled_from([None, "TCP", "UDP", "SCTP"]))
        if protocol is not None:
            entry["protocol"] = protocol
        target = draw(st.one_of(st.none(), st.integers(1, 65535), st.just("web")))
        if target is not None:
            entry["targetPort"] = target
        if node_ports and draw(st.integers(0, 3)):
            # port j of every service may share 30000 + j: node ports of one service stay distinct
            entry["nodePort"] = 30000 + j if draw(st.integers(0, 4)) == 0 else 30100 + 10 * i + j
        ports.append(entry)
    ip = SHARED_CLUSTER_IP if draw(st.integers(0, 9)) == 0 else cluster_ip(i)
    spec = {"type": kind, "clusterIP": ip, "ports": ports}
    if draw(st.booleans()):
        spec["clusterIPs"] = [ip, f"fd00::{i + 1:x}"] if draw(st.booleans()) else [ip]
    if draw(st.integers(0, 3)) == 0:
        spec["externalIPs"] = draw(st.lists(st.sampled_from(EXTERNAL_IPS + ("fd00::7",)), min_size=1, max_size=2))
    local = node_ports and draw(st.booleans())
    policy = draw(st.sampled_from([None, "Cluster", "Local"])) if not local else "Local"
    if policy is not None:
        spec["externalTrafficPolicy"] = policy
    if local and draw(st.integers(0, 3)):
        spec["healthCheckNodePort"] = draw(st.sampled_from(HEALTH_CHECK_PORTS)) if draw(st.booleans()) else 32100 + i
    for key, values in (("internalTrafficPolicy", ["Cluster", "Local"]), ("publishNotReadyAddresses", [True, False])):
        value = draw(st.sampled_from([None, *values]))
        if value is not None:
            spec[key] = value
    if kind == "LoadBalancer" and draw(st.booleans()):
        spec["loadBalancerSourceRanges"] = draw(st.lists(st.sampled_from(["10.0.0.0/8", f"172.16.{i}.0/24",
                                                                          "fd00::/8"]), max_size=2))
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": service_name(i), "namespace": draw(st.sampled_from(NAMESPACES))}, "spec": spec}
    if draw(st.booleans()):
        service["metadata"]["labels"] = {"app": service_name(i)}
    if kind == "LoadBalancer" and draw(st.booleans()):
        ingress = [{"ip": ip} for ip in draw(st.lists(st.sampled_from(LB_IPS), min_size=1, max_size=2))]
        if draw(st.booleans()):
            ingress.append({"hostname": "lb.example.com"})
        service["status"] = {"loadBalancer": {"ingress": ingress}}
    return service


@st.composite
def valid_slices(draw, service: dict, j: int, i: int) -> dict:
    """Slice j of `service` (number i): ports named as the service's (sometimes not), 1-4 endpoints."""
    meta = service["metadata"]
    ports = []
    for entry in service["spec"]["ports"]:
        if draw(st.integers(0, 4)):
            port = {"port": draw(st.integers(8000, 8003)), "protocol": entry.get("protocol", "TCP")}
            if "name" in entry:
                port["name"] = entry["name"]
            ports.append(port)
    endpoints = []
    for k in draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)):
        endpoint = {"addresses": [f"10.1.{i}.{k}"]}
        node = draw(st.sampled_from([NODE, OTHER_NODE, None]))
        if node is not None:
            endpoint["nodeName"] = node
        conditions = {c: draw(st.booleans()) for c in ("ready", "serving", "terminating") if draw(st.booleans())}
        if conditions:
            endpoint["conditions"] = conditions
        endpoints.append(endpoint)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service_name(i)}-{j}", "namespace": meta["namespace"],
                         "labels": {SERVICE_NAME_LABEL: meta["name"]}},
            "ports": ports or [{"port": 8000}], "endpoints": endpoints}


# --- Breakages ---

Pick = Callable[[int], int]   # chooses one of n things: an index in range(n)


def first(n: int) -> int:
    return 0


@dataclass(frozen=True)
class Breakage:
    name: str
    kind: str                                  # "Service" or "EndpointSlice"
    outcome: str                               # a rejection reason, SKIPPED or VALID
    apply: Callable[[dict, Pick], None] = field(repr=False)   # changes the object in place

    def __call__(self, obj: dict, pick: Pick = first) -> dict:
        obj = copy.deepcopy(obj)
        self.apply(obj, pick)
        return obj


def _one(items: list, pick: Pick):
    return items[pick(len(items))]


def _cluster_ip(value):
    def apply(obj, pick):
        obj["spec"]["clusterIP"] = value
        if isinstance(value, str):
            obj["spec"]["clusterIPs"] = [value]
        else:
            obj["spec"].pop("clusterIPs", None)
    return apply


def _spec(**fields):
    return lambda obj, pick: obj["spec"].update(fields)


def _port(**fields):
    return lambda obj, pick: _one(obj["spec"]["ports"], pick).update(fields)


def _without_port_field(key):
    return lambda obj, pick: _one(obj["spec"]["ports"], pick).pop(key, None)


def _duplicate_port(same_number: bool):
    def apply(obj, pick):
        ports = obj["spec"]["ports"]
        original = _one(ports, pick)
        twin = dict(original, name=original.get("name", ""))
        if not same_number:
            twin["port"] = original["port"] % 65535 + 1
        else:
            twin["name"] = twin["name"] + "-twin"
        ports.append(twin)
    return apply


def _enormous_ports(n: int, duplicate_last: bool):
    def apply(obj, pick):
        obj["spec"]["ports"] = [{"name": f"p{k}", "port": k + 1, "protocol": "TCP"} for k in range(n)]
        if duplicate_last:
            obj["spec"]["ports"].append({"name": "again", "port": 1, "protocol": "TCP"})
    return apply


def _metadata(**fields):
    return lambda obj, pick: obj["metadata"].update(fields)


def _without(*path):
    def apply(obj, pick):
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        parent.pop(path[-1], None)
    return apply


def _set(*path_and_value):
    *path, value = path_and_value

    def apply(obj, pick):
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
    return apply


def _endpoint(**fields):
    return lambda obj, pick: _one(obj["endpoints"], pick).update(fields)


def _condition(**fields):
    return lambda obj, pick: _one(obj["endpoints"], pick).setdefault("conditions", {}).update(fields)


def _slice_port(**fields):
    return lambda obj, pick: _one(obj["ports"], pick).update(fields)


def _ingress(*entries):
    return _set("status", {"loadBalancer": {"ingress": list(entries)}})


def _enormous_endpoints(n: int):
    def apply(obj, pick):
        obj["endpoints"] = [{"addresses": [f"10.{100 + k // 65536}.{k // 256 % 256}.{k % 256}"],
                             "conditions": {"ready": True}} for k in range(n)]
    return apply


BAD_IPV4 = ["10.96.0.256", "10.96.0", "010.96.0.1", " 10.96.0.1", "10.96.0.1/32", "١٠.96.0.1", "10.96.0.1\x00",
            "10.96.0.1.", "0x0a.96.0.1", "::ffff:10.96.0.1x"]
S, E = "Service", "EndpointSlice"

SERVICE_BREAKAGES = [
    Breakage("no-metadata", S, "missing_field", _without("metadata")),
    Breakage("metadata-a-list", S, "bad_type", _set("metadata", ["svc"])),
    Breakage("empty-name", S, "missing_field", _metadata(name="")),
    Breakage("name-a-number", S, "bad_type", _metadata(name=1234)),   # YAML: `name: 1234`
    Breakage("no-namespace", S, "missing_field", _without("metadata", "namespace")),
    Breakage("namespace-a-list", S, "bad_type", _metadata(namespace=["default"])),
    Breakage("namespace-a-number", S, "bad_type", _metadata(namespace=2024)),   # YAML: `namespace: 2024`
    Breakage("namespace-a-bool", S, "bad_type", _metadata(namespace=True)),     # YAML: `namespace: yes`
    Breakage("no-spec", S, "missing_field", _without("spec")),
    Breakage("spec-a-string", S, "bad_type", _set("spec", "ClusterIP")),
    Breakage("labels-a-list", S, "bad_type", _metadata(labels=["app"])),
    *(Breakage(f"cluster-ip-{k}-{ip!r}", S, "bad_ip", _cluster_ip(ip)) for k, ip in enumerate(BAD_IPV4)),
    Breakage("cluster-ip-a-number", S, "bad_ip", _cluster_ip(167772170)),
    Breakage("cluster-ips-a-string", S, "bad_type", _spec(clusterIPs="10.96.0.10")),
    Breakage("second-cluster-ip-garbage", S, "bad_ip", lambda obj, pick: obj["spec"].update(
        clusterIPs=[obj["spec"]["clusterIP"], "nonsense"])),
    Breakage("ports-a-dict", S, "bad_type", _spec(ports={"port": 80})),
    Breakage("port-entry-a-string", S, "bad_type", _spec(ports=["80/TCP"])),
    Breakage("port-entry-null", S, "bad_type", _spec(ports=[None])),
    *(Breakage(f"port-{value!r}", S, "bad_port", _port(port=value))
      for value in (0, -1, 65536, 2 ** 64, "80", 80.0, True, None)),
    Breakage("port-missing", S, "bad_port", _without_port_field("port")),
    Breakage("port-name-a-number", S, "bad_type", _port(name=80)),
    *(Breakage(f"protocol-{value!r}", S, "bad_protocol", _port(protocol=value))
      for value in ("ICMP", "tcp", "", "TCP ", 6, ["TCP"])),
    Breakage("duplicate-port-name", S, "duplicate_port", _duplicate_port(same_number=False)),
    Breakage("duplicate-port-number", S, "duplicate_port", _duplicate_port(same_number=True)),
    *(Breakage(f"target-port-{value!r}", S, "bad_port", _port(targetPort=value))
      for value in (0, 65536, "", 8080.5, True, ["web"])),
    *(Breakage(f"node-port-{value!r}", S, "bad_port", _port(nodePort=value))
      for value in (0, -30000, 65536, "30080", True)),
    *(Breakage(f"health-check-port-{value!r}", S, "bad_port",
               _spec(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=value))
      for value in (0, 70000, "32000")),
    Breakage("external-ip-garbage", S, "bad_ip", _spec(externalIPs=["198.51.100.1", "nonsense"])),
    Breakage("external-ip-a-number", S, "bad_ip", _spec(externalIPs=[3325256711])),
    Breakage("external-ips-a-string", S, "bad_type", _spec(externalIPs="198.51.100.1")),
    Breakage("status-a-list", S, "bad_type", _set("status", ["203.0.113.1"])),
    Breakage("ingress-a-dict", S, "bad_type", _set("status", {"loadBalancer": {"ingress": {"ip": "203.0.113.1"}}})),
    Breakage("ingress-entry-a-string", S, "bad_type", _ingress("203.0.113.1")),
    Breakage("ingress-ip-out-of-range", S, "bad_ip", _ingress({"ip": "203.0.113.300"})),
    *(Breakage(f"source-range-{value!r}", S, "bad_cidr", _spec(type="LoadBalancer", loadBalancerSourceRanges=[value]))
      for value in ("10.0.0.0/33", "10.0.0.1", "nonsense/8", 167772160, None)),
    Breakage("source-ranges-a-string", S, "bad_type", _spec(loadBalancerSourceRanges="10.0.0.0/8")),
    *(Breakage(f"external-traffic-policy-{value!r}", S, "bad_value",
               _spec(type="NodePort", externalTrafficPolicy=value)) for value in ("local", "Sideways", 1, [])),
    *(Breakage(f"internal-traffic-policy-{value!r}", S, "bad_value", _spec(internalTrafficPolicy=value))
      for value in ("local", "Node", 0)),
    *(Breakage(f"type-{value!r}", S, "bad_value", _spec(type=value)) for value in ("Nodeport", "Load Balancer", 3, {})),
    Breakage("publish-not-ready-a-string", S, "bad_type", _spec(publishNotReadyAddresses="true")),
    Breakage("enormous-port-list-one-twice", S, "duplicate_port", _enormous_ports(3000, duplicate_last=True)),
    # Valid for the API, but 100 ports x 656 ranges = 65,600 src_ranges entries: more than the map holds.
    Breakage("source-ranges-times-ports-past-the-map", S, "map_full", lambda obj, pick: (
        _enormous_ports(100, duplicate_last=False)(obj, pick),
        obj["spec"].update(type="LoadBalancer", loadBalancerSourceRanges=[f"10.9.{k // 256}.{k % 256}/32"
                                                                          for k in range(656)]),
        obj.update(status={"loadBalancer": {"ingress": [{"ip": "203.0.113.99"}]}}))),
    # Not ours to program: neither rejected nor programmed.
    Breakage("headless", S, SKIPPED, _cluster_ip("None")),
    Breakage("cluster-ip-not-allocated", S, SKIPPED, _cluster_ip("")),
    Breakage("external-name", S, SKIPPED, _spec(type="ExternalName", externalName="example.com")),
    Breakage("headless-label", S, SKIPPED, _metadata(labels={"service.kubernetes.io/headless": ""})),
    Breakage("another-proxys-label", S, SKIPPED,
             _metadata(labels={"service.kubernetes.io/service-proxy-name": "other"})),
    Breakage("ipv6-only", S, VALID, _cluster_ip("fd00::10")),   # served in IPv6 (computed, not yet programmed)
    # Odd but valid.
    Breakage("unicode-name", S, VALID, lambda obj, pick: obj["metadata"].update(name=obj["metadata"]["name"] + "-ü😀")),
    Breakage("name-of-253-characters", S, VALID, lambda obj, pick: obj["metadata"].update(
        name=obj["metadata"]["name"].ljust(253, "x"))),
    Breakage("no-ports", S, VALID, _spec(ports=[])),
    Breakage("enormous-port-list", S, VALID, _enormous_ports(1000, duplicate_last=False)),
    Breakage("enormous-external-ip-list", S, VALID,
             _spec(externalIPs=[f"198.51.{100 + k // 250}.{k % 250 + 1}" for k in range(1000)])),
    Breakage("unknown-fields", S, VALID, _spec(sessionAffinity="ClientIP", futureField={"x": [1, None]})),
]

SLICE_BREAKAGES = [
    Breakage("no-metadata", E, "missing_field", _without("metadata")),
    Breakage("metadata-a-string", E, "bad_type", _set("metadata", "slice")),
    Breakage("empty-name", E, "missing_field", _metadata(name="")),
    Breakage("namespace-a-list", E, "bad_type", _metadata(namespace=["default"])),
    Breakage("namespace-a-number", E, "bad_type", _metadata(namespace=7)),
    Breakage("no-labels", E, "missing_field", _without("metadata", "labels")),
    Breakage("labels-a-list", E, "bad_type", _metadata(labels=[SERVICE_NAME_LABEL])),
    Breakage("no-service-name-label", E, "missing_field", _metadata(labels={"app": "web"})),
    Breakage("service-name-label-a-number", E, "bad_type", _metadata(labels={SERVICE_NAME_LABEL: 5})),
    Breakage("no-address-type", E, "missing_field", _without("addressType")),
    *(Breakage(f"address-type-{value!r}", E, "bad_value", _set("addressType", value))
      for value in ("ipv4", "IPv5", 4, ["IPv4"])),
    Breakage("endpoints-a-dict", E, "bad_type", _set("endpoints", {"addresses": ["10.1.0.1"]})),
    Breakage("endpoint-a-string", E, "bad_type", _set("endpoints", ["10.1.0.1"])),
    *(Breakage(f"address-{k}-{ip!r}", E, "bad_ip", _endpoint(addresses=[ip])) for k, ip in enumerate(BAD_IPV4)),
    Breakage("address-ipv6-in-ipv4-slice", E, "bad_ip", _endpoint(addresses=["fd00::2"])),
    Breakage("address-a-number", E, "bad_ip", _endpoint(addresses=[167837698])),
    # What the API refuses for an endpoint: no pod has these addresses, so no connection would work.
    *(Breakage(f"address-{ip}", E, "bad_ip", _endpoint(addresses=[ip]))
      for ip in ("0.0.0.0", "127.0.0.1", "127.255.0.9", "169.254.42.1", "224.0.0.251")),
    Breakage("addresses-a-string", E, "bad_type", _endpoint(addresses="10.1.0.1")),
    Breakage("conditions-a-list", E, "bad_type", _endpoint(conditions=["ready"])),
    Breakage("ready-a-string", E, "bad_type", _condition(ready="true")),
    Breakage("serving-a-number", E, "bad_type", _condition(serving=1)),
    Breakage("terminating-a-string", E, "bad_type", _condition(terminating="false")),
    Breakage("node-name-a-list", E, "bad_type", _endpoint(nodeName=[NODE])),
    Breakage("ports-a-dict", E, "bad_type", _set("ports", {"port": 8080})),
    Breakage("port-entry-a-number", E, "bad_type", _set("ports", [8080])),
    *(Breakage(f"port-{value!r}", E, "bad_port", _slice_port(port=value)) for value in (0, 65536, "8080", 8080.0, False)),
    *(Breakage(f"protocol-{value!r}", E, "bad_protocol", _slice_port(protocol=value)) for value in ("HTTP", "udp", 17)),
    Breakage("port-name-a-number", E, "bad_type", _slice_port(name=8080)),
    Breakage("address-type-ipv6", E, SKIPPED, lambda obj, pick: obj.update(
        addressType="IPv6", endpoints=[{"addresses": ["fd00::1"]}])),
    Breakage("address-type-fqdn", E, SKIPPED, lambda obj, pick: obj.update(
        addressType="FQDN", endpoints=[{"addresses": ["example.com"]}])),
    Breakage("pointing-nowhere", E, VALID, _metadata(labels={SERVICE_NAME_LABEL: "nowhere-generated"})),
    Breakage("port-without-number", E, VALID, _slice_port(port=None)),
    Breakage("endpoint-without-addresses", E, VALID, _endpoint(addresses=[])),
    Breakage("enormous-endpoint-list", E, VALID, _enormous_endpoints(1000)),   # the API's maximum per slice
    Breakage("unicode-name", E, VALID, lambda obj, pick: obj["metadata"].update(name=obj["metadata"]["name"] + "-ü")),
]

# Address families (issue 19). A table of their own, not in the two above: the fuzzers draw from those
# by position, and a longer table would change every example they draw.
FAMILY_BREAKAGES = [
    # A family ipFamilies does not list: which family's endpoints would it get?
    Breakage("cluster-ip-of-a-family-not-in-ip-families", S, "bad_ip",
             _spec(clusterIPs=["10.96.99.10", "fd00::99:10"], ipFamilies=["IPv4"], ipFamilyPolicy="PreferDualStack")),
    Breakage("ipv6-cluster-ip-ipv4-family", S, "bad_ip", _spec(clusterIP="fd00::99:11", clusterIPs=["fd00::99:11"],
                                                              ipFamilies=["IPv4"])),
    *(Breakage(f"ip-families-{value!r}", S, "bad_value", _spec(ipFamilies=value)) for value in (["IPv5"], ["ipv4"], [4])),
    Breakage("ip-families-a-string", S, "bad_type", _spec(ipFamilies="IPv4")),
    *(Breakage(f"ip-family-policy-{value!r}", S, "bad_value", _spec(ipFamilyPolicy=value))
      for value in ("DualStack", "singlestack", 2)),
    Breakage("dual-stack", S, VALID, _spec(clusterIPs=["10.96.99.12", "fd00::99:12"], ipFamilies=["IPv4", "IPv6"],
                                           ipFamilyPolicy="RequireDualStack")),
]

BREAKAGES = SERVICE_BREAKAGES + SLICE_BREAKAGES + FAMILY_BREAKAGES


# --- Anything anywhere ---

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 70000) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


def field_paths(obj, prefix=()):
    """The path of `obj` itself and of everything inside it."""
    yield prefix
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, child in children:
        yield from field_paths(child, prefix + (key,))


@st.composite
def anywhere(draw, obj: dict):
    """`obj` with one field anywhere replaced by any JSON value, or deleted."""
    path = draw(st.sampled_from(list(field_paths(obj))[1:]))
    obj = copy.deepcopy(obj)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return obj


# --- Clusters: valid and broken objects mixed ---

@dataclass
class Cluster:
    services: list[dict]
    slices: list[dict]
    # id() of each object broken by a named breakage -> the breakage (for the oracle's outcome)
    broken: dict[int, Breakage] = field(default_factory=dict)

    @property
    def objects(self) -> list[tuple[str, dict]]:
        return [("Service", s) for s in self.services] + [("EndpointSlice", s) for s in self.slices]


@st.composite
def broken_or_not(draw, obj: dict, breakages: list[Breakage], cluster: Cluster) -> dict:
    """Mostly valid: a third of the objects get a named breakage, a sixth a change anywhere."""
    roll = draw(st.integers(0, 5))
    if roll <= 1:
        breakage = draw(st.sampled_from(breakages))
        obj = breakage(obj, lambda n: draw(st.integers(0, n - 1)))
        cluster.broken[id(obj)] = breakage
    elif roll == 2:
        obj = draw(anywhere(obj))
    return obj


@st.composite
def clusters(draw, max_services: int = 5) -> Cluster:
    cluster = Cluster([], [])
    for i in range(draw(st.integers(1, max_services))):
        service = draw(valid_services(i))
        for j in range(draw(st.integers(0, 2))):
            cluster.slices.append(draw(broken_or_not(draw(valid_slices(service, j, i)), SLICE_BREAKAGES, cluster)))
        cluster.services.append(draw(broken_or_not(service, SERVICE_BREAKAGES, cluster)))
    return cluster


# --- Judging ---

def run(services=(), slices=(), node_addresses=NODE_ADDRESSES):
    return desired_state(services, slices, node_name=NODE, known_ids={}, node_addresses=node_addresses)


def keyed(rejected) -> Counter:
    """Rejections as a multiset of (kind, namespace, name, reason); the detail is prose."""
    return Counter((r.kind, r.namespace, r.name, r.reason) for r in rejected)


def alone(kind: str, obj) -> str:
    """What the core makes of one object on its own: its rejection reason, SKIPPED or VALID."""
    state = run([obj]) if kind == "Service" else run([], [obj])
    if state.rejected:
        assert len(state.rejected) == 1 and state.rejected[0].kind == kind, state.rejected
        return state.rejected[0].reason
    return VALID if kind == "EndpointSlice" or state.ids or state.service_ips else SKIPPED


def by_name(state):
    """The programmed contents with ids replaced by service-port names: equal whatever ids were handed out."""
    name_of = {i: n for n, i in state.ids.items()}
    return ({k: (name_of[f.svc_id], f.count, f.local, f.flags) for k, f in state.frontends.items()},
            {name_of[i]: b for i, b in state.backends.items()}, set(state.service_ips),
            {name_of[i]: r for i, r in state.src_ranges.items()}, dict(state.health_checks))


def assert_consistent(state) -> None:
    """Ids unique and in range; every frontend, backend list and range set belongs to a programmed id."""
    from ebpflb.datapath.structs import C
    ids = set(state.ids.values())
    assert len(ids) == len(state.ids) and all(1 <= i < C.SVC_COUNTERS_MAX for i in ids)
    assert {f.svc_id for f in state.frontends.values()} <= ids and set(state.backends) == ids
    assert set(state.src_ranges) <= ids
    assert all(0 <= f.local <= f.count <= len(state.backends[f.svc_id]) for f in state.frontends.values())
    assert {r.reason for r in state.rejected} <= REJECT_REASONS
    assert all(isinstance(r.detail, str) and r.detail for r in state.rejected)


def identity(obj) -> tuple[str, str]:
    """(namespace, name) a rejection names the object by: "" for what it lacks."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    namespace, name = meta.get("namespace"), meta.get("name")
    return (namespace if isinstance(namespace, str) else "", name if isinstance(name, str) else "")
