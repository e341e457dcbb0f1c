"""The change tracker: Kubernetes objects come and go one at a time (watch events, a changed
manifest); it keeps the desired map contents up to date by recomputing only the services they
touch, and says which ids, frontends, service addresses and source ranges changed (and whether a
health check did) so the writer looks at those only. Of each object it keeps what the core read
of it (parse_service, parse_slice), not the API object. Pure: no I/O, no clock.

Its first flush, and the first after a full list (a relist, the manifests read again), says
`full`: the writer then compares everything the maps hold with the desired state, not only what
changed, and deletes the rest (what a Service deleted while no agent ran left behind). Ids that
leave their service port wait in quarantine (core/ids.py) until nothing refers to them.
"""
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ebpflb.core.ids import IdQuarantine, recover_ids, remap_ids
from ebpflb.core.model import DesiredState, FrontendKey, HealthCheck, Rejected, ServicePortName, family_of
from ebpflb.core.services import (MAP_CAPACITY, SERVICE_NAME_LABEL, Usage, desired_state, no_room, node_port_addresses,
                       parse_service, parse_slice)

ObjectKey = tuple[str, str]   # (namespace, name)

# Past this many dirty services one pass over everything is quicker than one call per service.
BULK_RECOMPUTE = 256
# A service rejected for one of these is fine itself: it is tried again when something is freed.
TURNED_AWAY = frozenset({"duplicate_frontend", "duplicate_health_check_port", "no_free_id", "map_full"})
_EMPTY: dict = {}   # never written


@dataclass
class Changes:
    ids: set[int] = field(default_factory=set)
    frontends: set[FrontendKey] = field(default_factory=set)
    service_ips: set[str] = field(default_factory=set)
    src_range_ids: set[int] = field(default_factory=set)   # ids whose source ranges came, went or changed
    health_checks: bool = False                            # some health check came, went or changed
    full: bool = False   # a full list came in (or this is the first flush): compare everything in the maps

    def __bool__(self) -> bool:
        """Whether something changed (`full` asks for a comparison, it is no change itself)."""
        return bool(self.ids or self.frontends or self.service_ips or self.src_range_ids or self.health_checks)

    def add(self, part: "Contribution") -> None:
        # update(), not |=: `set |= dict_keys` builds a new set each time (quadratic at 10k services)
        self.ids.update(part.ids.values())
        self.frontends.update(part.frontends)
        self.service_ips.update(part.service_ips)

    def compare(self, old: "Contribution | None", new: "Contribution | None") -> None:
        """Note the source ranges and health checks that differ between a service's old and new part
        (ids, frontends and addresses are reported whole by add(); these are compared, so a slice
        change of a service with ranges does not send the writer to its ranges)."""
        old_ranges = old.src_ranges if old is not None else _EMPTY
        new_ranges = new.src_ranges if new is not None else _EMPTY
        if old_ranges or new_ranges:
            self.src_range_ids.update(i for i in old_ranges.keys() | new_ranges.keys()
                                      if old_ranges.get(i) != new_ranges.get(i))
        old_checks = old.health_checks if old is not None else _EMPTY
        new_checks = new.health_checks if new is not None else _EMPTY
        if (old_checks or new_checks) and old_checks != new_checks:
            self.health_checks = True


@dataclass(slots=True)   # one per service, kept: no __dict__, and the rarely used dicts shared while empty
class Contribution:
    """What one Service puts into the maps. Its frontends' values and its backend lists are kept once, in
    the state (and in the DesiredState it was split from until it joins): here their keys only."""
    ids: dict[ServicePortName, int] = field(default_factory=dict)   # its backend lists: backends[id]
    frontends: tuple[FrontendKey, ...] = ()
    service_ips: tuple[str, ...] = ()
    backend_entries: int = 0                                          # nat_be entries its IPv4 lists take
    src_ranges: dict[int, frozenset[str]] = field(default_factory=lambda: _EMPTY)   # replaced, never written
    health_checks: dict[int, HealthCheck] = field(default_factory=lambda: _EMPTY)
    affinity: dict[int, int] = field(default_factory=lambda: _EMPTY)   # id -> session affinity timeout

    def usage(self, new_service_ips: int) -> Usage:
        """The map entries it takes (services.usage for a DesiredState): IPv4 ones, the only ones
        programmed yet; how many of its service addresses are new is the caller's to say."""
        v4_ids = {i for name, i in self.ids.items() if name.family == 4} if self.src_ranges else ()
        return Usage(sum(1 for key in self.frontends if key.family == 4), self.backend_entries, new_service_ips,
                     sum(len(ranges) for i, ranges in self.src_ranges.items() if i in v4_ids))


class Prepared(NamedTuple):
    """One object as the tracker keeps it: read when it arrives (prepare_service/prepare_slice, which a
    source may call outside the tracker's lock), the API object itself then dropped."""
    key: ObjectKey | None     # None: it cannot be known by key (then parsed is its Rejected)
    owner: ObjectKey | None   # an EndpointSlice's service, by its label; None for a Service
    parsed: object            # parse_service()/parse_slice()'s result


def object_key(obj) -> ObjectKey | None:
    """(namespace or "", name); None when the name is not text or the namespace is neither text nor
    absent (a list is no dict key; a number does not sort with names: YAML's `namespace: 2024`)."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    namespace = meta.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        return None
    return (namespace or "", meta["name"])


def owning_service(slice_obj) -> ObjectKey | None:
    key = object_key(slice_obj)
    labels = slice_obj.get("metadata", {}).get("labels") if key else None
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    return (key[0], service) if isinstance(service, str) else None


class ServiceTracker:
    def __init__(self, node_name: str, proxy_name: str | None = None,
                 id_hints: dict[FrontendKey, tuple[int, int]] | None = None, node_addresses: Sequence[str] = (),
                 nodeport_cidrs: Sequence[str] = (), capacity: Usage = MAP_CAPACITY, held_ids: Iterable[int] = (),
                 node_zone: str = ""):
        """A restart passes what the maps hold: `id_hints`, frontend -> (id, owner tag), and `held_ids`,
        every id the maps or conntrack name (those no service port takes back wait in quarantine)."""
        self.node_name = node_name
        self.node_zone = node_zone   # topology.kubernetes.io/zone of this node, "" without
        self.capacity = capacity   # the maps' sizes: a service that does not fit is turned away whole
        self.proxy_name = proxy_name
        self.id_hints = dict(id_hints or {})   # frontend -> (id, owner) the maps already use (restart)
        self.quarantine = IdQuarantine(held_ids)
        self.full = True   # the next flush is the first, or follows a full list
        self.nodeport_cidrs = tuple(nodeport_cidrs)
        self.node_addresses = tuple(node_addresses)
        node_port_addresses(self.node_addresses, self.nodeport_cidrs)   # ValueError now, not at the first flush
        self.services: dict[ObjectKey, object] = {}   # key -> parse_service()'s result
        self.slices: dict[ObjectKey, object] = {}     # key -> parse_slice()'s result
        self.slice_owners: dict[ObjectKey, ObjectKey] = {}
        # owner -> its slices' keys, sorted; a tuple, not a set: one slice per service is the rule
        self.slices_of: dict[ObjectKey, tuple[ObjectKey, ...]] = {}
        self.contributions: dict[ObjectKey, Contribution] = {}
        self.rejected_by_service: dict[ObjectKey, list[Rejected]] = {}
        self.turned_away: set[ObjectKey] = set()   # services rejected for a TURNED_AWAY reason
        # Objects without a key cannot be changed or deleted by key: they are named until the next full
        # list of their kind.
        self.unkeyed: dict[str, list[Rejected]] = {"Service": [], "EndpointSlice": []}
        self.state = DesiredState()
        self.ip_refs: Counter[str] = Counter()
        self.backend_entries = 0   # nat_be entries and src_ranges entries the state takes (map_full)
        self.range_entries = 0
        # IPv6 frontends and service addresses in the state: they take no room in the IPv4-only maps yet
        self.v6_frontends = 0
        self.v6_service_ips = 0
        self.dirty: set[ObjectKey] = set()

    # --- what happened -------------------------------------------------------------------
    def set_node_addresses(self, addresses: Sequence[str]) -> None:
        """The node's addresses changed (uplink or Node object): every service is planned again when
        the addresses NodePorts are served on differ (a service rejected for a frontend on an address
        that went away may now fit)."""
        addresses = tuple(addresses)
        new = node_port_addresses(addresses, self.nodeport_cidrs)
        old = node_port_addresses(self.node_addresses, self.nodeport_cidrs)
        changed = {family_of(a) for a in set(new) ^ set(old)} | ({4, 6} if new != old and set(new) == set(old) else set())
        if 4 in changed:
            self.dirty.update(self.services)
        elif 6 in changed:   # only the services served in IPv6 have frontends on IPv6 node addresses
            self.dirty.update(key for key, service in self.services.items()
                              if any(":" in ip for ip in getattr(service, "cluster_ips", ())))
        self.node_addresses = addresses

    def set_node_zone(self, zone: str) -> None:
        """This node's zone label changed: the services whose slices carry topology hints are planned
        again (no other service depends on it)."""
        if zone == self.node_zone:
            return
        self.node_zone = zone
        self.dirty.update(owner for key, owner in self.slice_owners.items()
                          if getattr(self.slices[key], "hints", None) is not None and owner in self.services)

    def prepare_service(self, obj) -> Prepared:
        """Pure, and reads nothing the tracker changes: callable outside its lock."""
        return Prepared(object_key(obj), None, parse_service(obj, self.proxy_name))

    def prepare_slice(self, obj) -> Prepared:
        return Prepared(object_key(obj), owning_service(obj) or ("", ""), parse_slice(obj))

    def set_service(self, obj) -> None:
        """`obj`: an API object, or prepare_service()'s result for one."""
        key, _, parsed = obj if isinstance(obj, Prepared) else self.prepare_service(obj)
        if key is None:
            self.unkeyed["Service"].append(parsed)   # always a Rejected
            return
        # A change the maps cannot see (resourceVersion, annotations, ...) leaves it clean.
        if self.services.get(key) != parsed:
            self.services[key] = parsed
            self.dirty.add(key)

    def delete_service(self, key: ObjectKey) -> None:
        if self.services.pop(key, None) is not None:
            self.dirty.add(key)

    def set_slice(self, obj) -> None:
        """`obj`: an API object, or prepare_slice()'s result for one."""
        key, owner, parsed = obj if isinstance(obj, Prepared) else self.prepare_slice(obj)
        if key is None:
            self.unkeyed["EndpointSlice"].append(parsed)   # always a Rejected
            return
        if key in self.slices and self.slices[key] == parsed and self.slice_owners[key] == owner:
            return
        self.delete_slice(key)
        self.slices[key] = parsed
        self.slice_owners[key] = owner
        self.slices_of[owner] = tuple(sorted((*self.slices_of.get(owner, ()), key)))
        self.dirty.add(owner)

    def delete_slice(self, key: ObjectKey) -> None:
        if self.slices.pop(key, None) is None:
            return
        owner = self.slice_owners.pop(key)
        siblings = tuple(k for k in self.slices_of[owner] if k != key)
        if siblings:
            self.slices_of[owner] = siblings
        else:
            del self.slices_of[owner]   # else every service name a slice ever named stays
        self.dirty.add(owner)

    def replace_all(self, services, slices) -> None:
        """A full list (start, relist after 410, manifests reread): sets, and deletes the rest."""
        self.replace_services(services)
        self.replace_slices(slices)

    def replace_services(self, services) -> None:
        """Each an API object or prepare_service()'s result."""
        self.full = True
        self.unkeyed["Service"] = []
        seen = set()
        for obj in services:
            item = obj if isinstance(obj, Prepared) else self.prepare_service(obj)
            self.set_service(item)
            seen.add(item.key)
        for key in self.services.keys() - seen:
            self.delete_service(key)

    def replace_slices(self, slices) -> None:
        """Each an API object or prepare_slice()'s result."""
        self.full = True
        self.unkeyed["EndpointSlice"] = []
        seen = set()
        for obj in slices:
            item = obj if isinstance(obj, Prepared) else self.prepare_slice(obj)
            self.set_slice(item)
            seen.add(item.key)
        for key in self.slices.keys() - seen:
            self.delete_slice(key)

    # --- what the maps should hold -------------------------------------------------------------
    @property
    def rejected(self) -> list[Rejected]:
        return [*self.unkeyed["Service"], *self.unkeyed["EndpointSlice"],
                *(r for rs in self.rejected_by_service.values() for r in rs)]

    @property
    def needs_sync(self) -> bool:
        """Something changed, or a full list came in (which the maps are compared with whole)."""
        return bool(self.dirty) or self.full

    def flush(self) -> Changes:
        """Recompute what the changes since the last flush touched."""
        dirty, self.dirty = self.dirty, set()
        changes = Changes(full=self.full)
        self.full = False
        if len(dirty) > BULK_RECOMPUTE:
            self._recompute_all(changes)
        else:
            for key in sorted(dirty):
                self._recompute(key, changes)
            if changes and self.turned_away:
                # What a changed or deleted service held may be free now: the services turned away
                # for it get it (in name order), as the full computation would give it them.
                for key in sorted(self.turned_away):
                    self._recompute(key, changes)
        self.state.service_ips = frozenset(self.ip_refs)
        # Ids that left their service ports: nobody gets them until nothing refers to them.
        self.quarantine.hold(i for i in changes.ids if i not in self.state.backends)
        return changes

    def _reserved(self) -> frozenset[int]:
        """Ids a new service port may not take: held, or waiting in quarantine."""
        return frozenset(self.state.ids.values()) | self.quarantine.held.keys()

    def _slices_for(self, key: ObjectKey) -> list:
        return [self.slices[s] for s in self.slices_of.get(key, ())]

    def _withdraw(self, key: ObjectKey, changes: Changes) -> Contribution | None:
        old = self.contributions.pop(key, None)
        if old is None:
            return None
        for name in old.ids:
            del self.state.ids[name]
        for k in old.frontends:
            del self.state.frontends[k]
        for i in old.ids.values():
            del self.state.backends[i]
        for i in old.src_ranges:
            del self.state.src_ranges[i]
        for p in old.health_checks:
            del self.state.health_checks[p]
        for i in old.affinity:
            del self.state.affinity[i]
        self.ip_refs.subtract(old.service_ips)
        for ip in old.service_ips:   # drop zero counts (not `+= Counter()`: a new Counter of every address)
            if self.ip_refs[ip] <= 0:
                del self.ip_refs[ip]
                self.v6_service_ips -= ":" in ip
        self.v6_frontends -= _v6_count(old.frontends)
        entries = old.usage(0)
        self.backend_entries -= entries.backends
        self.range_entries -= entries.src_ranges
        changes.add(old)
        return old

    def _contribute(self, key: ObjectKey, part: Contribution, desired: DesiredState, changes: Changes) -> None:
        """`part` joins the state, with its values from `desired`, the state it was split from."""
        self.contributions[key] = part
        self.state.ids.update(part.ids)
        self.state.frontends.update((k, desired.frontends[k]) for k in part.frontends)
        self.state.backends.update((i, desired.backends[i]) for i in part.ids.values())
        if part.src_ranges:
            self.state.src_ranges.update(part.src_ranges)
        if part.health_checks:
            self.state.health_checks.update(part.health_checks)
        if part.affinity:
            self.state.affinity.update(part.affinity)
        self.v6_service_ips += sum(1 for ip in part.service_ips if ":" in ip and ip not in self.ip_refs)
        self.ip_refs.update(part.service_ips)
        self.v6_frontends += _v6_count(part.frontends)
        entries = part.usage(0)
        self.backend_entries += entries.backends
        self.range_entries += entries.src_ranges
        changes.add(part)

    def _contribute_all(self, parts: dict[ObjectKey, Contribution], desired: DesiredState, changes: Changes) -> None:
        """What _contribute does for each of `parts`, which split `desired` whole: the state's dicts
        take desired's at once (a tenth of a cold start's flush, part by part)."""
        self.contributions.update(parts)
        self.state.ids.update(desired.ids)
        self.state.frontends.update(desired.frontends)
        self.state.backends.update(desired.backends)
        self.state.src_ranges.update(desired.src_ranges)
        self.state.health_checks.update(desired.health_checks)
        self.state.affinity.update(desired.affinity)
        service_ips = [ip for part in parts.values() for ip in part.service_ips]
        self.ip_refs.update(service_ips)
        self.v6_service_ips = sum(1 for ip in self.ip_refs if ":" in ip)
        self.v6_frontends += sum(_v6_count(part.frontends) for part in parts.values())
        self.backend_entries += sum(part.backend_entries for part in parts.values())
        self.range_entries += sum(part.usage(0).src_ranges for part in parts.values() if part.src_ranges)
        changes.ids.update(desired.ids.values())
        changes.frontends.update(desired.frontends)
        changes.service_ips.update(service_ips)

    def _recompute(self, key: ObjectKey, changes: Changes) -> None:
        """Plan one service again; `changes` gets what differs from before, no more: a slice of one
        family changing leaves the other family's ids and frontends out (the writer looks at those)."""
        before = self.contributions.get(key)
        if before is None:
            self._replan(key, changes)
            return
        state = self.state
        old_frontends = {k: state.frontends[k] for k in before.frontends}
        old_lists = {i: (state.backends[i], state.affinity.get(i)) for i in before.ids.values()}
        mine = Changes()
        self._replan(key, mine)
        after = self.contributions.get(key)
        new_ips = after.service_ips if after is not None else ()
        changes.ids.update(i for i in mine.ids if old_lists.get(i) != (state.backends.get(i), state.affinity.get(i))
                           or (i in old_lists) != (i in state.backends))
        changes.frontends.update(k for k in mine.frontends if old_frontends.get(k) != state.frontends.get(k)
                                 or (k in old_frontends) != (k in state.frontends))
        changes.service_ips.update(ip for ip in mine.service_ips if (ip in before.service_ips) != (ip in new_ips))
        changes.src_range_ids |= mine.src_range_ids
        changes.health_checks |= mine.health_checks

    def _replan(self, key: ObjectKey, changes: Changes) -> None:
        old = self._withdraw(key, changes)
        self.rejected_by_service.pop(key, None)
        self.turned_away.discard(key)
        service = self.services.get(key)
        if service is None:
            # Nothing to program; the slices naming it are still checked, so a malformed one is named
            # now (as the full computation names it), not once its service shows up.
            if self.slices_of.get(key):
                self.rejected_by_service[key] = desired_state([], self._slices_for(key), node_name=self.node_name,
                                                              known_ids={}).rejected
            changes.compare(old, None)
            return
        reserved = self._reserved()
        desired = desired_state([service], self._slices_for(key), node_name=self.node_name,
                                known_ids=old.ids if old else {}, proxy_name=self.proxy_name,
                                reserved_ids=reserved,
                                node_addresses=self.node_addresses, nodeport_cidrs=self.nodeport_cidrs,
                                capacity=self.capacity, node_zone=self.node_zone)
        if old is None and self.id_hints:
            # Not an id a sync has since removed from the maps: nothing of it is left to take back.
            in_use = set(self.state.ids.values())
            hinted = {n: i for n, i in recover_ids(desired, self.id_hints).items()
                      if i not in in_use and self.quarantine.held.get(i) is None}
            if any(desired.ids[n] != i for n, i in hinted.items()):
                desired = remap_ids(desired, hinted, reserved)
        self.rejected_by_service[key] = list(desired.rejected)
        part = split(desired).get(key) or Contribution()
        turned_away = self._cannot_join(key, part)
        if turned_away:
            self.rejected_by_service[key].append(turned_away)
        if any(r.kind == "Service" and r.reason in TURNED_AWAY for r in self.rejected_by_service[key]):
            self.turned_away.add(key)
        if turned_away:
            changes.compare(old, None)
            return
        for svc_id in part.ids.values():
            self.quarantine.take_back(svc_id)   # a restart: its own service port took it back
        self._contribute(key, part, desired, changes)
        changes.compare(old, part)

    def _cannot_join(self, key: ObjectKey, part: Contribution) -> Rejected | None:
        """Why a service's part cannot join the others': what it names is held, or the maps are full."""
        taken = [k for k in part.frontends if k in self.state.frontends]
        if taken:
            return Rejected("Service", key[0], key[1], "duplicate_frontend",
                            f"{taken[0].addr}:{taken[0].port} belongs to another service")
        taken_ports = [p for p in part.health_checks if p in self.state.health_checks]
        if taken_ports:
            return Rejected("Service", key[0], key[1], "duplicate_health_check_port",
                            f"healthCheckNodePort {taken_ports[0]} belongs to another service")
        used = Usage(len(self.state.frontends) - self.v6_frontends, self.backend_entries,
                     len(self.ip_refs) - self.v6_service_ips, self.range_entries)
        new_ips = sum(1 for ip in part.service_ips if ip not in self.ip_refs and family_of(ip) == 4)
        full = no_room(used, part.usage(new_ips), self.capacity)
        return Rejected("Service", key[0], key[1], "map_full", full) if full else None

    def _recompute_all(self, changes: Changes) -> None:
        """Everything at once (start-up, relist): one pass of the core, then split per service."""
        previous = dict(self.state.ids)   # ids this process handed out stay put
        old_parts = {key: self._withdraw(key, changes) for key in list(self.contributions)}
        reserved = frozenset(self.quarantine.held)
        desired = desired_state(self.services.values(), self.slices.values(), node_name=self.node_name,
                                known_ids=previous, proxy_name=self.proxy_name, reserved_ids=reserved,
                                node_addresses=self.node_addresses, nodeport_cidrs=self.nodeport_cidrs,
                                capacity=self.capacity, node_zone=self.node_zone)
        if self.id_hints:
            # Restart: take back the ids the maps use, for names this process has not seen yet.
            held = set(previous.values())
            hinted = {n: i for n, i in recover_ids(desired, self.id_hints).items()
                      if n not in previous and i not in held and self.quarantine.held.get(i) is None}
            if any(desired.ids[n] != i for n, i in hinted.items()):
                desired = remap_ids(desired, {**hinted, **{n: desired.ids[n] for n in previous if n in desired.ids}},
                                    reserved)
        for svc_id in desired.ids.values():
            self.quarantine.take_back(svc_id)
        self.rejected_by_service = {}
        self.turned_away = set()
        for r in desired.rejected:
            self.rejected_by_service.setdefault(self._owner_of(r), []).append(r)
            if r.kind == "Service" and r.reason in TURNED_AWAY:
                self.turned_away.add((r.namespace, r.name))
        parts = split(desired)
        self._contribute_all(parts, desired, changes)
        for key in old_parts.keys() | parts.keys():
            changes.compare(old_parts.get(key), parts.get(key))

    def _owner_of(self, rejected: Rejected) -> ObjectKey:
        if rejected.kind == "Service":
            return (rejected.namespace, rejected.name)
        return self.slice_owners.get((rejected.namespace, rejected.name), ("", ""))


def _v6_count(frontends) -> int:
    return sum(1 for key in frontends if key.family == 6)


def split(desired: DesiredState) -> dict[ObjectKey, Contribution]:
    """Per Service, the part of a DesiredState it contributed."""
    parts: dict[ObjectKey, Contribution] = {}
    owner_of_id = {}

    def part_of(key: ObjectKey) -> Contribution:
        part = parts.get(key)
        if part is None:
            part = parts[key] = Contribution()
        return part

    for name, svc_id in desired.ids.items():
        key = (name.namespace, name.name)
        part = part_of(key)
        part.ids[name] = svc_id
        if name.family == 4:   # IPv6 lists are not programmed yet: they take no room
            part.backend_entries += len(desired.backends[svc_id])
        owner_of_id[svc_id] = key
    frontends_of: dict[ObjectKey, list[FrontendKey]] = {}
    for k, frontend in desired.frontends.items():
        frontends_of.setdefault(owner_of_id[frontend.svc_id], []).append(k)
    for key, frontends in frontends_of.items():
        parts[key].frontends = tuple(frontends)
    # From the core's record, not the frontends: a service without ports holds its address too.
    for key, addrs in desired.service_ips_by_service.items():
        part_of(key).service_ips = addrs
    for svc_id, ranges in desired.src_ranges.items():
        part = parts[owner_of_id[svc_id]]
        if part.src_ranges is _EMPTY:
            part.src_ranges = {}
        part.src_ranges[svc_id] = ranges
    for health_port, check in desired.health_checks.items():
        part = part_of((check.namespace, check.name))
        if part.health_checks is _EMPTY:
            part.health_checks = {}
        part.health_checks[health_port] = check
    for svc_id, timeout in desired.affinity.items():
        part = parts[owner_of_id[svc_id]]
        if part.affinity is _EMPTY:
            part.affinity = {}
        part.affinity[svc_id] = timeout
    return parts
