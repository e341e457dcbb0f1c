"""desired_state() in both address families (issue 19): each family of a Service served on its own,
with its own service id per port, the endpoints of the EndpointSlices of its addressType, its source
ranges, its node addresses; one family may have endpoints while the other has none. Then the one
place IPv6 stops before the IPv4-only data plane (sync/family.py), and the tracker touching only the
family a slice change touches."""
import logging

import pytest

from ebpflb.core.ids import owner_tag
from ebpflb.core.model import FrontendKey, ServicePortName, family_of
from ebpflb.core.services import Usage, desired_state
from ebpflb.core.tracker import Changes, ServiceTracker
from ebpflb.datapath.structs import C
from ebpflb.sync.family import Ipv4Only
from tests.test_core import NODE, OTHER_NODE, TCP, UDP, WEB_IP, ep, eps, port, svc

EXT, EXT_LOCAL, INT_LOCAL, SRC = (C.NAT_FLG_EXTERNAL, C.NAT_FLG_EXTERNAL_LOCAL, C.NAT_FLG_INTERNAL_LOCAL,
                                  C.NAT_FLG_SRC_RANGES)
WEB_IP6 = "fd00::10"
DUAL = {"ips": [WEB_IP, WEB_IP6], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}
V6_ONLY = {"ip": WEB_IP6, "ips": [WEB_IP6], "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"}
V4_ONLY = {"ips": [WEB_IP], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}
LOCAL4, REMOTE4 = "10.1.0.1", "10.1.0.2"
LOCAL6, REMOTE6 = "fd01::1", "fd01::2"
NODE_IP, NODE_IP6 = "192.168.64.10", "fd00:1::10"
LB_IP, LB_IP6 = "203.0.113.10", "2001:db8::10"
EXT_IP, EXT_IP6 = "198.51.100.7", "2001:db8::7"
ZONE = "zone-a"


def v4_slice(*endpoints, service="web", **kw):
    return eps(service, name=f"{service}-v4", endpoints=endpoints or [ep(LOCAL4, node=NODE), ep(REMOTE4)], **kw)


def v6_slice(*endpoints, service="web", **kw):
    return eps(service, name=f"{service}-v6", address_type="IPv6",
               endpoints=endpoints or [ep(LOCAL6, node=NODE), ep(REMOTE6)], **kw)


def lb_svc(ingress, **spec):
    service = svc(ports=[port(80, nodePort=30080)], type="LoadBalancer", **spec)
    service["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}
    return service


def run(services, slices=(), **options):
    options.setdefault("node_addresses", ())
    return desired_state(services, slices, node_name=NODE, known_ids=options.pop("known_ids", {}), **options)


def view(state):
    """{(addr, port): (family, count, local, flags, backend addresses)}, after checking that every key,
    name and backend agrees on its family."""
    names = {i: n for n, i in state.ids.items()}
    assert len(names) == len(state.ids)   # an id per (service port, family)
    out = {}
    for key, frontend in state.frontends.items():
        name = names[frontend.svc_id]
        backends = state.backends[frontend.svc_id]
        assert key.family == family_of(key.addr) == name.family
        assert all(family_of(b.addr) == name.family for b in backends)
        assert frontend.owner == owner_tag(name)
        out[(key.addr, key.port)] = (name.family, frontend.count, frontend.local, frontend.flags,
                                     tuple(b.addr for b in backends))
    return out


BOTH4, BOTH6 = (LOCAL4, REMOTE4), (LOCAL6, REMOTE6)

# (services, slices, run() options, view())
CASES = [
    pytest.param([svc(**V6_ONLY)], [v6_slice()], {},
                 {(WEB_IP6, 80): (6, 2, 1, 0, BOTH6)}, id="single-stack-ipv6"),
    pytest.param([svc(**DUAL)], [v4_slice(), v6_slice()], {},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (WEB_IP6, 80): (6, 2, 1, 0, BOTH6)},
                 id="dual-stack-both-families-with-endpoints"),
    pytest.param([svc(ips=[WEB_IP6, WEB_IP], ipFamilies=["IPv6", "IPv4"], ipFamilyPolicy="PreferDualStack")],
                 [v6_slice(), v4_slice()], {},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (WEB_IP6, 80): (6, 2, 1, 0, BOTH6)},
                 id="dual-stack-ipv6-primary"),
    pytest.param([svc(**DUAL)], [v4_slice()], {},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (WEB_IP6, 80): (6, 0, 0, 0, ())},
                 id="dual-stack-ipv6-without-endpoints-rejects-ipv6-only"),
    pytest.param([svc(**DUAL)], [v6_slice()], {},
                 {(WEB_IP, 80): (4, 0, 0, 0, ()), (WEB_IP6, 80): (6, 2, 1, 0, BOTH6)},
                 id="dual-stack-ipv4-without-endpoints-rejects-ipv4-only"),
    pytest.param([svc(**V4_ONLY)], [v6_slice()], {},
                 {(WEB_IP, 80): (4, 0, 0, 0, ())}, id="ipv6-slice-never-feeds-an-ipv4-cluster-ip"),
    pytest.param([svc(**V6_ONLY)], [v4_slice()], {},
                 {(WEB_IP6, 80): (6, 0, 0, 0, ())}, id="ipv4-slice-never-feeds-an-ipv6-cluster-ip"),
    pytest.param([svc(**DUAL)], [v4_slice(), v6_slice(), eps(name="web-fqdn", address_type="FQDN",
                                                               endpoints=[ep("web.example.com")])], {},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (WEB_IP6, 80): (6, 2, 1, 0, BOTH6)}, id="fqdn-slice-ignored"),
    pytest.param([svc(**DUAL)], [v4_slice(), v6_slice(ep(REMOTE6), ep("fd01::3"), ep(LOCAL6, node=NODE),
                                                      ep("fd01::4", ready=False))], {},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (WEB_IP6, 80): (6, 3, 1, 0, (LOCAL6, REMOTE6, "fd01::3"))},
                 id="ipv6-backends-local-first-then-by-address-unready-left-out"),
    # Traffic policies, per family: each family's local set is its own.
    pytest.param([svc(internalTrafficPolicy="Local", **DUAL)], [v4_slice(ep(REMOTE4)), v6_slice()], {},
                 {(WEB_IP, 80): (4, 0, 0, INT_LOCAL, ()), (WEB_IP6, 80): (6, 1, 1, INT_LOCAL, (LOCAL6,))},
                 id="internal-local-ipv4-none-local-ipv6-one"),
    pytest.param([svc(ports=[port(80, nodePort=30080)], type="NodePort", externalTrafficPolicy="Local", **DUAL)],
                 [v4_slice(), v6_slice(ep(REMOTE6))], {"node_addresses": (NODE_IP, NODE_IP6)},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (NODE_IP, 30080): (4, 2, 1, EXT | EXT_LOCAL, BOTH4),
                  (WEB_IP6, 80): (6, 1, 0, 0, (REMOTE6,)), (NODE_IP6, 30080): (6, 1, 0, EXT | EXT_LOCAL, (REMOTE6,))},
                 id="external-local-ipv6-no-local-endpoint"),
    # NodePorts on the node's addresses of each family the service is served in.
    pytest.param([svc(ports=[port(80, nodePort=30080)], type="NodePort", **DUAL)], [v4_slice(), v6_slice()],
                 {"node_addresses": (NODE_IP6, NODE_IP, "fd00:2::10")},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (NODE_IP, 30080): (4, 2, 1, EXT, BOTH4),
                  (WEB_IP6, 80): (6, 2, 1, 0, BOTH6), (NODE_IP6, 30080): (6, 2, 1, EXT, BOTH6),
                  ("fd00:2::10", 30080): (6, 2, 1, EXT, BOTH6)}, id="node-port-on-ipv6-node-addresses"),
    pytest.param([svc(ports=[port(80, nodePort=30080)], type="NodePort", **DUAL)], [v4_slice(), v6_slice()],
                 {"node_addresses": (NODE_IP6, NODE_IP, "fd00:2::10"), "nodeport_cidrs": ("fd00:2::/64",)},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (NODE_IP, 30080): (4, 2, 1, EXT, BOTH4),
                  (WEB_IP6, 80): (6, 2, 1, 0, BOTH6), ("fd00:2::10", 30080): (6, 2, 1, EXT, BOTH6)},
                 id="nodeport-cidrs-ipv6-filter-ipv6-only"),
    pytest.param([svc(ports=[port(80, nodePort=30080)], type="NodePort", **V6_ONLY)], [v6_slice()],
                 {"node_addresses": (NODE_IP, NODE_IP6)},
                 {(WEB_IP6, 80): (6, 2, 1, 0, BOTH6), (NODE_IP6, 30080): (6, 2, 1, EXT, BOTH6)},
                 id="ipv6-only-node-port-not-on-ipv4-node-addresses"),
    # externalIPs and LoadBalancer IPs of both families, each to its family's id.
    pytest.param([svc(externalIPs=[EXT_IP6, EXT_IP], **DUAL)], [v4_slice(), v6_slice()], {},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (EXT_IP, 80): (4, 2, 1, EXT, BOTH4),
                  (WEB_IP6, 80): (6, 2, 1, 0, BOTH6), (EXT_IP6, 80): (6, 2, 1, EXT, BOTH6)},
                 id="external-ips-of-both-families"),
    pytest.param([svc(externalIPs=[EXT_IP6, EXT_IP], **V4_ONLY)], [v4_slice(), v6_slice()], {},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (EXT_IP, 80): (4, 2, 1, EXT, BOTH4)},
                 id="ipv6-external-ip-of-an-ipv4-only-service-not-served"),
    pytest.param([lb_svc([LB_IP6, LB_IP], **DUAL)], [v4_slice(), v6_slice()], {},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (LB_IP, 80): (4, 2, 1, EXT, BOTH4),
                  (WEB_IP6, 80): (6, 2, 1, 0, BOTH6), (LB_IP6, 80): (6, 2, 1, EXT, BOTH6)},
                 id="load-balancer-ips-of-both-families"),
    # loadBalancerSourceRanges: each family's LoadBalancer IPs guarded by that family's ranges.
    pytest.param([lb_svc([LB_IP, LB_IP6], loadBalancerSourceRanges=["10.0.0.0/8", "fd00::/8"], **DUAL)],
                 [v4_slice(), v6_slice()], {},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (LB_IP, 80): (4, 2, 1, EXT | SRC, BOTH4),
                  (WEB_IP6, 80): (6, 2, 1, 0, BOTH6), (LB_IP6, 80): (6, 2, 1, EXT | SRC, BOTH6)},
                 id="mixed-source-ranges-guard-both"),
    pytest.param([lb_svc([LB_IP, LB_IP6], loadBalancerSourceRanges=["fd00::/8"], **DUAL)],
                 [v4_slice(), v6_slice()], {},
                 {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (LB_IP, 80): (4, 2, 1, EXT, BOTH4),
                  (WEB_IP6, 80): (6, 2, 1, 0, BOTH6), (LB_IP6, 80): (6, 2, 1, EXT | SRC, BOTH6)},
                 id="ipv6-source-ranges-only-guard-ipv6-only"),
]


@pytest.mark.parametrize("services, slices, options, want", CASES)
def test_frontends_and_backends_per_family(services, slices, options, want):
    state = run(services, slices, **options)
    assert state.rejected == []
    assert view(state) == want
    assert state.service_ips == {ip for ip in (WEB_IP, WEB_IP6) if any(k[0] == ip for k in want)}


def test_source_ranges_per_family():
    state = run([lb_svc([LB_IP, LB_IP6], loadBalancerSourceRanges=["10.0.0.0/8", " fd00::1/8 ", "2001:db8::/32"],
                        **DUAL)], [v4_slice(), v6_slice()])
    ids = {n.family: i for n, i in state.ids.items()}
    assert state.src_ranges == {ids[4]: {"10.0.0.0/8"}, ids[6]: {"fd00::/8", "2001:db8::/32"}}


def test_ids_per_service_port_and_family():
    """Each (port, family) its own id; IPv4 names first, so IPv4 ids are the ones they were before
    families; known ids kept per family; the owner tags differ by family, IPv4's as before."""
    services = [svc(ports=[port(80, "http"), port(53, "dns", protocol="UDP")], **DUAL), svc("v4", ip="10.96.0.11")]
    state = run(services, [v4_slice(ports=[port(8080, "http"), port(5353, "dns", protocol="UDP")]),
                           v6_slice(ports=[port(8080, "http"), port(5353, "dns", protocol="UDP")])])
    name = ServicePortName
    assert state.ids == {name("default", "web", "dns", "UDP"): 2, name("default", "web", "http", "TCP"): 3,
                         name("default", "v4", "", "TCP"): 1,
                         name("default", "web", "dns", "UDP", 6): 4, name("default", "web", "http", "TCP", 6): 5}
    assert state.frontends[FrontendKey(WEB_IP6, 53, UDP, 6)].svc_id == 4
    assert state.backends[4] == ((LOCAL6, 5353), (REMOTE6, 5353))
    assert state.backends[2] == ((LOCAL4, 5353), (REMOTE4, 5353))
    v4_only = run([svc(ports=[port(80, "http"), port(53, "dns", protocol="UDP")]), svc("v4", ip="10.96.0.11")])
    assert {n: i for n, i in state.ids.items() if n.family == 4} == v4_only.ids
    assert owner_tag(name("default", "web", "http", "TCP", 6)) != owner_tag(name("default", "web", "http", "TCP"))
    known = {name("default", "web", "http", "TCP", 6): 9, name("default", "web", "http", "TCP"): 7}
    again = run(services, known_ids=known)
    assert again.ids[name("default", "web", "http", "TCP", 6)] == 9
    assert again.ids[name("default", "web", "http", "TCP")] == 7
    assert str(name("default", "web", "http", "TCP", 6)) == "default/web:http (IPv6)"


def test_topology_hints_per_family():
    """The hints of one family's slice narrow that family only."""
    def hinted(address, zone, node):
        endpoint = ep(address, node=node)
        endpoint["hints"] = {"forZones": [{"name": zone}]}
        return endpoint
    state = run([svc(**DUAL)], [v4_slice(ep(LOCAL4, node=NODE), ep(REMOTE4)),
                                v6_slice(hinted(LOCAL6, ZONE, NODE), hinted(REMOTE6, "zone-b", OTHER_NODE))],
                node_zone=ZONE)
    assert view(state) == {(WEB_IP, 80): (4, 2, 1, 0, BOTH4), (WEB_IP6, 80): (6, 1, 1, 0, (LOCAL6,))}


def test_health_check_counts_the_family_with_more_local_endpoints():
    service = svc(ports=[port(80, nodePort=30080)], type="NodePort", externalTrafficPolicy="Local",
                  healthCheckNodePort=32000, **DUAL)
    two_local6 = v6_slice(ep(LOCAL6, node=NODE), ep("fd01::3", node=NODE))
    state = run([service], [v4_slice(), two_local6], node_addresses=(NODE_IP, NODE_IP6))
    assert state.health_checks[32000].local_endpoints == 2
    assert run([service], [v4_slice()]).health_checks[32000].local_endpoints == 1


# (service or slice, (kind, reason)): a family mix the API server would not write, or an address no pod has
MALFORMED = [
    pytest.param(svc(ips=[WEB_IP, WEB_IP6], ipFamilies=["IPv4"]), ("Service", "bad_ip"),
                 id="ipv6-cluster-ip-ipv4-families"),
    pytest.param(svc(**{**V6_ONLY, "ipFamilies": ["IPv4"]}), ("Service", "bad_ip"), id="ipv6-only-ipv4-families"),
    pytest.param(svc(ips=[WEB_IP, WEB_IP6], ipFamilies=["IPv4", "IPv5"]), ("Service", "bad_value"),
                 id="ip-families-ipv5"),
    pytest.param(svc(ips=[WEB_IP], ipFamilies="IPv4"), ("Service", "bad_type"), id="ip-families-a-string"),
    pytest.param(svc(ipFamilyPolicy="DualStack"), ("Service", "bad_value"), id="ip-family-policy-unknown"),
    pytest.param(svc(**{**DUAL, "externalIPs": ["2001:db8::zz"]}), ("Service", "bad_ip"), id="bad-ipv6-external-ip"),
    pytest.param(lb_svc(["10.0.0.1"], loadBalancerSourceRanges=["fd00::/129"]), ("Service", "bad_cidr"),
                 id="bad-ipv6-source-range"),
    *(pytest.param(v6_slice(ep(address)), ("EndpointSlice", "bad_ip"), id=f"ipv6-endpoint-{address}")
      for address in ("::", "::1", "fe80::1", "ff02::1", "fd01::g", LOCAL4)),
    pytest.param(v4_slice(ep(LOCAL6)), ("EndpointSlice", "bad_ip"), id="ipv6-endpoint-in-ipv4-slice"),
]


@pytest.mark.parametrize("obj, rejected", MALFORMED)
def test_malformed_family_mix_is_rejected_and_named(obj, rejected):
    good = svc("other", ip="10.96.0.11", ips=["10.96.0.11", "fd00::11"])
    if obj["kind"] == "Service":
        state = run([good, obj], [v4_slice(service="other")])
    else:
        state = run([good, svc(**DUAL)], [v4_slice(service="other"), obj])
    assert [(r.kind, r.namespace, r.reason) for r in state.rejected] == [(rejected[0], "default", rejected[1])]
    assert state.rejected[0].detail
    assert (("10.96.0.11", 80) in view(state)) and (("fd00::11", 80) in view(state))   # the rest served


def test_ipv6_addresses_in_canonical_text():
    """One address, one key, whatever text names it (the API accepts several forms of an IPv6 address)."""
    state = run([svc(ip="FD00:0::10", ips=["FD00:0::10"], externalIPs=["2001:DB8:0::7"])],
                [v6_slice(ep("FD01:0::1"), ep(REMOTE6))])
    assert view(state) == {(WEB_IP6, 80): (6, 2, 0, 0, (LOCAL6, REMOTE6)), (EXT_IP6, 80): (6, 2, 0, EXT, (LOCAL6, REMOTE6))}


# --- The writer's input: IPv4 only, said once per service ---

def test_the_writer_is_given_the_ipv4_part_and_each_service_is_logged_once(caplog):
    services = [lb_svc([LB_IP, LB_IP6], loadBalancerSourceRanges=["10.0.0.0/8", "fd00::/8"],
                       sessionAffinity="ClientIP", **DUAL),
                svc("v6", **{**V6_ONLY, "ip": "fd00::20", "ips": ["fd00::20"]})]
    slices = [v4_slice(), v6_slice(), v6_slice(service="v6")]
    state = run(services, slices)
    v4_ids = {i for n, i in state.ids.items() if n.family == 4}
    changes = Changes(set(state.backends), set(state.frontends), set(state.service_ips), set(state.src_ranges))
    only = Ipv4Only()
    with caplog.at_level(logging.INFO, logger="ebpflb.sync.family"):
        v4_state, v4_changes = only(state, changes)
        only(state, changes)
    assert v4_state.frontends == {k: f for k, f in state.frontends.items() if k.family == 4} != state.frontends
    assert set(v4_state.backends) == set(v4_state.src_ranges) == set(v4_state.affinity) == v4_ids
    assert v4_state.service_ips == {WEB_IP} and set(v4_state.ids.values()) == v4_ids
    assert v4_changes.ids == v4_ids and v4_changes.frontends == set(v4_state.frontends)
    assert v4_changes.service_ips == {WEB_IP} and v4_changes.src_range_ids == v4_ids
    assert only.unprogrammed_frontends == 3 and only.unprogrammed_services == {("default", "web"), ("default", "v6")}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["service default/v6: IPv6 frontends are computed but not yet programmed",
                     "service default/web: IPv6 frontends are computed but not yet programmed"]
    # An IPv4-only state goes through as it is: the same objects.
    plain = run([svc()], [v4_slice()])
    plain_changes = Changes(set(plain.backends), set(plain.frontends))
    assert only(plain, plain_changes) == (plain, plain_changes)
    assert only.unprogrammed_frontends == 0
    # The last IPv6 service left: its keys in the changes stay away from the writer too.
    gone = Changes(set(plain.backends), set(plain.frontends) | {FrontendKey(WEB_IP6, 80, TCP, 6)},
                   {WEB_IP, WEB_IP6})
    assert only(plain, gone)[1].frontends == set(plain.frontends) and only(plain, gone)[1].service_ips == {WEB_IP}


# --- The tracker: a slice of one family touches that family's entries only ---

def test_a_slice_of_one_family_changing_leaves_the_other_familys_entries_alone():
    tracker = ServiceTracker(NODE, node_addresses=(NODE_IP, NODE_IP6))
    service = svc(ports=[port(80, nodePort=30080)], type="NodePort", **DUAL)
    tracker.replace_all([service], [v4_slice(), v6_slice()])
    tracker.flush()
    ids = {n.family: i for n, i in tracker.state.ids.items()}
    v4_keys = {k for k in tracker.state.frontends if k.family == 4}
    v6_keys = {k for k in tracker.state.frontends if k.family == 6}
    assert len(v4_keys) == len(v6_keys) == 2
    tracker.set_slice(v6_slice(ep(LOCAL6, node=NODE)))   # the remote IPv6 endpoint left
    changes = tracker.flush()
    assert changes.ids == {ids[6]}
    assert changes.frontends == v6_keys
    assert not changes.service_ips and not changes.src_range_ids and not changes.health_checks
    assert tracker.state.backends[ids[6]] == ((LOCAL6, 8080),)
    assert tracker.state.backends[ids[4]] == ((LOCAL4, 8080), (REMOTE4, 8080))
    tracker.set_slice(v4_slice(ep(REMOTE4)))
    changes = tracker.flush()
    assert changes.ids == {ids[4]} and changes.frontends == v4_keys
    # An IPv6 node address coming only replans the services served in IPv6; the answer is the same as
    # computing everything again.
    tracker.set_service(svc("v4only", ip="10.96.0.11", ports=[port(81, nodePort=30081)], type="NodePort"))
    tracker.flush()
    tracker.set_node_addresses((NODE_IP, NODE_IP6, "fd00:2::10"))
    assert tracker.dirty == {("default", "web")}
    changes = tracker.flush()
    assert changes.frontends == {FrontendKey("fd00:2::10", 30080, TCP, 6)} and not changes.ids   # its list is as it was
    again = desired_state([service, svc("v4only", ip="10.96.0.11", ports=[port(81, nodePort=30081)],
                                        type="NodePort")], [v4_slice(ep(REMOTE4)), v6_slice(ep(LOCAL6, node=NODE))],
                          node_name=NODE, known_ids=tracker.state.ids,
                          node_addresses=(NODE_IP, NODE_IP6, "fd00:2::10"))
    assert (again.frontends, again.backends, again.ids) == (tracker.state.frontends, tracker.state.backends,
                                                            tracker.state.ids)


def test_ipv6_entries_take_no_room_in_the_ipv4_maps_yet():
    """The maps hold IPv4 only: a dual-stack service fits where its IPv4 part fits, in the core and in
    the tracker alike (both count the same)."""
    capacity = Usage(frontends=2, backends=2, service_ips=2, src_ranges=1)
    services = [svc(**DUAL), svc("v4", ip="10.96.0.11")]
    slices = [v4_slice(ep(LOCAL4, node=NODE)), v6_slice(), v4_slice(ep(REMOTE4), service="v4")]
    state = run(services, slices, capacity=capacity)
    assert state.rejected == [] and len(state.frontends) == 3
    tracker = ServiceTracker(NODE, capacity=capacity)
    tracker.replace_all(services, slices)
    tracker.flush()
    assert tracker.rejected == [] and tracker.state.frontends == state.frontends
    tracker.set_service(svc("more", ip="10.96.0.12"))   # a third IPv4 frontend: no room
    tracker.flush()
    assert [(r.name, r.reason) for r in tracker.rejected] == [("more", "map_full")]
    tracker.delete_service(("default", "v4"))
    tracker.flush()
    assert tracker.rejected == [] and FrontendKey("10.96.0.12", 80, TCP) in tracker.state.frontends
