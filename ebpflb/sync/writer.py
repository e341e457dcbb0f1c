"""Make the NAT maps equal to a DesiredState, writing only the difference, in an order in which no
packet ever sees a half-made change, and that makes room before it takes room.

A packet reads one frontend value (id, count, local, generation) and then one backend slot of that
generation, so a change is whole to it when every (frontend value, slot) pair it can read belongs to
the old state or to the new one. For each service port (id) whose backend list changes:

  - when the old list is the start of the new one, or the new one the start of the old (a backend
    added at the end, the last ones removed), the slots beyond the shorter list are written before
    the frontends that reach them and deleted after the frontends that reached them: in place;
  - otherwise the new list goes into another generation of slots, each frontend then switches to it
    with one update (count, local and generation together), and the old generation is deleted.

The order of a sync:

  1. frontends that are gone                     (nothing is served there any more)
  2. slots of ids no frontend reaches any more   (room for what comes: a full map refuses writes)
  3. counters of ids new to the maps zeroed; source ranges added; slots written (new generations,
     and slots added at the end of a list)
  4. address bits of new frontends and service addresses (addr_bits.py: the programs look no further
     than a clear bit)
  5. frontends that are new or changed           (a list's new generation or length goes live)
  6. service addresses that are new
  7. slots no frontend reads any more            (old generations, the end of a shortened list,
                                                  ids gone whose frontends went at step 5)
  8. service addresses and source ranges that are gone
  9. address bits nothing needs any more

Session affinity rides along: a service port's timeout (affinity_svc) is switched off at 2 and on
or changed at 3, after its members (affinity_be: the backends an entry may name, with their
ordinals) are written at 3; members that go are deleted at 2, so no new connection follows an entry
to a backend that is leaving. Members are not kept per generation: a member's ordinal only tells
the programs whether it is among the frontend's candidates (all, or the local ones, which come
first), and a backend's place on one side of that line never changes. Entries naming what left are
the agent's to forget (ebpflb.datapath.affinity), after the sync: WriteStats.affinity_left says
which ids.

The tracker admits only services that fit, so the final contents always fit; should the writes still
meet a full map (a second generation needs room beside the first), the sync is done again one id at
a time (3, 5, 7 for each), and an id whose new list finds no room even so is rewritten in place,
with a warning.

The writer mirrors what the maps hold (read when it starts, then kept as it writes), so a sync that
changes nothing reads and writes nothing. Its first apply, and one given `Changes.full` (a relist),
compares everything the maps hold with the desired state (read from the maps again for the relist),
and deletes what is not desired: what a Service deleted while no agent ran left behind, what a failed sync left half
done. Otherwise it looks at the ids, frontends and addresses the tracker's Changes name.
"""
import errno
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.core.tracker import Changes
from ebpflb.datapath.libbpf import BPFError
from ebpflb.datapath.maps import Maps
from ebpflb.datapath.structs import C, addr_columns, addr_text, ffi, port_be_column, port_int, struct_array
from ebpflb.sync.addr_bits import AddressBits

log = logging.getLogger(__name__)

FULL_MAP = (errno.E2BIG, errno.ENOSPC)


@dataclass
class MapContents:
    """What the NAT maps hold, read whole (read_contents)."""
    frontends: dict[FrontendKey, Frontend] = field(default_factory=dict)   # owner included
    generations: dict[FrontendKey, int] = field(default_factory=dict)      # the slots each frontend reads
    slots: dict[tuple[int, int, int], Backend] = field(default_factory=dict)   # (id, generation, ordinal)
    service_ips: set[str] = field(default_factory=set)
    src_ranges: dict[int, set[str]] = field(default_factory=dict)   # id -> CIDRs
    affinity: dict[int, int] = field(default_factory=dict)          # id -> session affinity timeout (s)
    affinity_members: dict[int, dict[Backend, int]] = field(default_factory=dict)   # id -> backend -> ordinal

    def backend_of(self, key: FrontendKey, ordinal: int) -> Backend | None:
        """The backend the frontend reaches at ordinal (in the generation it reads)."""
        return self.slots.get((self.frontends[key].svc_id, self.generations[key], ordinal))

    def reached(self) -> dict[tuple[int, int], Backend]:
        """(id, ordinal) -> backend, in the generation the id's frontends read (what `nat dump` shows)."""
        gen_of = {f.svc_id: self.generations[key] for key, f in sorted(self.frontends.items(), reverse=True)}
        return {(svc_id, ordinal): backend for (svc_id, gen, ordinal), backend in self.slots.items()
                if gen_of.get(svc_id) == gen}

    def slots_by_id(self) -> dict[int, dict[int, tuple[Backend | None, ...]]]:
        """id -> generation -> its slots by ordinal (None where one is missing)."""
        found: dict[int, dict[int, dict[int, Backend]]] = {}
        for (svc_id, gen, ordinal), backend in self.slots.items():
            found.setdefault(svc_id, {}).setdefault(gen, {})[ordinal] = backend
        return {svc_id: {gen: tuple(by_ordinal.get(o) for o in range(max(by_ordinal) + 1))
                         for gen, by_ordinal in gens.items()}
                for svc_id, gens in found.items()}

    def backends_by_id(self) -> dict[int, object]:
        """id -> its backend list, for ids whose slots are of one generation (as after every complete
        sync); an id with slots in several is given as {generation: slots}, which no list equals."""
        return {svc_id: gens.popitem()[1] if len(gens) == 1 else gens
                for svc_id, gens in self.slots_by_id().items()}


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
    return struct_array("struct nat_fe_key", len(keys), **addr_columns("addr", [k.addr for k in keys]),
                        port=port_be_column(k.port for k in keys), proto=[k.proto for k in keys])


def frontend_values(frontends: Sequence[Frontend], gens: Sequence[int] | None = None):
    return struct_array("struct nat_fe_value", len(frontends), id=[f.svc_id for f in frontends],
                        count=[f.count for f in frontends], local=[f.local for f in frontends],
                        flags=[f.flags for f in frontends], gen=gens if gens is not None else [0] * len(frontends),
                        owner=[f.owner for f in frontends])


def backend_keys(ids: Sequence[int], ordinals: Sequence[int], gens: Sequence[int] | None = None):
    return struct_array("struct nat_be_key", len(ids), id=ids, ordinal=ordinals,
                        gen=gens if gens is not None else [0] * len(ids))


def backend_values(backends: Sequence[Backend]):
    addrs, ports = _columns(backends, 2)
    return struct_array("struct nat_be_value", len(backends), **addr_columns("addr", addrs), port=port_be_column(ports))


def src_range_keys(ranges: Sequence[tuple[int, str]]):
    """Of (id, CIDR) pairs."""
    ids, cidrs = _columns(ranges, 2)
    addrs, _, bits = _columns([cidr.partition("/") for cidr in cidrs], 3)
    return struct_array("struct src_range_key", len(ranges), prefixlen=[C.SRC_RANGE_PREFIX_BASE + int(b) for b in bits],
                        id=ids, **addr_columns("addr", addrs))


def affinity_member_keys(members: Sequence[tuple[int, Backend]]):
    """Of (id, backend) pairs."""
    ids, backends = _columns(members, 2)
    addrs, ports = _columns(backends, 2)
    return struct_array("struct affinity_be_key", len(members), svc_id=ids, **addr_columns("addr", addrs),
                        port=port_be_column(ports))


def service_ip_keys(addrs: Sequence[str]):
    return struct_array("struct svc_ip_key", len(addrs), **addr_columns("addr", addrs))


def _columns(rows: Sequence[tuple], width: int) -> tuple:
    """Rows of `width` values -> `width` columns, also when there are no rows."""
    return tuple(zip(*rows)) if rows else ((),) * width


def fe_key(k: FrontendKey):
    return frontend_keys([k])


def be_key(svc_id: int, ordinal: int, gen: int = 0):
    return backend_keys([svc_id], [ordinal], [gen])


def svc_ip_key(addr: str):
    return service_ip_keys([addr])


def src_range_key(svc_id: int, cidr: str):
    return src_range_keys([(svc_id, cidr)])


def read_contents(maps: Maps) -> MapContents:
    contents = MapContents()
    for k, v in maps.nat_fe.items():
        key = FrontendKey(addr_text(k.addr6, k.family), port_int(k.port), k.proto)
        contents.frontends[key] = Frontend(v.id, v.count, v.local, v.flags, v.owner)
        contents.generations[key] = v.gen
    for k, v in maps.nat_be.items():
        contents.slots[(k.id, k.gen, k.ordinal)] = Backend(addr_text(v.addr6, v.family), port_int(v.port))
    contents.service_ips = {addr_text(k.addr6, k.family) for k, _ in maps.svc_ips.items()}
    for k, _ in maps.src_ranges.items():
        contents.src_ranges.setdefault(k.id, set()).add(f"{addr_text(k.addr6, k.family)}/{k.prefixlen - C.SRC_RANGE_PREFIX_BASE}")
    contents.affinity = maps.affinity_svc.nonzero_u32()
    for k, v in maps.affinity_be.items():
        contents.affinity_members.setdefault(k.svc_id, {})[Backend(addr_text(k.addr6, k.family), port_int(k.port))] = v[0]
    return contents


_NO_MEMBERS: dict = {}   # never written


def _members(backends: tuple) -> dict[Backend, int]:
    """Backend -> its ordinal in a service port's list."""
    return {backend: ordinal for ordinal, backend in enumerate(backends)}


def _prefix_of_each_other(a: tuple, b: tuple) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


@dataclass
class _Plan:
    """What a sync does to the slots, decided before it writes anything."""
    gen: dict[int, int] = field(default_factory=dict)               # id -> the generation its frontends will read
    writes: list[tuple[int, int, int, Backend]] = field(default_factory=list)   # (id, gen, ordinal, backend)
    # After the frontends: (id, gen) -> from which ordinal on its slots go (0: the whole generation)
    deletes: dict[tuple[int, int], int] = field(default_factory=dict)
    new_ids: list[int] = field(default_factory=list)                # counters to zero first

    def of(self, ids: set[int]) -> "_Plan":
        return _Plan({i: g for i, g in self.gen.items() if i in ids}, [w for w in self.writes if w[0] in ids],
                     {k: o for k, o in self.deletes.items() if k[0] in ids}, [i for i in self.new_ids if i in ids])


class MapWriter:
    def __init__(self, maps: Maps):
        self.maps = maps
        self._read()

    def _read(self) -> None:
        """The mirror, from what the maps hold now."""
        contents = read_contents(self.maps)
        self.frontends: dict[FrontendKey, Frontend] = contents.frontends
        self.generations: dict[FrontendKey, int] = contents.generations
        self.slots: dict[int, dict[int, tuple[Backend | None, ...]]] = contents.slots_by_id()
        self.service_ips: set[str] = contents.service_ips
        self.src_ranges: dict[int, set[str]] = contents.src_ranges
        self.affinity: dict[int, int] = contents.affinity
        self.affinity_members: dict[int, dict[Backend, int]] = contents.affinity_members
        self.frontends_of: dict[int, set[FrontendKey]] = {}
        for key, frontend in self.frontends.items():
            self.frontends_of.setdefault(frontend.svc_id, set()).add(key)
        self.addr_bits = AddressBits(self.maps.svc_addr_bits, [*(key.addr for key in self.frontends), *self.service_ips])
        self.compared_whole = False   # set by the first full comparison

    # --- what the maps hold, for others -------------------------------------------------------
    @property
    def backends(self) -> dict[int, tuple[Backend | None, ...]]:
        """id -> the backend list its frontends read (the collector counts these)."""
        return {svc_id: gens[self._gen_read(svc_id)] if self._gen_read(svc_id) in gens else ()
                for svc_id, gens in self.slots.items()}

    def ids_in_maps(self) -> set[int]:
        """Every id an entry of the NAT maps names."""
        return {*self.slots, *self.frontends_of, *self.src_ranges, *self.affinity, *self.affinity_members}

    def id_hints(self) -> dict[FrontendKey, tuple[int, int]]:
        """frontend -> (id, owner tag): what a restarted tracker takes ids back from."""
        return {key: (f.svc_id, f.owner) for key, f in self.frontends.items()}

    def _gen_read(self, svc_id: int) -> int | None:
        """The generation the id's frontends read when they agree on one; None otherwise."""
        gens = {self.generations[k] for k in self.frontends_of.get(svc_id, ())}
        return gens.pop() if len(gens) == 1 else None

    # --- a sync ---------------------------------------------------------------------------------
    def apply(self, desired: DesiredState, changes: Changes | None = None) -> WriteStats:
        if changes is None or changes.full or not self.compared_whole:
            if changes is not None and changes.full and self.compared_whole:
                self._read()   # a full list: what the maps really hold now, not what we think they do
            changes = Changes(set(desired.backends.keys() | self.ids_in_maps()),
                              set(desired.frontends.keys() | self.frontends.keys()),
                              set(desired.service_ips | self.service_ips),
                              src_range_ids=set(desired.src_ranges.keys() | self.src_ranges.keys()), full=True)
        stats = WriteStats()
        gone_frontends = [key for key in changes.frontends if key not in desired.frontends and key in self.frontends]
        changed_frontends = [key for key in changes.frontends if key in desired.frontends
                             and self._differs(key, desired.frontends[key])]
        plan = self._plan(desired, changes, changed_frontends, stats)
        # A frontend whose list moves to another generation is rewritten even when its value is the same.
        moving = {i for i, g in plan.gen.items() if any(self.generations[k] != g for k in self.frontends_of.get(i, ()))}
        if moving:
            seen = set(changed_frontends)
            changed_frontends += [k for i in moving for k in self.frontends_of[i]
                                  if k not in seen and k in desired.frontends and desired.frontends[k].svc_id == i]

        # Which of the changed ids serve UDP, from frontends the sync looks at anyway: only their
        # removed backends make the agent scan conntrack.
        udp_ids = {f.svc_id for key in changes.frontends if key.proto == 17
                   for f in (self.frontends.get(key), desired.frontends.get(key)) if f is not None}

        if changes.full and (gone_frontends or plan.deletes):
            log.info("compared whole with the maps: %d frontends and the slots of %d ids to delete, e.g. %s",
                     len(gone_frontends), len({i for i, _ in plan.deletes}),
                     ", ".join(f"{k.addr}:{k.port}/{k.proto}" for k in sorted(gone_frontends)[:5]) or
                     ", ".join(f"id {i} generation {g}" for i, g in sorted(plan.deletes)[:5]))
        stats.deleted += self._delete_frontends(gone_frontends)                                    # 1
        stats.deleted += self._delete_unreached(desired, changes)                                  # 2
        timeouts, members_gone, members_new = self._affinity_diff(desired, changes)
        off = [(svc_id, 0) for svc_id, timeout in timeouts if not timeout]
        stats.written += self._write_timeouts(off)
        stats.deleted += self._delete_members(members_gone)
        stats.affinity_left = {svc_id for svc_id, _ in off} | {svc_id for svc_id, _ in members_gone}
        ranges_added, ranges_gone = self._range_diff(desired, changes)
        addresses = [addr for addr in changes.service_ips
                     if addr in desired.service_ips and addr not in self.service_ips]
        new_addrs = [*(key.addr for key in changed_frontends if key not in self.frontends), *addresses]
        stats.written += self._write_ranges(ranges_added) + self._zero_counters(plan.new_ids)      # 3
        try:
            stats.written += self._write_slots(plan.writes)
            one_at_a_time = False
        except BPFError as err:
            if err.errno not in FULL_MAP:
                raise
            log.warning("a map is too full for this sync's writes beside what they replace (%s): "
                        "writing one service port at a time", err)
            one_at_a_time = True
        stats.written += self._write_members(members_new)
        stats.written += self._write_timeouts([(svc_id, timeout) for svc_id, timeout in timeouts if timeout])
        stats.written += self.addr_bits.add(new_addrs)                                              # 4
        if one_at_a_time:
            self._one_id_at_a_time(desired, changed_frontends, plan, stats)
        else:
            stats.written += self._write_frontends(changed_frontends, desired, plan.gen)             # 5
            stats.deleted += self._delete_slots(plan.deletes)                                       # 7
        stats.written += self._write_service_ips(addresses)                                       # 6
        gone_addresses = [addr for addr in changes.service_ips
                          if addr not in desired.service_ips and addr in self.service_ips]
        stats.deleted += self._delete_service_ips(gone_addresses) + self._delete_ranges(ranges_gone)   # 8
        stats.written += self.addr_bits.remove([*(key.addr for key in gone_frontends), *gone_addresses])   # 9
        self.compared_whole = True
        stats.removed_udp_backends = {(i, b) for i, b in stats.removed_backends if i in udp_ids}
        return stats

    def _differs(self, key: FrontendKey, want: Frontend) -> bool:
        have = self.frontends.get(key)
        return have is None or have != want or have.owner != want.owner

    def _plan(self, desired: DesiredState, changes: Changes, changed_frontends: list[FrontendKey],
              stats: WriteStats) -> _Plan:
        plan = _Plan()
        ids = set(changes.ids)
        ids.update(desired.frontends[k].svc_id for k in changed_frontends)
        for svc_id in ids:
            want = desired.backends.get(svc_id)
            gens = self.slots.get(svc_id, {})
            if want is None:   # gone: every slot, once no frontend reads it (step 2 or 7)
                plan.deletes.update({(svc_id, gen): 0 for gen in gens})
                read = self._gen_read(svc_id)
                if read is not None and gens.get(read):
                    stats.removed_backends |= {(svc_id, b) for b in gens[read] if b is not None}
                continue
            if svc_id not in self.frontends_of and not gens and svc_id not in self.src_ranges:
                plan.new_ids.append(svc_id)   # new to the maps: its counters start from zero
            if svc_id in self.frontends_of:   # an empty list has no slots: () in the generation read
                read = self._gen_read(svc_id)
                have = gens.get(read, ()) if read is not None else None
            else:
                read = min(gens) if len(gens) == 1 else None
                have = gens.get(read)
            if have is not None:
                stats.removed_backends |= {(svc_id, b) for b in set(have) - set(want) if b is not None}
            if have is not None and None not in have and _prefix_of_each_other(have, want):
                # In place: slots added at the end first, those beyond the new length after.
                plan.gen[svc_id] = read
                plan.writes += [(svc_id, read, o, want[o]) for o in range(len(have), len(want))]
                if len(want) < len(have):
                    plan.deletes[(svc_id, read)] = len(want)
            else:
                in_use = {self.generations[k] for k in self.frontends_of.get(svc_id, ())} | gens.keys()
                gen = next(g for g in range(len(in_use) + 1) if g not in in_use)
                plan.gen[svc_id] = gen
                plan.writes += [(svc_id, gen, o, b) for o, b in enumerate(want)]
            plan.deletes.update({(svc_id, g): 0 for g in gens if g != plan.gen[svc_id]})
        return plan

    def _one_id_at_a_time(self, desired: DesiredState, changed_frontends: list[FrontendKey], plan: _Plan,
                          stats: WriteStats) -> None:
        """The sync's steps 3, 5 and 7 for one id after the other: room for one second generation at a
        time (what the failed batch wrote is written again)."""
        by_id: dict[int, list[FrontendKey]] = {}
        for key in changed_frontends:
            by_id.setdefault(desired.frontends[key].svc_id, []).append(key)
        def room_taken(svc_id: int) -> tuple[int, int]:   # those that free room first
            freed = sum(len(self.slots.get(i, {}).get(g, ())) - start for (i, g), start in plan.deletes.items() if i == svc_id)
            return sum(1 for w in plan.writes if w[0] == svc_id) - freed, svc_id

        for svc_id in sorted(plan.gen.keys() | by_id.keys(), key=room_taken):
            part = plan.of({svc_id})
            frontends = by_id.get(svc_id, [])
            try:
                stats.written += self._write_slots(part.writes)
            except BPFError as err:
                if err.errno not in FULL_MAP:
                    raise
                stats.written += self._in_place(svc_id, desired, frontends, stats)
                continue
            stats.written += self._write_frontends(frontends, desired, part.gen)
            stats.deleted += self._delete_slots(part.deletes)
        # Ids gone whose slots waited for a frontend moving to another id.
        stats.deleted += self._delete_slots({k: o for k, o in plan.deletes.items() if k[0] not in desired.backends})

    def _in_place(self, svc_id: int, desired: DesiredState, frontends: list[FrontendKey], stats: WriteStats) -> int:
        """No room for a second generation even alone: the list is rewritten over the one in use."""
        gen = self._gen_read(svc_id)
        if gen is None or gen not in self.slots.get(svc_id, {}):
            gen = min(self.slots.get(svc_id, {0: ()}))
        want = desired.backends[svc_id]
        log.warning("service port id %d: no room for its %d backends beside the %d they replace; rewritten in "
                    "place (a packet may meet the old count with new slots meanwhile)", svc_id, len(want),
                    len(self.slots.get(svc_id, {}).get(gen, ())))
        stats.deleted += self._delete_slots({(svc_id, g): 0 for g in list(self.slots.get(svc_id, {})) if g != gen})
        written = self._write_slots([(svc_id, gen, o, b) for o, b in enumerate(want)])
        written += self._write_frontends(frontends, desired, {svc_id: gen})
        stats.deleted += self._delete_slots({(svc_id, gen): len(want)})
        return written

    def _delete_unreached(self, desired: DesiredState, changes: Changes) -> int:
        """Slots of gone ids no frontend in the maps reads any more (early: room for what comes). A pass
        over the frontends only when there are some: hashing every key was 6 of a one-service sync's
        9 ms at 10k services."""
        gone = [i for i in changes.ids if i not in desired.backends and i in self.slots and not self.frontends_of.get(i)]
        return self._delete_slots({(i, g): 0 for i in gone for g in self.slots[i]})

    # --- map operations, each keeping the mirror equal to what it did ---------------------------
    def _write_slots(self, writes: list[tuple[int, int, int, Backend]]) -> int:
        if not writes:
            return 0
        ids, gens, ordinals, backends = _columns(writes, 4)
        try:
            self.maps.nat_be.update_many(backend_keys(ids, ordinals, gens), backend_values(backends))
        except BPFError:
            # A batch stops where the map is full, some written: the mirror takes them all, so the
            # deletes that follow remove what went in.
            self._remember_slots(writes)
            raise
        self._remember_slots(writes)
        return len(writes)

    def _remember_slots(self, writes: list[tuple[int, int, int, Backend]]) -> None:
        grown: dict[tuple[int, int], dict[int, Backend]] = {}
        for svc_id, gen, ordinal, backend in writes:
            grown.setdefault((svc_id, gen), {})[ordinal] = backend
        for (svc_id, gen), new in grown.items():
            old = self.slots.setdefault(svc_id, {}).get(gen, ())
            if not old and len(new) == max(new) + 1:   # a whole new list: the cold start's case
                self.slots[svc_id][gen] = tuple(new[o] for o in range(len(new)))
                continue
            length = max(len(old), max(new) + 1)
            self.slots[svc_id][gen] = tuple(new.get(o, old[o] if o < len(old) else None) for o in range(length))

    def _delete_slots(self, deletes: dict[tuple[int, int], int]) -> int:
        """Of each (id, generation), the slots from the given ordinal on."""
        doomed = [(svc_id, gen, ordinal) for (svc_id, gen), start in deletes.items()
                  for have in (self.slots.get(svc_id, {}).get(gen),) if have is not None
                  for ordinal in range(start, len(have)) if have[ordinal] is not None]
        ids, gens, ordinals = _columns(doomed, 3)
        deleted = self.maps.nat_be.delete_many(backend_keys(ids, ordinals, gens)) if doomed else 0
        for (svc_id, gen), start in deletes.items():
            have = self.slots.get(svc_id, {}).get(gen)
            if have is None:
                continue
            if start:
                self.slots[svc_id][gen] = have[:start]
            else:
                del self.slots[svc_id][gen]
                if not self.slots[svc_id]:
                    del self.slots[svc_id]
        return deleted

    def _write_frontends(self, keys: list[FrontendKey], desired: DesiredState, gens: dict[int, int]) -> int:
        if not keys:
            return 0
        values = [desired.frontends[key] for key in keys]
        key_gens = [gens[f.svc_id] if f.svc_id in gens else self._gen_read(f.svc_id) or 0 for f in values]
        self.maps.nat_fe.update_many(frontend_keys(keys), frontend_values(values, key_gens))
        for key, value, gen in zip(keys, values, key_gens):
            old = self.frontends.get(key)
            if old is not None and old.svc_id != value.svc_id:
                self._unindex(key, old.svc_id)
            self.frontends[key] = value
            self.generations[key] = gen
            self.frontends_of.setdefault(value.svc_id, set()).add(key)
        return len(keys)

    def _delete_frontends(self, keys: list[FrontendKey]) -> int:
        for key in keys:
            self.maps.nat_fe.delete(fe_key(key))
            self._unindex(key, self.frontends.pop(key).svc_id)
            del self.generations[key]
        return len(keys)

    def _unindex(self, key: FrontendKey, svc_id: int) -> None:
        keys = self.frontends_of[svc_id]
        keys.discard(key)
        if not keys:
            del self.frontends_of[svc_id]

    def _zero_counters(self, ids: list[int]) -> int:
        """Per-service counters of ids new to the maps start from zero (an id freed from quarantine
        had another owner)."""
        counters = self.maps.svc_counters
        ids = [i for i in ids if i < counters.max_entries]
        if ids:
            counters.update_many(ffi.new("__u32[]", ids), ffi.new("struct svc_counters[]", len(ids) * counters.ncpus))
        return len(ids)

    def _write_service_ips(self, addresses: list[str]) -> int:
        self.maps.svc_ips.update_many(service_ip_keys(addresses), ffi.new("struct svc_ip_value[]", len(addresses)))
        self.service_ips.update(addresses)
        return len(addresses)

    def _delete_service_ips(self, addresses: list[str]) -> int:
        for addr in addresses:
            self.maps.svc_ips.delete(svc_ip_key(addr))
            self.service_ips.discard(addr)
        return len(addresses)

    def _write_ranges(self, ranges: list[tuple[int, str]]) -> int:
        """Before the frontends that check them: a new LB frontend never drops an allowed client."""
        self.maps.src_ranges.update_many(src_range_keys(ranges), ffi.new("__u32[]", [1] * len(ranges)))
        for svc_id, cidr in ranges:
            self.src_ranges.setdefault(svc_id, set()).add(cidr)
        return len(ranges)

    def _delete_ranges(self, ranges: list[tuple[int, str]]) -> int:
        for svc_id, cidr in ranges:
            self.maps.src_ranges.delete(src_range_key(svc_id, cidr))
            self.src_ranges[svc_id].discard(cidr)
            if not self.src_ranges[svc_id]:
                del self.src_ranges[svc_id]
        return len(ranges)

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

    def _write_timeouts(self, timeouts: list[tuple[int, int]]) -> int:
        if not timeouts:
            return 0
        ids, seconds = _columns(timeouts, 2)
        self.maps.affinity_svc.update_many(ffi.new("__u32[]", list(ids)),
                                           struct_array("struct affinity_svc", len(timeouts), timeout_s=seconds))
        for svc_id, timeout in timeouts:
            if timeout:
                self.affinity[svc_id] = timeout
            else:
                self.affinity.pop(svc_id, None)
        return len(timeouts)

    def _write_members(self, members: list[tuple[int, Backend, int]]) -> int:
        if not members:
            return 0
        self.maps.affinity_be.update_many(affinity_member_keys([(i, b) for i, b, _ in members]),
                                          ffi.new("__u32[]", [ordinal for _, _, ordinal in members]))
        for svc_id, backend, ordinal in members:
            self.affinity_members.setdefault(svc_id, {})[backend] = ordinal
        return len(members)

    def _delete_members(self, members: list[tuple[int, Backend]]) -> int:
        for svc_id, backend in members:
            self.maps.affinity_be.delete(affinity_member_keys([(svc_id, backend)]))
            have = self.affinity_members[svc_id]
            del have[backend]
            if not have:
                del self.affinity_members[svc_id]
        return len(members)

    def _range_diff(self, desired: DesiredState, changes: Changes):
        added, gone = [], []
        for svc_id in changes.src_range_ids:
            have, want = self.src_ranges.get(svc_id, set()), set(desired.src_ranges.get(svc_id, ()))
            added += [(svc_id, cidr) for cidr in want - have]
            gone += [(svc_id, cidr) for cidr in have - want]
        return added, gone
