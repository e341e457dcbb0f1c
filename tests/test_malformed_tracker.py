"""Malformed Services and EndpointSlices through the change tracker, as watch events and full lists
arrive: in any order of adds, changes and deletes it never raises, names every invalid object with
its reason, and holds what desired_state() gives for the objects there now. The one freedom: a
service that names a frontend (or health check port) another service holds is turned away while the
holder keeps it, whoever sorts first, and is programmed once the holder lets go."""
import copy
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from ebpflb.core.tracker import BULK_RECOMPUTE, ServiceTracker
from ebpflb.sources.manifest_files import load_manifests
from tests.malformed import (CONFLICT_REASONS, NODE, NODE_ADDRESSES, SERVICE_BREAKAGES, SLICE_BREAKAGES, Cluster,
                             assert_consistent, base_service, broken_or_not, by_name, clusters, fuzz_settings, keyed,
                             run, valid_services, valid_slices)


def key_of(obj):
    """The tracker's key for an object: (namespace or "", name); None when it has none to be known by."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    namespace = meta.get("namespace")
    return (namespace or "", meta["name"]) if namespace is None or isinstance(namespace, str) else None


@dataclass
class World:
    """What the tracker has been told exists: keyed objects by key, and the objects without a key
    (which cannot be deleted by key) since the last full list of their kind."""
    objects: dict = field(default_factory=lambda: {"Service": {}, "EndpointSlice": {}})
    unkeyed: dict = field(default_factory=lambda: {"Service": [], "EndpointSlice": []})

    def set(self, kind, obj):
        key = key_of(obj)
        if key is None:
            self.unkeyed[kind].append(obj)
        else:
            self.objects[kind][key] = obj

    def replace(self, kind, objs):
        self.objects[kind], self.unkeyed[kind] = {}, []
        for obj in objs:
            self.set(kind, obj)

    def all(self, kind):
        return [*self.objects[kind].values(), *self.unkeyed[kind]]


def tell(tracker: ServiceTracker, world: World, op) -> None:
    what, kind, *args = op
    setter = tracker.set_service if kind == "Service" else tracker.set_slice
    if what == "set":
        setter(args[0])
        world.set(kind, args[0])
    elif what == "delete":
        key = key_of(args[0])
        if key is not None:
            (tracker.delete_service if kind == "Service" else tracker.delete_slice)(key)
            world.objects[kind].pop(key, None)
    elif what == "replace":
        (tracker.replace_services if kind == "Service" else tracker.replace_slices)(args[0])
        world.replace(kind, args[0])
    elif what == "nodes":
        tracker.set_node_addresses(args[0])


def assert_tracker_holds_the_world(tracker: ServiceTracker, world: World) -> None:
    assert_consistent(tracker.state)
    services, slices = world.all("Service"), world.all("EndpointSlice")
    node_addresses = tracker.node_addresses
    # Turned away: fine alone, rejected for what another holds, and another really holds it now.
    turned_away = set()
    for r in tracker.rejected:
        if r.kind == "Service" and r.reason in CONFLICT_REASONS:
            obj = world.objects["Service"][(r.namespace, r.name)]
            mine = run([obj], node_addresses=node_addresses)
            if not mine.rejected:
                assert mine.frontends.keys() & tracker.state.frontends.keys() or \
                    mine.health_checks.keys() & tracker.state.health_checks.keys(), f"{r} holds nothing back"
                turned_away.add(id(obj))
    want = run([s for s in services if id(s) not in turned_away], slices, node_addresses=node_addresses)
    assert by_name(tracker.state) == by_name(want)
    assert keyed(tracker.rejected) == keyed(want.rejected) + keyed(
        r for r in tracker.rejected if r.kind == "Service" and id(world.objects["Service"].get((r.namespace, r.name)))
        in turned_away)
    assert tracker.state.service_ips == want.service_ips


@st.composite
def histories(draw):
    """Up to 3 services, each in 1-3 versions (valid, broken, claiming another's frontends), their
    slices likewise; a full list of them, then 3-25 events: sets, deletes, full lists, node address
    changes, syncs."""
    scratch = Cluster([], [])   # broken_or_not notes its breakages here; the oracle is test_malformed_objects'
    pools = {"Service": [], "EndpointSlice": []}
    valid_before: list[dict] = []
    for i in range(draw(st.sampled_from([1, 2, 2, 3, 3]))):
        valid = [draw(valid_services(i)) for _ in range(draw(st.integers(1, 2)))]
        versions = [draw(broken_or_not(v, SERVICE_BREAKAGES, scratch)) for v in valid]
        if valid_before and draw(st.integers(0, 3)):
            # A twin: another service's spec under this one's name, so it claims all the same frontends.
            versions.append({**valid[0], "spec": copy.deepcopy(draw(st.sampled_from(valid_before))["spec"])})
        valid_before += valid
        pools["Service"].append(versions)
        for j in range(draw(st.integers(0, 2))):
            service = draw(st.sampled_from(valid))
            pools["EndpointSlice"].append([draw(broken_or_not(draw(valid_slices(service, j, i)), SLICE_BREAKAGES,
                                                              scratch)) for _ in range(draw(st.integers(1, 2)))])
    kinds = [kind for kind, versions in pools.items() if versions]
    # A full list first, as when the agent starts, then the events.
    ops = [("replace", kind, [draw(st.sampled_from(versions)) for versions in pools[kind]]) for kind in kinds]
    ops.append(("flush", "Service"))
    for _ in range(draw(st.integers(3, 25))):
        what = draw(st.sampled_from(["set", "set", "set", "delete", "replace", "nodes", "flush"]))
        kind = draw(st.sampled_from(kinds))
        if what in ("set", "delete"):
            ops.append((what, kind, draw(st.sampled_from(draw(st.sampled_from(pools[kind]))))))
        elif what == "replace":
            ops.append((what, kind, [draw(st.sampled_from(versions)) for versions in pools[kind] if draw(st.booleans())]))
        elif what == "nodes":
            ops.append((what, kind, tuple(draw(st.lists(st.sampled_from(NODE_ADDRESSES + ("fd00::1",)), max_size=2)))))
        else:
            ops.append(("flush", kind))
    return ops


@fuzz_settings(300)
@given(ops=histories())
def test_after_any_events_the_tracker_holds_what_the_objects_there_now_give(ops):
    tracker, world = ServiceTracker(NODE, node_addresses=NODE_ADDRESSES), World()
    for op in ops:
        if op[0] == "flush":
            tracker.flush()
            assert_tracker_holds_the_world(tracker, world)
        else:
            tell(tracker, world, op)
    tracker.flush()
    assert_tracker_holds_the_world(tracker, world)


def filler(n: int) -> dict:
    """A valid service with a cluster IP of its own, outside the generated clusters' 10.96.x.10."""
    service = base_service(100 + n, namespace="filler")
    ip = f"10.97.{n // 250}.{n % 250 + 1}"
    service["spec"].update(clusterIP=ip, clusterIPs=[ip])
    return service


FILLERS = [filler(n) for n in range(BULK_RECOMPUTE + 1)]


@fuzz_settings(40)
@given(first=clusters(), then=clusters())
def test_a_full_list_past_the_bulk_threshold_then_events(first, then):
    """Past BULK_RECOMPUTE dirty services the tracker recomputes everything in one pass; malformed
    objects must come out of it filed as they are one at a time, so later events find them."""
    tracker, world = ServiceTracker(NODE, node_addresses=NODE_ADDRESSES), World()
    tell(tracker, world, ("replace", "Service", FILLERS + first.services))
    tell(tracker, world, ("replace", "EndpointSlice", first.slices))
    tracker.flush()
    assert_tracker_holds_the_world(tracker, world)
    for obj in then.services:
        tell(tracker, world, ("set", "Service", obj))
    for obj in first.slices:
        tell(tracker, world, ("delete", "EndpointSlice", obj))
    for obj in then.slices:
        tell(tracker, world, ("set", "EndpointSlice", obj))
    tracker.flush()
    assert_tracker_holds_the_world(tracker, world)


QUIRKY_YAML = """\
apiVersion: v1
kind: Service
metadata: {name: year, namespace: 2024}      # an int
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: norway, namespace: no}      # YAML 1.1: a bool
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: 0123, namespace: default}   # an int (octal 83)
spec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: quoted, namespace: default}
spec: {clusterIP: 10.96.0.4, ports: [{port: "80"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.1.0.1], conditions: {ready: yes}}, {addresses: [10.1.0.2], conditions: {ready: "yes"}}]
"""


def test_yaml_scalars_that_are_not_text_are_rejected_by_name_at_every_reread(tmp_path):
    """A manifest's YAML makes `namespace: 2024` an int and `namespace: no` a bool: the tracker crashed on
    those (the agent with it, or failed every sync); now each is named once per reread, the rest programmed."""
    (tmp_path / "quirks.yaml").write_text(QUIRKY_YAML)
    tracker, world = ServiceTracker(NODE, node_addresses=NODE_ADDRESSES), World()
    for _ in range(2):   # as ManifestSource does at each change of the files
        services, slices = load_manifests(tmp_path)
        tell(tracker, world, ("replace", "Service", services))
        tell(tracker, world, ("replace", "EndpointSlice", slices))
        tracker.flush()
        assert sorted((r.kind, r.namespace, r.name, r.reason) for r in tracker.rejected) == [
            ("EndpointSlice", "default", "web-1", "bad_type"),   # ready: "yes" is a string
            ("Service", "", "norway", "bad_type"), ("Service", "", "year", "bad_type"),   # no namespace text
            ("Service", "default", "", "bad_type"),                                         # no name text
            ("Service", "default", "quoted", "bad_port")]
        assert_tracker_holds_the_world(tracker, world)
        assert {n.name for n in tracker.state.ids} == {"web"}
