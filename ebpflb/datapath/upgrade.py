"""Upgrade from layout 7's pins (the version before issue 19) without breaking established flows.

An agent of layout 8 that finds layout-7 pins moves them aside (`<pin dir>/layout7/`: the old
programs still attached keep their maps by reference), loads its own maps and programs, and copies
every entry over, converted field by field (bpf/structs_layout7.h, read through a second cffi FFI,
to bpf/structs.h): conntrack and affinity with their flows, the frontends and backends with their
service ids (so the new agent takes its ids back as after any restart, and the flows' ids still
name their services), counters. Then it attaches its programs everywhere; the flows the old
programs made meanwhile are copied once more (BPF_NOEXIST: never over what the new programs
wrote), and the old maps go. A connection opened within those milliseconds may see one packet
translated by the other generation and retransmit; a flow established before the upgrade keeps
its translation throughout.
"""
import logging
import os
import shutil

from cffi import FFI

from ebpflb.datapath import libbpf
from ebpflb.datapath.maps import MAP_LAYOUT, Maps
from ebpflb.datapath.structs import C, ffi
from ebpflb.paths import BPF_DIR

log = logging.getLogger(__name__)

FROM_LAYOUT = 7
ASIDE = "layout7"   # under the pin dir, while the upgrade runs

ffi7 = FFI()
ffi7.cdef("typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef uint64_t __u64;\n"
          + (BPF_DIR / "structs_layout7.h").read_text())

# Layout 7's key and value types, where they differ in name from MAP_LAYOUT's.
LAYOUT7_TYPES = {**{name: (k, v) for name, (k, v, _) in MAP_LAYOUT.items()}, "svc_ips": ("__u32", "struct svc_ip_value")}
# Copied once before the new programs are attached: everything but what the new agent writes
# itself (config) and the reaper's scratch.
COPIED = [name for name in MAP_LAYOUT if name not in ("config", "sock_gone")]
# Copied again after: what the old programs write.
WRITTEN_BY_PROGRAMS = ["ct", "affinity", "sock_rev"]
BPF_NOEXIST = 1


# What a field-by-field copy gets wrong: an LPM key's prefix length counted id (32 bits) before the
# address in layout 7; it counts id, family and pad (SRC_RANGE_PREFIX_BASE) in layout 8. And a TCP
# flow's state (_keep_established).
LAYOUT7_SRC_RANGE_PREFIX_BASE = 32


def _keep_established(old, new) -> None:
    """Layout 7 counted a TCP flow established on the backend's answer; layout 8 also waits for the
    client's ACK (CT_TCP_ACK_FWD), which layout 7 never recorded. A flow layout 7 judged established
    keeps that judgement: else, idle through the upgrade, it would expire by tcp_syn_sent (20 s)."""
    seen = old.tcp_seen
    if seen & C.CT_TCP_SYN_FWD and seen & (C.CT_TCP_SYN_REV | C.CT_TCP_ACK_REV):
        new.tcp_seen = seen | C.CT_TCP_ACK_FWD


FIXUPS = {"struct src_range_key": lambda old, new: setattr(
              new, "prefixlen", old.prefixlen - LAYOUT7_SRC_RANGE_PREFIX_BASE + C.SRC_RANGE_PREFIX_BASE),
          "struct ct_value": _keep_established}


def convert(old, old_type: str, new_type: str) -> bytes:
    """A layout-7 struct (or scalar) as layout 8 holds it: each named field to the field of the same
    name (an IPv4 address to the first word of its 16 bytes, family FAMILY_IPV4 = 0), padding left
    zero. A layout-7 svc_ips key (a bare __u32 address) becomes a struct svc_ip_key."""
    if old_type == new_type and not old_type.startswith("struct"):
        return bytes(ffi7.buffer(old))
    new = ffi.new(new_type + " *")
    if not old_type.startswith("struct"):
        new.addr = old[0]
        return bytes(ffi.buffer(new))
    _copy_fields(old[0], ffi7.typeof(old_type), new[0])
    if new_type in FIXUPS:
        FIXUPS[new_type](old[0], new[0])
    return bytes(ffi.buffer(new))


def _copy_fields(old, old_ctype, new) -> None:
    for name, field in old_ctype.fields:
        if name.startswith("pad"):
            continue
        if field.type.kind == "struct":
            _copy_fields(getattr(old, name), field.type, getattr(new, name))
        else:
            setattr(new, name, getattr(old, name))


def pending(pin_dir: str) -> str | None:
    """The moved-aside layout-7 pins of an upgrade that did not finish (the agent died in it)."""
    aside = os.path.join(pin_dir, ASIDE)
    return aside if os.path.isdir(aside) else None


def set_aside(pin_dir: str) -> str:
    """Move layout 7's pinned maps (and program array, if any) into <pin dir>/layout7/; links stay."""
    aside = os.path.join(pin_dir, ASIDE)
    os.makedirs(aside, exist_ok=True)
    for name in os.listdir(pin_dir):
        path = os.path.join(pin_dir, name)
        if name != ASIDE and not os.path.isdir(path):
            os.rename(path, os.path.join(aside, name))
    log.info("layout %d maps in %s moved to %s: upgrading to this layout", FROM_LAYOUT, pin_dir, aside)
    return aside


def _entries(fd: int, key_size: int, value_size: int):
    """(key bytes, value bytes) of a map, by get_next_key and lookup (values of per-CPU maps: all CPUs)."""
    key, next_key = ffi.new(f"char[{key_size}]"), ffi.new(f"char[{key_size}]")
    value = ffi.new(f"char[{value_size}]")
    first = True
    while libbpf.lib.bpf_map_get_next_key(fd, ffi.NULL if first else key, next_key) == 0:
        first = False
        ffi.memmove(key, next_key, key_size)
        if libbpf.lib.bpf_map_lookup_elem(fd, key, value) == 0:
            yield bytes(ffi.buffer(key)), bytes(ffi.buffer(value))


ARRAYS = (2, 6)   # BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY


def _slot(size: int, percpu: bool) -> int:
    return (size + 7) // 8 * 8 if percpu else size


def copy_maps(aside: str, maps: Maps, names: list[str], flags: int = 0) -> dict[str, int]:
    """Copy the entries of layout-7 maps in `aside` into the new maps, converted: entries per map."""
    copied = {}
    for name in names:
        path = os.path.join(aside, name)
        if not os.path.exists(path):
            continue
        old_key_type, old_value_type = LAYOUT7_TYPES[name]
        new_key_type, new_value_type, percpu = MAP_LAYOUT[name]
        new_map = getattr(maps, name)
        fd = libbpf.obj_get(path)
        try:
            info = libbpf.map_info(fd)
            ncpus = new_map.ncpus if percpu else 1
            # A per-CPU value is one per possible CPU, each rounded up to 8 bytes.
            old_size, new_size = _slot(info.value_size, percpu), _slot(ffi.sizeof(new_value_type), percpu)
            # Arrays refuse BPF_NOEXIST (every index exists): they are written as they are.
            how = 0 if libbpf.map_info(new_map.fd).type in ARRAYS else flags
            n = 0
            for key, value in _entries(fd, info.key_size, old_size * ncpus):
                new_key = convert(ffi7.from_buffer(old_key_type + " *", bytearray(key)), old_key_type, new_key_type)
                new_value = b"".join(
                    convert(ffi7.from_buffer(old_value_type + " *", bytearray(value[c * old_size:(c + 1) * old_size])),
                            old_value_type, new_value_type).ljust(new_size, b"\0")
                    for c in range(ncpus))
                ret = libbpf.lib.bpf_map_update_elem(new_map.fd, new_key, new_value, how)
                if ret == 0:
                    n += 1
                elif ret != -17:   # -EEXIST with BPF_NOEXIST: the new programs' own entry stays
                    log.warning("upgrade: a %s entry not copied: %s", name, os.strerror(-ret))
            copied[name] = n
        finally:
            os.close(fd)
    return copied


def finish(aside: str, maps: Maps) -> dict[str, int]:
    """After the new programs are attached everywhere: the flows the old ones made meanwhile, then
    the old maps go (freed once no old program holds them)."""
    copied = copy_maps(aside, maps, WRITTEN_BY_PROGRAMS, BPF_NOEXIST)
    shutil.rmtree(aside)
    log.info("upgrade from layout %d done: %s more copied after the handover; old maps removed", FROM_LAYOUT,
             ", ".join(f"{n} {name}" for name, n in copied.items()) or "nothing")
    return copied
