"""Malformed Services and EndpointSlices all the way into the real maps: after each sync through the
tracker and MapWriter, the loaded programs' maps hold exactly the desired state, whatever was broken."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ebpflb.core.model import FrontendKey
from ebpflb.core.services import MAP_CAPACITY, Usage
from ebpflb.core.tracker import ServiceTracker
from ebpflb.sync.family import Ipv4Only
from ebpflb.sync.writer import MapWriter, read_contents
from tests.malformed import NODE, NODE_ADDRESSES, base_service, base_slice, cluster_ip, clusters, fuzz_settings


def emptied(loaded):
    """The loaded programs' maps, emptied: every example starts as a fresh node (compiling the programs
    once per module keeps this quick; the `dp` fixture cannot serve hypothesis, which reuses fixtures)."""
    maps = loaded.maps
    for bpf_map in (maps.nat_fe, maps.nat_be, maps.svc_ips, maps.ct, maps.src_ranges):
        for key, _ in bpf_map.items():
            bpf_map.delete(key)
    return maps


def assert_maps_hold(maps, state) -> None:
    contents = read_contents(maps)
    assert contents.frontends == state.frontends
    assert contents.backends_by_id() == {i: b for i, b in state.backends.items() if b}
    assert contents.service_ips == set(state.service_ips)
    assert contents.src_ranges == {i: set(r) for i, r in state.src_ranges.items() if r}


@fuzz_settings(40)
@given(lists=st.lists(clusters(), min_size=1, max_size=3))
def test_after_each_sync_the_maps_hold_the_desired_state(loaded, lists):
    """Each cluster in turn is a full list (objects come, change, break, mend and go); the writer is
    given only what the tracker says changed, and only its IPv4 part, as in the agent (sync/session.py)."""
    maps = emptied(loaded)
    tracker = ServiceTracker(NODE, node_addresses=NODE_ADDRESSES)
    writer = MapWriter(maps)
    ipv4_only = Ipv4Only()
    for cluster in lists:
        tracker.replace_all(cluster.services, cluster.slices)
        programmed, changes = ipv4_only(tracker.state, tracker.flush())
        writer.apply(programmed, changes)
        assert_maps_hold(maps, programmed)
    assert not MapWriter(maps).apply(programmed).changed   # a restarted agent finds nothing to write


def service_with_ports(i: int, n_ports: int, **spec) -> dict:
    return base_service(i, ports=[(f"p{k}", k + 1, "TCP") for k in range(n_ports)], **spec)


def lb_ingress(service: dict, ip: str) -> dict:
    return service | {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}


# Each valid for the API (or a manifest), each more entries than one map holds.
TOO_BIG = [
    pytest.param(lambda: lb_ingress(service_with_ports(1, 100, type="LoadBalancer", loadBalancerSourceRanges=[
        f"10.9.{k // 256}.{k % 256}/32" for k in range(656)]), "203.0.113.9"), id="src-ranges-100-ports-x-656-ranges"),
    pytest.param(lambda: service_with_ports(1, 100, externalIPs=[f"198.51.{100 + k // 250}.{k % 250 + 1}"
                                                                   for k in range(1311)]),
                 id="frontends-100-ports-x-1311-external-ips"),
    pytest.param(lambda: base_service(1, ports=(), clusterIPs=[f"10.{100 + k // 65536}.{k // 256 % 256}.{k % 256}"
                                                               for k in range(131_073)]),
                 id="service-addresses-131073-cluster-ips"),
]


@pytest.mark.parametrize("too_big", TOO_BIG)
def test_a_service_the_maps_cannot_hold_is_turned_away_and_the_rest_written(loaded, too_big):
    """Written anyway, it failed the writer's batch (E2BIG) at every sync, and every other change with it."""
    maps = emptied(loaded)
    assert MAP_CAPACITY == Usage(maps.nat_fe.max_entries, maps.nat_be.max_entries, maps.svc_ips.max_entries,
                                 maps.src_ranges.max_entries)   # the core's numbers are the real maps' sizes
    tracker = ServiceTracker(NODE, node_addresses=NODE_ADDRESSES)
    writer = MapWriter(maps)
    big = too_big()
    tracker.replace_all([base_service(0), big, base_service(2)], [base_slice(0), base_slice(2)])
    writer.apply(tracker.state, tracker.flush())
    assert [(r.name, r.reason) for r in tracker.rejected] == [(big["metadata"]["name"], "map_full")]
    assert_maps_hold(maps, tracker.state)
    assert {k.addr for k in tracker.state.frontends} == {cluster_ip(0), cluster_ip(2)}
    tracker.set_slice(base_slice(2, addresses=["10.1.2.9"]))   # later changes are still written
    writer.apply(tracker.state, tracker.flush())
    assert_maps_hold(maps, tracker.state)
    assert len(read_contents(maps).backends_by_id()[tracker.state.frontends[FrontendKey(cluster_ip(2), 80, 6)].svc_id]) == 1
