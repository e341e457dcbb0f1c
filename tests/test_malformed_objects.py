"""Malformed Services and EndpointSlices in the pure core: desired_state() never raises, rejects each
invalid object with a reason from the named set, and programs the valid ones exactly as if the
invalid ones were not there. Named breakages first (each with the outcome it must have), then
hypothesis clusters mixing valid and broken objects (tests/malformed.py)."""
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ebpflb.core.model import REJECT_REASONS
from ebpflb.core.services import parse_service, parse_slice
from tests.malformed import (BREAKAGES, CONFLICT_REASONS, SKIPPED, VALID, alone, assert_consistent, base_service,
                             base_slice, by_name, clusters, fuzz_settings, identity, keyed, run)


def test_the_reasons_are_a_named_set_and_every_one_is_reached():
    """The metric's reason label takes these values only; each is some named example's outcome here, or
    (conflicts between objects) in test_core, test_core_external and test_tracker."""
    named = {b.outcome for b in BREAKAGES} - {SKIPPED, VALID}
    assert REJECT_REASONS == named | CONFLICT_REASONS


# --- Each named breakage on its own, in a small cluster ---

def small_cluster():
    """Service 0 with two slices and service 1 with one: the breakage hits service 1 or slice 0-1."""
    services = [base_service(0, ports=(("http", 80, "TCP"), ("dns", 53, "UDP"))), base_service(1)]
    slices = [base_slice(0, 0, ports=(("http", 8080, "TCP"), ("dns", 5353, "UDP"))),
              base_slice(0, 1, addresses=["10.1.0.7"], ports=(("http", 8080, "TCP"),)),
              base_slice(1, 0)]
    return services, slices


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda b: f"{b.kind}:{b.name}")
def test_named_breakage(breakage):
    services, slices = small_cluster()
    if breakage.kind == "Service":
        broken = breakage(services.pop(1))
        state = run([*services, broken], slices)
    else:
        broken = breakage(slices.pop(1))
        state = run(services, [*slices, broken])
    without = run(services, slices)
    assert_consistent(state)
    outcome = alone(breakage.kind, broken)
    if breakage.kind == "EndpointSlice" and breakage.outcome == SKIPPED:
        assert outcome == VALID   # alone, a skipped slice and a valid one both give nothing
    else:
        assert outcome == breakage.outcome
    if breakage.outcome in (SKIPPED, VALID):
        assert state.rejected == []
    else:
        assert keyed(state.rejected) == {(breakage.kind, *identity(broken), breakage.outcome): 1}
    if breakage.outcome != VALID:   # rejected or skipped: as if it were not there
        assert by_name(state) == by_name(without)
    elif breakage.kind == "Service" and broken["spec"]["ports"]:
        assert {n.name for n in state.ids} == {n.name for n in without.ids} | {broken["metadata"]["name"]}


# --- Clusters mixing valid and broken objects ---

@fuzz_settings(300)
@given(cluster=clusters(), order=st.randoms(use_true_random=False))
def test_invalid_objects_are_rejected_and_change_nothing_for_the_valid_ones(cluster, order):
    state = run(cluster.services, cluster.slices)   # never raises
    assert_consistent(state)
    # Each object is judged on its own: a named breakage has the outcome the table says.
    judged = {id(obj): alone(kind, obj) for kind, obj in cluster.objects}
    for kind, obj in cluster.objects:
        breakage = cluster.broken.get(id(obj))
        if breakage is not None and not (kind == "EndpointSlice" and breakage.outcome == SKIPPED):
            assert judged[id(obj)] == breakage.outcome, (breakage.name, obj)
    # Rejected alone: rejected in the cluster too, and the rest is programmed as if it were not there
    # (conflicts between the valid ones resolve the same way in both).
    invalid = [(kind, obj) for kind, obj in cluster.objects if judged[id(obj)] not in (VALID, SKIPPED)]
    valid_services = [s for s in cluster.services if judged[id(s)] in (VALID, SKIPPED)]
    valid_slices = [s for s in cluster.slices if judged[id(s)] in (VALID, SKIPPED)]
    without = run(valid_services, valid_slices)
    assert by_name(state) == by_name(without)
    assert keyed(state.rejected) == keyed(without.rejected) + keyed(
        r for kind, obj in invalid for r in (run([obj]) if kind == "Service" else run([], [obj])).rejected)
    assert {r.reason for r in without.rejected} <= CONFLICT_REASONS
    # The order objects arrive in changes nothing (ids included).
    services, slices = list(cluster.services), list(cluster.slices)
    order.shuffle(services)
    order.shuffle(slices)
    shuffled = run(services, slices)
    assert (shuffled.ids, by_name(shuffled), keyed(shuffled.rejected)) == (state.ids, by_name(state), keyed(state.rejected))


@fuzz_settings(300)
@given(cluster=clusters())
def test_the_compact_forms_give_what_the_objects_give(cluster):
    """The tracker keeps parse_service/parse_slice's results, not the objects: from them the core gives
    the very same state and rejections, in the same order, and reading an object twice gives equal
    forms (how the tracker tells a change the maps cannot see)."""
    raw = run(cluster.services, cluster.slices)
    compact = run([parse_service(s) for s in cluster.services], [parse_slice(s) for s in cluster.slices])
    assert compact == raw and compact.rejected == raw.rejected
    assert [parse_service(s) for s in cluster.services] == [parse_service(s) for s in cluster.services]
    assert [parse_slice(s) for s in cluster.slices] == [parse_slice(s) for s in cluster.slices]


def test_a_cluster_of_every_breakage_at_once():
    """One object per named breakage, all in one cluster with the valid ones: each rejected or skipped
    as named, the valid objects programmed as if alone (test_lab_malformed sends those an API server can
    hold through one)."""
    services, slices = small_cluster()
    broken_services = [b(base_service(10 + k)) for k, b in enumerate(BREAKAGES) if b.kind == "Service"]
    broken_slices = [b(base_slice(0, 10 + k)) for k, b in enumerate(BREAKAGES) if b.kind == "EndpointSlice"]
    rng = random.Random(4)
    everything_services, everything_slices = services + broken_services, slices + broken_slices
    rng.shuffle(everything_services)
    rng.shuffle(everything_slices)
    state = run(everything_services, everything_slices)
    assert_consistent(state)
    want = keyed(r for s in broken_services for r in run([s]).rejected) + \
        keyed(r for s in broken_slices for r in run([], [s]).rejected)
    assert keyed(state.rejected) == want
    assert len(state.rejected) == sum(b.outcome not in (SKIPPED, VALID) for b in BREAKAGES)
    valid = [s for s in broken_services if not run([s]).rejected]
    assert by_name(state) == by_name(run(services + valid, slices + [s for s in broken_slices if not run([], [s]).rejected]))
