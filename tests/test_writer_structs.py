"""The writer's map structs, made a field at a time for many entries (struct_array), hold what
structs set field by field hold."""
import pytest

from ebpflb.core.model import Backend, Frontend, FrontendKey
from ebpflb.datapath.structs import ffi, ip_be, new, port_be, to_bytes
from ebpflb.sync.writer import backend_keys, backend_values, frontend_keys, frontend_values, service_ip_keys, src_range_keys

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
                 [new("struct src_range_key", prefixlen=32 + bits, id=i, addr=ip_be(a))
                  for i, a, bits in ((3, "10.0.0.0", 8), (4, "192.0.2.7", 32), (5, "0.0.0.0", 0))],
                 id="src-range-keys"),
    pytest.param(service_ip_keys(["10.96.0.1", "8.8.4.4"]), [ffi.new("__u32 *", ip_be(a)) for a in ("10.96.0.1", "8.8.4.4")],
                 id="service-ip-keys"),
])
def test_made_a_field_at_a_time_as_set_one_by_one(made, want):
    assert each(made) == [to_bytes(w) for w in want]


def test_no_entries_no_structs():
    assert len(frontend_keys([])) == len(backend_values([])) == len(src_range_keys([])) == len(backend_keys([], [])) == 0
