"""`ebpflb conntrack dump`: one line per flow, as `calico-node -bpf conntrack dump` prints them."""
from ..conntrack import tcp_state
from ..structs import C, PROTO_NAMES, ip_str, port_int


def go_duration(seconds: float) -> str:
    """Like Go's time.Duration text, at 0.1 s below a minute: 1.2s, 3m4s, 1h0m5s."""
    if seconds < 60:
        tenths = round(max(seconds, 0.0), 1)
        return f"{tenths:.1f}".rstrip("0").rstrip(".") + "s"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, f"Proto-{proto}")


def flow_line(key, value, twin_value, now_ns: int) -> str | None:
    """The line for one entry; None for the NAT_FWD half (its NAT_REV twin tells the story)."""
    if value.type == C.CT_TYPE_NAT_FWD:
        return None
    last_seen = max(value.last_seen_ns, twin_value.last_seen_ns if twin_value is not None else 0)
    ago = go_duration((now_ns - last_seen) / 1e9)
    state = f" {tcp_state(value.tcp_seen)}" if key.proto == 6 else ""
    proto = proto_name(key.proto)
    if value.type == C.CT_TYPE_NAT_REV:
        client = ip_str(value.snat_addr if value.flags & C.CT_FLAG_SNAT else key.dst_addr)
        return (f"{proto} {client}:{port_int(key.dst_port)} -> "
                f"{ip_str(value.nat_addr)}:{port_int(value.nat_port)} -> "
                f"{ip_str(key.src_addr)}:{port_int(key.src_port)}  Active ago {ago}{state}")
    return (f"{proto} {ip_str(key.src_addr)}:{port_int(key.src_port)} -> "
            f"{ip_str(key.dst_addr)}:{port_int(key.dst_port)}  Active ago {ago}{state}")
