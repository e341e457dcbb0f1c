"""Service ids survive agent restarts: the maps remember them, keyed by frontend."""
from collections.abc import Mapping

from .model import DesiredState, FrontendKey, ServicePortName


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
