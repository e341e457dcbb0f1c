"""Full maps: a Service that does not fit in the frontend or backend map is left out whole, named
with reason map_full; those that fit are programmed; room that frees up lets it in."""
import pytest

from ebpflb.core.services import Usage
from ebpflb.core.tracker import BULK_RECOMPUTE, ServiceTracker
from tests.test_tracker import NODE, service, slice_


def capacity(frontends, backends):
    return Usage(frontends, backends, 1000, 1000)


def two_port_service(name, ip):
    return service(name, ip, ports=(("http", 80, "TCP"), ("dns", 53, "UDP")))


def programmed(tracker) -> set[str]:
    return {name.name for name in tracker.state.ids}


def map_full(tracker) -> set[str]:
    return {r.name for r in tracker.rejected if r.reason == "map_full"}


@pytest.mark.parametrize("capacity, objects, fits, left_out", [
    # 2 frontends free: svc-a (1) fits, svc-b (2 ports: 2 frontends) would make 3
    (capacity(2, 100), [service("svc-a", "10.96.0.1"), two_port_service("svc-b", "10.96.0.2")],
     {"svc-a"}, {"svc-b"}),
    # backends: svc-a takes 2 slots, svc-b needs 2 more than the 3 allowed
    (capacity(10, 3),
     [service("svc-a", "10.96.0.1"), slice_("a-1", "svc-a", [("10.0.0.1", NODE), ("10.0.0.2", NODE)]),
      service("svc-b", "10.96.0.2"), slice_("b-1", "svc-b", [("10.0.0.3", NODE), ("10.0.0.4", NODE)])],
     {"svc-a"}, {"svc-b"}),
    # exactly full is fine
    (capacity(2, 2),
     [service("svc-a", "10.96.0.1"), slice_("a-1", "svc-a", [("10.0.0.1", NODE)]),
      service("svc-b", "10.96.0.2"), slice_("b-1", "svc-b", [("10.0.0.3", NODE)])],
     {"svc-a", "svc-b"}, set()),
    # a service bigger than the whole map never gets in, and does not keep smaller ones out
    (capacity(1, 10), [two_port_service("svc-a", "10.96.0.1"), service("svc-b", "10.96.0.2")],
     {"svc-b"}, {"svc-a"}),
])
def test_services_that_do_not_fit_are_left_out_whole(capacity, objects, fits, left_out):
    tracker = ServiceTracker(NODE, capacity=capacity)
    for obj in objects:   # one flush per object, in order: what comes first is in first
        (tracker.set_service if obj["kind"] == "Service" else tracker.set_slice)(obj)
        tracker.flush()
    assert programmed(tracker) == fits
    assert map_full(tracker) == left_out
    # never half programmed: a service is in with all its ports or not at all
    for name in left_out:
        assert not any(n.name == name for n in tracker.state.ids)
    assert len(tracker.state.frontends) <= tracker.capacity.frontends
    assert sum(map(len, tracker.state.backends.values())) <= tracker.capacity.backends


def test_room_freed_by_a_deleted_service_lets_the_left_out_one_in():
    tracker = ServiceTracker(NODE, capacity=capacity(2, 10))
    tracker.set_service(service("svc-a", "10.96.0.1"))
    tracker.flush()
    tracker.set_service(two_port_service("svc-b", "10.96.0.2"))
    tracker.flush()
    assert map_full(tracker) == {"svc-b"}
    tracker.delete_service(("default", "svc-a"))
    changes = tracker.flush()
    assert programmed(tracker) == {"svc-b"} and not map_full(tracker)
    assert len(changes.frontends) == 3   # svc-a's went, svc-b's two came


def test_a_bulk_recompute_fits_services_in_name_order_and_names_the_rest():
    tracker = ServiceTracker(NODE, capacity=capacity(BULK_RECOMPUTE, 10))
    tracker.replace_services([service(f"svc-{i:04}", f"10.97.{i // 250}.{i % 250 + 1}") for i in range(BULK_RECOMPUTE + 2)])
    tracker.flush()
    assert len(tracker.state.frontends) == BULK_RECOMPUTE
    assert map_full(tracker) == {f"svc-{BULK_RECOMPUTE:04}", f"svc-{BULK_RECOMPUTE + 1:04}"}


def test_a_relist_keeps_the_services_already_in():
    tracker = ServiceTracker(NODE, capacity=capacity(1 + BULK_RECOMPUTE, 10))
    tracker.set_service(service("zz-first", "10.96.0.1"))
    tracker.flush()
    later = [service(f"aa-{i}", f"10.97.{i // 250}.{i % 250 + 1}") for i in range(BULK_RECOMPUTE + 1)]
    tracker.replace_services([service("zz-first", "10.96.0.1"), *later])
    tracker.flush()
    assert "zz-first" in programmed(tracker)       # though it sorts last
    assert len(map_full(tracker)) == 1
