"""Service ids: what survives an agent restart, and when an id may change hands.

An id names a service port's backend slots, source ranges, per-service counters, and the conntrack
entries of its flows. So it is given back to its service port after a restart (the maps remember it,
keyed by frontend, with the owner's name hashed beside it), and given to another one only once
nothing refers to it any more: a deleted Service's flows still in conntrack would otherwise be
counted into the new owner, and its frontends, if any were left, would forward to the new owner's
backends.
"""
import zlib
from collections.abc import Iterable, Mapping

from ebpflb.core.model import DesiredState, Frontend, FrontendKey, ServicePortName

# A flow's program may still be between its frontend lookup and its conntrack write when the writer
# deletes the frontend (BPF programs run in RCU read sections, microseconds long): a conntrack scan
# proves an id unused only if it began this long after the maps stopped naming it.
GRACE_S = 1.0


def owner_tag(name: ServicePortName) -> int:
    """The service port's name, hashed to 32 bits (nat_fe_value.owner); never 0, which means none.
    IPv4's text is the one from before families: the tags in the maps stay valid over the upgrade."""
    text = f"{name.namespace}/{name.name}/{name.port}/{name.protocol}"
    return zlib.crc32((text if name.family == 4 else f"{text}/IPv6").encode()) or 1


def recover_ids(desired: DesiredState, programmed: Mapping[FrontendKey, tuple[int, int]]) -> dict[ServicePortName, int]:
    """Ids the maps already use for the desired service ports.

    `desired` was computed without known ids; `programmed` maps each frontend in the maps to (id,
    owner tag). A service port takes back the id its frontends carry when they agree on one and
    were written for it (owner_tag): a Service deleted while the agent was away and another created
    on its address do not share an id. Ids claimed twice go to the first claimant in name order, the
    other gets a fresh id later.
    """
    frontends_of: dict[int, list[FrontendKey]] = {}
    for key, frontend in desired.frontends.items():
        frontends_of.setdefault(frontend.svc_id, []).append(key)
    recovered: dict[ServicePortName, int] = {}
    taken: set[int] = set()
    for name in sorted(desired.ids):
        old = {programmed[k] for k in frontends_of.get(desired.ids[name], ()) if k in programmed}
        if len(old) == 1:
            svc_id, owner = old.pop()
            if owner == owner_tag(name) and svc_id not in taken:
                recovered[name] = svc_id
                taken.add(svc_id)
    return recovered


def remap_ids(desired: DesiredState, wanted: Mapping[ServicePortName, int],
              reserved: frozenset[int] | set[int] = frozenset()) -> DesiredState:
    """The same state with `wanted` ids where given; every other name keeps its id unless that id
    is wanted by someone else, then it takes the smallest id nobody holds and `reserved` leaves
    free. Cheap: no recompute."""
    final = dict(wanted)
    held = set(final.values())
    free = (i for i in range(1, 1 << 31) if i not in held and i not in reserved)
    for name in sorted(desired.ids):
        if name not in final:
            own = desired.ids[name]
            final[name] = own if own not in held else next(free)
            held.add(final[name])
    old_to_new = {desired.ids[name]: final[name] for name in desired.ids}
    return DesiredState(
        frontends={k: Frontend(old_to_new[f.svc_id], f.count, f.local, f.flags, f.owner)
                   for k, f in desired.frontends.items()},
        backends={old_to_new[i]: b for i, b in desired.backends.items()},
        service_ips=desired.service_ips,
        ids={name: final[name] for name in desired.ids},
        rejected=list(desired.rejected),
        src_ranges={old_to_new[i]: r for i, r in desired.src_ranges.items()},
        health_checks=dict(desired.health_checks),
        affinity={old_to_new[i]: t for i, t in desired.affinity.items()},
        service_ips_by_service=dict(desired.service_ips_by_service))


class IdQuarantine:
    """Ids no service port holds, that something may still refer to: never handed out.

    An id enters when its service port leaves the desired state, or at start when the maps or
    conntrack name it and no service port takes it back. It is stamped once a sync has removed it
    from the maps (`written`), and leaves when a conntrack scan that began GRACE_S after the stamp
    did not see it (`release`). Pure: the caller gives the times.
    """

    def __init__(self, held: Iterable[int] = ()):
        self.held: dict[int, float | None] = dict.fromkeys(held)   # id -> when the maps stopped naming it

    def __contains__(self, svc_id: int) -> bool:
        return svc_id in self.held

    def __len__(self) -> int:
        return len(self.held)

    def ids(self) -> set[int]:
        return set(self.held)

    def hold(self, ids: Iterable[int]) -> None:
        """These ids left their service ports; the maps may still name them until the next sync."""
        for svc_id in ids:
            self.held[svc_id] = None

    def take_back(self, svc_id: int) -> None:
        """Its own service port took it back (a restart): in use again, not waiting."""
        self.held.pop(svc_id, None)

    def written(self, now: float) -> None:
        """A sync completed at `now`: the maps name none of the held ids any more."""
        for svc_id, stamp in self.held.items():
            if stamp is None:
                self.held[svc_id] = now

    def release(self, seen: Iterable[int], scan_started: float) -> set[int]:
        """A conntrack scan that began at `scan_started` saw the ids `seen`: the others held long enough
        before it are free again. Returns them."""
        seen = set(seen)
        free = {svc_id for svc_id, stamp in self.held.items()
                if stamp is not None and stamp + GRACE_S <= scan_started and svc_id not in seen}
        for svc_id in free:
            del self.held[svc_id]
        return free
