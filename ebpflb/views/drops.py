"""`ebpflb drops`: what the programs dropped, by reason (the drops map, summed over CPUs)."""
from ebpflb.datapath.structs import names_of

REASONS = {number: name.lower().replace("_", "-") for number, name in sorted(names_of("DROP_").items())}


def drop_totals(entries) -> dict[str, tuple[int, int]]:
    """{reason: (packets, bytes)} from the drops map's (key, per-CPU values), every known reason
    (zero ones too), and any unnamed key that counted something as "reason-N"."""
    totals = {name: (0, 0) for name in REASONS.values()}
    for key, per_cpu in entries:
        packets, octets = sum(c.packets for c in per_cpu), sum(c.bytes for c in per_cpu)
        name = REASONS.get(key[0])
        if name or packets:
            totals[name or f"reason-{key[0]}"] = (packets, octets)
    return totals


def drop_lines(totals: dict[str, tuple[int, int]]) -> list[str]:
    width = max(map(len, totals), default=0)
    return [f"{name:<{width}}  {packets:>12} packets  {octets:>14} bytes"
            for name, (packets, octets) in totals.items()]


def drop_records(totals: dict[str, tuple[int, int]]) -> list[dict]:
    return [{"reason": name, "packets": packets, "bytes": octets} for name, (packets, octets) in totals.items()]
