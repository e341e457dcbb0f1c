"""`ebpflb conntrack dump|stats`: one line per flow, as `calico-node -bpf conntrack dump` prints them;
every entry structurally (--raw); JSON records; counts."""
import socket
from collections import Counter
from dataclasses import asdict, dataclass

from ebpflb.datapath.conntrack import by_key, tcp_state, twin_of
from ebpflb.datapath.structs import C, addr_text, names_of, port_int

TCP_STATES = ("ESTABLISHED", "SYN-SENT", "CLOSED", "RESET")
TYPE_NAMES = names_of("CT_TYPE_")
FLAG_NAMES = names_of("CT_FLAG_")
TCP_FLAG_NAMES = names_of("CT_TCP_")


def go_duration(seconds: float) -> str:
    """Like Go's time.Duration text, at 0.1 s below a minute: 1.2s, 3m4s, 1h0m5s."""
    tenths = round(max(seconds, 0.0), 1)
    if tenths < 60:
        return f"{tenths:.1f}".rstrip("0").rstrip(".") + "s"
    total = int(max(seconds, tenths))   # 59.97 s rounds up to a minute, not down to 0m59s
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


# Calico's conntrack dump names these and prints every other protocol as Proto-<n>.
CT_PROTO_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMP6"}


def proto_name(proto: int) -> str:
    return CT_PROTO_NAMES.get(proto, f"Proto-{proto}")


@dataclass(frozen=True)
class Flow:
    """One connection as the client sees it; backend is None for an entry that is not NATed."""
    proto: int
    client: str
    client_port: int
    service: str
    service_port: int
    backend: str | None
    backend_port: int | None
    last_seen_ago_s: float
    tcp_state: str | None


def flow_of(key, value, twin_value, now_ns: int) -> Flow | None:
    """The flow an entry tells; None for the NAT_FWD half (its NAT_REV twin tells the whole story)."""
    if value.type == C.CT_TYPE_NAT_FWD:
        return None
    last_seen = max(value.last_seen_ns, twin_value.last_seen_ns if twin_value is not None else 0)
    ago = max((now_ns - last_seen) / 1e9, 0.0)
    state = tcp_state(value.tcp_seen) if key.proto == socket.IPPROTO_TCP else None
    if value.type == C.CT_TYPE_NAT_REV:
        client = addr_text(value.snat_addr6 if value.flags & C.CT_FLAG_SNAT else key.dst_addr6, key.family)
        return Flow(key.proto, client, port_int(key.dst_port), addr_text(value.nat_addr6, key.family), port_int(value.nat_port),
                    addr_text(key.src_addr6, key.family), port_int(key.src_port), ago, state)
    return Flow(key.proto, addr_text(key.src_addr6, key.family), port_int(key.src_port), addr_text(key.dst_addr6, key.family),
                port_int(key.dst_port), None, None, ago, state)


def flow_line(key, value, twin_value, now_ns: int) -> str | None:
    flow = flow_of(key, value, twin_value, now_ns)
    if flow is None:
        return None
    backend = f" -> {flow.backend}:{flow.backend_port}" if flow.backend else ""
    state = f" {flow.tcp_state}" if flow.tcp_state else ""
    return (f"{proto_name(flow.proto)} {flow.client}:{flow.client_port} -> {flow.service}:{flow.service_port}"
            f"{backend}  Active ago {go_duration(flow.last_seen_ago_s)}{state}")


def key_order(key) -> tuple:
    return (key.proto, socket.ntohl(key.src_addr), port_int(key.src_port),
            socket.ntohl(key.dst_addr), port_int(key.dst_port))


def with_twins(entries):
    """(key, value, twin value or None) for every entry, sorted by key."""
    index = by_key(entries)
    for key, value in sorted(entries, key=lambda entry: key_order(entry[0])):
        twin = twin_of(value, index)
        yield key, value, (twin[1] if twin else None)


def flow_lines(entries, now_ns: int) -> list[str]:
    return [line for key, value, twin in with_twins(entries) if (line := flow_line(key, value, twin, now_ns))]


def flow_records(entries, now_ns: int) -> list[dict]:
    """One dict per flow, for `conntrack dump --json`."""
    records = []
    for key, value, twin in with_twins(entries):
        flow = flow_of(key, value, twin, now_ns)
        if flow:
            records.append(asdict(flow) | {"last_seen_ago_s": round(flow.last_seen_ago_s, 3)})
    return records


def key_text(key) -> str:
    return (f"proto={key.proto} {addr_text(key.src_addr6, key.family)}:{port_int(key.src_port)} -> "
            f"{addr_text(key.dst_addr6, key.family)}:{port_int(key.dst_port)}")


def bits_text(bits: int, names: dict[int, str]) -> str:
    """'SYN_FWD|ACK_REV'; '<none>' for 0; unnamed bits in hex."""
    named = [name for bit, name in sorted(names.items()) if bits & bit]
    rest = bits & ~sum(names)
    return "|".join(named + ([hex(rest)] if rest else [])) or "<none>"


def raw_line(key, value, now_ns: int) -> str:
    def stamp(ns: int) -> str:
        return f"{ns} ({go_duration((now_ns - ns) / 1e9)} ago)"
    return (f"ConntrackKey{{{key_text(key)}}} -> Entry{{Type:{TYPE_NAMES.get(value.type, value.type)}, "
            f"Created:{stamp(value.created_ns)}, LastSeen:{stamp(value.last_seen_ns)}, "
            f"Flags:{bits_text(value.flags, FLAG_NAMES)}, TCP:{bits_text(value.tcp_seen, TCP_FLAG_NAMES)}, "
            f"SvcID:{value.svc_id}, NAT:{addr_text(value.nat_addr6, key.family)}:{port_int(value.nat_port)}, "
            f"SNAT:{addr_text(value.snat_addr6, key.family)}, Twin:{{{key_text(value.twin)}}}}}")


def raw_lines(entries, now_ns: int) -> list[str]:
    return [raw_line(key, value, now_ns) for key, value, _ in with_twins(entries)]


def conntrack_stats(entries, capacity: int) -> dict:
    """Totals for `conntrack stats`: entries, NAT flows, capacity, TCP flows by state."""
    flows = [(key, value) for key, value in entries if value.type != C.CT_TYPE_NAT_FWD]
    states = Counter(tcp_state(value.tcp_seen) for key, value in flows if key.proto == socket.IPPROTO_TCP)
    return {"entries": len(entries), "capacity": capacity,
            "nat_flows": sum(value.type == C.CT_TYPE_NAT_REV for _, value in flows),
            "tcp_states": {state.lower().replace("-", "_"): states[state] for state in TCP_STATES}}


def stats_lines(stats: dict) -> list[str]:
    return [f"entries: {stats['entries']} of {stats['capacity']}",
            f"NAT flows: {stats['nat_flows']}",
            *(f"TCP {state.upper().replace('_', '-')}: {n}" for state, n in stats["tcp_states"].items())]
