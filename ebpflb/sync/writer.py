"""Make the NAT maps equal to a DesiredState, writing only the difference, in an order that never
lets a packet see a frontend whose slots are not all filled, and makes room before it takes room:

  1. frontends that are gone                    (nothing is served there any more)
  2. backend slots of ids no frontend reaches   (room for what comes: a full map refuses writes)
  3. backend slots that are new or changed      (a growing frontend's new slots exist first)
  4. address bits of new frontends and service addresses (addr_bits.py: the programs look no
     further than a clear bit)
  5. frontends that are new or changed          (count moves only over filled slots)
  6. service addresses that are new
  7. backend slots beyond a shrunk count        (the count no longer reaches them)
  8. service addresses that are gone
  9. address bits nothing needs any more

Session affinity rides along: a service port's timeout (affinity_svc) is switched off at 1 and on
or changed at 5, after its members (affinity_be: the backends an entry may name) are written at 3;
members that go are deleted at 2, so no new connection follows an entry to a backend that is
leaving. Entries naming what left are the agent's to forget (ebpflb.datapath.affinity), after the
sync: WriteStats.affinity_left says which ids.

The tracker admits only services that fit, so the final contents always fit; should the writes
still meet a full map (one service shrinks while another grows), 7 goes before 3 and the sync
completes rather than fail at every period.

The writer mirrors what the maps hold (read once when it starts, then kept as it writes), so a
sync that changes nothing reads and writes nothing. Given the tracker's Changes it looks at those
ids, frontends and addresses only; without, at everything.
"""
import errno
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ebpflb.sync.addr_bits import AddressBits
from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.core.tracker import Changes
from ebpflb.datapath.libbpf import BPFError
from ebpflb.datapath.maps import Maps
from ebpflb.datapath.structs import ffi, ip_be, ip_be_column, ip_str, port_be_column, port_int, struct_array

log = logging.getLogger(__name__)


@dataclass
class MapContents:
    frontends: dict[FrontendKey, Frontend] = field(default_factory=dict)
    backends: dict[tuple[int, int], Backend] = field(default_factory=dict)   # (id, ordinal)
    service_ips: set[str] = field(default_factory=set)
    src_ranges: dict[int, set[str]] = field(default_factory=dict)   # id -> CIDRs
    affinity: dict[int, int] = field(default_factory=dict)          # id -> session affinity timeout (s)
    affinity_members: dict[int, dict[Backend, int]] = field(default_factory=dict)   # id -> backend -> ordinal

    def backends_by_id(self) -> dict[int, tuple[Backend, ...]]:
        by_id: dict[int, list[Backend]] = {}
        for (svc_id, ordinal), backend in sorted(self.backends.items()):
            by_id.setdefault(svc_id, []).append(backend)
        return {svc_id: tuple(backends) for svc_id, backends in by_id.items()}


@dataclass
class WriteStats:
    written: int = 0
    deleted: int = 0
    removed_backends: set[tuple[int, Backend]] = field(default_factory=set)   # (id, backend)
    removed_udp_backends: set[tuple[int, Backend]] = field(default_factory=set)   # their UDP flows must move
    affinity_left: set[int] = field(default_factory=set)   # ids whose affinity, or some of its members, went

    @property
    def changed(self) -> bool:
        return bool(self.written or self.deleted)


# The map structs for many entries at once, a field at a time (struct_array); one entry's is an array
# of one. Making a struct per entry and setting its fields one by one took ≈ 1 s of a cold start.
def frontend_keys(keys: Sequence[FrontendKey]):
    return struct_array("struct nat_fe_key", len(keys), addr=ip_be_column(k.addr for k in keys),
                        port=port_be_column(k.port for k in keys), proto=[k.proto for k in keys])


def frontend_values(frontends: Sequence[Frontend]):
    return struct_array("struct nat_fe_value", len(frontends), id=[f.svc_id for f in frontends],
                        count=[f.count for f in frontends], local=[f.local for f in frontends],
                        flags=[f.flags for f in frontends])


def backend_keys(ids: Sequence[int], ordinals: Sequence[int]):
    return struct_array("struct nat_be_key", len(ids), id=ids, ordinal=ordinals)


def backend_values(backends: Sequence[Backend]):
    addrs, ports = _columns(backends, 2)
    return struct_array("struct nat_be_value", len(backends), addr=ip_be_column(addrs), port=port_be_column(ports))


def src_range_keys(ranges: Sequence[tuple[int, str]]):
    """Of (id, CIDR) pairs."""
    ids, cidrs = _columns(ranges, 2)
    addrs, _, bits = _columns([cidr.partition("/") for cidr in cidrs], 3)
    return struct_array("struct src_range_key", len(ranges), prefixlen=[32 + int(b) for b in bits], id=ids,
                        addr=ip_be_column(addrs))


def affinity_member_keys(members: Sequence[tuple[int, Backend]]):
    """Of (id, backend) pairs."""
    ids, backends = _columns(members, 2)
    addrs, ports = _columns(backends, 2)
    return struct_array("struct affinity_be_key", len(members), svc_id=ids, addr=ip_be_column(addrs),
                        port=port_be_column(ports))


def service_ip_keys(addrs: Sequence[str]):
    return ffi.new("__u32[]", [ip_be(addr) for addr in addrs])


def _columns(rows: Sequence[tuple], width: int) -> tuple:
    """Rows of `width` values -> `width` columns, also when there are no rows."""
    return tuple(zip(*rows)) if rows else ((),) * width


def fe_key(k: FrontendKey):
    return frontend_keys([k])


def be_key(svc_id: int, ordinal: int):
    return backend_keys([svc_id], [ordinal])


def svc_ip_key(addr: str):
    return service_ip_keys([addr])


def src_range_key(svc_id: int, cidr: str):
    return src_range_keys([(svc_id, cidr)])


def read_contents(maps: Maps) -> MapContents:
    contents = MapContents()
    for k, v in maps.nat_fe.items():
        contents.frontends[FrontendKey(ip_str(k.addr), port_int(k.port), k.proto)] = \
            Frontend(v.id, v.count, v.local, v.flags)
    for k, v in maps.nat_be.items():
        contents.backends[(k.id, k.ordinal)] = Backend(ip_str(v.addr), port_int(v.port))
    contents.service_ips = {ip_str(k[0]) for k, _ in maps.svc_ips.items()}
    for k, _ in maps.src_ranges.items():
        contents.src_ranges.setdefault(k.id, set()).add(f"{ip_str(k.addr)}/{k.prefixlen - 32}")
    contents.affinity = maps.affinity_svc.nonzero_u32()
    for k, v in maps.affinity_be.items():
        contents.affinity_members.setdefault(k.svc_id, {})[Backend(ip_str(k.addr), port_int(k.port))] = v[0]
    return contents


_NO_MEMBERS: dict = {}   # never written


def _members(backends: tuple) -> dict[Backend, int]:
    """Backend -> its ordinal in a service port's list."""
    return {backend: ordinal for ordinal, backend in enumerate(backends)}


def _changed_slots(have: tuple, want: tuple):
    if not have:   # a new list (every list at a cold start): all of it, without a comparison each
        return enumerate(want)
    return ((ordinal, backend) for ordinal, backend in enumerate(want)
            if ordinal >= len(have) or have[ordinal] != backend)


class MapWriter:
    def __init__(self, maps: Maps):
        self.maps = maps
        contents = read_contents(maps)
        self.frontends = contents.frontends
        self.backends = contents.backends_by_id()
        self.service_ips = contents.service_ips
        self.src_ranges = contents.src_ranges
        self.affinity = contents.affinity
        self.affinity_members = contents.affinity_members
        self.addr_bits = AddressBits(maps.svc_addr_bits, [*(key.addr for key in self.frontends), *self.service_ips])

    def apply(self, desired: DesiredState, changes: Changes | None = None) -> WriteStats:
        if changes is None:
            changes = Changes(set(desired.backends.keys() | self.backends.keys() | self.affinity.keys()
                                  | self.affinity_members.keys()),
                              set(desired.frontends.keys() | self.frontends.keys()),
                              set(desired.service_ips | self.service_ips),
                              src_range_ids=set(desired.src_ranges.keys() | self.src_ranges.keys()))
        stats = WriteStats()
        nat_fe, nat_be, svc_ips = self.maps.nat_fe, self.maps.nat_be, self.maps.svc_ips
        empty = ()

        gone_frontends = {key for key in changes.frontends if key not in desired.frontends and key in self.frontends}
        for key in gone_frontends:
            nat_fe.delete(fe_key(key))
            stats.deleted += 1
        timeouts, members_gone, members_new = self._affinity_diff(desired, changes)
        off = [(svc_id, 0) for svc_id, timeout in timeouts if not timeout]
        self._write_timeouts(off)
        for svc_id, backend in members_gone:
            self.maps.affinity_be.delete(affinity_member_keys([(svc_id, backend)]))
        stats.affinity_left = {svc_id for svc_id, _ in off} | {svc_id for svc_id, _ in members_gone}
        stats.written += len(off)
        stats.deleted += len(members_gone)
        shrunk = {}   # id -> (old length, new length) of slots to delete once the count shrank
        for svc_id in changes.ids:
            have, want = self.backends.get(svc_id, empty), desired.backends.get(svc_id, empty)
            if len(want) < len(have):
                shrunk[svc_id] = (len(have), len(want))
            if have:
                stats.removed_backends |= {(svc_id, b) for b in set(have) - set(want)}
        unwanted = [i for i in shrunk if i not in desired.backends]
        if unwanted:
            # Of those, the ids no frontend in the maps names any more (a changed one is rewritten only
            # at step 4). Looked at only when there are some: a pass over every frontend key (hashing
            # each) was 6 of a one-service sync's 9 ms at 10k services.
            still_reached = {f.svc_id for key, f in self.frontends.items() if key not in gone_frontends}
            early = [i for i in unwanted if i not in still_reached]
            stats.deleted += self._delete_slots({i: shrunk.pop(i) for i in early})

        # Plain tuples until the map structs are made, a field at a time for all of them.
        slots = [(svc_id, ordinal, backend)
                 for svc_id in changes.ids
                 for ordinal, backend in _changed_slots(self.backends.get(svc_id, empty),
                                                        desired.backends.get(svc_id, empty))]
        frontends = [key for key in changes.frontends
                     if key in desired.frontends and self.frontends.get(key) != desired.frontends[key]]
        addresses = [addr for addr in changes.service_ips
                     if addr in desired.service_ips and addr not in self.service_ips]
        # Ranges before the frontends that check them: a new LB frontend never drops an allowed client.
        ranges_added, ranges_gone = self._range_diff(desired, changes)
        try:
            self._write_ranges_and_slots(ranges_added, slots)
        except BPFError as err:
            if err.errno not in (errno.E2BIG, errno.ENOSPC):
                raise
            log.warning("a map is too full to write before deleting (%s): deleting first", err)
            stats.deleted += self._delete_slots(shrunk)
            shrunk = {}
            self._write_ranges_and_slots(ranges_added, slots)
        self.maps.affinity_be.update_many(affinity_member_keys([(i, b) for i, b, _ in members_new]),
                                          ffi.new("__u32[]", [ordinal for _, _, ordinal in members_new]))
        on = [(svc_id, timeout) for svc_id, timeout in timeouts if timeout]
        self._write_timeouts(on)
        stats.written += len(members_new) + len(on)
        stats.written += self.addr_bits.add([*(key.addr for key in frontends if key not in self.frontends), *addresses])
        nat_fe.update_many(frontend_keys(frontends), frontend_values([desired.frontends[key] for key in frontends]))
        svc_ips.update_many(service_ip_keys(addresses), ffi.new("struct svc_ip_value[]", len(addresses)))   # flags 0
        stats.written += len(ranges_added) + len(slots) + len(frontends) + len(addresses)
        stats.deleted += self._delete_slots(shrunk)
        gone_addresses = [addr for addr in changes.service_ips
                          if addr not in desired.service_ips and addr in self.service_ips]
        for addr in gone_addresses:
            svc_ips.delete(svc_ip_key(addr))
            stats.deleted += 1
        for svc_id, cidr in ranges_gone:
            self.maps.src_ranges.delete(src_range_key(svc_id, cidr))
            stats.deleted += 1
        stats.written += self.addr_bits.remove([*(key.addr for key in gone_frontends), *gone_addresses])

        # Which of the changed ids serve UDP, from frontends the sync looks at anyway: only their
        # removed backends make the agent scan conntrack.
        udp_ids = {f.svc_id for key in changes.frontends if key.proto == 17
                   for f in (self.frontends.get(key), desired.frontends.get(key)) if f is not None}
        stats.removed_udp_backends = {(i, b) for i, b in stats.removed_backends if i in udp_ids}
        self._remember(desired, changes)
        return stats

    def _write_ranges_and_slots(self, ranges: list[tuple[int, str]], slots: list[tuple[int, int, Backend]]) -> None:
        self.maps.src_ranges.update_many(src_range_keys(ranges), ffi.new("__u32[]", [1] * len(ranges)))
        ids, ordinals, backends = _columns(slots, 3)
        self.maps.nat_be.update_many(backend_keys(ids, ordinals), backend_values(backends))

    def _delete_slots(self, spans: dict[int, tuple[int, int]]) -> int:
        """Delete ordinals new..old-1 of each id; how many."""
        for svc_id, (old, new_len) in spans.items():
            for ordinal in range(new_len, old):
                self.maps.nat_be.delete(be_key(svc_id, ordinal))
        return sum(old - new_len for old, new_len in spans.values())

    def _affinity_diff(self, desired: DesiredState, changes: Changes):
        """(timeouts to write: (id, seconds or 0 for off), members that go: (id, backend), members new or
        moved: (id, backend, ordinal)) for the changed ids."""
        timeouts, gone, new = [], [], []
        for svc_id in changes.ids:
            want = desired.affinity.get(svc_id, 0)
            if want != self.affinity.get(svc_id, 0):
                timeouts.append((svc_id, want))
            have_members = self.affinity_members.get(svc_id, _NO_MEMBERS)
            want_members = _members(desired.backends.get(svc_id, ())) if want else _NO_MEMBERS
            gone += [(svc_id, backend) for backend in have_members if backend not in want_members]
            new += [(svc_id, backend, ordinal) for backend, ordinal in want_members.items()
                    if have_members.get(backend) != ordinal]
        return timeouts, gone, new

    def _write_timeouts(self, timeouts: list[tuple[int, int]]) -> None:
        ids, seconds = _columns(timeouts, 2)
        self.maps.affinity_svc.update_many(ffi.new("__u32[]", list(ids)),
                                           struct_array("struct affinity_svc", len(timeouts), timeout_s=seconds))

    def _range_diff(self, desired: DesiredState, changes: Changes):
        added, gone = [], []
        for svc_id in changes.src_range_ids:
            have, want = self.src_ranges.get(svc_id, set()), set(desired.src_ranges.get(svc_id, ()))
            added += [(svc_id, cidr) for cidr in want - have]
            gone += [(svc_id, cidr) for cidr in have - want]
        return added, gone

    def _remember(self, desired: DesiredState, changes: Changes) -> None:
        for svc_id in changes.ids:
            if desired.affinity.get(svc_id):
                self.affinity[svc_id] = desired.affinity[svc_id]
                self.affinity_members[svc_id] = _members(desired.backends.get(svc_id, ()))
            else:
                self.affinity.pop(svc_id, None)
                self.affinity_members.pop(svc_id, None)
        for svc_id in changes.src_range_ids:
            if desired.src_ranges.get(svc_id):
                self.src_ranges[svc_id] = set(desired.src_ranges[svc_id])
            else:
                self.src_ranges.pop(svc_id, None)
        for svc_id in changes.ids:
            if svc_id in desired.backends:
                self.backends[svc_id] = desired.backends[svc_id]
            else:
                self.backends.pop(svc_id, None)
        for key in changes.frontends:
            if key in desired.frontends:
                self.frontends[key] = desired.frontends[key]
            else:
                self.frontends.pop(key, None)
        for addr in changes.service_ips:
            if addr in desired.service_ips:
                self.service_ips.add(addr)
            else:
                self.service_ips.discard(addr)
