"""The writer at full maps: it makes room before it takes room, so a sync whose final contents fit
always completes (a full map refuses a write with E2BIG, and a sync that fails is retried, and
fails again, at every period)."""
import shutil
import uuid

import pytest

from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath.loader import Datapath, DatapathOptions
from ebpflb.sync.writer import MapWriter, read_contents

SIZE = 4


@pytest.fixture(scope="module")
def small():
    pin_dir = f"/sys/fs/bpf/ebpflb-test-{uuid.uuid4().hex[:8]}"
    datapath = Datapath(pin_dir, DatapathOptions(frontend_map_max=SIZE, backend_map_max=SIZE)).load()
    yield datapath
    datapath.close()
    shutil.rmtree(pin_dir, ignore_errors=True)


def state(**services) -> DesiredState:
    """services: name=(id, vip, [backend ips])"""
    desired = DesiredState()
    for svc_id, vip, backends in services.values():
        desired.frontends[FrontendKey(vip, 80, 6)] = Frontend(svc_id, len(backends), 0, 0)
        desired.backends[svc_id] = tuple(Backend(ip, 8080) for ip in backends)
    desired.service_ips = frozenset(k.addr for k in desired.frontends)
    return desired


def assert_maps_hold(dp, desired):
    contents = read_contents(dp.maps)
    assert contents.frontends == desired.frontends
    assert contents.backends_by_id() == {i: b for i, b in desired.backends.items() if b}


@pytest.mark.parametrize("before, after", [
    # every frontend replaced by others in one sync
    (dict(a=(1, "10.96.0.1", ["10.0.0.1"]), b=(2, "10.96.0.2", ["10.0.0.2"]), c=(3, "10.96.0.3", []),
          d=(4, "10.96.0.4", [])),
     dict(e=(5, "10.96.0.5", ["10.0.0.5"]), f=(6, "10.96.0.6", ["10.0.0.6"]), g=(7, "10.96.0.7", []),
          h=(8, "10.96.0.8", []))),
    # a service's backends replaced by another's
    (dict(a=(1, "10.96.0.1", ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])),
     dict(b=(2, "10.96.0.2", ["10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4"]))),
    # one shrinks while the other grows: the slots to delete are still reached when the new ones go in
    (dict(a=(1, "10.96.0.1", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]), b=(2, "10.96.0.2", ["10.0.1.1"])),
     dict(a=(1, "10.96.0.1", ["10.0.0.1"]), b=(2, "10.96.0.2", ["10.0.1.1", "10.0.1.2", "10.0.1.3"]))),
], ids=["frontends-replaced", "backends-replaced", "shrink-and-grow"])
def test_a_sync_that_fits_completes_at_full_maps(small, before, after):
    writer = MapWriter(small.maps)
    writer.apply(state())            # empty
    writer.apply(state(**before))
    assert_maps_hold(small, state(**before))
    writer.apply(state(**after))
    assert_maps_hold(small, state(**after))
    writer.apply(state())
    assert_maps_hold(small, state())


def test_a_batch_delete_passes_over_keys_that_are_not_there(small):
    from ebpflb.sync.writer import backend_keys, backend_values
    nat_be = small.maps.nat_be
    for key, _ in nat_be.items():
        nat_be.delete(key)
    nat_be.update_many(backend_keys([7, 7, 7], [0, 1, 3]), backend_values([Backend("10.0.0.1", 80)] * 3))
    assert nat_be.delete_many(backend_keys([7, 7, 7, 7, 7], [0, 1, 2, 3, 4])) == 3
    assert nat_be.count() == 0
