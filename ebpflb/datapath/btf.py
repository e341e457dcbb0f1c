"""What the running kernel's BTF (/sys/kernel/btf/vmlinux) says that the programs need and bcc's
headers cannot give: the id of the kfunc bpf_cast_to_kern_ctx() and where skb->ip_summed lies in
this kernel's struct sk_buff (bpf/kernel.h says why). Read with libbpf through cffi.
"""
import logging
from dataclasses import dataclass

from ebpflb.datapath.libbpf import ffi, lib

log = logging.getLogger(__name__)

BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_FUNC = 4, 5, 12
# Kinds that only name or qualify another type (typedef, volatile, const, restrict, type tag).
_ALIASES = {8, 9, 10, 11, 18}


@dataclass(frozen=True)
class SkbCsumFacts:
    cast_to_kern_ctx_id: int   # BTF id of the kfunc in vmlinux
    ip_summed_byte: int        # byte offset in struct sk_buff of the byte holding ip_summed
    ip_summed_shift: int       # its lowest bit in that byte (little-endian bitfield)


def _kind(t) -> int:
    return (t.info >> 24) & 0x1f


def _member_bits(btf, type_id: int, name: str, base: int = 0) -> tuple[int, int] | None:
    """(bit offset, bitfield size; 0 when not a bitfield) of member `name` of a struct or union,
    looking into anonymous members (struct_group() in sk_buff puts fields two levels down)."""
    t = lib.btf__type_by_id(btf, type_id)
    kind_flag = t.info >> 31
    members = ffi.cast("struct btf_member *", t + 1)
    for i in range(t.info & 0xffff):
        m = members[i]
        offset = (m.offset & 0xffffff) if kind_flag else m.offset
        member_name = ffi.string(lib.btf__name_by_offset(btf, m.name_off)).decode()
        if member_name == name:
            return base + offset, (m.offset >> 24) if kind_flag else 0
        if member_name:
            continue
        inner = m.type
        while _kind(lib.btf__type_by_id(btf, inner)) in _ALIASES:
            inner = lib.btf__type_by_id(btf, inner).size_or_type
        if _kind(lib.btf__type_by_id(btf, inner)) in (BTF_KIND_STRUCT, BTF_KIND_UNION):
            found = _member_bits(btf, inner, name, base + offset)
            if found:
                return found
    return None


def skb_csum_facts() -> SkbCsumFacts | None:
    """The facts, or None (and why, logged) when this kernel cannot give them: no BTF, a kernel
    before 6.3 (no bpf_cast_to_kern_ctx), or an ip_summed that is not a 2-bit field in one byte."""
    btf = lib.btf__load_vmlinux_btf()
    if btf == ffi.NULL:
        log.info("no kernel BTF: L4 checksums are fixed by the kernel's helpers")
        return None
    try:
        kfunc = lib.btf__find_by_name_kind(btf, b"bpf_cast_to_kern_ctx", BTF_KIND_FUNC)
        skb = lib.btf__find_by_name_kind(btf, b"sk_buff", BTF_KIND_STRUCT)
        field = _member_bits(btf, skb, "ip_summed") if skb > 0 else None
        if kfunc <= 0 or not field or field[1] != 2 or field[0] // 8 != (field[0] + 1) // 8:
            log.info("kernel BTF has no bpf_cast_to_kern_ctx or no 2-bit sk_buff.ip_summed: L4 checksums "
                     "are fixed by the kernel's helpers")
            return None
        return SkbCsumFacts(kfunc, field[0] // 8, field[0] % 8)
    finally:
        lib.btf__free(btf)


@dataclass(frozen=True)
class SockReaperFacts:
    sock_destroy_id: int   # BTF id of the kfunc bpf_sock_destroy() in vmlinux
    daddr: int             # byte offsets in struct sock_common of skc_daddr, skc_dport, skc_state
    dport: int
    state: int


def sock_reaper_facts() -> SockReaperFacts | None:
    """What bpf/sock_reaper.c needs, or None (and why, logged) when this kernel cannot give it: no
    BTF, or a kernel before 6.5 (no bpf_sock_destroy)."""
    btf = lib.btf__load_vmlinux_btf()
    if btf == ffi.NULL:
        log.info("no kernel BTF: connected host UDP sockets stay on a backend that leaves")
        return None
    try:
        kfunc = lib.btf__find_by_name_kind(btf, b"bpf_sock_destroy", BTF_KIND_FUNC)
        common = lib.btf__find_by_name_kind(btf, b"sock_common", BTF_KIND_STRUCT)
        fields = [_member_bits(btf, common, name) if common > 0 else None
                  for name in ("skc_daddr", "skc_dport", "skc_state")]
        if kfunc <= 0 or not all(f and f[1] == 0 and f[0] % 8 == 0 for f in fields):
            log.info("this kernel has no bpf_sock_destroy (Linux >= 6.5): connected host UDP sockets stay "
                     "on a backend that leaves")
            return None
        return SockReaperFacts(kfunc, *(f[0] // 8 for f in fields))
    finally:
        lib.btf__free(btf)
