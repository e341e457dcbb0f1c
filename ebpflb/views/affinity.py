"""`ebpflb affinity dump`: session affinity entries, one line per (service port, client), in the words
of `calico-node -bpf nat aff` (client, service frontend, backend, ts), with the entry's age and
whether a new connection would follow it; or JSON records."""
import ipaddress

from ebpflb.core.model import Backend, Frontend, FrontendKey
from ebpflb.datapath.affinity import entry_backend
from ebpflb.datapath.structs import C, addr_text
from ebpflb.views.conntrack import go_duration


def service_frontends(frontends: dict[FrontendKey, Frontend]) -> dict[int, FrontendKey]:
    """id -> the frontend that names it best: a ClusterIP one (not external) before the others, then the
    lowest address."""
    best: dict[int, tuple] = {}
    for key, fe in frontends.items():
        rank = (bool(fe.flags & C.NAT_FLG_EXTERNAL), ipaddress.ip_address(key.addr).version, ipaddress.ip_address(key.addr), key.port)
        if fe.svc_id not in best or rank < best[fe.svc_id][0]:
            best[fe.svc_id] = (rank, key)
    return {svc_id: key for svc_id, (_, key) in best.items()}


def state_of(timeout: int, age_s: float, member: bool) -> str:
    """What a new connection does with the entry: follows it ("live"), or not, and why."""
    if not timeout:
        return "affinity off"
    if age_s > timeout:
        return "expired"
    return "live" if member else "backend gone"


def affinity_records(entries, frontends: dict[FrontendKey, Frontend], timeouts: dict[int, int],
                     members: dict[int, dict[Backend, int]], now_ns: int) -> list[dict]:
    """One dict per entry, sorted by service frontend then client. `timeouts`: id -> seconds (the
    affinity_svc map); `members`: id -> backends an entry may name (affinity_be)."""
    names = service_frontends(frontends)
    records = []
    for key, value in entries:
        backend = entry_backend(value)
        frontend = names.get(key.svc_id)
        age_s = max(0.0, (now_ns - value.last_used_ns) / 1e9)
        timeout = timeouts.get(key.svc_id, 0)
        records.append({
            "client": addr_text(key.client_addr6, key.family), "id": key.svc_id,
            "proto": frontend.proto if frontend else None,
            "service": frontend.addr if frontend else None, "service_port": frontend.port if frontend else None,
            "backend": backend.addr, "backend_port": backend.port, "ts": value.last_used_ns,
            "last_connection_ago_s": round(age_s, 3), "timeout_s": timeout,
            "state": state_of(timeout, age_s, backend in members.get(key.svc_id, {}))})
    return sorted(records, key=lambda r: (r["service"] is None, ipaddress.IPv4Address(r["service"] or "0.0.0.0"),
                                          r["service_port"] or 0, r["proto"] or 0, r["id"],
                                          ipaddress.IPv4Address(r["client"])))


def affinity_lines(records: list[dict]) -> list[str]:
    lines = []
    for r in records:
        service = (f"svc proto {r['proto']} {r['service']}:{r['service_port']}" if r["service"]
                   else f"svc id {r['id']} (no frontend)")
        lines.append(f"client {r['client']} {service} -> {r['backend']}:{r['backend_port']} ts {r['ts']}  "
                     f"last connection {go_duration(r['last_connection_ago_s'])} ago, "
                     f"timeout {r['timeout_s']}s, {r['state']}")
    return lines
