"""`ebpflb nat dump`: the lines `calico-node -bpf nat dump` prints, frontends sorted; or JSON records."""
import ipaddress

from ebpflb.core.model import Backend, Frontend, FrontendKey
from ebpflb.datapath.structs import C

FLAG_NAMES = ((C.NAT_FLG_EXTERNAL_LOCAL, "external-local"), (C.NAT_FLG_INTERNAL_LOCAL, "internal-local"))


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES if flags & bit]


def frontend_line(key: FrontendKey, fe: Frontend) -> str:
    line = f"{key.addr} port {key.port} proto {key.proto} id {fe.svc_id} count {fe.count} local {fe.local}"
    flags = flag_names(fe.flags)
    return line + (" flags " + ", ".join(flags) if flags else "")


def sorted_frontends(frontends: dict[FrontendKey, Frontend], only: FrontendKey | None = None) -> list[FrontendKey]:
    """Keys by (address, port, proto); just `only` (when it is there) if given."""
    keys = [k for k in frontends if only is None or k == only]
    return sorted(keys, key=lambda k: (ipaddress.ip_address(k.addr).version, ipaddress.ip_address(k.addr), k.port, k.proto))


def nat_dump_lines(frontends: dict[FrontendKey, Frontend], backends: dict[tuple[int, int], Backend],
                   only: FrontendKey | None = None) -> list[str]:
    lines = []
    for key in sorted_frontends(frontends, only):
        fe = frontends[key]
        lines.append(frontend_line(key, fe))
        for ordinal in range(fe.count):
            be = backends.get((fe.svc_id, ordinal))
            where = f" {be.addr}:{be.port}" if be else " is missing"
            lines.append(f"\t{fe.svc_id}:{ordinal}\t{where}")
    return lines


def nat_dump_records(frontends: dict[FrontendKey, Frontend], backends: dict[tuple[int, int], Backend],
                     only: FrontendKey | None = None) -> list[dict]:
    """One dict per frontend, for `nat dump --json`."""
    records = []
    for key in sorted_frontends(frontends, only):
        fe = frontends[key]
        slots = []
        for ordinal in range(fe.count):
            be = backends.get((fe.svc_id, ordinal))
            slots.append({"ordinal": ordinal, "address": be.addr, "port": be.port} if be
                         else {"ordinal": ordinal, "missing": True})
        records.append({"address": key.addr, "port": key.port, "proto": key.proto, "id": fe.svc_id,
                        "count": fe.count, "local": fe.local, "flags": flag_names(fe.flags),
                        "backends": slots})
    return records
