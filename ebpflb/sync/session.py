"""One agent run over pinned maps: the change tracker and the map writer, from the start (what the
maps already hold) through every sync, failed ones too. The agent drives it under its lock; the
tests drive the same code through restarts and failures.

The writer is given the IPv4 part of the tracker's state (sync/family.py): the core computes IPv6
too, the maps do not hold it yet.

Start: the writer reads the maps; the tracker is told which frontend carries which id for whom (a
service port takes its id back, so a restart over unchanged state writes nothing) and which ids the
maps and conntrack name (those nobody takes back wait in quarantine). The first sync compares the
maps whole with the desired state and deletes the rest.

A failed sync leaves the maps as far as it got: the writer is made again from what they hold, and
the next sync recomputes everything and compares it whole with them.
"""
import time

from ebpflb.core.tracker import Changes, ServiceTracker
from ebpflb.datapath.conntrack import service_ids
from ebpflb.datapath.maps import Maps
from ebpflb.sync.family import Ipv4Only
from ebpflb.sync.keepers import ids_named_by_flows
from ebpflb.sync.writer import MapWriter, WriteStats


class SyncSession:
    def __init__(self, maps: Maps, node_name: str, **tracker_options):
        self.maps = maps
        self.writer = MapWriter(maps)
        self.ipv4_only = Ipv4Only()   # the writer's input: the data plane is IPv4 only yet (sync/family.py)
        self.programmed = None   # what the last sync gave the writer: the IPv4 part of the tracker's state
        self.tracker = ServiceTracker(node_name, id_hints=self.writer.id_hints(),
                                      held_ids=self.writer.ids_in_maps() | service_ids(maps.ct)
                                      | ids_named_by_flows(maps, skip=("ct",)), **tracker_options)

    @property
    def needs_sync(self) -> bool:
        return self.tracker.needs_sync

    def sync(self, now: float | None = None) -> tuple[Changes, WriteStats]:
        """Bring the maps in line with the tracker. `now` (time.monotonic()'s clock) stamps the ids
        that left: conntrack scans that begin a grace period later may free them."""
        try:
            changes = self.tracker.flush()
            self.programmed, v4_changes = self.ipv4_only(self.tracker.state, changes)
            stats = self.writer.apply(self.programmed, v4_changes)
        except Exception:
            self.writer = MapWriter(self.maps)   # what the maps really hold now
            self.tracker.dirty |= self.tracker.services.keys() | {("", "")}
            self.tracker.full = True
            raise
        self.tracker.quarantine.written(time.monotonic() if now is None else now)
        return changes, stats

    def release(self, ids_seen: set[int], scan_started: float) -> set[int]:
        """A conntrack scan begun at `scan_started` saw `ids_seen`: the quarantined ids it did not see
        are free again. Returns them."""
        return self.tracker.quarantine.release(ids_seen, scan_started)
