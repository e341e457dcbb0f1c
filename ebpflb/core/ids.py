"""Service ids survive agent restarts: the maps remember them, keyed by frontend."""
from collections.abc import Mapping

from ebpflb.core.model import DesiredState, Frontend, FrontendKey, ServicePortName


def recover_ids(desired: DesiredState, programmed: Mapping[FrontendKey, int]) -> dict[ServicePortName, int]:
    """Ids the maps already use for the desired service ports.

    `desired` was computed without known ids; `programmed` maps each frontend in the maps to its
    id. A service port takes back the id its frontends carry when they agree on one; ids claimed
    twice go to the first claimant in name order, the other gets a fresh id later.
    """
    frontends_of: dict[int, list[FrontendKey]] = {}
    for key, frontend in desired.frontends.items():
        frontends_of.setdefault(frontend.svc_id, []).append(key)
    recovered: dict[ServicePortName, int] = {}
    taken: set[int] = set()
    for name in sorted(desired.ids):
        old = {programmed[k] for k in frontends_of.get(desired.ids[name], ()) if k in programmed}
        if len(old) == 1 and (svc_id := old.pop()) not in taken:
            recovered[name] = svc_id
            taken.add(svc_id)
    return recovered


def remap_ids(desired: DesiredState, wanted: Mapping[ServicePortName, int]) -> DesiredState:
    """The same state with `wanted` ids where given; every other name keeps its id unless that id
    is wanted by someone else, then it takes the smallest id nobody holds. Cheap: no recompute."""
    final = dict(wanted)
    held = set(final.values())
    free = (i for i in range(1, 1 << 31) if i not in held)
    for name in sorted(desired.ids):
        if name not in final:
            own = desired.ids[name]
            final[name] = own if own not in held else next(free)
            held.add(final[name])
    old_to_new = {desired.ids[name]: final[name] for name in desired.ids}
    return DesiredState(
        frontends={k: Frontend(old_to_new[f.svc_id], f.count, f.local, f.flags) for k, f in desired.frontends.items()},
        backends={old_to_new[i]: b for i, b in desired.backends.items()},
        service_ips=desired.service_ips,
        ids={name: final[name] for name in desired.ids},
        rejected=list(desired.rejected),
        src_ranges={old_to_new[i]: r for i, r in desired.src_ranges.items()},
        health_checks=dict(desired.health_checks),
        affinity={old_to_new[i]: t for i, t in desired.affinity.items()},
        service_ips_by_service=dict(desired.service_ips_by_service))
