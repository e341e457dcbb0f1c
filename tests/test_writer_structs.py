"""The writer's map structs, made a field at a time for many entries (struct_array), hold what
structs set field by field hold."""
import socket
import struct

import pytest

from ebpflb.core.model import Backend, Frontend, FrontendKey
from ebpflb.datapath.structs import C, addr_text, ffi, ip_be, new, port_be, to_bytes
from ebpflb.sync.addr_bits import addr_bit
from ebpflb.sync.writer import (affinity_member_keys, backend_keys, backend_values, frontend_keys, frontend_values,
                                service_ip_keys, src_range_keys)

FRONTEND_KEYS = [FrontendKey("10.96.0.10", 80, 6), FrontendKey("255.255.255.255", 65535, 132), FrontendKey("0.0.0.1", 1, 17)]
FRONTENDS = [Frontend(1, 0, 0, 0), Frontend(2**32 - 1, 7, 3, 15), Frontend(131071, 1, 1, 2)]
BACKENDS = [Backend("10.1.0.1", 8080), Backend("192.168.255.254", 65535), Backend("1.2.3.4", 1)]


def each(array) -> list[bytes]:
    size = ffi.sizeof(ffi.typeof(array).item)
    data = bytes(ffi.buffer(array))
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("made, want", [
    pytest.param(frontend_keys(FRONTEND_KEYS),
                 [new("struct nat_fe_key", addr=ip_be(k.addr), port=port_be(k.port), proto=k.proto) for k in FRONTEND_KEYS],
                 id="frontend-keys"),
    pytest.param(frontend_values(FRONTENDS),
                 [new("struct nat_fe_value", id=f.svc_id, count=f.count, local=f.local, flags=f.flags) for f in FRONTENDS],
                 id="frontend-values"),
    pytest.param(backend_keys([1, 2**32 - 1, 5], [0, 9, 2**32 - 1]),
                 [new("struct nat_be_key", id=i, ordinal=o) for i, o in ((1, 0), (2**32 - 1, 9), (5, 2**32 - 1))],
                 id="backend-keys"),
    pytest.param(backend_values(BACKENDS),
                 [new("struct nat_be_value", addr=ip_be(b.addr), port=port_be(b.port)) for b in BACKENDS],
                 id="backend-values"),
    pytest.param(src_range_keys([(3, "10.0.0.0/8"), (4, "192.0.2.7/32"), (5, "0.0.0.0/0")]),
                 [new("struct src_range_key", prefixlen=C.SRC_RANGE_PREFIX_BASE + bits, id=i, addr=ip_be(a))
                  for i, a, bits in ((3, "10.0.0.0", 8), (4, "192.0.2.7", 32), (5, "0.0.0.0", 0))],
                 id="src-range-keys"),
    pytest.param(service_ip_keys(["10.96.0.1", "8.8.4.4"]), [new("struct svc_ip_key", addr=ip_be(a)) for a in ("10.96.0.1", "8.8.4.4")],
                 id="service-ip-keys"),
])
def test_made_a_field_at_a_time_as_set_one_by_one(made, want):
    assert each(made) == [to_bytes(w) for w in want]


def test_no_entries_no_structs():
    assert len(frontend_keys([])) == len(backend_values([])) == len(src_range_keys([])) == len(backend_keys([], [])) == 0


def v6(addr: str) -> list[int]:
    """An IPv6 address as the addr6 words of a layout-8 field."""
    return list(struct.unpack("=4I", socket.inet_pton(socket.AF_INET6, addr)))


def test_ipv6_addresses_encode_into_layout_8():
    """The programs serve no IPv6 yet (sync/family.py keeps IPv6 frontends out), but the writer can
    already encode them: all 16 bytes and FAMILY_IPV6, IPv4 beside them as before (first word,
    zeros, FAMILY_IPV4), and read back to the same text."""
    keys = frontend_keys([FrontendKey("fd00:96::a", 53, 17), FrontendKey("10.96.0.10", 80, 6)])
    assert each(keys) == [to_bytes(new("struct nat_fe_key", addr6=v6("fd00:96::a"), port=port_be(53), proto=17,
                                       family=C.FAMILY_IPV6)),
                          to_bytes(new("struct nat_fe_key", addr=ip_be("10.96.0.10"), port=port_be(80), proto=6))]
    assert [addr_text(k.addr6, k.family) for k in keys] == ["fd00:96::a", "10.96.0.10"]
    values = backend_values([Backend("2001:db8::1:2", 8080)])
    assert to_bytes(values) == to_bytes(new("struct nat_be_value", addr6=v6("2001:db8::1:2"), port=port_be(8080),
                                            family=C.FAMILY_IPV6))
    ranges = src_range_keys([(7, "2001:db8::/32")])
    assert to_bytes(ranges) == to_bytes(new("struct src_range_key", prefixlen=C.SRC_RANGE_PREFIX_BASE + 32, id=7,
                                            addr6=v6("2001:db8::"), family=C.FAMILY_IPV6))
    assert to_bytes(service_ip_keys(["fd00::1"])) == to_bytes(new("struct svc_ip_key", addr6=v6("fd00::1"),
                                                                  family=C.FAMILY_IPV6))
    member = affinity_member_keys([(3, Backend("fd00::2", 80))])
    assert (member[0].svc_id, addr_text(member[0].addr6, member[0].family), member[0].family) == (3, "fd00::2", C.FAMILY_IPV6)


def test_address_bits_fold_ipv6_and_keep_ipv4():
    """svc_addr_bits: an IPv4 address hashes as before layout 8; an IPv6 one folds its four words by XOR."""
    def bit(word: int) -> int:
        return (word * C.SVC_ADDR_HASH_MUL & 0xFFFFFFFF) >> (32 - C.SVC_ADDR_BITS_LOG2)
    assert addr_bit("10.96.0.10") == bit(ip_be("10.96.0.10"))
    a, b, c, d = v6("fd00:96::a")
    assert addr_bit("fd00:96::a") == bit(a ^ b ^ c ^ d)
