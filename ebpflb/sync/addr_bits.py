"""svc_addr_bits: one bit per hash of an address, set while a service frontend (ClusterIP,
externalIP, LoadBalancer or node address) or a ClusterIP without ports is at an address hashing to
it. A pod's packet that conntrack does not know is let through on a clear bit, without the frontend
and service-address lookups (bpf/lb.h: lb_maybe_frontend_addr): pod-to-pod traffic costs one hash
lookup, not three. Several addresses can share a bit, so the writer counts references per address
and addresses per bit and clears a bit only when nothing needs it any more.
"""
from collections import Counter
from collections.abc import Iterable

from ebpflb.datapath.maps import BpfMap
import struct

from ebpflb.datapath.structs import C, addr16, ffi

WORD_BITS = 64


def addr_bit(addr: str) -> int:
    """The bit of an address (the formula bpf/structs.h gives for SVC_ADDR_HASH_MUL): its 16 bytes'
    four words (as memory holds them) XORed, so an IPv4 address (12 zero bytes after it) is its
    own __u32, as before layout 8."""
    a, b, c, d = struct.unpack("=4I", addr16(addr))
    return ((a ^ b ^ c ^ d) * C.SVC_ADDR_HASH_MUL & 0xFFFFFFFF) >> (32 - C.SVC_ADDR_BITS_LOG2)


class AddressBits:
    def __init__(self, bpf_map: BpfMap, addresses: Iterable[str]):
        """`addresses`: one entry per frontend key's address and per service IP in the maps now. The
        map is made to say exactly that (a new pin, or one an earlier writer left half written)."""
        self.map = bpf_map
        self.refs: Counter[str] = Counter(addresses)
        self.bits: Counter[int] = Counter(addr_bit(addr) for addr in self.refs)
        have = {key[0]: value[0] for key, value in bpf_map.items() if value[0]}
        wanted = self._words({bit // WORD_BITS for bit in self.bits})
        stale = {word: 0 for word in have.keys() - wanted.keys()}
        self._write({**stale, **{w: v for w, v in wanted.items() if have.get(w) != v}})

    def add(self, addresses: Iterable[str]) -> int:
        """One more reference to each address (a frontend key or service IP written); the bits that
        were clear are set. Returns the words written."""
        words = set()
        for addr in addresses:
            self.refs[addr] += 1
            if self.refs[addr] == 1:
                bit = addr_bit(addr)
                self.bits[bit] += 1
                if self.bits[bit] == 1:
                    words.add(bit // WORD_BITS)
        return self._write(self._words(words))

    def remove(self, addresses: Iterable[str]) -> int:
        """One reference less to each (deleted from the maps); bits nothing needs any more are cleared.
        Returns the words written."""
        words = set()
        for addr in addresses:
            self.refs[addr] -= 1
            if self.refs[addr] > 0:
                continue
            del self.refs[addr]
            bit = addr_bit(addr)
            self.bits[bit] -= 1
            if self.bits[bit] == 0:
                del self.bits[bit]
                words.add(bit // WORD_BITS)
        return self._write(self._words(words))

    def _words(self, words: set[int]) -> dict[int, int]:
        return {w: sum(1 << (b % WORD_BITS) for b in range(w * WORD_BITS, (w + 1) * WORD_BITS) if b in self.bits)
                for w in words}

    def _write(self, words: dict[int, int]) -> int:
        if words:
            self.map.update_many(ffi.new("__u32[]", list(words)), ffi.new("__u64[]", list(words.values())))
        return len(words)
