"""desired_state() for traffic from outside (issue 5): NodePort on the node's addresses, externalIPs,
LoadBalancer ingress IPs, externalTrafficPolicy, loadBalancerSourceRanges and healthCheckNodePort."""
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.core.model import Backend, FrontendKey, HealthCheck
from ebpflb.core.services import desired_state, node_port_addresses
from ebpflb.datapath.structs import C
from tests.test_core import (JSON_VALUES, NODE, OTHER_NODE, REASONS, TCP, UDP, WEB_IP, be, ep, eps, field_paths,
                             port, replaced, svc)

EXT = C.NAT_FLG_EXTERNAL
EXT_LOCAL = C.NAT_FLG_EXTERNAL_LOCAL
INT_LOCAL = C.NAT_FLG_INTERNAL_LOCAL
SRC = C.NAT_FLG_SRC_RANGES
NODE_IP, NODE_IP2 = "192.168.64.10", "10.0.0.5"
NODE_ADDRS = (NODE_IP, NODE_IP2)
LB_IP, EXT_IP = "203.0.113.10", "198.51.100.7"
LOCAL, REMOTE = "10.1.0.1", "10.1.0.2"


def ext_svc(name="web", *, ip=WEB_IP, ports=None, ingress=None, status=None, **spec_fields):
    """A Service; `ingress` (IPs or ingress dicts) becomes status.loadBalancer.ingress."""
    service = svc(name, ip=ip, ports=[port(80, nodePort=30080)] if ports is None else ports, **spec_fields)
    if ingress is not None:
        service["status"] = {"loadBalancer": {"ingress": [i if isinstance(i, dict) else {"ip": i} for i in ingress]}}
    if status is not None:
        service["status"] = status
    return service


def local_and_remote(service="web", **kw):
    return [eps(service, endpoints=[ep(LOCAL, node=NODE), ep(REMOTE, node=OTHER_NODE)], **kw)]


def run(services, slices=(), node_addresses=NODE_ADDRS, nodeport_cidrs=()):
    return desired_state(services, slices, node_name=NODE, known_ids={}, node_addresses=node_addresses,
                         nodeport_cidrs=nodeport_cidrs)


def frontends(state):
    """{(addr, port, proto): (id, count, local, flags)}"""
    return {(k.addr, k.port, k.proto): (f.svc_id, f.count, f.local, f.flags) for k, f in state.frontends.items()}


def reasons(state):
    return [(r.name, r.reason) for r in state.rejected]


BOTH = (be(LOCAL), be(REMOTE))   # local first

# (services, slices, run() keyword arguments, frontends, backends of id 1)
FRONTEND_CASES = [
    pytest.param([ext_svc(type="NodePort")], local_and_remote(), {},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0), (NODE_IP, 30080, TCP): (1, 2, 1, EXT),
                  (NODE_IP2, 30080, TCP): (1, 2, 1, EXT)}, BOTH, id="node-port-on-every-node-address"),
    pytest.param([ext_svc(type="NodePort")], local_and_remote(), {"node_addresses": (NODE_IP, "fd00::1", NODE_IP)},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0), (NODE_IP, 30080, TCP): (1, 2, 1, EXT)}, BOTH,
                 id="node-port-ipv6-node-address-skipped-repeats-once"),
    pytest.param([ext_svc(type="NodePort")], local_and_remote(), {"nodeport_cidrs": ("192.168.64.0/24",)},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0), (NODE_IP, 30080, TCP): (1, 2, 1, EXT)}, BOTH,
                 id="nodeport-cidrs-filter-node-addresses"),
    pytest.param([ext_svc(type="NodePort")], local_and_remote(), {"nodeport_cidrs": ("172.16.0.0/12",)},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0)}, BOTH, id="nodeport-cidrs-matching-no-address"),
    pytest.param([ext_svc(type="NodePort")], local_and_remote(), {"nodeport_cidrs": ("fd00::/8",)},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0), (NODE_IP, 30080, TCP): (1, 2, 1, EXT),
                  (NODE_IP2, 30080, TCP): (1, 2, 1, EXT)}, BOTH, id="nodeport-cidrs-of-ipv6-only-mean-all"),
    pytest.param([ext_svc(type="NodePort")], local_and_remote(), {"node_addresses": ()},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0)}, BOTH, id="no-node-addresses-no-node-ports"),
    pytest.param([ext_svc(type="ClusterIP")], local_and_remote(), {},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0)}, BOTH, id="cluster-ip-type-node-port-field-ignored"),
    pytest.param([ext_svc(type="LoadBalancer", ports=[port(53, protocol="UDP", nodePort=30053)])],
                 [eps(ports=[port(5353, protocol="UDP")], endpoints=[ep(LOCAL, node=NODE)])], {},
                 {(WEB_IP, 53, UDP): (1, 1, 1, 0), (NODE_IP, 30053, UDP): (1, 1, 1, EXT),
                  (NODE_IP2, 30053, UDP): (1, 1, 1, EXT)}, (be(LOCAL, 5353),), id="load-balancer-type-node-ports-udp"),
    pytest.param([ext_svc(type="NodePort", ports=[port(80, "http", nodePort=30080), port(81, "admin")])], [], {},
                 {(WEB_IP, 80, TCP): (2, 0, 0, 0), (NODE_IP, 30080, TCP): (2, 0, 0, EXT),
                  (NODE_IP2, 30080, TCP): (2, 0, 0, EXT), (WEB_IP, 81, TCP): (1, 0, 0, 0)}, (),
                 id="port-without-node-port-cluster-ip-only-no-endpoints-count-0"),
    pytest.param([ext_svc(ports=[port(80)], externalIPs=[EXT_IP, "fd00::7", EXT_IP])], local_and_remote(), {},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0), (EXT_IP, 80, TCP): (1, 2, 1, EXT)}, BOTH,
                 id="external-ips-any-type-ipv6-skipped-repeats-once"),
    pytest.param([ext_svc(type="LoadBalancer", ports=[port(80)],
                          ingress=[LB_IP, "fd00::10", {"hostname": "lb.example.com"},
                                   {"ip": "203.0.113.11", "ipMode": "Proxy"}, {"ip": "203.0.113.12", "ipMode": "VIP"}])],
                 local_and_remote(), {},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0), (LB_IP, 80, TCP): (1, 2, 1, EXT),
                  ("203.0.113.12", 80, TCP): (1, 2, 1, EXT)}, BOTH,
                 id="lb-ingress-ips-hostname-proxy-mode-and-ipv6-skipped"),
    pytest.param([ext_svc(type="LoadBalancer", externalTrafficPolicy="Local", externalIPs=[EXT_IP], ingress=[LB_IP])],
                 local_and_remote(), {},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0), (NODE_IP, 30080, TCP): (1, 2, 1, EXT | EXT_LOCAL),
                  (NODE_IP2, 30080, TCP): (1, 2, 1, EXT | EXT_LOCAL), (EXT_IP, 80, TCP): (1, 2, 1, EXT | EXT_LOCAL),
                  (LB_IP, 80, TCP): (1, 2, 1, EXT | EXT_LOCAL)}, BOTH,
                 id="external-local-flags-every-external-frontend-not-the-cluster-ip"),
    pytest.param([ext_svc(type="NodePort", externalTrafficPolicy="Local")],
                 [eps(endpoints=[ep(REMOTE, node=OTHER_NODE)])], {},
                 {(WEB_IP, 80, TCP): (1, 1, 0, 0), (NODE_IP, 30080, TCP): (1, 1, 0, EXT | EXT_LOCAL),
                  (NODE_IP2, 30080, TCP): (1, 1, 0, EXT | EXT_LOCAL)}, (be(REMOTE),),
                 id="external-local-without-local-endpoint-local-0-means-drop"),
    pytest.param([ext_svc(ports=[port(80)], externalTrafficPolicy="Local", externalIPs=[EXT_IP])],
                 local_and_remote(), {},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0), (EXT_IP, 80, TCP): (1, 2, 1, EXT)}, BOTH,
                 id="external-local-needs-node-port-or-load-balancer-type"),
    pytest.param([ext_svc(internalTrafficPolicy="Local")], local_and_remote(), {},
                 {(WEB_IP, 80, TCP): (1, 1, 1, INT_LOCAL)}, (be(LOCAL),),
                 id="internal-local-without-external-frontends-unchanged"),
    pytest.param([ext_svc(type="NodePort", internalTrafficPolicy="Local")], local_and_remote(), {},
                 {(WEB_IP, 80, TCP): (1, 1, 1, INT_LOCAL), (NODE_IP, 30080, TCP): (1, 2, 1, EXT),
                  (NODE_IP2, 30080, TCP): (1, 2, 1, EXT)}, BOTH,
                 id="internal-local-with-node-port-cluster-list-cluster-ip-takes-local-ordinals"),
    pytest.param([ext_svc(type="NodePort", internalTrafficPolicy="Local")],
                 [eps(endpoints=[ep(REMOTE, node=OTHER_NODE)])], {},
                 {(WEB_IP, 80, TCP): (1, 0, 0, INT_LOCAL), (NODE_IP, 30080, TCP): (1, 1, 0, EXT),
                  (NODE_IP2, 30080, TCP): (1, 1, 0, EXT)}, (be(REMOTE),),
                 id="internal-local-with-node-port-no-local-endpoint"),
    pytest.param([ext_svc(type="NodePort", internalTrafficPolicy="Local")],
                 [eps(endpoints=[ep(LOCAL, node=NODE, ready=False, serving=True, terminating=True),
                                 ep(REMOTE, node=OTHER_NODE)])], {},
                 {(WEB_IP, 80, TCP): (1, 0, 0, INT_LOCAL), (NODE_IP, 30080, TCP): (1, 1, 0, EXT),
                  (NODE_IP2, 30080, TCP): (1, 1, 0, EXT)}, (be(REMOTE),),
                 id="internal-local-with-node-port-local-fallback-approximated-by-cluster-set"),
    pytest.param([ext_svc(type="NodePort", internalTrafficPolicy="Local", ports=[port(80, "a", nodePort=30080),
                                                                                  port(81, "b")])],
                 [eps(ports=[port(8080, "a"), port(8081, "b")],
                      endpoints=[ep(LOCAL, node=NODE), ep(REMOTE, node=OTHER_NODE)])], {},
                 {(WEB_IP, 80, TCP): (1, 1, 1, INT_LOCAL), (NODE_IP, 30080, TCP): (1, 2, 1, EXT),
                  (NODE_IP2, 30080, TCP): (1, 2, 1, EXT), (WEB_IP, 81, TCP): (2, 1, 1, INT_LOCAL)}, BOTH,
                 id="internal-local-decided-per-port"),
    pytest.param([ext_svc(type="LoadBalancer", externalIPs=[EXT_IP], ingress=[LB_IP],
                          loadBalancerSourceRanges=["10.9.8.7/8", " 192.168.64.100/32 ", "fd00::/8"])],
                 local_and_remote(), {},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0), (NODE_IP, 30080, TCP): (1, 2, 1, EXT),
                  (NODE_IP2, 30080, TCP): (1, 2, 1, EXT), (EXT_IP, 80, TCP): (1, 2, 1, EXT),
                  (LB_IP, 80, TCP): (1, 2, 1, EXT | SRC)}, BOTH,
                 id="source-ranges-flag-lb-ingress-only-node-ports-bypass"),
    pytest.param([ext_svc(type="LoadBalancer", externalTrafficPolicy="Local", ingress=[LB_IP],
                          loadBalancerSourceRanges=["10.0.0.0/8"])], local_and_remote(), {},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0), (NODE_IP, 30080, TCP): (1, 2, 1, EXT | EXT_LOCAL),
                  (NODE_IP2, 30080, TCP): (1, 2, 1, EXT | EXT_LOCAL),
                  (LB_IP, 80, TCP): (1, 2, 1, EXT | EXT_LOCAL | SRC)}, BOTH, id="source-ranges-with-external-local"),
    pytest.param([ext_svc(type="LoadBalancer", ingress=[LB_IP], loadBalancerSourceRanges=["fd00::/8"])],
                 local_and_remote(), {"node_addresses": ()},
                 {(WEB_IP, 80, TCP): (1, 2, 1, 0), (LB_IP, 80, TCP): (1, 2, 1, EXT)}, BOTH,
                 id="source-ranges-ipv6-only-means-none"),
    pytest.param([ext_svc(type="NodePort", externalIPs=[NODE_IP], ports=[port(30080, nodePort=30080)])],
                 local_and_remote(), {},
                 {(WEB_IP, 30080, TCP): (1, 2, 1, 0), (NODE_IP, 30080, TCP): (1, 2, 1, EXT),
                  (NODE_IP2, 30080, TCP): (1, 2, 1, EXT)}, BOTH, id="external-ip-on-own-node-port-once"),
]


@pytest.mark.parametrize("services, slices, kwargs, want_frontends, want_backends", FRONTEND_CASES)
def test_external_frontends(services, slices, kwargs, want_frontends, want_backends):
    state = run(services, slices, **kwargs)
    assert reasons(state) == []
    assert frontends(state) == want_frontends
    assert state.backends[1] == want_backends
    assert state.service_ips == {WEB_IP}   # never node addresses, externalIPs or LB IPs


SRC_RANGE_CASES = [
    pytest.param(ext_svc(type="LoadBalancer", ingress=[LB_IP],
                         loadBalancerSourceRanges=["10.9.8.7/8", " 192.168.64.100/32 ", "fd00::/8", "10.0.0.0/8"]),
                 {1: frozenset({"10.0.0.0/8", "192.168.64.100/32"})}, id="normalized-ipv6-skipped-repeats-once"),
    pytest.param(ext_svc(type="LoadBalancer", ingress=[LB_IP], ports=[port(80, "a"), port(81, "b")],
                         loadBalancerSourceRanges=["10.0.0.0/8"]),
                 {1: frozenset({"10.0.0.0/8"}), 2: frozenset({"10.0.0.0/8"})}, id="every-port-id"),
    pytest.param(ext_svc(type="NodePort", externalIPs=[EXT_IP], loadBalancerSourceRanges=["10.0.0.0/8"]), {},
                 id="no-lb-ingress-no-ranges"),
    pytest.param(ext_svc(type="LoadBalancer", ingress=[LB_IP], loadBalancerSourceRanges=[]), {}, id="empty-ranges"),
    pytest.param(ext_svc(type="LoadBalancer", ingress=[LB_IP], loadBalancerSourceRanges=["fd00::/8"]), {},
                 id="ipv6-ranges-only"),
]


@pytest.mark.parametrize("service, want", SRC_RANGE_CASES)
def test_source_ranges(service, want):
    state = run([service], local_and_remote())
    assert reasons(state) == []
    assert state.src_ranges == want
    ranged = {f.svc_id for f in state.frontends.values() if f.flags & SRC}
    assert ranged == set(want)


def lb_local(name="web", ip=WEB_IP, hc=32000, **spec_fields):
    fields = {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": hc,
              "ports": [port(80, "http", nodePort=30080 + hc % 10), port(443, "https", nodePort=30443 + hc % 10)],
              **spec_fields}
    return ext_svc(name, ip=ip, **fields)


def two_port_slice(*endpoints, name=None):
    return eps(name=name, ports=[port(8080, "http"), port(8443, "https")], endpoints=endpoints)


HEALTH_CHECK_CASES = [
    pytest.param([lb_local()], [two_port_slice(ep(LOCAL, node=NODE), ep("10.1.0.3", node=NODE),
                                               ep(REMOTE, node=OTHER_NODE))],
                 {32000: HealthCheck("default", "web", 2)}, id="distinct-local-ready-addresses-over-all-ports"),
    pytest.param([lb_local()], [eps(ports=[port(8080, "http")], endpoints=[ep(LOCAL, node=NODE)]),
                                eps(name="web-2", ports=[port(8443, "https")], endpoints=[ep(LOCAL, node=NODE)])],
                 {32000: HealthCheck("default", "web", 1)}, id="one-address-on-two-ports-counts-once"),
    pytest.param([lb_local()], [two_port_slice(ep(REMOTE, node=OTHER_NODE))],
                 {32000: HealthCheck("default", "web", 0)}, id="no-local-endpoint-0"),
    pytest.param([lb_local()], [two_port_slice(ep(LOCAL, node=NODE, ready=False),
                                               ep("10.1.0.3", node=NODE, ready=False, serving=False))],
                 {32000: HealthCheck("default", "web", 0)}, id="not-ready-not-counted"),
    # KEP-1669: the health check fails while a node has only terminating endpoints, so load balancers
    # drain it, although the datapath still sends to them (the local serving+terminating fallback).
    pytest.param([lb_local()], [two_port_slice(ep(LOCAL, node=NODE, ready=False, serving=True, terminating=True))],
                 {32000: HealthCheck("default", "web", 0)}, id="local-terminating-fallback-not-counted"),
    pytest.param([lb_local(publishNotReadyAddresses=True)], [two_port_slice(ep(LOCAL, node=NODE, ready=False))],
                 {32000: HealthCheck("default", "web", 1)}, id="publish-not-ready-addresses-counted"),
    pytest.param([lb_local(externalTrafficPolicy="Cluster")], [two_port_slice(ep(LOCAL, node=NODE))], {},
                 id="external-cluster-no-health-check"),
    pytest.param([lb_local(type="ClusterIP")], [two_port_slice(ep(LOCAL, node=NODE))], {},
                 id="cluster-ip-type-no-health-check"),
    pytest.param([lb_local(type="NodePort")], [two_port_slice(ep(LOCAL, node=NODE))],
                 {32000: HealthCheck("default", "web", 1)}, id="node-port-type-with-health-check-port"),
    pytest.param([lb_local(), lb_local("api", ip="10.96.0.11", hc=32001, ports=[port(80)])],
                 [two_port_slice(ep(LOCAL, node=NODE)), eps("api", endpoints=[ep("10.1.0.5", node=NODE)])],
                 {32000: HealthCheck("default", "web", 1), 32001: HealthCheck("default", "api", 1)},
                 id="one-per-service"),
]


@pytest.mark.parametrize("services, slices, want", HEALTH_CHECK_CASES)
def test_health_checks(services, slices, want):
    state = run(services, slices)
    assert reasons(state) == []
    assert state.health_checks == want


def with_fields(service=None, **fields):
    service = service or ext_svc("zzz", ip="10.96.0.20", type="LoadBalancer", ports=[port(80, nodePort=30081)])
    service["spec"].update(fields)
    return service


REJECTED_CASES = [
    pytest.param(with_fields(ports=[port(80, nodePort=0)]), "bad_port", id="node-port-0"),
    pytest.param(with_fields(ports=[port(80, nodePort=65536)]), "bad_port", id="node-port-65536"),
    pytest.param(with_fields(ports=[port(80, nodePort="30081")]), "bad_port", id="node-port-a-string"),
    pytest.param(with_fields(ports=[port(80, nodePort=True)]), "bad_port", id="node-port-a-bool"),
    pytest.param(with_fields(externalTrafficPolicy="Local", healthCheckNodePort=0), "bad_port",
                 id="health-check-port-0"),
    pytest.param(with_fields(externalTrafficPolicy="Local", healthCheckNodePort=70000), "bad_port",
                 id="health-check-port-out-of-range"),
    pytest.param(with_fields(healthCheckNodePort="32000"), "bad_port", id="health-check-port-a-string"),
    pytest.param(with_fields(externalIPs=["198.51.100.300"]), "bad_ip", id="external-ip-invalid"),
    pytest.param(with_fields(externalIPs=[EXT_IP, "nonsense"]), "bad_ip", id="second-external-ip-invalid"),
    pytest.param(with_fields(externalIPs=[3325256711]), "bad_ip", id="external-ip-a-number"),
    pytest.param(with_fields(externalIPs=EXT_IP), "bad_type", id="external-ips-a-string"),
    pytest.param(ext_svc("zzz", ip="10.96.0.20", ingress=["203.0.113.999"]), "bad_ip", id="ingress-ip-invalid"),
    pytest.param(ext_svc("zzz", ip="10.96.0.20", status=[LB_IP]), "bad_type", id="status-a-list"),
    pytest.param(ext_svc("zzz", ip="10.96.0.20", status={"loadBalancer": {"ingress": [LB_IP]}}), "bad_type",
                 id="ingress-entry-a-string"),
    pytest.param(with_fields(loadBalancerSourceRanges=["10.0.0.0/33"]), "bad_cidr", id="range-prefix-33"),
    pytest.param(with_fields(loadBalancerSourceRanges=["10.0.0.0/8", "nonsense"]), "bad_cidr", id="range-garbage"),
    pytest.param(with_fields(loadBalancerSourceRanges=["10.0.0.1"]), "bad_cidr", id="range-without-prefix"),
    pytest.param(with_fields(loadBalancerSourceRanges=[167772160]), "bad_cidr", id="range-a-number"),
    pytest.param(with_fields(loadBalancerSourceRanges="10.0.0.0/8"), "bad_type", id="ranges-a-string"),
    pytest.param(ext_svc("zzz", ip="10.96.0.20", type="NodePort", ports=[port(82, nodePort=30080)]),
                 "duplicate_frontend", id="node-port-of-another-service"),
    pytest.param(with_fields(externalIPs=[LB_IP]), "duplicate_frontend", id="external-ip-is-another-services-lb-ip"),
    pytest.param(ext_svc("zzz", ip="10.96.0.20", ports=[port(30080)], externalIPs=[NODE_IP2]),
                 "duplicate_frontend", id="external-ip-and-port-are-another-services-node-port"),
    pytest.param(with_fields(externalIPs=["10.96.0.20"]), "duplicate_frontend", id="external-ip-is-own-cluster-ip"),
    pytest.param(ext_svc("zzz", ip="10.96.0.20", type="NodePort", externalIPs=[NODE_IP],
                         ports=[port(30081, "a", nodePort=30082), port(81, "b", nodePort=30081)]),
                 "duplicate_frontend", id="own-external-ip-port-and-node-port-of-two-ports"),
    pytest.param(with_fields(externalTrafficPolicy="Local", healthCheckNodePort=32000), "duplicate_health_check_port",
                 id="health-check-port-of-another-service"),
]
FIRST = ext_svc(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=32000, ingress=[LB_IP],
                ports=[port(80, "http", nodePort=30080), port(30080, "alt")])


@pytest.mark.parametrize("bad, reason", REJECTED_CASES)
def test_malformed_or_conflicting_rejected_others_programmed(bad, reason):
    alone = run([FIRST], local_and_remote())
    state = run([FIRST, bad], local_and_remote() + [eps("zzz", endpoints=[ep("10.1.0.9")])])
    assert reasons(state) == [("zzz", reason)]
    assert all(r.kind == "Service" and r.detail for r in state.rejected)
    assert dataclasses.replace(state, rejected=[]) == alone


def test_duplicates_resolve_by_name_order():
    a = ext_svc("a", ip="10.96.0.1", ports=[port(80)], externalIPs=[EXT_IP])
    b = ext_svc("b", ip="10.96.0.2", ports=[port(80)], externalIPs=[EXT_IP])
    assert reasons(run([b, a])) == reasons(run([a, b])) == [("b", "duplicate_frontend")]


def test_node_port_addresses():
    assert node_port_addresses(("10.0.0.5", "fd00::1", "192.168.64.10"), ("192.168.0.0/16", "fd00::/8")) == \
        ("192.168.64.10", "fd00::1")
    assert node_port_addresses(("fd00::1", "10.0.0.5", "2001:db8::1"), ("fd00::/8",)) == ("10.0.0.5", "fd00::1")
    assert node_port_addresses(("10.0.0.5", "10.0.0.5")) == ("10.0.0.5",)
    for bad_addresses, bad_cidrs in ((("nonsense",), ()), (("10.0.0.5",), ("10.0.0.0/40",))):
        with pytest.raises(ValueError):
            node_port_addresses(bad_addresses, bad_cidrs)


def test_backend_list_shared_with_cluster_ip():
    state = run([ext_svc(type="LoadBalancer", externalTrafficPolicy="Local", ingress=[LB_IP])],
                [eps(endpoints=[ep("10.1.0.9"), ep("10.1.0.3", node=NODE), ep(REMOTE), ep(LOCAL, node=NODE)])])
    assert state.backends == {1: (be(LOCAL), be("10.1.0.3"), be(REMOTE), be("10.1.0.9"))}
    assert {f.svc_id for f in state.frontends.values()} == {1}
    assert state.frontends[FrontendKey(LB_IP, 80, TCP)].local == 2


FULL_EXTERNAL = ext_svc(ips=[WEB_IP, "fd00::10"], type="LoadBalancer", externalTrafficPolicy="Local",
                        healthCheckNodePort=32000, externalIPs=[EXT_IP, "fd00::7"],
                        loadBalancerSourceRanges=["10.0.0.0/8", "fd00::/8"],
                        ingress=[{"ip": LB_IP, "ipMode": "VIP"}, {"hostname": "lb.example.com"}],
                        ports=[port(80, "http", targetPort="web", nodePort=30080)])


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(list(field_paths(FULL_EXTERNAL))), value=JSON_VALUES)
def test_any_external_field_replaced_by_anything_never_raises(path, value):
    bystander = svc("bystander", ip="10.96.0.99")
    state = run([replaced(FULL_EXTERNAL, path, value), bystander], local_and_remote())
    assert {r.reason for r in state.rejected} <= REASONS | {"bad_cidr", "duplicate_frontend"}
    assert state.service_ips >= {"10.96.0.99"}
    assert all(isinstance(b, Backend) for bs in state.backends.values() for b in bs)
