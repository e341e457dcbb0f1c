"""`ebpflb nat dump`: the lines `calico-node -bpf nat dump` prints, frontends sorted."""
import ipaddress

from ..core.model import Backend, Frontend, FrontendKey
from ..structs import C

FLAG_NAMES = ((C.NAT_FLG_EXTERNAL_LOCAL, "external-local"), (C.NAT_FLG_INTERNAL_LOCAL, "internal-local"))


def frontend_line(key: FrontendKey, fe: Frontend) -> str:
    line = f"{key.addr} port {key.port} proto {key.proto} id {fe.svc_id} count {fe.count} local {fe.local}"
    flags = [name for bit, name in FLAG_NAMES if fe.flags & bit]
    return line + (" flags " + ", ".join(flags) if flags else "")


def nat_dump_lines(frontends: dict[FrontendKey, Frontend],
                   backends: dict[tuple[int, int], Backend]) -> list[str]:
    lines = []
    order = sorted(frontends, key=lambda k: (ipaddress.IPv4Address(k.addr), k.port, k.proto))
    for key in order:
        fe = frontends[key]
        lines.append(frontend_line(key, fe))
        for ordinal in range(fe.count):
            be = backends.get((fe.svc_id, ordinal))
            where = f" {be.addr}:{be.port}" if be else " is missing"
            lines.append(f"\t{fe.svc_id}:{ordinal}\t{where}")
    return lines
