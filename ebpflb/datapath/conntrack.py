"""Conntrack upkeep from userspace: expiry by per-state timeouts, and forgetting UDP flows whose
backend left its service (so the next datagram picks a live one, as kube-proxy does)."""
import time
from dataclasses import dataclass, fields

from ebpflb.datapath.libbpf import prog_test_run
from ebpflb.datapath.maps import Maps
from ebpflb.datapath.structs import C, addr_text, ffi, port_int, to_bytes


@dataclass(frozen=True)
class Timeouts:
    """Seconds. Defaults close to Calico's."""
    tcp_syn_sent: float = 20
    tcp_established: float = 3600
    tcp_fin: float = 30
    tcp_rst: float = 40
    udp: float = 60
    icmp: float = 5
    generic: float = 600

    @classmethod
    def parse(cls, spec: str) -> "Timeouts":
        """'tcp-established=600,udp=30' -> Timeouts with those two changed."""
        names = {f.name for f in fields(cls)}
        values = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, _, seconds = item.partition("=")
            name = name.strip().replace("-", "_")
            if name not in names:
                raise ValueError(f"unknown conntrack timeout {name!r}; known: {', '.join(sorted(names))}")
            values[name] = float(seconds)
            if values[name] <= 0:
                raise ValueError(f"conntrack timeout {name} must be positive")
        return cls(**values)


def tcp_state(tcp_seen: int) -> str:
    """The flow's TCP state from the flags seen in its reply half (as Calico names them):
    established only once the client's ACK followed the backend's answer (bpf/ct_sweep.c's judge)."""
    if tcp_seen & C.CT_TCP_RST:
        return "RESET"
    if tcp_seen & C.CT_TCP_FIN_FWD and tcp_seen & C.CT_TCP_FIN_REV:
        return "CLOSED"
    if (tcp_seen & C.CT_TCP_SYN_FWD and tcp_seen & C.CT_TCP_ACK_FWD
            and tcp_seen & (C.CT_TCP_SYN_REV | C.CT_TCP_ACK_REV)):
        return "ESTABLISHED"
    return "SYN-SENT"


def timeout_for(proto: int, tcp_seen: int, t: Timeouts) -> float:
    if proto == 6:
        return {"RESET": t.tcp_rst, "CLOSED": t.tcp_fin, "ESTABLISHED": t.tcp_established,
                "SYN-SENT": t.tcp_syn_sent}[tcp_state(tcp_seen)]
    if proto == 17:
        return t.udp
    if proto == 1:
        return t.icmp
    return t.generic


def by_key(entries) -> dict[bytes, tuple]:
    """{key bytes: (key, value)} of (key, value) pairs, so that an entry's twin is twin_of(value, index)."""
    return {to_bytes(key): (key, value) for key, value in entries}


def twin_of(value, index: dict[bytes, tuple]):
    """(key, value) of the other half of a NAT flow, or None when it is gone."""
    return index.get(to_bytes(ffi.addressof(value, "twin")))


def expired(entries, timeouts: Timeouts, now_ns: int) -> list[tuple]:
    """One (key, value, twin value or None) per flow idle past its state's timeout, judged by the
    later last-seen of its two halves: the reply half's key first when it has one (that is the half
    the programs claim before they delete). A half whose twin is missing is a flow of its own."""
    index = by_key(entries)
    doomed, seen = [], set()
    for raw, (key, value) in index.items():
        if raw in seen:
            continue
        twin = twin_of(value, index)
        if twin is not None and to_bytes(ffi.addressof(twin[1], "twin")) != raw:
            twin = None   # the entry there belongs to another flow
        if twin is not None:
            seen.add(to_bytes(twin[0]))
            if value.type != C.CT_TYPE_NAT_REV and twin[1].type == C.CT_TYPE_NAT_REV:
                key, value, twin = twin[0], twin[1], (key, value)
        rev = value if value.type == C.CT_TYPE_NAT_REV else None
        tcp_seen = rev.tcp_seen if rev else 0
        last_seen = max(value.last_seen_ns, twin[1].last_seen_ns if twin else 0)
        if value.last_seen_ns == C.CT_CLAIMED or (twin and twin[1].last_seen_ns == C.CT_CLAIMED):
            continue   # being deleted right now
        if now_ns - last_seen > timeout_for(key.proto, tcp_seen, timeouts) * 1e9:
            doomed.append((key, value, twin[1] if twin else None))
    return doomed


def entries_of(judged) -> int:
    """How many map entries the judged flows hold."""
    return sum(1 + (twin is not None) for _, _, twin in judged)


def delete_unchanged(ct, judged) -> int:
    """Delete each judged flow, both halves together, only while both still hold exactly what was
    judged (and a missing twin is still missing): between reading the map and deleting, a SYN on
    a reused port may have put a new flow at the same keys, or a packet woken the flow. Here the
    re-read and the deletes are syscalls apart; the agent uses in_kernel(), where they are a few
    instructions apart and the programs' claims guard them. Returns entries deleted."""
    deleted = 0
    for key, value, twin_value in judged:
        twin_key = ffi.new("struct ct_key *", value.twin)
        current, current_twin = ct.lookup(key), ct.lookup(twin_key)
        if current is None or to_bytes(current) != to_bytes(value):
            continue
        if twin_value is None:
            if current_twin is not None and to_bytes(ffi.addressof(current_twin, "twin")) == to_bytes(key):
                continue
        elif current_twin is None or to_bytes(current_twin) != to_bytes(twin_value):
            continue
        deleted += ct.delete(key)
        if twin_value is not None:
            deleted += ct.delete(twin_key)
    return deleted


def in_kernel(prog_fd: int):
    """delete_unchanged() done by bpf/ct_sweep.c (prog_fd: its ct_delete_unchanged), a batch of
    CT_SWEEP_BATCH flows per test run."""
    padding = bytes(C.CT_SWEEP_PADDING)
    record_size = ffi.sizeof("struct ct_sweep_record")

    def delete(ct, judged) -> int:
        deleted = 0
        for start in range(0, len(judged), C.CT_SWEEP_BATCH):
            batch = judged[start:start + C.CT_SWEEP_BATCH]
            records = ffi.new("struct ct_sweep_record[]", len(batch))
            for record, (key, value, twin_value) in zip(records, batch):
                record.key, record.value = key[0], value[0]
                if twin_value is not None:
                    record.twin_value = twin_value[0]
            deleted += prog_test_run(prog_fd, padding + ffi.buffer(records, record_size * len(batch))[:])[0]
        return deleted
    return delete


@dataclass(frozen=True)
class SweepResult:
    deleted: int   # entries
    spared: int    # entries judged expired that woke (or were reused) before they could go
    read: int = 0  # entries sweep_in_kernel() read (not the twins it deleted ahead of its walk)


def sweep(maps: Maps, timeouts: Timeouts, now_ns: int | None = None, delete=delete_unchanged,
          ids_seen: set[int] | None = None) -> SweepResult:
    """Delete flows idle past their timeout, unless they came back to life meanwhile (`delete`:
    delete_unchanged, or in_kernel(fd)). `ids_seen` gets the service ids of the entries it read,
    expired ones too (one may come back to life before its delete; ids in quarantine wait for
    these: core/ids.py)."""
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    entries = maps.ct.items()
    if ids_seen is not None:
        ids_seen.update(value.svc_id for _, value in entries)
    judged = expired(entries, timeouts, now_ns)
    deleted = delete(maps.ct, judged)
    return SweepResult(deleted, entries_of(judged) - deleted)


def sweep_args(timeouts: Timeouts, now_ns: int) -> bytes:
    """bpf/ct_sweep.c's ct_sweep_keys's packet head, padding and struct ct_sweep_args, but for its
    last word (keys): each run adds its own."""
    args = ffi.new("struct ct_sweep_args *", {"now_ns": now_ns, **{
        f"{f.name}_ns": int(getattr(timeouts, f.name) * 1e9) for f in fields(Timeouts)}})
    return bytes(C.CT_SWEEP_PADDING) + ffi.buffer(args)[:-8]


def sweep_in_kernel(maps: Maps, prog_fd: int, timeouts: Timeouts, now_ns: int | None = None,
                    ids_seen: set[int] | None = None) -> SweepResult:
    """sweep() with the judgement in the kernel too (prog_fd: bpf/ct_sweep.c's ct_sweep_keys): the
    map is read in batches into one reused buffer and handed to the program CT_SWEEP_KEYS entries
    at a time (keys, then their values); it judges each flow (a plainly alive one by the value
    read, without a lookup that would mark it recently used), by its own read of both halves,
    and deletes the expired ones as pairs, a flow that woke meanwhile keeping both. No Python
    object per entry: memory stays flat, and the GIL is held for a batch's bookkeeping at most.
    `ids_seen` as in sweep()."""
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    head = sweep_args(timeouts, now_ns)
    key_size, value_size = ffi.sizeof("struct ct_key"), ffi.sizeof("struct ct_value")
    svc_id_word, value_words = ffi.offsetof("struct ct_value", "svc_id") // 4, value_size // 4
    deleted = spared = read = 0
    for keys, values, n in maps.ct._batches():
        read += n
        raw_values = ffi.buffer(values, value_size * n)
        if ids_seen is not None:
            ids_seen.update(memoryview(raw_values).cast("I")[svc_id_word::value_words])
        raw_keys = ffi.buffer(keys, key_size * n)
        for start in range(0, n, C.CT_SWEEP_KEYS):
            end = min(n, start + C.CT_SWEEP_KEYS)
            packet = (head + (end - start).to_bytes(8, "little") + raw_keys[start * key_size:end * key_size] +
                      raw_values[start * value_size:end * value_size])
            counts = prog_test_run(prog_fd, packet)[0]
            deleted += counts % C.CT_SWEEP_SPARED
            spared += counts // C.CT_SWEEP_SPARED
            # A test run lets the GIL go but takes it straight back: a thread waiting for it (a
            # sync) would wait the interpreter's switch interval (5 ms). Step aside for it.
            time.sleep(0)
    return SweepResult(deleted, spared, read)


def service_ids(ct) -> set[int]:
    """The service ids conntrack's entries name, read without a Python object per entry."""
    ids: set[int] = set()
    for _, values, n in ct._batches():
        ids.update(values[i].svc_id for i in range(n))
    return ids


def remove_between(maps: Maps, proto: int, addr1: str, addr2: str) -> int:
    """Delete every entry of `proto` between the two addresses (either direction), and its twin.
    Returns entries deleted."""
    pair = {addr1, addr2}
    doomed = []
    for key, value in maps.ct.items():
        if key.proto == proto and {addr_text(key.src_addr6, key.family), addr_text(key.dst_addr6, key.family)} == pair:
            doomed += [key, ffi.new("struct ct_key *", value.twin)]
    return sum(maps.ct.delete(k) for k in doomed)


def forget_udp_flows_to(maps: Maps, gone: set[tuple[int, str, int]]) -> int:
    """Move UDP flows off (service id, backend addr, port) that left: their NAT_FWD halves go, so the
    next datagram picks a live backend. The NAT_REV halves stay until they expire: an answer already
    on its way back is still translated (deleting it lost that datagram). Returns entries deleted."""
    if not gone:
        return 0
    doomed = []
    for key, value in maps.ct.items():
        if key.proto == 17 and value.type == C.CT_TYPE_NAT_FWD and \
                (value.svc_id, addr_text(value.nat_addr6, value.family), port_int(value.nat_port)) in gone:
            doomed.append(key)
    return sum(maps.ct.delete(k) for k in doomed)
