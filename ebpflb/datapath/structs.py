"""Map keys and values, taken through cffi from the one C header the BPF programs compile.

`ffi.new("struct nat_fe_key *")` etc. give the exact layout the kernel sees; `C.NAME` gives the
header's constants. No struct is described a second time in Python.
"""
import socket
import struct
from array import array

from cffi import FFI

from ebpflb.paths import BPF_DIR

HEADER = BPF_DIR / "structs.h"

ffi = FFI()
ffi.cdef(
    "typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef uint64_t __u64;\n"
    + HEADER.read_text()
)
# dlopen(None) gives access to the #define constants without compiling anything.
C = ffi.dlopen(None)

LAYOUT_VERSION = C.EBPFLB_LAYOUT_VERSION
PROTO_NAMES = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP", 132: "SCTP",
               socket.IPPROTO_ICMP: "ICMP"}


def proto_number(text: str) -> int:
    """An IP protocol given as a number or a name: '6', 'tcp', 'UDP', 'sctp' -> 6, 17, 132."""
    if text.isdigit() and int(text) < 256:
        return int(text)
    for number, name in PROTO_NAMES.items():
        if name.lower() == text.lower():
            return number
    raise ValueError(f"unknown protocol {text!r}: a number 0-255 or one of "
                     f"{', '.join(n.lower() for n in PROTO_NAMES.values())}")


def names_of(prefix: str) -> dict[int, str]:
    """The header's constants NAME_X under a prefix, by value: names_of("CT_TYPE_") -> {1: "NAT_FWD", ...}."""
    return {getattr(C, name): name.removeprefix(prefix) for name in dir(C) if name.startswith(prefix)}


def ip_be(addr: str) -> int:
    """Dotted IPv4 -> the __u32 whose memory holds it in network order."""
    return struct.unpack("=I", socket.inet_aton(addr))[0]


def ip_str(be: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", be))


def port_be(port: int) -> int:
    return socket.htons(port)


def port_int(be: int) -> int:
    return socket.ntohs(be)


def addr_family(addr: str) -> int:
    """The family tag (FAMILY_IPV4 or FAMILY_IPV6) of an address in text."""
    return C.FAMILY_IPV6 if ":" in addr else C.FAMILY_IPV4


def addr16(addr: str) -> bytes:
    """An address of either family -> the 16 bytes a layout-8 address field holds: IPv4's 4 in
    network order then 12 zero bytes, or IPv6's 16."""
    if ":" in addr:
        return socket.inet_pton(socket.AF_INET6, addr)
    return socket.inet_aton(addr) + bytes(12)


def addr_text(words, family: int) -> str:
    """An address field as read (its addr6 words, or the 16 bytes) and its family tag -> text."""
    data = bytes(ffi.buffer(words)) if isinstance(words, ffi.CData) else bytes(words)
    if family == C.FAMILY_IPV6:
        return socket.inet_ntop(socket.AF_INET6, data)
    return socket.inet_ntoa(data[:4])


def addr_columns(field: str, addrs) -> dict:
    """struct_array columns for an address field (`field`, whose union's 16 bytes are `field`6)
    and its struct's `family`: only the first word when every address is IPv4 (the other 12
    bytes and the family tag stay zero: FAMILY_IPV4), else all 16 bytes and the tags."""
    try:
        return {field: ip_be_column(addrs)}
    except OSError:   # an IPv6 address among them
        return {field + "6": b"".join(map(addr16, addrs)), "family": [addr_family(a) for a in addrs]}


def ip_be_column(addrs) -> bytes:
    """Dotted IPv4 addresses -> the memory of their __u32 fields, one after another (ip_be for many)."""
    return b"".join(map(socket.inet_aton, addrs))


def port_be_column(ports) -> array:
    """Ports -> the memory of their __u16 fields in network order (port_be for many)."""
    return array("H", map(socket.htons, ports))


_UNSIGNED = {array(code).itemsize: code for code in "BHIQ"}   # width in bytes -> array/memoryview code


def struct_array(ctype: str, length: int, /, **columns):
    """An array of `length` zeroed structs with some fields set, each field from a column of its
    values in order: ints, or bytes-like holding the field's memory as it is (ip_be_column).
    A field at a time over the whole array, in C: a struct at a time in Python was most of the
    time a cold start spent writing the maps. Offsets and widths are cffi's, from the header."""
    structs = ffi.new(f"{ctype}[]", length)
    if not length:
        return structs
    size, fields, memory = ffi.sizeof(ctype), dict(ffi.typeof(ctype).fields), memoryview(ffi.buffer(structs))
    for name, values in columns.items():
        field = fields[name]
        # An array field (a layout-8 address's 16 bytes): its items one after another per struct.
        item = field.type.item if field.type.kind == "array" else field.type
        width, items = ffi.sizeof(item), ffi.sizeof(field.type) // ffi.sizeof(item)
        if field.offset % width or size % width:
            raise ValueError(f"{ctype}.{name}: not aligned to its own size")
        code = _UNSIGNED[width]
        try:
            column = memoryview(values).cast("B").cast(code)
        except TypeError:   # not bytes-like: ints
            column = array(code, values)
        words = memory.cast(code)
        for i in range(items):
            words[field.offset // width + i::size // width] = column[i::items]
    return structs


def new(ctype: str, **fields):
    """A zeroed struct with some fields set: new("struct nat_be_key", id=1, ordinal=0)."""
    obj = ffi.new(ctype + " *")
    for name, value in fields.items():
        setattr(obj, name, value)
    return obj


def to_bytes(obj) -> bytes:
    return bytes(ffi.buffer(obj))


def from_bytes(ctype: str, data: bytes):
    obj = ffi.new(ctype + " *")
    ffi.memmove(obj, data, ffi.sizeof(ctype))
    return obj
