"""The change tracker: after any sequence of object changes it holds what the full computation
would give, reports only what a change touched, and keeps ids stable."""
from hypothesis import given, settings, strategies as st

from ebpflb.core.model import Backend, FrontendKey, ServicePortName
from ebpflb.core.services import desired_state
from ebpflb.core.tracker import BULK_RECOMPUTE, ServiceTracker

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


def by_name(state):
    """The state with ids replaced by service-port names: equal whatever numbers were handed out."""
    name_of = {i: n for n, i in state.ids.items()}
    return ({k: (name_of[f.svc_id], f.count, f.local, f.flags) for k, f in state.frontends.items()},
            {name_of[i]: b for i, b in state.backends.items()}, set(state.service_ips))


def full(tracker):
    return desired_state(tracker.services.values(), tracker.slices.values(), node_name=NODE, known_ids={})


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


def test_deleting_a_service_frees_its_frontends_and_address():
    t = ServiceTracker(NODE)
    t.replace_all([service("a", "10.96.0.1")], [slice_("a-1", "a", [("10.1.0.1", NODE)])])
    t.flush()
    t.delete_service(("default", "a"))
    changes = t.flush()
    assert changes.service_ips == {"10.96.0.1"} and not t.state.frontends and not t.state.service_ips


def test_restart_takes_ids_back_from_the_maps():
    objects = ([service("a", "10.96.0.1"), service("b", "10.96.0.2")], [])
    hints = {FrontendKey("10.96.0.1", 80, 6): 7, FrontendKey("10.96.0.2", 80, 6): 3}
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


ADDRS = [f"10.1.0.{i}" for i in range(1, 6)]
op = st.one_of(
    st.tuples(st.just("svc"), st.sampled_from("abc"), st.sampled_from([80, 443]), st.sampled_from(["TCP", "UDP"])),
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
        elif o[0] == "del-svc":
            t.delete_service(("default", o[1]))
        elif o[0] == "slice":
            t.set_slice(slice_(f"{o[2]}-{o[1]}", o[2], o[3], ready=o[4]))
        else:
            t.delete_slice(("default", f"{o[2]}-{o[1]}"))
        t.flush()
        assert by_name(t.state) == by_name(full(t))
        assert len(set(t.state.ids.values())) == len(t.state.ids)   # ids unique
