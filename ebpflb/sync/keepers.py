"""Who keeps each pinned map, and so what "the maps equal the cluster" means for it. Every map in
datapath/maps.py's MAP_LAYOUT is named here (tests/test_keepers.py fails for one that is not), so a
map added later is placed in the full reconcile by construction:

  DESIRED   its contents are computed from the desired state, and MapWriter makes them equal entry for
            entry (a full comparison at start, after a failed sync and after every relist deletes
            what is not desired); the property test compares each such map with the full computation
  FLOWS     the programs write an entry per flow (or host socket), naming a service id; entries
            outlive their service (an open connection keeps its translation, as with kube-proxy) and
            expire on their own; an id such an entry names stays in quarantine (core/ids.py) until no
            entry names it
  COUNTERS  per-CPU counters; per service id ones (`per_id`) start from zero when an id is new to
            the maps (MapWriter)
  CONFIG    what the agent tells the programs (Datapath.write_config), written when it differs
  WORK      the agent's scratch, written and emptied within one operation (the socket reaper's list)
  STATE     what the programs keep for themselves and nobody reconciles (the ICMP token bucket)
"""
from collections.abc import Callable
from dataclasses import dataclass

DESIRED, FLOWS, COUNTERS, CONFIG, WORK, STATE = "desired", "flows", "counters", "config", "work", "state"


@dataclass(frozen=True)
class Keeper:
    kind: str
    service_id: Callable | None = None   # FLOWS: (key, value) -> the service id the entry names
    per_id: bool = False                 # COUNTERS indexed by service id


KEEPERS: dict[str, Keeper] = {
    "nat_fe": Keeper(DESIRED),
    "nat_be": Keeper(DESIRED),
    "svc_ips": Keeper(DESIRED),
    "src_ranges": Keeper(DESIRED),
    "svc_addr_bits": Keeper(DESIRED),
    "affinity_svc": Keeper(DESIRED),   # session affinity timeouts
    "affinity_be": Keeper(DESIRED),    # the backends an affinity entry may name
    # a client's last backend (bpf/affinity.h); pruned by the agent when its backend or affinity goes
    "affinity": Keeper(FLOWS, service_id=lambda key, value: key.svc_id),
    "ct": Keeper(FLOWS, service_id=lambda key, value: value.svc_id),
    "sock_rev": Keeper(FLOWS, service_id=lambda key, value: value.svc_id),   # host sockets (bpf/sock.c)
    "svc_counters": Keeper(COUNTERS, per_id=True),
    "drops": Keeper(COUNTERS),
    "config": Keeper(CONFIG),
    "sock_gone": Keeper(WORK),   # datapath/sockets.py: SocketReaper
    "icmp_bucket": Keeper(STATE),   # bpf/icmp_reject.h: the rate of the ICMP errors the programs send
}


def ids_named_by_flows(maps, skip: tuple[str, ...] = ()) -> set[int]:
    """The service ids every FLOWS map's entries name (but those in `skip`, read elsewhere)."""
    ids: set[int] = set()
    for name, keeper in KEEPERS.items():
        if keeper.kind == FLOWS and name not in skip:
            ids.update(keeper.service_id(key, value) for key, value in getattr(maps, name).items())
    return ids
