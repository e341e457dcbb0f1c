"""svc_addr_bits (ebpflb/sync/addr_bits.py, bpf/lb.h): the bit test that spares pod-to-pod traffic two
hash lookups. Bits follow the frontends through the real writer and maps, shared bits included; a
new writer repairs what it finds; the programs' hash is the writer's."""
import itertools

from scapy.layers.inet import IP, TCP

from ebpflb.sync.addr_bits import WORD_BITS, addr_bit
from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath.structs import ffi
from ebpflb.sync.writer import MapWriter
from tests.test_datapath_packets import B, C_POD, SYN, TC_ACT_NEXT, from_pod, run



def _sharing_a_bit() -> tuple[str, str]:
    """Two service addresses whose bits are the same (2^20 bits: a few thousand addresses will do)."""
    seen: dict[int, str] = {}
    for i in itertools.count(1):
        addr = f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}"
        other = seen.setdefault(addr_bit(addr), addr)
        if other != addr:
            return other, addr


_FIRST, _SECOND = _sharing_a_bit()


def state(*vips: str) -> DesiredState:
    desired = DesiredState(service_ips=frozenset(vips))
    for svc_id, vip in enumerate(vips, start=1):
        desired.frontends[FrontendKey(vip, 8080, 6)] = Frontend(svc_id, 1, 0, 0)
        desired.backends[svc_id] = (Backend(B, 8080),)
    return desired


def words(dp) -> dict[int, int]:
    return {k[0]: v[0] for k, v in dp.maps.svc_addr_bits.items() if v[0]}


def expected_words(*addrs: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for bit in {addr_bit(a) for a in addrs}:
        out[bit // WORD_BITS] = out.get(bit // WORD_BITS, 0) | 1 << bit % WORD_BITS
    return out


def translated(dp, vip: str, sport: int) -> bool:
    verdict, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=vip) / TCP(**{**SYN, "sport": sport})))
    return verdict == TC_ACT_NEXT and IP(out[14:]).dst == B


def test_a_shared_bit_stays_while_any_address_needs_it(dp):
    writer = MapWriter(dp.maps)
    writer.apply(state(_FIRST, _SECOND))
    assert words(dp) == expected_words(_FIRST)   # one bit for both
    writer.apply(state(_SECOND))
    assert words(dp) == expected_words(_SECOND) and translated(dp, _SECOND, 41000)
    writer.apply(state())
    assert words(dp) == {}
    assert not translated(dp, _SECOND, 41001)    # nothing of ours there: untouched


def test_a_new_writer_repairs_the_bits_it_finds(dp):
    MapWriter(dp.maps).apply(state(_FIRST))
    bits = dp.maps.svc_addr_bits
    needed = addr_bit(_FIRST) // WORD_BITS
    stray = (needed + 7) % (len(bits.items()))
    bits.update(ffi.new("__u32 *", needed), ffi.new("__u64 *", 0))       # a bit lost
    bits.update(ffi.new("__u32 *", stray), ffi.new("__u64 *", 1 << 5))   # a bit nothing needs
    assert not translated(dp, _FIRST, 42000)
    MapWriter(dp.maps)
    assert words(dp) == expected_words(_FIRST) and translated(dp, _FIRST, 42001)


def test_the_programs_hash_is_the_writers(dp):
    """Addresses all over the space, each alone in the maps: each one's packets are translated,
    so the program tested the very bit the writer set."""
    writer = MapWriter(dp.maps)
    for n, vip in enumerate(["1.2.3.4", "10.96.0.10", "172.16.255.254", "192.168.64.200", "255.255.255.1"]):
        writer.apply(state(vip))
        assert words(dp) == expected_words(vip)
        assert translated(dp, vip, 43000 + n), vip


def test_a_flow_outlives_its_service_and_the_bit(dp):
    """Conntrack is asked before the bit, as kube-proxy keeps an established flow's NAT."""
    writer = MapWriter(dp.maps)
    writer.apply(state(_FIRST))
    assert translated(dp, _FIRST, 44000)
    writer.apply(state())
    assert words(dp) == {}
    verdict, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=_FIRST) / TCP(sport=44000, dport=8080, flags="A")))
    assert verdict == TC_ACT_NEXT and IP(out[14:]).dst == B
