"""Session affinity entries from userspace. The programs write them (bpf/affinity.h); the agent
forgets those nobody may follow any more: of a service port whose affinity went, naming a backend
that left the port, or idle past the timeout. The programs already ignore such entries; forgetting
them keeps the LRU map for live clients, `ebpflb affinity dump` honest, and a backend that comes
back from inheriting clients it lost."""
import time
from collections.abc import Mapping

from ebpflb.core.model import Backend
from ebpflb.datapath.maps import Maps
from ebpflb.datapath.structs import addr_text, port_int, to_bytes


def entry_backend(value) -> Backend:
    return Backend(addr_text(value.backend_addr6, value.family), port_int(value.backend_port))


def stale(entries, affinity: Mapping[int, int], backends: Mapping[int, tuple[Backend, ...]], now_ns: int) -> list:
    """(key, value) of the entries no connection may follow: their id has no affinity (`affinity`: id ->
    timeout, the desired state's), their backend is not among the id's `backends`, or their
    client's last new connection is older than the timeout."""
    members: dict[int, frozenset[Backend]] = {}
    doomed = []
    for key, value in entries:
        timeout = affinity.get(key.svc_id)
        if timeout is None or now_ns - value.last_used_ns > timeout * 1_000_000_000:
            doomed.append((key, value))
            continue
        if key.svc_id not in members:
            members[key.svc_id] = frozenset(backends.get(key.svc_id, ()))
        if entry_backend(value) not in members[key.svc_id]:
            doomed.append((key, value))
    return doomed


def prune(maps: Maps, affinity: Mapping[int, int], backends: Mapping[int, tuple[Backend, ...]],
          now_ns: int | None = None) -> int:
    """Delete the stale() entries, each only while it still holds what was judged (a new connection may
    have renewed it meanwhile). Returns entries deleted."""
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    deleted = 0
    for key, value in stale(maps.affinity.items(), affinity, backends, now_ns):
        current = maps.affinity.lookup(key)
        if current is not None and to_bytes(current) == to_bytes(value):
            deleted += maps.affinity.delete(key)
    return deleted
