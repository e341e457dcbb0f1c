"""Every pinned map has a keeper (sync/keepers.py), so the full reconcile covers a map added later by
construction: one the desired state decides is compared entry for entry by the property test."""
from ebpflb.datapath.maps import MAP_LAYOUT
from ebpflb.sync.keepers import DESIRED, KEEPERS
from tests.test_reconcile_property import by_name


def test_every_pinned_map_has_a_keeper():
    assert set(KEEPERS) == set(MAP_LAYOUT)


def test_the_property_test_compares_every_map_the_desired_state_decides():
    assert set(by_name({}, {}, (), {}, {}, {}, {})) == {name for name, keeper in KEEPERS.items() if keeper.kind == DESIRED}
