"""The change tracker: after any sequence of object changes it holds what the full computation
would give, reports only what a change touched, and keeps ids stable."""
from hypothesis import given, settings, strategies as st

from ebpflb.core.ids import owner_tag
from ebpflb.core.model import Backend, Frontend, FrontendKey, HealthCheck, ServicePortName
from ebpflb.core.services import Usage, desired_state
from ebpflb.core.tracker import BULK_RECOMPUTE, ServiceTracker
from ebpflb.datapath.structs import C

NODE = "node-0"


def service(name, ip, ports=(("http", 80, "TCP"),), ns="default"):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports]}}


def slice_(name, svc, addrs, ns="default", port=("http", 8080, "TCP"), ready=True):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
            "ports": [{"name": port[0], "port": port[1], "protocol": port[2]}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": ready}, "nodeName": n} for a, n in addrs]}


def external(name, ip, ports=(("http", 80, "TCP", 30080),), kind="LoadBalancer", ns="default", *, lb_ip=None,
             external_ips=(), ranges=None, local=False, health_check=None, internal_local=False):
    """A NodePort or LoadBalancer service; ports are (name, port, protocol, nodePort)."""
    obj = service(name, ip, ns=ns)
    spec = obj["spec"]
    spec.update(type=kind, ports=[{"name": n, "port": p, "protocol": pr, "nodePort": np} for n, p, pr, np in ports])
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if ranges is not None:
        spec["loadBalancerSourceRanges"] = list(ranges)
    if local:
        spec["externalTrafficPolicy"] = "Local"
    if internal_local:
        spec["internalTrafficPolicy"] = "Local"
    if health_check is not None:
        spec["healthCheckNodePort"] = health_check
    if lb_ip is not None:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": lb_ip}]}}
    return obj


def by_name(state):
    """The state with ids replaced by service-port names: equal whatever numbers were handed out."""
    name_of = {i: n for n, i in state.ids.items()}
    return ({k: (name_of[f.svc_id], f.count, f.local, f.flags) for k, f in state.frontends.items()},
            {name_of[i]: b for i, b in state.backends.items()}, set(state.service_ips),
            {name_of[i]: r for i, r in state.src_ranges.items()}, dict(state.health_checks))


def full(tracker):
    return desired_state(tracker.services.values(), tracker.slices.values(), node_name=NODE, known_ids={},
                         node_addresses=tracker.node_addresses, nodeport_cidrs=tracker.nodeport_cidrs)


def test_one_slice_change_touches_only_its_service():
    t = ServiceTracker(NODE)
    t.replace_all([service("a", "10.96.0.1"), service("b", "10.96.0.2")],
                  [slice_("a-1", "a", [("10.1.0.1", NODE)]), slice_("b-1", "b", [("10.1.0.2", "node-1")])])
    t.flush()
    a_id = t.state.ids[ServicePortName("default", "a", "http", "TCP")]
    t.set_slice(slice_("a-1", "a", [("10.1.0.1", NODE), ("10.1.0.3", "node-1")]))
    changes = t.flush()
    assert changes.ids == {a_id}
    assert changes.frontends == {FrontendKey("10.96.0.1", 80, 6)}
    assert t.state.backends[a_id] == (Backend("10.1.0.1", 8080), Backend("10.1.0.3", 8080))
    assert t.state.ids[ServicePortName("default", "a", "http", "TCP")] == a_id   # id kept


def test_an_unchanged_object_changes_nothing():
    t = ServiceTracker(NODE)
    t.replace_all([service("a", "10.96.0.1")], [slice_("a-1", "a", [("10.1.0.1", NODE)])])
    t.flush()
    t.replace_all([service("a", "10.96.0.1")], [slice_("a-1", "a", [("10.1.0.1", NODE)])])
    assert not t.flush()


def test_a_change_the_maps_cannot_see_leaves_the_tracker_clean():
    """Only what the core reads of an object is kept (not the API object): a new resourceVersion, labels,
    annotations or a second address of an endpoint change nothing, so nothing is synced for them."""
    t = ServiceTracker(NODE)
    svc, eps = service("a", "10.96.0.1"), slice_("a-1", "a", [("10.1.0.1", NODE)])
    t.replace_all([svc], [eps])
    t.flush()
    assert not any(isinstance(obj, dict) for obj in [*t.services.values(), *t.slices.values()])
    svc["metadata"].update(resourceVersion="7", annotations={"note": "x"}, labels={"app": "a"})
    eps["metadata"]["resourceVersion"] = "8"
    eps["endpoints"][0]["addresses"].append("10.1.0.9")   # kube-proxy uses the first only
    t.set_service(svc)
    t.set_slice(eps)
    assert not t.dirty and not t.flush()
    eps["endpoints"][0]["addresses"][0] = "10.1.0.2"
    t.set_slice(eps)
    assert t.dirty == {("default", "a")}


def test_deleting_a_service_frees_its_frontends_and_address():
    t = ServiceTracker(NODE)
    t.replace_all([service("a", "10.96.0.1")], [slice_("a-1", "a", [("10.1.0.1", NODE)])])
    t.flush()
    t.delete_service(("default", "a"))
    changes = t.flush()
    assert changes.service_ips == {"10.96.0.1"} and not t.state.frontends and not t.state.service_ips


def test_restart_takes_ids_back_from_the_maps():
    objects = ([service("a", "10.96.0.1"), service("b", "10.96.0.2")], [])
    hints = {FrontendKey("10.96.0.1", 80, 6): (7, owner_tag(ServicePortName("default", "a", "http", "TCP"))),
             FrontendKey("10.96.0.2", 80, 6): (3, owner_tag(ServicePortName("default", "b", "http", "TCP")))}
    t = ServiceTracker(NODE, id_hints=hints)
    t.replace_all(*objects)
    t.flush()
    assert {n.name: i for n, i in t.state.ids.items()} == {"a": 7, "b": 3}
    # One at a time (below the bulk threshold) the same ids come back.
    t2 = ServiceTracker(NODE, id_hints=hints)
    t2.set_service(objects[0][0])
    t2.flush()
    t2.set_service(objects[0][1])
    t2.flush()
    assert {n.name: i for n, i in t2.state.ids.items()} == {"a": 7, "b": 3}


def test_a_second_service_on_a_taken_frontend_is_rejected_not_programmed():
    t = ServiceTracker(NODE)
    t.set_service(service("a", "10.96.0.1"))
    t.flush()
    t.set_service(service("b", "10.96.0.1"))
    t.flush()
    assert [r.reason for r in t.rejected] == ["duplicate_frontend"]
    assert {n.name for n in t.state.ids} == {"a"}


def test_a_namespace_that_is_not_text_is_rejected_not_a_crash():
    """A list as namespace made an unhashable key (TypeError in set_service), a number or a bool one that
    does not sort with the others (TypeError in flush, at every sync); YAML gives `namespace: 2024` as one."""
    for namespace in (["default"], 2024, True):
        bad = service("bad", "10.96.0.9")
        bad["metadata"]["namespace"] = namespace
        t = ServiceTracker(NODE)
        t.set_service(bad)
        t.set_service(service("a", "10.96.0.1"))
        t.set_slice(dict(slice_("bad-1", "bad", [("10.1.0.1", NODE)]), metadata={
            "namespace": namespace, "name": "bad-1", "labels": {"kubernetes.io/service-name": "bad"}}))
        t.flush()
        assert [(r.kind, r.reason) for r in t.rejected] == [("Service", "bad_type"), ("EndpointSlice", "bad_type")]
        assert {n.name for n in t.state.ids} == {"a"}


def test_objects_without_a_key_are_named_once_per_full_list():
    """They were appended again at every full list (a manifest reread), so the metric grew without end;
    their reason is the core's (metadata a list is bad_type, not missing_field)."""
    t = ServiceTracker(NODE)
    nameless = service("x", "10.96.0.9")
    del nameless["metadata"]["name"]
    for _ in range(3):
        t.replace_all([nameless, {"metadata": ["x"]}, service("a", "10.96.0.1")], [{"metadata": None}])
        t.flush()
    assert sorted((r.kind, r.reason) for r in t.rejected) == [
        ("EndpointSlice", "missing_field"), ("Service", "bad_type"), ("Service", "missing_field")]


def test_a_malformed_slice_is_named_before_its_service_exists():
    """One at a time, the slices of a service not there (or of none: no label) were never checked, so
    a malformed one went unnamed; the full computation names it."""
    t = ServiceTracker(NODE)
    bad_address = slice_("a-1", "a", [("10.1.0.999", NODE)])
    no_label = slice_("b-1", "b", [("10.1.0.2", NODE)])
    del no_label["metadata"]["labels"]
    t.set_slice(bad_address)
    t.set_slice(no_label)
    t.flush()
    assert sorted((r.name, r.reason) for r in t.rejected) == [("a-1", "bad_ip"), ("b-1", "missing_field")]
    assert sorted(t.rejected, key=lambda r: r.name) == sorted(full(t).rejected, key=lambda r: r.name)
    t.delete_slice(("default", "a-1"))
    t.delete_slice(("default", "b-1"))
    t.flush()
    assert t.rejected == []


def test_a_service_turned_away_gets_the_frontend_when_the_holder_lets_go():
    """A service rejected for a frontend another held stayed rejected after the holder left or moved,
    until it changed itself; now it is tried again and programmed, as the full computation does."""
    t = ServiceTracker(NODE)
    t.set_service(service("a", "10.96.0.1"))
    t.flush()
    t.set_service(service("b", "10.96.0.1"))
    t.set_service(service("c", "10.96.0.1"))
    t.flush()
    assert sorted((r.name, r.reason) for r in t.rejected) == [("b", "duplicate_frontend"), ("c", "duplicate_frontend")]
    t.set_service(service("a", "10.96.0.2"))   # a moves away: b gets the address (name order), c waits
    t.flush()
    assert {n.name for n in t.state.ids} == {"a", "b"} and [(r.name, r.reason) for r in t.rejected] == [
        ("c", "duplicate_frontend")]
    t.delete_service(("default", "b"))
    t.flush()
    assert {n.name for n in t.state.ids} == {"a", "c"} and t.rejected == []
    assert by_name(t.state) == by_name(full(t))


def test_a_service_turned_away_for_room_gets_in_when_room_frees():
    """The maps' capacity, made two frontends here: the third service waits, named, and is written once
    one leaves; the others are written meanwhile (test_malformed_maps fills the real maps)."""
    t = ServiceTracker(NODE, capacity=Usage(2, 99, 99, 99))
    t.set_service(service("a", "10.96.0.1"))
    t.set_service(service("b", "10.96.0.2"))
    t.flush()
    t.set_service(service("c", "10.96.0.3"))
    t.set_slice(slice_("b-1", "b", [("10.1.0.1", NODE)]))
    t.flush()
    assert [(r.name, r.reason) for r in t.rejected] == [("c", "map_full")]
    assert t.state.backends[t.state.ids[ServicePortName("default", "b", "http", "TCP")]] == (Backend("10.1.0.1", 8080),)
    t.delete_service(("default", "a"))
    t.flush()
    assert {n.name for n in t.state.ids} == {"b", "c"} and t.rejected == []


def test_a_service_without_ports_holds_its_address():
    """Its address is a service address (unused ports rejected), as in the full computation; the tracker
    took service addresses from frontends and left it out."""
    portless = service("a", "10.96.0.1", ports=())
    for bulk in (False, True):
        t = ServiceTracker(NODE)
        t.replace_all([portless] + ([service(f"s{i}", f"10.96.1.{i}") for i in range(BULK_RECOMPUTE + 1)]
                                    if bulk else []), [])
        t.flush()
        assert "10.96.0.1" in t.state.service_ips and by_name(t.state) == by_name(full(t))
        t.delete_service(("default", "a"))
        assert t.flush().service_ips == {"10.96.0.1"} and "10.96.0.1" not in t.state.service_ips


def test_bulk_and_one_by_one_agree():
    services = [service(f"s{i}", f"10.96.{i // 250}.{i % 250 + 1}") for i in range(BULK_RECOMPUTE + 10)]
    slices = [slice_(f"s{i}-1", f"s{i}", [(f"10.1.{i // 250}.{i % 250 + 1}", NODE)]) for i in range(len(services))]
    bulk = ServiceTracker(NODE)
    bulk.replace_all(services, slices)
    bulk.flush()
    single = ServiceTracker(NODE)
    for s, sl in zip(services, slices):
        single.set_service(s)
        single.set_slice(sl)
        single.flush()
    assert by_name(bulk.state) == by_name(single.state) == by_name(full(bulk))


def test_a_full_recompute_takes_the_parts_whole_as_it_would_one_by_one(monkeypatch):
    """_contribute_all gives the same state, parts, address counts, map entries and changes as
    _contribute for each part."""
    services = [external(f"s{i}", f"10.96.{i // 250}.{i % 250 + 1}", ports=(("http", 80, "TCP", 30000 + i),),
                         lb_ip=f"198.51.{i // 250}.{i % 250 + 1}",
                         ranges=["10.0.0.0/8", f"192.0.2.{i % 250}/32"] if i % 3 == 0 else None,
                         local=i % 2 == 0, health_check=31000 + i if i % 2 == 0 else None)
                for i in range(BULK_RECOMPUTE + 10)]
    services.append(service("shared", "10.96.0.1", ports=(("other", 81, "TCP"),)))   # an address twice
    slices = [slice_(f"s{i}-1", f"s{i}", [(f"10.1.{i // 250}.{i % 250 + 1}", NODE)]) for i in range(len(services))]

    def recompute():
        tracker = ServiceTracker(NODE, node_addresses=["192.168.64.10"])
        tracker.replace_all(services, slices)
        return tracker, tracker.flush()

    whole, whole_changes = recompute()
    monkeypatch.setattr(ServiceTracker, "_contribute_all", lambda self, parts, desired, changes: [
        self._contribute(key, part, desired, changes) for key, part in parts.items()])
    parted, parted_changes = recompute()
    assert whole.state == parted.state and whole.contributions == parted.contributions
    assert whole.ip_refs == parted.ip_refs and whole.ip_refs["10.96.0.1"] == 2
    assert (whole.backend_entries, whole.range_entries) == (parted.backend_entries, parted.range_entries)
    assert whole.range_entries and whole.state.health_checks and not whole.rejected
    assert whole_changes == parted_changes


NODE_IPS = ["192.168.64.10", "192.168.64.11", "10.0.0.5", "fd00::1"]


def test_set_node_addresses_plans_node_ports_again():
    t = ServiceTracker(NODE, node_addresses=["192.168.64.10"])
    t.replace_all([external("a", "10.96.0.1", kind="NodePort"), service("b", "10.96.0.2")],
                  [slice_("a-1", "a", [("10.1.0.1", NODE)])])
    t.flush()
    a_id = t.state.ids[ServicePortName("default", "a", "http", "TCP")]
    assert t.state.frontends[FrontendKey("192.168.64.10", 30080, 6)] == Frontend(a_id, 1, 1, C.NAT_FLG_EXTERNAL)
    assert t.state.service_ips == {"10.96.0.1", "10.96.0.2"}   # the node's own addresses never
    t.set_node_addresses(["192.168.64.10", "fd00::1"])          # no IPv4 change: nothing to do
    assert not t.flush()
    t.set_node_addresses(["192.168.64.11"])
    changes = t.flush()
    assert FrontendKey("192.168.64.11", 30080, 6) in t.state.frontends
    assert FrontendKey("192.168.64.10", 30080, 6) not in t.state.frontends
    assert {FrontendKey("192.168.64.10", 30080, 6), FrontendKey("192.168.64.11", 30080, 6)} <= changes.frontends
    assert t.state.ids[ServicePortName("default", "a", "http", "TCP")] == a_id   # id kept
    assert by_name(t.state) == by_name(full(t))


def test_nodeport_cidrs_filter_the_node_addresses():
    t = ServiceTracker(NODE, node_addresses=["192.168.64.10", "10.0.0.5"], nodeport_cidrs=["10.0.0.0/8"])
    t.set_service(external("a", "10.96.0.1", kind="NodePort"))
    t.flush()
    assert {k.addr for k in t.state.frontends} == {"10.96.0.1", "10.0.0.5"}


def test_freed_node_address_lets_a_rejected_external_ip_in():
    t = ServiceTracker(NODE, node_addresses=["192.168.64.10"])
    t.set_service(external("a", "10.96.0.1", kind="NodePort"))
    t.flush()
    t.set_service(external("b", "10.96.0.2", ports=(("http", 30080, "TCP", 30081),), kind="NodePort",
                           external_ips=["192.168.64.10"]))
    t.flush()
    assert [r.reason for r in t.rejected] == ["duplicate_frontend"]
    t.set_node_addresses(["192.168.64.11"])
    t.flush()
    assert t.rejected == [] and FrontendKey("192.168.64.10", 30080, 6) in t.state.frontends
    assert by_name(t.state) == by_name(full(t))


def test_src_range_ids_report_what_came_went_or_changed():
    t = ServiceTracker(NODE, node_addresses=["192.168.64.10"])
    t.set_service(external("a", "10.96.0.1", lb_ip="203.0.113.1", ranges=["10.0.0.0/8"]))
    changes = t.flush()
    a_id = t.state.ids[ServicePortName("default", "a", "http", "TCP")]
    assert changes.src_range_ids == {a_id} and t.state.src_ranges == {a_id: frozenset({"10.0.0.0/8"})}
    t.set_slice(slice_("a-1", "a", [("10.1.0.1", NODE)]))
    changes = t.flush()
    assert changes.src_range_ids == set() and changes.ids == {a_id}
    t.set_service(external("a", "10.96.0.1", lb_ip="203.0.113.1", ranges=["10.0.0.0/8", "172.16.0.0/12"]))
    assert t.flush().src_range_ids == {a_id}
    t.set_service(external("a", "10.96.0.1", lb_ip="203.0.113.1"))
    changes = t.flush()
    assert changes.src_range_ids == {a_id} and t.state.src_ranges == {}
    t.set_service(external("a", "10.96.0.1", lb_ip="203.0.113.1", ranges=["10.0.0.0/8"]))
    t.flush()
    t.delete_service(("default", "a"))
    changes = t.flush()
    assert changes.src_range_ids == {a_id} and changes and t.state.src_ranges == {}


def test_health_checks_reported_when_they_change():
    t = ServiceTracker(NODE, node_addresses=["192.168.64.10"])
    t.replace_all([external("a", "10.96.0.1", local=True, health_check=32000), service("b", "10.96.0.2")], [])
    changes = t.flush()
    assert changes.health_checks and t.state.health_checks == {32000: HealthCheck("default", "a", 0)}
    t.set_slice(slice_("a-1", "a", [("10.1.0.1", "node-1")]))   # not local: the check says the same
    assert not t.flush().health_checks
    t.set_slice(slice_("a-1", "a", [("10.1.0.1", NODE)]))
    assert t.flush().health_checks and t.state.health_checks[32000].local_endpoints == 1
    t.set_slice(slice_("b-1", "b", [("10.1.0.2", NODE)]))
    assert not t.flush().health_checks
    t.set_service(external("c", "10.96.0.3", ports=(("http", 80, "TCP", 30081),), local=True, health_check=32000))
    changes = t.flush()
    assert [r.reason for r in t.rejected] == ["duplicate_health_check_port"] and not changes.health_checks
    assert {n.name for n in t.state.ids} == {"a", "b"}
    t.delete_service(("default", "a"))   # c, turned away for a's port, gets it now
    assert t.flush().health_checks and t.state.health_checks == {32000: HealthCheck("default", "c", 0)}
    assert t.rejected == [] and {n.name for n in t.state.ids} == {"b", "c"}


def test_restart_takes_ids_back_with_their_src_ranges():
    svc_a = external("a", "10.96.0.1", lb_ip="203.0.113.1", ranges=["10.0.0.0/8"])
    hints = {FrontendKey("10.96.0.1", 80, 6): (9, owner_tag(ServicePortName("default", "a", "http", "TCP")))}
    for bulk in (True, False):
        t = ServiceTracker(NODE, id_hints=hints, node_addresses=["192.168.64.10"])
        if bulk:
            t.replace_all([svc_a] + [service(f"s{i}", f"10.96.1.{i}") for i in range(BULK_RECOMPUTE + 1)], [])
        else:
            t.set_service(svc_a)
        t.flush()
        assert t.state.ids[ServicePortName("default", "a", "http", "TCP")] == 9
        assert t.state.src_ranges == {9: frozenset({"10.0.0.0/8"})}
        assert t.state.frontends[FrontendKey("203.0.113.1", 80, 6)].svc_id == 9


ADDRS = [f"10.1.0.{i}" for i in range(1, 6)]
op = st.one_of(
    st.tuples(st.just("svc"), st.sampled_from("abc"), st.sampled_from([80, 443]), st.sampled_from(["TCP", "UDP"])),
    st.tuples(st.just("ext-svc"), st.sampled_from("abc"), st.sampled_from([80, 443]),
              st.sampled_from(["NodePort", "LoadBalancer"]), st.booleans(), st.booleans(), st.booleans(),
              st.booleans()),
    st.tuples(st.just("nodes"), st.lists(st.sampled_from(NODE_IPS), max_size=3)),
    st.tuples(st.just("del-svc"), st.sampled_from("abc")),
    st.tuples(st.just("slice"), st.sampled_from(["1", "2"]), st.sampled_from("abc"),
              st.lists(st.tuples(st.sampled_from(ADDRS), st.sampled_from([NODE, "node-1"])), max_size=3),
              st.booleans()),
    st.tuples(st.just("del-slice"), st.sampled_from(["1", "2"]), st.sampled_from("abc")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=25))
def test_after_any_sequence_the_tracker_equals_the_full_computation(ops):
    t = ServiceTracker(NODE)
    vip = {"a": "10.96.0.1", "b": "10.96.0.2", "c": "10.96.0.3"}
    for o in ops:
        if o[0] == "svc":
            t.set_service(service(o[1], vip[o[1]], ports=(("http", o[2], o[3]),)))
        elif o[0] == "ext-svc":
            _, name, number, kind, local, internal_local, ranges, with_ips = o
            i = "abc".index(name)
            t.set_service(external(name, vip[name], ports=(("http", number, "TCP", 30000 + i),), kind=kind,
                                   lb_ip=f"203.0.113.{i + 1}" if kind == "LoadBalancer" else None,
                                   external_ips=[f"198.51.100.{i + 1}"] if with_ips else (),
                                   ranges=["10.0.0.0/8", f"172.16.{i}.0/24"] if ranges else None, local=local,
                                   internal_local=internal_local, health_check=32000 + i if local else None))
        elif o[0] == "nodes":
            t.set_node_addresses(o[1])
        elif o[0] == "del-svc":
            t.delete_service(("default", o[1]))
        elif o[0] == "slice":
            t.set_slice(slice_(f"{o[2]}-{o[1]}", o[2], o[3], ready=o[4]))
        else:
            t.delete_slice(("default", f"{o[2]}-{o[1]}"))
        t.flush()
        assert by_name(t.state) == by_name(full(t))
        assert len(set(t.state.ids.values())) == len(t.state.ids)   # ids unique
