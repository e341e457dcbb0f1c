"""Packets for the fuzzer: a corpus of well-formed base packets built with scapy (few), and a
byte-level mutator that makes the many from them with plain bytes operations (scapy per packet
would take minutes for a million).

IPv6 base packets carry extension header chains (hop-by-hop, routing, destination options,
fragment, AH, jumbo payloads), fragments and ICMPv6 errors; their own mutations rewrite the chain
(next headers, header lengths, fragment fields, payload length, cuts at its boundaries) and the
destination, besides the byte-level ones.

Mutations: truncation at every layer boundary and inside headers, wrong IHL and version, total
length bigger or smaller than the frame, trailing bytes, random byte flips, fragment flags and
offsets, protocol and ethertype changes, TCP flags, and retargeting to the addresses and ports
that matter (frontends, service addresses, backends, the node, the hairpin address, conntrack
tuples, odd sources like 0.0.0.0 or multicast). After a semantic change the checksums are
usually recomputed, so most translated packets start with valid checksums and some with wrong
ones (a translation must keep either as it was).
"""
import ipaddress
import random
import struct

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, IPOption_Timestamp, fragment
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6,
                                IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
                                IPv6ExtHdrSegmentRouting, Jumbo, PadN, fragment6)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import ARP, GRE, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit
from scapy.packet import Raw

from ebpflb.core.model import DesiredState
from tests.conftest import NODE_ADDR
from tests.fuzz_cluster import (CLIENT, FAR_CLIENT, GW_MAC, HAIRPIN, LOCAL_CLIENT_POD, NODE_MAC, OTHER_CLIENT, POD_MAC,
                                ROUTER_MAC, Opened)

ETH_HLEN = 14
IPV6_HLEN = 40
TCP_PROTO, UDP_PROTO, SCTP_PROTO = 6, 17, 132
# IPv6 next-header values: the extension headers a parser walks (hop-by-hop, routing, fragment,
# destination options, AH), and those that end the chain
NH_HOP, NH_ROUTING, NH_FRAGMENT, NH_ESP, NH_AH, NH_ICMPV6, NH_NONE, NH_DSTOPT = 0, 43, 44, 50, 51, 58, 59, 60
EXTENSION_HEADERS = (NH_HOP, NH_ROUTING, NH_FRAGMENT, NH_AH, NH_DSTOPT)
# Addresses a dual-stack service, its backends and clients would use, and odd ones
VIP6, BACKEND6, POD6, CLIENT6 = "fd00:10:96::a", "fd00:10:200:1::2", "fd00:10:200::9", "fd00:192:168:64::100"
ODD_ADDRESSES6 = ("::", "::1", "fe80::1", "ff02::1", "::ffff:10.96.0.10", "64:ff9b::a60:a", "2001:db8::1")


# --- Checksums: the one's complement sum of 16-bit words is the big integer modulo 0xffff
# (2**16 == 1 mod 0xffff), which Python computes in one call.

def ones_sum(data: bytes) -> int:
    """The one's complement sum of `data`'s 16-bit words, modulo 0xffff (0 when it checks out)."""
    if len(data) & 1:
        data += b"\0"
    return int.from_bytes(data, "big") % 0xffff


def pseudo_header(frame: bytes, proto: int, l4_len: int) -> bytes:
    return frame[26:34] + bytes((0, proto)) + l4_len.to_bytes(2, "big")


def l4_sum(frame: bytes, l4_off: int, tot_len: int, proto: int) -> int:
    """ones_sum over the pseudo-header and the L4 segment the IP header declares."""
    return ones_sum(pseudo_header(frame, proto, ETH_HLEN + tot_len - l4_off) + frame[l4_off:ETH_HLEN + tot_len])


def checksum_of(data: bytes) -> int:
    """The checksum field value that makes `data` (with a zeroed field) sum to 0."""
    s = ones_sum(data)
    return 0xffff - s if s else 0xffff


def fix_checksums(buf: bytearray) -> None:
    """Recompute the IP and TCP/UDP checksums in place where the headers are whole (a UDP
    checksum of 0, "none", stays 0)."""
    if len(buf) < 34 or buf[12:14] != b"\x08\x00" or buf[14] >> 4 != 4:
        return
    ihl = (buf[14] & 15) * 4
    if ihl < 20 or ETH_HLEN + ihl > len(buf):
        return
    buf[24:26] = b"\0\0"
    buf[24:26] = checksum_of(bytes(buf[14:14 + ihl])).to_bytes(2, "big")
    tot = int.from_bytes(buf[16:18], "big")
    proto, l4 = buf[23], ETH_HLEN + ihl
    if (buf[20] & 0x3f) or buf[21] or ETH_HLEN + tot > len(buf):
        return
    if proto == TCP_PROTO and l4 + 20 <= ETH_HLEN + tot:
        field = l4 + 16
    elif proto == UDP_PROTO and l4 + 8 <= ETH_HLEN + tot and buf[l4 + 6:l4 + 8] != b"\0\0":
        field = l4 + 6
    else:
        return
    buf[field:field + 2] = b"\0\0"
    value = checksum_of(pseudo_header(bytes(buf), proto, ETH_HLEN + tot - l4) + bytes(buf[l4:ETH_HLEN + tot]))
    buf[field:field + 2] = value.to_bytes(2, "big")


# --- The corpus

def _pod(l3):
    return Ether(src=POD_MAC, dst=GW_MAC) / l3


def _outside(l3):
    return Ether(src=ROUTER_MAC, dst=NODE_MAC) / l3


def _tcp(sport, dport, flags="S", payload=b""):
    return TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=2000 if "A" in flags else 0) / Raw(payload)


def _udp(sport, dport, payload=b"q"):
    return UDP(sport=sport, dport=dport) / Raw(payload)


def _zero_udp_checksum(pkt) -> bytes:
    raw = bytearray(bytes(pkt))
    l4 = ETH_HLEN + (raw[14] & 15) * 4
    raw[l4 + 6:l4 + 8] = b"\0\0"
    return bytes(raw)


def corpus(state: DesiredState, opened: list[Opened]) -> list[tuple[str, bytes]]:
    """(name, bytes) of every base packet: the established flows' packets both ways, new flows to
    every frontend from pods and from outside, other traffic, odd protocols and shapes."""
    out: list[tuple[str, object]] = []
    add = lambda name, pkt: out.append((name, pkt))   # noqa: E731

    for o in opened:
        f, proto = o.flow, o.flow.proto
        if proto == TCP_PROTO:
            for flags, payload in (("A", b"GET / HTTP/1.1\r\n\r\n"), ("PA", b"x" * 1400), ("FA", b""), ("R", b""),
                                   ("S", b""), ("RA", b"")):
                add(f"{f.name}/client-{flags}", _pod(IP(src=f.src, dst=f.dst) / _tcp(f.sport, f.dport, flags, payload)))
            for flags, payload in (("A", b"HTTP/1.1 200 OK\r\n\r\n"), ("SA", b""), ("FA", b""), ("R", b"")):
                add(f"{f.name}/backend-{flags}", _pod(IP(src=o.backend, dst=o.reply_dst) /
                                                      _tcp(o.backend_port, o.reply_port, flags, payload)))
        else:
            add(f"{f.name}/client", _pod(IP(src=f.src, dst=f.dst) / _udp(f.sport, f.dport, b"query")))
            add(f"{f.name}/client-nocsum", _zero_udp_checksum(_pod(IP(src=f.src, dst=f.dst) / _udp(f.sport, f.dport))))
            add(f"{f.name}/backend", _pod(IP(src=o.backend, dst=o.reply_dst) / _udp(o.backend_port, o.reply_port, b"answer")))

    sport = 43000
    for key, fe in sorted(state.frontends.items()):
        for src, wrap in ((LOCAL_CLIENT_POD, _pod), (CLIENT, _outside), (OTHER_CLIENT, _outside), (FAR_CLIENT, _outside)):
            sport += 1
            l3 = IP(src=src, dst=key.addr)
            name = f"new/{src}->{key.addr}:{key.port}/{key.proto}"
            if key.proto == TCP_PROTO:
                add(name, wrap(l3 / _tcp(sport, key.port)))
            elif key.proto == UDP_PROTO:
                add(name, wrap(l3 / _udp(sport, key.port)))
                add(name + "-nocsum", _zero_udp_checksum(wrap(l3 / _udp(sport, key.port))))
            else:
                add(name, wrap(l3 / SCTP(sport=sport, dport=key.port) / SCTPChunkInit()))
    for addr in sorted(state.service_ips):
        add(f"unused-port/{addr}/tcp", _pod(IP(src=LOCAL_CLIENT_POD, dst=addr) / _tcp(44000, 9999)))
        add(f"unused-port/{addr}/udp", _pod(IP(src=LOCAL_CLIENT_POD, dst=addr) / _udp(44001, 9999)))
        add(f"ping/{addr}", _pod(IP(src=LOCAL_CLIENT_POD, dst=addr) / ICMP(type=8, id=1, seq=1) / Raw(b"ping")))
        add(f"gre/{addr}", _pod(IP(src=LOCAL_CLIENT_POD, dst=addr) / GRE() / IP(src="1.1.1.1", dst="2.2.2.2")))

    vip, vip_port = "10.96.0.10", 80
    options = {"rr": [IPOption_RR(routers=["1.2.3.4", "5.6.7.8"])],
               "timestamp": [IPOption_Timestamp(flg=0, timestamp=[1, 2, 3])],
               "nop-max": [IPOption_NOP()] * 40}   # IHL 15: the longest header
    for name, opts in options.items():
        add(f"options-{name}/tcp", _pod(IP(src=LOCAL_CLIENT_POD, dst=vip, options=opts) / _tcp(45000, vip_port)))
        add(f"options-{name}/udp", _pod(IP(src=LOCAL_CLIENT_POD, dst="10.96.0.53", options=opts) / _udp(45001, 53)))
        add(f"options-{name}/nodeport", _outside(IP(src=CLIENT, dst=NODE_ADDR, options=opts) / _tcp(45002, 30081)))
        add(f"options-{name}/established", _pod(IP(src=opened[0].flow.src, dst=opened[0].flow.dst, options=opts) /
                                                _tcp(opened[0].flow.sport, opened[0].flow.dport, "A", b"data")))

    for dst in (vip, "10.200.1.2", NODE_ADDR):
        add(f"fragment-first/{dst}", _pod(IP(src=LOCAL_CLIENT_POD, dst=dst, flags="MF", id=7) /
                                          _tcp(45100, vip_port, "S", b"x" * 24)))
        add(f"fragment-later/{dst}", _pod(IP(src=LOCAL_CLIENT_POD, dst=dst, frag=3, id=7, proto=6) / Raw(b"y" * 40)))
        add(f"dont-fragment/{dst}", _pod(IP(src=LOCAL_CLIENT_POD, dst=dst, flags="DF") / _tcp(45101, vip_port)))
    for proto, payload in ((50, ESP(spi=1, seq=1) / Raw(b"\0" * 16)), (0, Raw(b"\0" * 8)), (255, Raw(b"\xff" * 8)),
                           (2, Raw(b"\x11\x64\xee\x9b\0\0\0\0")), (132, SCTP(sport=1, dport=9000))):
        for dst in (vip, "10.96.0.60", LOCAL_CLIENT_POD):
            add(f"proto-{proto}/{dst}", _pod(IP(src=LOCAL_CLIENT_POD, dst=dst, proto=proto) / payload))
    add("icmp-error/pod", _pod(IP(src="10.200.1.2", dst=LOCAL_CLIENT_POD) / ICMP(type=3, code=3) /
                             IP(src=LOCAL_CLIENT_POD, dst="10.200.1.2") / UDP(sport=1, dport=2)))

    # ICMP errors about the flows conntrack holds, both ways (issue 17): the backend's (or a router's)
    # about the client's packet as the backend got it, the client's about the backend's answer as
    # the client got it; with the L4 header whole, cut to 8 bytes, and with a payload.
    def l4(proto, sport, dport, payload=b"p" * 24):
        if proto == TCP_PROTO:
            return _tcp(sport, dport, "A", payload)
        if proto == UDP_PROTO:
            return _udp(sport, dport, payload)
        return SCTP(sport=sport, dport=dport) / Raw(payload)

    for o in opened:
        f, proto = o.flow, o.flow.proto
        seen_by_backend = bytes(IP(src=o.reply_dst, dst=o.backend, ttl=63) / l4(proto, o.reply_port, o.backend_port))
        seen_by_client = bytes(IP(src=f.dst, dst=f.src, ttl=63) / l4(proto, f.dport, f.sport))
        for (type_, code), cut in (((3, 3), None), ((3, 4), 28), ((11, 0), 48), ((12, 0), None)):
            for src in (o.backend, "10.200.9.1"):
                add(f"{f.name}/icmp-{type_}.{code}-from-{src}",
                    _pod(IP(src=src, dst=o.reply_dst) / ICMP(type=type_, code=code) / Raw(seen_by_backend[:cut])))
            add(f"{f.name}/icmp-{type_}.{code}-from-client",
                _pod(IP(src=f.src, dst=f.dst) / ICMP(type=type_, code=code) / Raw(seen_by_client[:cut])))

    # IPv4 fragments of the flows' datagrams, both ways: run in any order, a later one finds its
    # first fragment's ports only when that came first (bpf/frag.h)
    for i, o in enumerate(opened):
        f, proto = o.flow, o.flow.proto
        if proto not in (TCP_PROTO, UDP_PROTO):
            continue
        for side, (src, sport, dst, dport) in (("client", (f.src, f.sport, f.dst, f.dport)),
                                               ("backend", (o.backend, o.backend_port, o.reply_dst, o.reply_port))):
            datagram = IP(src=src, dst=dst, id=600 + i) / l4(proto, sport, dport, b"f" * 2000)
            for n, frag in enumerate(fragment(datagram, fragsize=1000)):
                add(f"{f.name}/{side}-fragment-{n}", _pod(frag))

    # Too big for the uplink without DF on an SNATed NodePort flow, both ways: from_uplink hands them
    # to the stack with only the destination translated; and the fragments the stack cuts from them,
    # which to_uplink SNATs as they leave (bpf/fib.h, bpf/frag.h)
    for i, o in enumerate(opened):
        f, proto = o.flow, o.flow.proto
        if proto not in (TCP_PROTO, UDP_PROTO) or o.reply_dst != NODE_ADDR:
            continue
        for side, (src, sport, dst, dport, handed_dst, handed_dport) in (
                ("client", (f.src, f.sport, f.dst, f.dport, o.backend, o.backend_port)),
                ("backend", (o.backend, o.backend_port, o.reply_dst, o.reply_port, f.src, f.sport))):
            ip_id = 700 + 2 * i + (side == "backend")
            add(f"{f.name}/{side}-too-big", _outside(IP(src=src, dst=dst, id=ip_id) / l4(proto, sport, dport, b"b" * 2000)))
            handed = IP(src=src, dst=handed_dst, id=ip_id, ttl=63) / l4(proto, sport, handed_dport, b"b" * 2000)
            for n, frag in enumerate(fragment(handed, fragsize=1400)):
                add(f"{f.name}/{side}-too-big-cut-{n}", _outside(frag))

    add("arp", Ether(src=POD_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=LOCAL_CLIENT_POD, pdst="10.200.0.1"))
    add("vlan/tcp-vip", Ether(src=POD_MAC, dst=GW_MAC) / Dot1Q(vlan=7) / IP(src=LOCAL_CLIENT_POD, dst=vip) /
        _tcp(45200, vip_port))
    add("qinq/tcp-vip", Ether(src=POD_MAC, dst=GW_MAC, type=0x88a8) / Dot1Q(vlan=1) / Dot1Q(vlan=2) /
        IP(src=LOCAL_CLIENT_POD, dst=vip) / _tcp(45201, vip_port))
    add("ipv6/tcp", Ether(src=POD_MAC, dst=GW_MAC) / IPv6(src="fd00::9", dst="fd00::10") / _tcp(45202, 80))
    add("ipv6-in-ipv4-ethertype", Ether(src=POD_MAC, dst=GW_MAC, type=0x0800) / IPv6(src="fd00::9", dst="fd00::10") /
        _tcp(45203, 80))
    ipv6_corpus(add)
    add("lldp", Ether(src=POD_MAC, dst="01:80:c2:00:00:0e", type=0x88cc) / Raw(b"\x02\x07\x04" + b"\0" * 40))

    add("pod-to-pod", _pod(IP(src=LOCAL_CLIENT_POD, dst="10.200.1.2") / _tcp(45300, 8080)))
    add("pod-to-internet", _pod(IP(src=LOCAL_CLIENT_POD, dst="1.1.1.1") / _udp(45301, 53)))
    add("outside-to-ssh", _outside(IP(src=CLIENT, dst=NODE_ADDR) / _tcp(45302, 22)))
    add("backend-reply-without-flow", _pod(IP(src="10.200.1.2", dst=LOCAL_CLIENT_POD) / _tcp(8080, 50000, "SA")))
    add("hairpin-address", _pod(IP(src="10.200.0.2", dst=HAIRPIN) / _tcp(8080, 50001, "A")))
    return [(name, bytes(pkt)) for name, pkt in out]


def ipv6_corpus(add) -> None:
    """IPv6 shapes: extension header chains in front of every L4, fragments (first, later, atomic,
    overlapping the L4 header), ICMPv6 errors quoting a flow, and odd addresses."""
    chains = {
        "hop": lambda: IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\0" * 4)]),
        "routing": lambda: IPv6ExtHdrRouting(addresses=[BACKEND6]),
        "srh": lambda: IPv6ExtHdrSegmentRouting(addresses=[BACKEND6, VIP6]),
        "dstopt": lambda: IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 12)]),
        "hop-dstopt-routing-dstopt": lambda: (IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() /
                                              IPv6ExtHdrRouting(addresses=[VIP6]) / IPv6ExtHdrDestOpt()),
        "hop-fragment-atomic": lambda: IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(offset=0, m=0, id=9),
        "eight-dstopts": lambda: IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() /
        IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt(),
    }
    for name, chain in chains.items():
        add(f"ipv6-{name}/tcp", _pod(IPv6(src=POD6, dst=VIP6) / chain() / _tcp(46000, 80)))
        add(f"ipv6-{name}/udp", _pod(IPv6(src=POD6, dst=VIP6) / chain() / _udp(46001, 53)))
    for proto, l4 in ((TCP_PROTO, _tcp(46014, 80)), (UDP_PROTO, _udp(46015, 53))):
        # AH's length counts 4-byte words, less 2: 12 fixed bytes and a 12-byte ICV
        add(f"ipv6-ah/{proto}", _pod(IPv6(src=POD6, dst=VIP6) / AH(nh=proto, payloadlen=4, spi=1, seq=1, icv=b"\0" * 12) /
                                     l4))
    add("ipv6-plain/tcp-backend-reply", _pod(IPv6(src=BACKEND6, dst=POD6) / _tcp(8080, 46002, "SA")))
    add("ipv6-plain/udp-nocsum", _pod(IPv6(src=POD6, dst=VIP6) / UDP(sport=46003, dport=53, chksum=0) / Raw(b"q")))
    add("ipv6-plain/sctp", _pod(IPv6(src=POD6, dst=VIP6) / SCTP(sport=46004, dport=9000) / SCTPChunkInit()))
    add("ipv6-nodeport/tcp", _outside(IPv6(src=CLIENT6, dst="fd00:192:168:64::4") / _tcp(46005, 30081)))
    add("ipv6-no-next-header", _pod(IPv6(src=POD6, dst=VIP6, nh=NH_NONE) / Raw(b"\0" * 8)))
    add("ipv6-esp", _pod(IPv6(src=POD6, dst=VIP6) / ESP(spi=1, seq=1) / Raw(b"\0" * 16)))
    add("ipv6-jumbo", _pod(IPv6(src=POD6, dst=VIP6, plen=0) / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=68)]) /
                           _tcp(46006, 80, "A", b"j" * 40)))
    add("ipv6-ping", _pod(IPv6(src=POD6, dst=VIP6) / ICMPv6EchoRequest(id=1, seq=1)))
    for addr in ODD_ADDRESSES6:
        add(f"ipv6-odd/{addr}", _pod(IPv6(src=addr, dst=VIP6) / _tcp(46007, 80)))
        add(f"ipv6-odd-dst/{addr}", _pod(IPv6(src=POD6, dst=addr) / _udp(46008, 53)))
    # fragments: a datagram cut after its fragment header, and cut inside its L4 header
    datagram = IPv6(src=POD6, dst=VIP6) / IPv6ExtHdrFragment(id=77) / _udp(46009, 53, b"f" * 2000)
    for n, frag in enumerate(fragment6(datagram, 1280)):
        add(f"ipv6-fragment-{n}", _pod(frag))
    add("ipv6-fragment-inside-l4", _pod(IPv6(src=POD6, dst=VIP6) / IPv6ExtHdrFragment(id=78, m=1, nh=TCP_PROTO) /
                                        Raw(bytes(_tcp(46010, 80))[:8])))
    add("ipv6-fragment-later-only", _pod(IPv6(src=POD6, dst=VIP6) / IPv6ExtHdrFragment(id=79, offset=10, nh=UDP_PROTO) /
                                         Raw(b"l" * 64)))
    # ICMPv6 errors about a flow, both ways, whole and cut
    seen_by_backend = bytes(IPv6(src=POD6, dst=BACKEND6, hlim=63) / _udp(46011, 53, b"p" * 24))
    seen_by_client = bytes(IPv6(src=VIP6, dst=POD6, hlim=63) / _tcp(80, 46012, "A", b"p" * 24))
    for error, cut in ((ICMPv6DestUnreach(code=4), None), (ICMPv6PacketTooBig(mtu=1280), 48),
                       (ICMPv6TimeExceeded(), 44), (ICMPv6DestUnreach(code=1), 40)):
        add(f"ipv6-icmp-{error.type}.{error.code}-from-backend", _pod(IPv6(src=BACKEND6, dst=POD6) / error.copy() /
                                                                     Raw(seen_by_backend[:cut])))
        add(f"ipv6-icmp-{error.type}.{error.code}-from-client", _pod(IPv6(src=POD6, dst=VIP6) / error.copy() /
                                                                    Raw(seen_by_client[:cut])))
    add("ipv6-vlan/tcp", Ether(src=POD_MAC, dst=GW_MAC) / Dot1Q(vlan=7) / IPv6(src=POD6, dst=VIP6) / _tcp(46013, 80))


def ipv6_chain(buf: bytes) -> list[tuple[int, int]]:
    """(offset of the next-header field, offset of the header it names) along an IPv6 frame's
    chain, as far as the headers are whole; [] when the frame is not IPv6."""
    if len(buf) < ETH_HLEN + IPV6_HLEN or buf[12:14] != b"\x86\xdd":
        return []
    chain, field, off = [], ETH_HLEN + 6, ETH_HLEN + IPV6_HLEN
    for _ in range(12):
        chain.append((field, off))
        nh = buf[field]
        if nh not in EXTENSION_HEADERS or off + 8 > len(buf):
            break
        field = off
        off += 8 if nh == NH_FRAGMENT else (buf[off + 1] + 2) * 4 if nh == NH_AH else (buf[off + 1] + 1) * 8
    return chain


# --- Mutation

class Mutator:
    """Makes fuzzed packets from base packets with plain bytes operations; deterministic for a seed."""

    # Sources that must never get an ICMP error, and other odd ones.
    ODD_SOURCES = ("0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1", "240.0.0.1", "10.200.0.255")

    def __init__(self, seed: int, state: DesiredState, opened: list[Opened]):
        self.rng = random.Random(seed)
        self.frontends = [(key.addr, key.port, key.proto) for key in sorted(state.frontends)]
        self.service_ips = sorted(state.service_ips)
        backends = sorted({b.addr for bs in state.backends.values() for b in bs})
        pack = lambda addr: bytes(map(int, addr.split(".")))   # noqa: E731
        self.addresses = [pack(a) for a in sorted({*self.service_ips, *backends, NODE_ADDR, HAIRPIN, CLIENT,
                                                   OTHER_CLIENT, FAR_CLIENT, LOCAL_CLIENT_POD, *self.ODD_SOURCES,
                                                   *(key.addr for key in state.frontends)})]
        self.frontend_bytes = [(pack(a), p, proto) for a, p, proto in self.frontends]
        # Every tuple conntrack knows from the start, both directions of every flow.
        self.tuples = []
        for o in opened:
            f = o.flow
            self.tuples += [(pack(f.src), f.sport, pack(f.dst), f.dport, f.proto),
                            (pack(o.backend), o.backend_port, pack(o.reply_dst), o.reply_port, f.proto)]
        self.ports = sorted({p for _, p, _ in self.frontends} | {o.reply_port for o in opened} |
                            {o.backend_port for o in opened} | {0, 1, 53, 8080, 32768, 65535})
        self.ops = [(self.retarget, 6), (self.set_tuple, 3), (self.set_source, 2), (self.set_ports, 2),
                    (self.set_tcp_flags, 2), (self.truncate_at_boundary, 2), (self.truncate_anywhere, 2),
                    (self.set_ihl, 2), (self.set_total_length, 2), (self.flip_bytes, 3), (self.set_fragment, 2),
                    (self.set_protocol, 1), (self.set_ethertype, 1), (self.append_bytes, 1),
                    (self.break_checksum, 1), (self.zero_udp_checksum, 1)]
        self.op_table = [op for op, weight in self.ops for _ in range(weight)]
        # IPv6 frames get their own operations and the byte-level ones (the others find no IPv4 header)
        self.ops6 = [(self.retarget6, 3), (self.set_next_header6, 3), (self.set_extension_length6, 2),
                     (self.truncate_in_chain6, 3), (self.set_payload_length6, 2), (self.set_fragment6, 2),
                     (self.set_ports6, 2), (self.set_tcp_flags6, 1), (self.flip_bytes, 3), (self.truncate_anywhere, 1),
                     (self.set_ethertype, 1), (self.append_bytes, 1)]
        self.op_table6 = [op for op, weight in self.ops6 for _ in range(weight)]

    def mutate(self, base: bytes) -> tuple[bytes, tuple[str, ...]]:
        """A mutated copy of `base` (always at least an Ethernet header) and the names of the
        operations applied, for the report."""
        rng = self.rng
        buf = bytearray(base)
        if rng.random() < 0.05:
            return base, ()
        applied = []
        table = self.op_table6 if base[12:14] == b"\x86\xdd" else self.op_table
        for _ in range(1 + (rng.random() < 0.35) + (rng.random() < 0.1)):
            op = rng.choice(table)
            op(buf)
            applied.append(op.__name__)
        if len(buf) < ETH_HLEN:   # the kernel's test run refuses less than an Ethernet header
            buf += bytes(ETH_HLEN - len(buf))
        return bytes(buf), tuple(applied)

    # Each operation changes buf in place; those that need the IP header do nothing without it.

    @staticmethod
    def _l4(buf: bytearray) -> int:
        """Offset of the L4 header, or 0 when the frame has no IPv4 header with room for ports."""
        if len(buf) < 34 or buf[12:14] != b"\x08\x00":
            return 0
        l4 = ETH_HLEN + (buf[14] & 15) * 4
        return l4 if l4 >= 34 and l4 + 4 <= len(buf) else 0

    def _maybe_fix(self, buf: bytearray) -> None:
        if self.rng.random() < 0.85:
            fix_checksums(buf)

    def retarget(self, buf: bytearray) -> None:
        """To a frontend (address, port and protocol), or a service address on some port."""
        if len(buf) < 34:
            return
        rng = self.rng
        if rng.random() < 0.8:
            addr, port, proto = rng.choice(self.frontend_bytes)
        else:
            addr, port, proto = bytes(map(int, rng.choice(self.service_ips).split("."))), rng.choice(self.ports), \
                rng.choice((TCP_PROTO, UDP_PROTO))
        buf[30:34] = addr
        if rng.random() < 0.7:
            buf[23] = proto
        l4 = self._l4(buf)
        if l4:
            buf[l4 + 2:l4 + 4] = port.to_bytes(2, "big")
        self._maybe_fix(buf)

    def set_tuple(self, buf: bytearray) -> None:
        """Exactly a tuple conntrack holds (either direction of an established flow)."""
        l4 = self._l4(buf)
        if not l4:
            return
        src, sport, dst, dport, proto = self.rng.choice(self.tuples)
        buf[26:30], buf[30:34], buf[23] = src, dst, proto
        buf[l4:l4 + 4] = struct.pack("!HH", sport, dport)
        self._maybe_fix(buf)

    def set_source(self, buf: bytearray) -> None:
        if len(buf) < 34:
            return
        buf[26:30] = self.rng.choice(self.addresses)
        self._maybe_fix(buf)

    def set_ports(self, buf: bytearray) -> None:
        l4 = self._l4(buf)
        if not l4:
            return
        rng = self.rng
        which = rng.randrange(3)
        if which != 1:
            buf[l4:l4 + 2] = (rng.choice(self.ports) if rng.random() < 0.5 else rng.randrange(65536)).to_bytes(2, "big")
        if which != 0:
            buf[l4 + 2:l4 + 4] = (rng.choice(self.ports) if rng.random() < 0.5 else rng.randrange(65536)).to_bytes(2, "big")
        self._maybe_fix(buf)

    def set_tcp_flags(self, buf: bytearray) -> None:
        l4 = self._l4(buf)
        if not l4 or l4 + 14 > len(buf):
            return
        rng = self.rng
        buf[l4 + 13] = rng.choice((0x02, 0x12, 0x10, 0x11, 0x04, 0x14, 0x01, 0x03, 0x06, 0x00, 0xff)) \
            if rng.random() < 0.8 else rng.randrange(256)
        self._maybe_fix(buf)

    def truncate_at_boundary(self, buf: bytearray) -> None:
        """Cut where a header ends (or one byte short of it): Ethernet, IP, L4 ports, UDP, TCP."""
        l4 = ETH_HLEN + (buf[14] & 15) * 4 if len(buf) > 14 else 34
        cut = self.rng.choice((ETH_HLEN, 34, l4, l4 + 4, l4 + 8, l4 + 14, l4 + 20)) - (self.rng.random() < 0.5)
        del buf[max(cut, ETH_HLEN):]

    def truncate_anywhere(self, buf: bytearray) -> None:
        if len(buf) > ETH_HLEN:
            del buf[self.rng.randrange(ETH_HLEN, min(len(buf), 100)):]

    def set_ihl(self, buf: bytearray) -> None:
        if len(buf) > 14:
            rng = self.rng
            version = 4 if rng.random() < 0.9 else rng.randrange(16)
            buf[14] = version << 4 | rng.randrange(16)
            self._maybe_fix(buf)

    def set_total_length(self, buf: bytearray) -> None:
        if len(buf) < 18:
            return
        rng = self.rng
        frame_ip_len = len(buf) - ETH_HLEN
        value = rng.choice((frame_ip_len + 1, frame_ip_len - 1, frame_ip_len + rng.randrange(1, 2000),
                            rng.randrange(0, 60), rng.randrange(65536), 0xffff, 0))
        buf[16:18] = (value & 0xffff).to_bytes(2, "big")
        self._maybe_fix(buf)

    def flip_bytes(self, buf: bytearray) -> None:
        rng = self.rng
        for _ in range(rng.randrange(1, 5)):
            limit = len(buf) if rng.random() < 0.2 else min(len(buf), 80)
            buf[rng.randrange(limit)] = rng.randrange(256)

    def set_fragment(self, buf: bytearray) -> None:
        if len(buf) < 22:
            return
        rng = self.rng
        flags = rng.choice((0x20, 0x40, 0x00, 0x60, 0x80))   # MF, DF, none, DF|MF, reserved
        offset = rng.choice((0, 0, 1, 3, 185, 8191))
        buf[20:22] = (flags << 8 | offset).to_bytes(2, "big")
        self._maybe_fix(buf)

    def set_protocol(self, buf: bytearray) -> None:
        if len(buf) > 23:
            buf[23] = self.rng.choice((TCP_PROTO, UDP_PROTO, 1, 47, 50, 132, 0, 255, self.rng.randrange(256)))
            self._maybe_fix(buf)

    def set_ethertype(self, buf: bytearray) -> None:
        buf[12:14] = self.rng.choice((b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x08\x06", b"\x88\xa8", b"\x00\x00"))

    def append_bytes(self, buf: bytearray) -> None:
        """Bytes past the IP total length: Ethernet padding, or garbage."""
        n = self.rng.choice((1, 2, 6, 18, 64))
        buf += bytes(n) if self.rng.random() < 0.5 else self.rng.randbytes(n)

    def break_checksum(self, buf: bytearray) -> None:
        l4 = self._l4(buf)
        rng = self.rng
        if l4 and rng.random() < 0.6:
            field = l4 + (16 if buf[23] == TCP_PROTO else 6)
        elif len(buf) >= 26:
            field = 24
        else:
            return
        if field + 2 <= len(buf):
            buf[field + rng.randrange(2)] ^= 1 << rng.randrange(8)

    def zero_udp_checksum(self, buf: bytearray) -> None:
        l4 = self._l4(buf)
        if l4 and buf[23] == UDP_PROTO and l4 + 8 <= len(buf):
            buf[l4 + 6:l4 + 8] = b"\0\0"

    # IPv6: the chain's fields; after a change the L4 checksum is left as it was (the programs pass
    # IPv6 whatever its checksums)

    def retarget6(self, buf: bytearray) -> None:
        if len(buf) >= ETH_HLEN + IPV6_HLEN:
            field = ETH_HLEN + 24 if self.rng.random() < 0.7 else ETH_HLEN + 8   # destination, or source
            addr = self.rng.choice((VIP6, BACKEND6, POD6, CLIENT6, *ODD_ADDRESSES6))
            buf[field:field + 16] = ipaddress.IPv6Address(addr).packed

    def set_next_header6(self, buf: bytearray) -> None:
        chain = ipv6_chain(buf)
        if chain:
            field, _ = self.rng.choice(chain)
            buf[field] = self.rng.choice((*EXTENSION_HEADERS, NH_ESP, NH_ICMPV6, NH_NONE, TCP_PROTO, UDP_PROTO,
                                          SCTP_PROTO, 4, 41, 135, 139, 253, self.rng.randrange(256)))

    def set_extension_length6(self, buf: bytearray) -> None:
        headers = [off for field, off in ipv6_chain(buf) if buf[field] in EXTENSION_HEADERS and off + 2 <= len(buf)]
        if headers:
            off = self.rng.choice(headers)
            buf[off + 1] = self.rng.choice((0, 1, 2, 31, 255, self.rng.randrange(256)))

    def truncate_in_chain6(self, buf: bytearray) -> None:
        """Cut where a header of the chain starts, a byte past it, or inside it."""
        chain = ipv6_chain(buf)
        if chain:
            _, off = self.rng.choice(chain)
            del buf[max(ETH_HLEN, off + self.rng.choice((-1, 0, 1, 2, 4, 7, 8, 13))):]

    def set_payload_length6(self, buf: bytearray) -> None:
        if len(buf) >= ETH_HLEN + 6:
            rng = self.rng
            actual = len(buf) - ETH_HLEN - IPV6_HLEN
            value = rng.choice((actual + 1, actual - 1, actual + rng.randrange(1, 2000), 0, 8, 0xffff,
                                rng.randrange(65536)))
            buf[ETH_HLEN + 4:ETH_HLEN + 6] = (value & 0xffff).to_bytes(2, "big")

    def set_fragment6(self, buf: bytearray) -> None:
        frags = [off for field, off in ipv6_chain(buf) if buf[field] == NH_FRAGMENT and off + 8 <= len(buf)]
        if frags:
            rng = self.rng
            off = rng.choice(frags)
            offset = rng.choice((0, 0, 1, 3, 160, 8191))   # in 8-byte units; low bits: M and reserved
            buf[off + 2:off + 4] = (offset << 3 | rng.choice((0, 1, 1, 6, 7))).to_bytes(2, "big")

    def _l4_6(self, buf: bytearray) -> int:
        """Offset of the L4 header at the end of the chain, or 0 without room for its ports."""
        chain = ipv6_chain(buf)
        if not chain:
            return 0
        field, off = chain[-1]
        return off if buf[field] in (TCP_PROTO, UDP_PROTO, SCTP_PROTO) and off + 4 <= len(buf) else 0

    def set_ports6(self, buf: bytearray) -> None:
        l4 = self._l4_6(buf)
        if l4:
            rng = self.rng
            which = l4 + 2 * rng.randrange(2)
            buf[which:which + 2] = rng.choice((80, 53, 30081, 0, 8080, rng.randrange(65536))).to_bytes(2, "big")

    def set_tcp_flags6(self, buf: bytearray) -> None:
        l4 = self._l4_6(buf)
        if l4 and l4 + 14 <= len(buf):
            buf[l4 + 13] = self.rng.choice((0x02, 0x12, 0x10, 0x11, 0x04, 0xff, self.rng.randrange(256)))
