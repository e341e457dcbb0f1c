"""What the packet fuzzer accepts from a program, packet by packet, and from the maps afterwards.

Parsing follows bpf/parse.h: a packet is *whole* when it is Ethernet + IPv4 with version 4, IHL
>= 5, IHL*4 <= total length, 14 + total length <= frame, and for TCP/UDP/SCTP/ICMP the L4 header
inside both the frame and the total length. A whole packet without a fragment offset (a first
fragment, MF set, is whole: its L4 header is there; SCTP's is not, its CRC spans the datagram) and
with protocol TCP, UDP or SCTP is a *flow packet*: the only kind a program translates whole.

A *later fragment* (offset > 0, TCP or UDP) carries no ports: the tc programs of one object (the
workload pair, the uplink pair) remember every whole first fragment's ports by (source,
destination, IP id, protocol), and the oracle remembers them the same way. A later fragment is
untouched; or dropped by from_workload, only when it goes to a service address; or translated:
only its addresses and IP checksum (kept incrementally), exactly as the conntrack entry of the
remembered tuple says at that hook (the entry programs' conditions), MACs and verdict as for its
flow's packets. XDP passes every fragment, first ones included, untouched.

Every run gets exactly one of these outcomes, else it is a violation:

untouched  verdict OK (tc) / PASS (XDP), output identical to the input. Required for packets that
           are not IPv4 or not whole. Fragments and other protocols are untouched too, except that
           from_workload drops them, and only them, when they go to a service address (it must:
           a ClusterIP carries only its TCP/UDP/SCTP ports). A flow packet to a frontend the program
           serves (from_workload: any frontend and any service address; from_uplink: external
           frontends) is left untouched only when conntrack held its tuple before the run as a
           NAT_REV (a backend's answer, translated elsewhere, or a stale pair forgotten) or as the
           other side's NAT_FWD (pods' flows are not the uplink's to take, nor the reverse).
dropped    TC_ACT_SHOT / XDP_DROP. to_workload and to_uplink never drop. from_workload drops only
           packets to a service address or frontend address, from_uplink only packets to an
           external frontend address (source ranges, Local policy without local backend, no route
           after SNAT, a reply tuple another live flow holds, an ICMP error it may not send),
           xdp_uplink only flow packets to a source-ranges frontend from a source outside its
           ranges.
translated a flow packet, same length, verdict OK/REDIRECT (tc) or TX/REDIRECT (XDP), where only
           the MACs, the IP checksum, the addresses, the L4 ports and the L4 checksum differ
           (TTL, IP id, options, flags, payload, trailing bytes unchanged). Checksums are updated
           incrementally, so each sum's error is unchanged: valid stays valid, wrong stays wrong
           by the same amount (an input with a bad checksum is not the program's to fix); a UDP
           checksum of 0 ("none") stays 0, a non-zero one never becomes 0; SCTP's CRC32c keeps its
           error too (XOR), and a CRC of 0 (not computed yet) stays 0. After the run conntrack
           holds an entry keyed by the input's tuple that says exactly this translation:
             NAT_FWD  destination := (nat_addr, nat_port); with CT_FLAG_SNAT source := (snat_addr,
                      snat_port, or the packet's port when 0); else the source is kept.
             NAT_REV  source := (nat_addr, nat_port); with CT_FLAG_SNAT destination := (snat_addr,
                      snat_port or the packet's port); else the destination is kept.
           and the translation agrees with the services: NAT_FWD goes from a frontend to one of
           its backends (from_uplink/XDP: an external frontend, a source inside its ranges, under
           Local policy a local backend without SNAT; SNAT exactly when the backend is remote);
           NAT_REV goes from a backend to a frontend of the same service. Source NAT is the
           hairpin address in the workload programs (client == backend, sent straight back: MACs
           swapped, REDIRECT) and the node's address in the uplink programs (by FIB: next hop's
           and the node's MACs, REDIRECT/TX; or MACs kept when the kernel resolves the
           neighbour). Without SNAT: verdict OK, MACs kept. XDP translates only SNATed flows, and
           tc must produce the same bytes for the same input (checked by the runner).
rejected   TC_ACT_REDIRECT with an ICMP port unreachable in place of a flow packet: from_workload
           for a service address port without frontend or a frontend without backends (no Local
           flag); from_uplink for an external frontend without backends (Cluster policy). Ethernet
           addresses swapped; IPv4 header of 20 bytes, TTL 64, id 0, no fragment bits, from the
           packet's destination to its source, valid checksum; ICMP type 3 code 3, valid
           checksum, quoting the original IP header (options included) and 8 bytes of L4 as they
           came in. Never sent to a source that is not one host (RFC 1122 3.2.2: 0/8, 127/8,
           multicast 224/4, 240/4 and the broadcast). The same shape, from from_uplink on what it
           forwards past the stack (to the node's or an external address): time exceeded (type 11
           code 0) for a packet of TTL <= 1, frag-needed (type 3 code 4, the uplink's MTU in bytes
           6-7) for one larger than that MTU with DF. The same time exceeded from the workload
           programs for a packet of TTL <= 1 they would send straight back (hairpin).
handed up  from_uplink, a flow packet or later fragment of one of its SNATed flows, larger than the
           uplink's MTU, without DF, TTL > 1, TCP or UDP: verdict OK, only the destination (a later
           fragment's address, else address and port) translated as the entry says, checksums
           incrementally, source, TTL and MACs as they came: the stack fragments it. The oracle
           remembers its source NAT by (source, new destination, IP id, protocol), and to_uplink
           must put it on every fragment of that key (first: address, port, L4 checksum; later:
           address, IP checksum) and change nothing else.

What the programs send on past the stack's forwarding (the uplink's SNAT by FIB redirect or XDP_TX,
the hairpin straight back, and the ICMP errors and later fragments that follow them) leaves with
its TTL one lower, the IP checksum to match; everything else keeps its TTL. An ICMP error or later
fragment on such a path at TTL <= 1 is dropped (no ICMP error about either).

The maps afterwards: frontends, backends, service addresses, source ranges and config are byte for
byte what was written (the programs never write them); every conntrack entry is well formed for
its type (see check_conntrack); counters grew only for the services' ids, at least by the
translations counted per id and at most by translations plus drops.
"""
import ipaddress
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

from ebpflb.core.model import DesiredState
from ebpflb.datapath.libbpf import ffi as bpf_ffi, lib
from ebpflb.datapath.structs import C, ffi, ip_str, to_bytes
from ebpflb.datapath.sctp_crc import crc32c
from tests.fuzz_packets import ETH_HLEN, SCTP_PROTO, TCP_PROTO, UDP_PROTO, l4_sum, ones_sum

FRAG_TIMEOUT_S = 30          # bpf/frag.h's FRAG_TIMEOUT_NS
FRAG_TIMEOUT_SLACK_S = 0.5   # clock.h's cached "now" and the time between a run and the oracle's clock

TC_ACT_NEXT, TC_ACT_SHOT, TC_ACT_REDIRECT = -1, 2, 7   # TC_ACT_NEXT: TC_ACT_UNSPEC, the next filter sees it (bpf/consts.h)
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 0, 1, 2, 3, 4
XDP_PROGRAMS = {"xdp_uplink"}
WORKLOAD_PROGRAMS = {"from_workload", "to_workload"}

NOT_IPV4, MALFORMED, FRAGMENT, WHOLE = "not-ipv4", "malformed", "fragment", "whole"
FWD, REV = C.CT_TYPE_NAT_FWD, C.CT_TYPE_NAT_REV
SNAT, UPLINK = C.CT_FLAG_SNAT, C.CT_FLAG_UPLINK
# struct ct_value (layout 8), addresses (IPv4: the first 4 of their 16 bytes) and ports as raw bytes:
# created, last seen, tcp_seen, type, flags, family and pad0, svc_id, nat_addr, nat_port, snat_port,
# snat_addr, pad2, twin. Checked against the header's own offsets below.
CT_VALUE = struct.Struct("=QQQBBHI4s12x2s2s4s12xI40s")
assert CT_VALUE.size == ffi.sizeof("struct ct_value") and \
    [ffi.offsetof("struct ct_value", f) for f in ("svc_id", "nat_addr", "nat_port", "snat_addr", "twin")] == \
    [28, 32, 48, 52, 72], "tests/fuzz_oracle.py's CT_VALUE no longer matches bpf/structs.h"
CT_KEY_SIZE = ffi.sizeof("struct ct_key")
_KEY_AT = {f: ffi.offsetof("struct ct_key", f) for f in ("src_addr", "dst_addr", "src_port", "dst_port", "proto")}


def ct_key_bytes(src: bytes, dst: bytes, sport: bytes, dport: bytes, proto: int) -> bytes:
    """An IPv4 struct ct_key from the bytes a packet carries: the rest (IPv6 words, family, pad) zero."""
    key = bytearray(CT_KEY_SIZE)
    for field, value in (("src_addr", src), ("dst_addr", dst), ("src_port", sport), ("dst_port", dport),
                         ("proto", bytes((proto,)))):
        key[_KEY_AT[field]:_KEY_AT[field] + len(value)] = value
    return bytes(key)


def ct_key_fields(key: bytes) -> tuple[bytes, bytes, bytes, bytes, int, bytes]:
    """(src, dst, sport, dport, proto, everything else) of an IPv4 struct ct_key's bytes."""
    src, dst = key[_KEY_AT["src_addr"]:_KEY_AT["src_addr"] + 4], key[_KEY_AT["dst_addr"]:_KEY_AT["dst_addr"] + 4]
    sport, dport = key[_KEY_AT["src_port"]:_KEY_AT["src_port"] + 2], key[_KEY_AT["dst_port"]:_KEY_AT["dst_port"] + 2]
    proto = key[_KEY_AT["proto"]]
    return src, dst, sport, dport, proto, ct_key_bytes(src, dst, sport, dport, proto) != key
FLOW_PROTOS = (TCP_PROTO, UDP_PROTO, SCTP_PROTO)
ICMP_ERRORS = (3, 11, 12)   # destination unreachable, time exceeded, parameter problem (bpf/icmp_error_parse.h)
UPLINK_MTU = 1500   # the fuzzer's uplink namespace (tests/lab.py routed_uplink: a veth)
NOT_ONE_HOST = [ipaddress.ip_network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")]


def sctp_crc_error(frame: bytes, l4: int, tot: int) -> int:
    """The SCTP packet's CRC32c field XOR the CRC its bytes call for: 0 when it checks out."""
    sctp = bytearray(frame[l4:ETH_HLEN + tot])
    field = int.from_bytes(sctp[8:12], "little")
    sctp[8:12] = bytes(4)
    return field ^ crc32c(bytes(sctp))


def addr(text: str) -> bytes:
    return bytes(map(int, text.split(".")))


def parse(frame: bytes):
    """(class, ihl bytes, total length, protocol); like bpf/parse.h's parse_headers()."""
    n = len(frame)
    if n < 34:
        return (NOT_IPV4 if frame[12:14] != b"\x08\x00" else MALFORMED), 0, 0, 0
    if frame[12:14] != b"\x08\x00":
        return NOT_IPV4, 0, 0, 0
    version_ihl = frame[14]
    ihl = (version_ihl & 15) * 4
    tot = frame[16] << 8 | frame[17]
    if version_ihl >> 4 != 4 or ihl < 20 or tot < ihl or ETH_HLEN + tot > n:
        return MALFORMED, 0, 0, 0
    proto = frame[23]
    if frame[20] & 0x1f or frame[21] or (frame[20] & 0x20 and proto == SCTP_PROTO):
        return FRAGMENT, ihl, tot, proto
    need = {TCP_PROTO: 20, UDP_PROTO: 8, SCTP_PROTO: 12, 1: 8}.get(proto, 0)
    if need and (ETH_HLEN + ihl + need > n or ihl + need > tot):
        return MALFORMED, 0, 0, 0
    return WHOLE, ihl, tot, proto


@dataclass
class Run:
    """One packet through one program, as the oracle saw it before the run."""
    prog: str
    pkt: bytes
    cls: str
    ihl: int
    tot: int
    proto: int
    held_before: bool = False  # conntrack held a NAT_REV, or the other side's NAT_FWD, for the tuple
    remembered: tuple | None = None  # a later fragment: its datagram's ports, as the oracle remembers them
    handed_expired: bool = False     # that hand-up is older than bpf/frag.h trusts (or nearly)
    handed: tuple | None = None      # to_uplink, a fragment of a datagram from_uplink handed to the stack:
                                     # the (source, port) it leaves from

    @property
    def first_fragment(self) -> bool:
        return self.cls == WHOLE and bool(self.pkt[20] & 0x20)

    @property
    def later_fragment(self) -> bool:
        return self.cls == FRAGMENT and self.proto in (TCP_PROTO, UDP_PROTO) and bool(self.pkt[20] & 0x1f or self.pkt[21])

    @property
    def frag_key(self) -> tuple:
        return self.pkt[26:30], self.pkt[30:34], self.pkt[18:20], self.proto

    @property
    def flow(self) -> bool:
        return self.cls == WHOLE and self.proto in FLOW_PROTOS

    @property
    def l4(self) -> int:
        return ETH_HLEN + self.ihl


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)          # (prog, outcome) -> runs
    translated_by_id: Counter = field(default_factory=Counter)  # svc id -> translated runs
    bytes_by_id: Counter = field(default_factory=Counter)       # svc id -> their bytes
    dropped: int = 0
    wrong_checksum_kept: int = 0   # translations of a packet whose IP or L4 checksum was wrong
    zero_udp_checksum_kept: int = 0


class Violation(AssertionError):
    pass


class Oracle:
    def __init__(self, state: DesiredState, ct_fd: int, *, hairpin: str, node_addr: str, node_mac: str,
                 next_hop_macs: set[str]):
        self.ct_fd = ct_fd
        self.hairpin, self.node_addr = addr(hairpin), addr(node_addr)
        mac = lambda text: bytes.fromhex(text.replace(":", ""))   # noqa: E731
        self.node_mac, self.next_hop_macs = mac(node_mac), {mac(m) for m in next_hop_macs}
        self.frontends = {(addr(k.addr), k.port, k.proto): f for k, f in state.frontends.items()}
        self.frontend_addrs = {a for a, _, _ in self.frontends}
        self.external_addrs = {a for (a, _, _), f in self.frontends.items() if f.flags & C.NAT_FLG_EXTERNAL}
        self.service_ips = {addr(a) for a in state.service_ips}
        self.backends = {i: [(addr(b.addr), b.port) for b in bs] for i, bs in state.backends.items()}
        self.frontends_of = {}
        for (a, p, proto), f in self.frontends.items():
            self.frontends_of.setdefault(f.svc_id, set()).add((a, p, proto))
        self.ranges = {i: [ipaddress.ip_network(c) for c in cidrs] for i, cidrs in state.src_ranges.items()}
        self.ids = {f.svc_id for f in self.frontends.values()}
        self.tally = Tally()
        self.frag_ports: dict[str, dict] = {"workload": {}, "uplink": {}}   # per bcc object, as bpf/frag.h
        self.handed: dict[tuple, tuple] = {}   # the uplink's frag_snats (bpf/frag.h): key -> (source, port)
        self._key = bpf_ffi.new("char[]", CT_KEY_SIZE)
        self._value = bpf_ffi.new("char[]", CT_VALUE.size)

    # --- conntrack lookups, keyed by the bytes the packet carries

    def ct_entry(self, pkt: bytes, l4: int, proto: int):
        """The ct_value for the packet's tuple as a CT_VALUE tuple, or None."""
        return self.ct_lookup(pkt[26:34] + pkt[l4:l4 + 4], proto)

    def ct_lookup(self, tuple_bytes: bytes, proto: int):
        """The ct_value for source + destination addresses + ports (12 bytes as carried), or None."""
        t = tuple_bytes
        bpf_ffi.memmove(self._key, ct_key_bytes(t[0:4], t[4:8], t[8:10], t[10:12], proto), CT_KEY_SIZE)
        if lib.bpf_map_lookup_elem(self.ct_fd, self._key, self._value) != 0:
            return None
        return CT_VALUE.unpack(bpf_ffi.buffer(self._value)[:])

    def _serves(self, prog: str, pkt: bytes, l4: int, proto: int) -> bool:
        """Is this flow packet for a frontend (or service address) the program takes new flows for?"""
        fe_key = (pkt[30:34], int.from_bytes(pkt[l4 + 2:l4 + 4], "big"), proto)
        if prog == "from_workload":
            return fe_key in self.frontends or pkt[30:34] in self.service_ips
        if prog == "from_uplink":
            fe = self.frontends.get(fe_key)
            return fe is not None and bool(fe.flags & C.NAT_FLG_EXTERNAL)
        return False

    @staticmethod
    def _object(prog: str) -> str | None:
        """The bcc object whose frags map a tc program uses (XDP remembers none)."""
        return "workload" if prog in WORKLOAD_PROGRAMS else None if prog in XDP_PROGRAMS else "uplink"

    def before(self, prog: str, pkt: bytes) -> Run:
        cls, ihl, tot, proto = parse(pkt)
        run = Run(prog, pkt, cls, ihl, tot, proto)
        obj = self._object(prog)
        if prog == "to_uplink" and (run.first_fragment or run.later_fragment):
            handed = self.handed.get(run.frag_key)
            if handed is not None:
                run.handed, age = handed[:2], time.monotonic() - handed[2]
                # bpf/frag.h trusts an entry FRAG_TIMEOUT_NS (30 s): a run of a million packets
                # outlives some; near the edge (the oracle's clock read just after the hand-up)
                # either outcome is right
                run.handed_expired = age > FRAG_TIMEOUT_S - FRAG_TIMEOUT_SLACK_S
        if obj and run.later_fragment:
            run.remembered = self.frag_ports[obj].get(run.frag_key)
        if obj and run.first_fragment and proto in (TCP_PROTO, UDP_PROTO) and run.handed is None:
            self.frag_ports[obj][run.frag_key] = pkt[ETH_HLEN + ihl:ETH_HLEN + ihl + 4]
        if run.flow and self._serves(prog, pkt, run.l4, proto):
            entry = self.ct_entry(pkt, run.l4, proto)
            if entry is not None:
                ct_type, flags = entry[3], entry[4]
                run.held_before = ct_type == REV or (
                    ct_type == FWD and bool(flags & UPLINK) != (prog == "from_uplink"))
        return run

    # --- the verdict

    def after(self, run: Run, verdict: int, out: bytes) -> str:
        """The outcome's name; raises Violation when the run broke a rule."""
        outcome = self._judge(run, verdict, out)
        self.tally.outcomes[(run.prog, outcome)] += 1
        return outcome

    def _judge(self, run: Run, verdict: int, out: bytes) -> str:
        prog, pkt = run.prog, run.pkt
        xdp = prog in XDP_PROGRAMS
        drop, passed = (XDP_DROP, XDP_PASS) if xdp else (TC_ACT_SHOT, TC_ACT_NEXT)
        allowed = {XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT} if xdp else {TC_ACT_NEXT, TC_ACT_SHOT, TC_ACT_REDIRECT}
        if verdict not in allowed:
            raise Violation(f"verdict {verdict} is not one {prog} may return")
        to_service_ip = run.cls in (FRAGMENT, WHOLE) and pkt[30:34] in self.service_ips

        if run.handed is not None:
            return self._check_handed_fragment(run, verdict, out)
        if run.later_fragment and not xdp:
            return self._judge_later_fragment(run, verdict, out, to_service_ip)
        if run.cls == WHOLE and run.proto == 1 and not xdp and pkt[run.l4] in ICMP_ERRORS:
            return self._judge_icmp_error(run, verdict, out, to_service_ip)
        if not run.flow:
            must_drop = prog == "from_workload" and to_service_ip and run.cls in (FRAGMENT, WHOLE)
            if must_drop:
                if verdict != drop:
                    raise Violation(f"{run.cls} packet (protocol {run.proto}) to a service address not dropped")
                self.tally.dropped += 1
                return "dropped"
            if verdict != passed or out != pkt:
                raise Violation(f"{run.cls} packet (protocol {run.proto}) not passed untouched")
            return "untouched"

        if verdict == drop:
            self._check_drop(run)
            self.tally.dropped += 1
            return "dropped"
        if out == pkt:
            if verdict != passed:
                raise Violation(f"untouched flow packet with verdict {verdict}")
            if self._serves(prog, pkt, run.l4, run.proto) and not run.held_before:
                raise Violation("flow packet to a served frontend left untouched (conntrack did not hold "
                                "its tuple as a reply or as the other side's flow)")
            return "untouched"
        if not xdp and verdict == TC_ACT_REDIRECT and (len(out) != len(pkt) or out[23] != pkt[23]):
            return self._check_reject(run, out)
        if prog == "from_uplink" and verdict == TC_ACT_NEXT and self.too_big_to_fragment(run):
            entry = self.ct_entry(pkt, run.l4, run.proto)
            target = entry and nat_target(prog, pkt[26:30], pkt[run.l4:run.l4 + 2], pkt[30:34],
                                          pkt[run.l4 + 2:run.l4 + 4], entry)
            return self._check_handed_up(run, verdict, out, target)
        return self._check_translation(run, verdict, out)

    @staticmethod
    def too_big_to_fragment(run: Run) -> bool:
        """Too big for the uplink, without DF, TTL > 1, TCP or UDP: what from_uplink hands to the stack
        to fragment rather than forward past it (bpf/fib.h's forward_by_fib())."""
        return run.tot > UPLINK_MTU and not run.pkt[20] & 0x40 and run.pkt[22] > 1 and run.proto in (TCP_PROTO, UDP_PROTO)

    def _check_handed_up(self, run: Run, verdict: int, out: bytes, target) -> str:
        """Handed to the stack: only the destination translated as the flow's entry says (a later
        fragment's address, a whole packet's address and port, checksums incrementally), source,
        TTL and MACs as they came; the source NAT remembered for the fragments to_uplink will see."""
        pkt, l4 = run.pkt, run.l4
        if target is None or target[4] != "fib":
            raise Violation("from_uplink changed a packet it let go on, and no SNATed flow of its own is behind it")
        saddr, sport, daddr, dport, _, svc_id = target
        want = bytearray(pkt)
        want[30:34] = daddr
        changed = {24, 25}
        if not run.later_fragment:
            want[l4 + 2:l4 + 4] = dport
            csum = l4 + (16 if run.proto == TCP_PROTO else 6)
            changed |= {csum, csum + 1}
            words = lambda b: b[26:34] + b[l4:l4 + 4] + b[csum:csum + 2]   # noqa: E731
            if run.proto == UDP_PROTO and pkt[csum:csum + 2] == b"\0\0":
                if out[csum:csum + 2] != b"\0\0":
                    raise Violation("handed to the stack: a UDP checksum of 0 did not stay 0")
            elif ones_sum(words(out)) != ones_sum(words(pkt)):
                raise Violation("handed to the stack: the L4 checksum not updated incrementally")
        if len(out) != len(pkt) or any(out[i] != want[i] for i in range(len(pkt)) if i not in changed):
            raise Violation("handed to the stack: anything but the destination (and checksums) changed")
        if ones_sum(out[ETH_HLEN:l4]) != ones_sum(pkt[ETH_HLEN:l4]):
            raise Violation("handed to the stack: IP checksum not updated incrementally")
        self.handed[(pkt[26:30], daddr, pkt[18:20], run.proto)] = (saddr, sport, time.monotonic())
        self.tally.translated_by_id[svc_id] += 1
        self.tally.bytes_by_id[svc_id] += len(pkt)
        return "handed-to-stack"

    def _check_handed_fragment(self, run: Run, verdict: int, out: bytes) -> str:
        """to_uplink, a fragment the stack cut from a datagram from_uplink handed it: the source NAT
        it was handed up without (the first fragment's address, port and L4 checksum, a later one's
        address), nothing else."""
        pkt, l4 = run.pkt, run.l4
        saddr, sport = run.handed
        if verdict != TC_ACT_NEXT:
            raise Violation(f"a fragment of a datagram handed to the stack got verdict {verdict}")
        if run.handed_expired and out == pkt:
            return "fragment-snat-expired"
        want = bytearray(pkt)
        want[26:30] = saddr
        changed = {24, 25}
        if run.first_fragment:
            want[l4:l4 + 2] = sport
            csum = l4 + (16 if run.proto == TCP_PROTO else 6)
            changed |= {csum, csum + 1}
            words = lambda b: b[26:34] + b[l4:l4 + 4] + b[csum:csum + 2]   # noqa: E731
            if run.proto == UDP_PROTO and pkt[csum:csum + 2] == b"\0\0":
                if out[csum:csum + 2] != b"\0\0":
                    raise Violation("fragment SNAT: a UDP checksum of 0 did not stay 0")
            elif ones_sum(words(out)) != ones_sum(words(pkt)):
                raise Violation("fragment SNAT: the L4 checksum not updated incrementally")
        if len(out) != len(pkt) or any(out[i] != want[i] for i in range(len(pkt)) if i not in changed):
            raise Violation("fragment SNAT: anything but the source (and checksums) changed")
        if ones_sum(out[ETH_HLEN:l4]) != ones_sum(pkt[ETH_HLEN:l4]):
            raise Violation("fragment SNAT: IP checksum not updated incrementally")
        return "fragment-snat"

    @staticmethod
    def _icmp_quote(run: Run):
        """bpf/icmp_error_parse.h: (quoted IP header offset, quoted L4 offset, quoted L4 checksum
        offset or 0, protocol), or None when the quote is not whole or not about a flow's packet."""
        pkt, end = run.pkt, ETH_HLEN + run.tot
        ip_off = run.l4 + 8
        if ip_off + 20 > min(len(pkt), end):
            return None
        qihl = (pkt[ip_off] & 15) * 4
        if pkt[ip_off] >> 4 != 4 or qihl < 20 or int.from_bytes(pkt[ip_off + 2:ip_off + 4], "big") < qihl + 8:
            return None
        if pkt[ip_off + 6] & 0x1f or pkt[ip_off + 7] or pkt[ip_off + 9] not in FLOW_PROTOS:
            return None
        proto, q4 = pkt[ip_off + 9], ip_off + qihl
        if q4 + 8 > min(len(pkt), end):
            return None
        csum = {UDP_PROTO: q4 + 6, TCP_PROTO: q4 + 16}.get(proto, 0)
        return ip_off, q4, csum if csum and csum + 2 <= min(len(pkt), end) else 0, proto

    def _judge_icmp_error(self, run: Run, verdict: int, out: bytes, to_service_ip: bool) -> str:
        """An ICMP error: translated exactly when its quote names a flow whose entry applies at this
        hook (its reversed tuple, bpf/ct_target.h) and it goes to the quote's source; else untouched,
        or dropped by from_workload when it goes to a service address."""
        prog, pkt = run.prog, run.pkt
        quote = self._icmp_quote(run)
        target = None
        if quote and pkt[30:34] == pkt[quote[0] + 12:quote[0] + 16]:
            ip_off, q4, _, proto = quote
            q_src, q_dst, q_sport, q_dport = pkt[ip_off + 12:ip_off + 16], pkt[ip_off + 16:ip_off + 20], \
                pkt[q4:q4 + 2], pkt[q4 + 2:q4 + 4]
            entry = self.ct_lookup(q_dst + q_src + q_dport + q_sport, proto)
            target = entry and nat_target(prog, q_dst, q_dport, q_src, q_sport, entry)
        if target is None:
            if prog == "from_workload" and to_service_ip:
                if verdict != TC_ACT_SHOT:
                    raise Violation("an ICMP error to a service address about no flow here not dropped")
                self.tally.dropped += 1
                return "dropped"
            if verdict != TC_ACT_NEXT or out != pkt:
                raise Violation("an ICMP error about no flow of this hook not passed untouched")
            return "untouched"
        t_saddr, t_sport, t_daddr, t_dport, path, _ = target
        if verdict == TC_ACT_SHOT:
            if path == "next" or (path == "back" and pkt[22] > 1):
                raise Violation("an ICMP error about a flow dropped where it is not forwarded past the stack "
                                "(hairpin: at TTL > 1)")
            self.tally.dropped += 1
            return "dropped"
        ip_off, q4, csum, proto = quote
        want = bytearray(pkt)
        want[ip_off + 12:ip_off + 20] = t_daddr + t_saddr
        want[q4:q4 + 4] = t_dport + t_sport
        if pkt[26:30] == pkt[ip_off + 16:ip_off + 20]:   # the flow's own peer sent it: its address too
            want[26:30] = t_saddr
        want[30:34] = t_daddr
        same = lambda a, b: all(a[i] == b[i] for i in range(12, len(a)) if i not in ignore)  # noqa: E731
        ignore = {22, 24, 25, run.l4 + 2, run.l4 + 3, ip_off + 10, ip_off + 11} | ({csum, csum + 1} if csum else set())
        if len(out) != len(pkt) or not same(out, want):
            raise Violation("ICMP error translated otherwise than its flow's entry says")
        if out[22] != pkt[22] - (path != "next"):
            raise Violation("ICMP error: TTL not kept (or one lower when forwarded past the stack)")
        end = ETH_HLEN + run.tot
        if ones_sum(out[ETH_HLEN:run.l4]) != ones_sum(pkt[ETH_HLEN:run.l4]) or \
                ones_sum(out[run.l4:end]) != ones_sum(pkt[run.l4:end]) or \
                ones_sum(out[ip_off:q4]) != ones_sum(pkt[ip_off:q4]):
            raise Violation("ICMP error: the outer IP, ICMP or quoted IP checksum not updated incrementally")
        if csum:
            words = lambda b: b[ip_off + 12:ip_off + 20] + b[q4:q4 + 4] + b[csum:csum + 2]   # noqa: E731
            if proto == UDP_PROTO and pkt[csum:csum + 2] == b"\0\0":
                if out[csum:csum + 2] != b"\0\0":
                    raise Violation("ICMP error: a quoted UDP checksum of 0 did not stay 0")
            elif ones_sum(words(out)) != ones_sum(words(pkt)) or (proto == UDP_PROTO and out[csum:csum + 2] == b"\0\0"):
                raise Violation("ICMP error: the quoted L4 checksum not updated incrementally")
        elif out[q4 + 4:] != pkt[q4 + 4:]:
            raise Violation("ICMP error: quoted bytes past the ports changed though no checksum was quoted")
        self._check_macs(run, verdict, out, path != "next")
        return "icmp-nat"

    def _judge_later_fragment(self, run: Run, verdict: int, out: bytes, to_service_ip: bool) -> str:
        prog, pkt = run.prog, run.pkt
        target = None
        if run.remembered is not None:
            entry = self.ct_lookup(pkt[26:34] + run.remembered, run.proto)
            target = entry and nat_target(prog, pkt[26:30], run.remembered[0:2], pkt[30:34], run.remembered[2:4], entry)
        if verdict == TC_ACT_SHOT:
            # from_workload: no flow to follow, to a service address; from_uplink: one it translated
            # and could not send on (no route, TTL 1); a hairpin's at TTL 1
            if not (prog == "from_workload" and to_service_ip) and \
                    not (prog == "from_uplink" and pkt[30:34] in self.external_addrs | {self.node_addr}) and \
                    not (target and target[4] == "back" and pkt[22] <= 1):
                raise Violation("a later fragment dropped where it is not to a service address")
            self.tally.dropped += 1
            return "dropped"
        if out == pkt:
            if verdict != TC_ACT_NEXT:
                raise Violation(f"untouched later fragment with verdict {verdict}")
            if prog == "from_workload" and to_service_ip:
                raise Violation("a later fragment to a service address left untouched (neither translated nor dropped)")
            return "untouched"
        if run.remembered is None:
            raise Violation("a later fragment translated, though its first fragment was not seen here")
        if target is None:
            raise Violation("a later fragment translated, though no conntrack entry of its flow applies here")
        if prog == "from_uplink" and verdict == TC_ACT_NEXT and self.too_big_to_fragment(run):
            return self._check_handed_up(run, verdict, out, target)
        saddr, _, daddr, _, path, svc_id = target
        if len(out) != len(pkt) or out[12:22] != pkt[12:22] or out[23] != pkt[23] or out[34:] != pkt[34:]:
            raise Violation("later fragment: bytes other than MACs, TTL, addresses and the IP checksum changed")
        if out[22] != pkt[22] - (path != "next"):
            raise Violation("later fragment: TTL not kept (or one lower when forwarded past the stack)")
        if (out[26:30], out[30:34]) != (saddr, daddr):
            raise Violation("later fragment translated otherwise than its flow's entry says")
        if ones_sum(out[ETH_HLEN:run.l4]) != ones_sum(pkt[ETH_HLEN:run.l4]):
            raise Violation("later fragment: IP checksum not updated incrementally")
        self._check_macs(run, verdict, out, path != "next")
        self.tally.translated_by_id[svc_id] += 1
        self.tally.bytes_by_id[svc_id] += len(pkt)
        return "fragment-nat"

    def _check_drop(self, run: Run) -> None:
        prog, pkt, l4 = run.prog, run.pkt, run.l4
        dst = pkt[30:34]
        if pkt[22] <= 1 and self._hairpin_target(run):
            return   # sent back past the stack at TTL 1, and no time exceeded could go (forward.h)
        if prog in ("to_workload", "to_uplink"):
            raise Violation(f"{prog} dropped a flow packet")
        if prog == "from_workload" and dst not in self.service_ips and dst not in self.frontend_addrs:
            raise Violation("from_workload dropped a flow packet that is not for a service")
        if prog == "from_uplink" and dst not in self.external_addrs:
            raise Violation("from_uplink dropped a flow packet that is not for an external frontend")
        if prog == "xdp_uplink":
            fe = self.frontends.get((dst, int.from_bytes(pkt[l4 + 2:l4 + 4], "big"), run.proto))
            if fe is None or not fe.flags & C.NAT_FLG_SRC_RANGES or self._source_allowed(fe.svc_id, pkt[26:30]):
                raise Violation("xdp_uplink dropped a packet that no source range forbids")

    def _hairpin_target(self, run: Run):
        """A workload program's hairpin translation of the packet (sent straight back out of the pod's
        veth, past the stack), by the conntrack entry of its tuple after the run; else None."""
        pkt, l4 = run.pkt, run.l4
        if run.prog not in WORKLOAD_PROGRAMS or not run.flow:
            return None
        entry = self.ct_entry(pkt, l4, run.proto)
        target = entry and nat_target(run.prog, pkt[26:30], pkt[l4:l4 + 2], pkt[30:34], pkt[l4 + 2:l4 + 4], entry)
        return target if target and target[4] == "back" else None

    def _source_allowed(self, svc_id: int, src: bytes) -> bool:
        source = ipaddress.ip_address(src)
        return any(source in net for net in self.ranges.get(svc_id, ()))

    def _check_reject(self, run: Run, out: bytes) -> str:
        prog, pkt, l4 = run.prog, run.pkt, run.l4
        fe = self.frontends.get((pkt[30:34], int.from_bytes(pkt[l4 + 2:l4 + 4], "big"), run.proto))
        icmp_type = out[ETH_HLEN + 20:ETH_HLEN + 22] if len(out) >= ETH_HLEN + 22 else b""
        forwarded = prog == "from_uplink" and pkt[30:34] in self.external_addrs | {self.node_addr}
        if icmp_type == b"\x0b\x00":   # time exceeded: forwarding past the stack (uplink, hairpin) at TTL <= 1
            if not (forwarded or self._hairpin_target(run)) or pkt[22] > 1:
                raise Violation(f"{prog} answered time exceeded where no rule asks for it")
            self._check_icmp_answer(run, out, b"\x0b\x00", bytes(4))
            return "time-exceeded"
        if icmp_type == b"\x03\x04":   # frag-needed: too big for the egress, with DF
            if not forwarded or not pkt[20] & 0x40 or run.tot <= UPLINK_MTU:
                raise Violation(f"{prog} answered frag-needed where no rule asks for it")
            self._check_icmp_answer(run, out, b"\x03\x04", UPLINK_MTU.to_bytes(4, "big"))
            return "frag-needed"
        if prog == "from_workload":
            ok = (fe is None and pkt[30:34] in self.service_ips) or (
                fe is not None and fe.count == 0 and
                not fe.flags & (C.NAT_FLG_INTERNAL_LOCAL | C.NAT_FLG_EXTERNAL_LOCAL))
        elif prog == "from_uplink":
            ok = fe is not None and fe.flags & C.NAT_FLG_EXTERNAL and fe.count == 0 and \
                not fe.flags & C.NAT_FLG_EXTERNAL_LOCAL
        else:
            ok = False
        if not ok:
            raise Violation(f"{prog} answered ICMP port unreachable where no rule asks for it")
        self._check_icmp_answer(run, out, b"\x03\x03", bytes(4))
        return "rejected"

    def _check_icmp_answer(self, run: Run, out: bytes, type_code: bytes, rest: bytes) -> None:
        """An ICMP error made from the packet (bpf/icmp_reject.h): MACs swapped, from the packet's
        destination to its source, quoting its IP header and 8 bytes as they came in."""
        pkt = run.pkt
        source = ipaddress.ip_address(pkt[26:30])
        if any(source in net for net in NOT_ONE_HOST):
            raise Violation(f"ICMP error sent to {source}, which is not one host (RFC 1122 3.2.2)")
        quote = pkt[ETH_HLEN:ETH_HLEN + run.ihl + 8]
        expect_len = ETH_HLEN + 28 + len(quote)
        if len(out) != expect_len:
            raise Violation(f"ICMP reject of {len(out)} bytes, {expect_len} expected")
        ip, icmp = out[ETH_HLEN:ETH_HLEN + 20], out[ETH_HLEN + 20:]
        problems = []
        if out[0:6] != pkt[6:12] or out[6:12] != pkt[0:6] or out[12:14] != b"\x08\x00":
            problems.append("Ethernet header is not the input's, swapped")
        if ip[0] != 0x45 or ip[1] != 0 or int.from_bytes(ip[2:4], "big") != 28 + len(quote) or ip[4:8] != bytes(4) \
                or ip[8] != 64 or ip[9] != 1 or ip[12:16] != pkt[30:34] or ip[16:20] != pkt[26:30]:
            problems.append("IP header fields")
        if ones_sum(ip):
            problems.append("IP checksum")
        if icmp[0:2] != type_code or icmp[4:8] != rest or icmp[8:] != quote:
            problems.append("ICMP type, code or quote")
        if ones_sum(icmp):
            problems.append("ICMP checksum")
        if problems:
            raise Violation("malformed ICMP reject: " + ", ".join(problems))

    def _check_translation(self, run: Run, verdict: int, out: bytes) -> str:
        prog, pkt, l4, proto = run.prog, run.pkt, run.l4, run.proto
        xdp = prog in XDP_PROGRAMS
        if len(out) != len(pkt):
            raise Violation(f"translation changed the length {len(pkt)} -> {len(out)}")
        if xdp and verdict not in (XDP_TX, XDP_REDIRECT):
            raise Violation(f"XDP changed a packet and returned {verdict}")
        csum_off, csum_len = {TCP_PROTO: (l4 + 16, 2), UDP_PROTO: (l4 + 6, 2), SCTP_PROTO: (l4 + 8, 4)}[proto]
        if out[12:22] != pkt[12:22] or out[23] != pkt[23] or out[34:l4] != pkt[34:l4] or \
                out[l4 + 4:csum_off] != pkt[l4 + 4:csum_off] or out[csum_off + csum_len:] != pkt[csum_off + csum_len:]:
            raise Violation("translation changed bytes other than MACs, TTL, addresses, ports and checksums")
        ip_error = ones_sum(pkt[ETH_HLEN:l4])
        if ones_sum(out[ETH_HLEN:l4]) != ip_error:
            raise Violation("IP checksum not updated incrementally (its error changed)")
        if proto == SCTP_PROTO:
            l4_error = sctp_crc_error(pkt, l4, run.tot)
            if pkt[csum_off:csum_off + 4] == bytes(4):
                if out[csum_off:csum_off + 4] != bytes(4):
                    raise Violation("SCTP CRC 0 (not computed yet) did not stay 0")
            elif sctp_crc_error(out, l4, run.tot) != l4_error:
                raise Violation("SCTP CRC32c not kept in step with the ports (its error changed)")
        elif proto == UDP_PROTO and pkt[csum_off:csum_off + 2] == b"\0\0":
            if out[csum_off:csum_off + 2] != b"\0\0":
                raise Violation("UDP checksum 0 (none) did not stay 0")
            self.tally.zero_udp_checksum_kept += 1
            l4_error = 0
        else:
            if proto == UDP_PROTO and out[csum_off:csum_off + 2] == b"\0\0":
                raise Violation("UDP checksum became 0 (none)")
            l4_error = l4_sum(pkt, l4, run.tot, proto)
            if l4_sum(out, l4, run.tot, proto) != l4_error:
                raise Violation("L4 checksum not updated incrementally (its error changed)")
        if proto == SCTP_PROTO and pkt[csum_off:csum_off + 4] == bytes(4):
            l4_error = 0
        self.tally.wrong_checksum_kept += bool(ip_error or l4_error)

        entry = self.ct_entry(pkt, l4, proto)
        if entry is None:
            raise Violation("translated, but conntrack holds no entry for the packet's tuple")
        _, _, _, ct_type, flags, _, svc_id, nat_addr, nat_port, snat_port, snat_addr, _, _ = entry
        src, sport, dst, dport = pkt[26:30], pkt[l4:l4 + 2], pkt[30:34], pkt[l4 + 2:l4 + 4]
        o_src, o_sport, o_dst, o_dport = out[26:30], out[l4:l4 + 2], out[30:34], out[l4 + 2:l4 + 4]
        snat = bool(flags & SNAT)
        if ct_type == FWD:
            want_src = (snat_addr, snat_port if snat_port != b"\0\0" else sport) if snat else (src, sport)
            if (o_dst, o_dport) != (nat_addr, nat_port) or (o_src, o_sport) != want_src:
                raise Violation("translation differs from the NAT_FWD entry of its tuple")
            self._check_forward(run, flags, svc_id, out)
        elif ct_type == REV:
            want_dst = (snat_addr, snat_port if snat_port != b"\0\0" else dport) if snat else (dst, dport)
            if (o_src, o_sport) != (nat_addr, nat_port) or (o_dst, o_dport) != want_dst:
                raise Violation("translation differs from the NAT_REV entry of its tuple")
            self._check_reverse(run, flags, svc_id, out)
        else:
            raise Violation(f"translated by a conntrack entry of type {ct_type}")
        self._check_macs(run, verdict, out, snat)
        # forwarded past the stack (the uplink's SNAT paths, tc's and XDP's, and the hairpin): its TTL
        # one lower
        if out[22] != pkt[22] - snat:
            raise Violation(f"TTL {pkt[22]} -> {out[22]}: not kept, or not one lower when forwarded past the stack")
        self.tally.translated_by_id[svc_id] += 1
        self.tally.bytes_by_id[svc_id] += len(pkt)
        return "dnat" if ct_type == FWD else "reverse-nat"

    def _check_forward(self, run: Run, flags: int, svc_id: int, out: bytes) -> None:
        prog, pkt, l4, proto = run.prog, run.pkt, run.l4, run.proto
        fe = self.frontends.get((pkt[30:34], int.from_bytes(pkt[l4 + 2:l4 + 4], "big"), proto))
        if fe is None or fe.svc_id != svc_id:
            raise Violation("DNAT of a packet that is not for a frontend of the entry's service")
        backend = (out[30:34], int.from_bytes(out[l4 + 2:l4 + 4], "big"))
        backends = self.backends.get(svc_id, [])
        if backend not in backends:
            raise Violation("DNAT to an address that is not a backend of the frontend")
        local = backends.index(backend) < fe.local
        snat = bool(flags & SNAT)
        if prog in WORKLOAD_PROGRAMS:
            if flags & UPLINK:
                raise Violation(f"{prog} applied an uplink flow's NAT_FWD entry")
            if fe.flags & C.NAT_FLG_INTERNAL_LOCAL and not local:
                raise Violation("internalTrafficPolicy Local, DNAT to a remote backend")
            if snat and (out[26:30] != self.hairpin or pkt[26:30] != out[30:34]):
                raise Violation("workload source NAT that is not the hairpin case")
        else:
            if not flags & UPLINK or not fe.flags & C.NAT_FLG_EXTERNAL:
                raise Violation(f"{prog} DNATed to a frontend not served from outside (or a pod's flow)")
            if fe.flags & C.NAT_FLG_SRC_RANGES and not self._source_allowed(svc_id, pkt[26:30]):
                raise Violation("DNAT from a source outside the frontend's source ranges")
            if snat == local or (snat and fe.flags & C.NAT_FLG_EXTERNAL_LOCAL):
                raise Violation("uplink SNAT not exactly for remote backends under Cluster policy")
            if snat and out[26:30] != self.node_addr:
                raise Violation("uplink SNAT to an address that is not the node's")

    def _check_reverse(self, run: Run, flags: int, svc_id: int, out: bytes) -> None:
        prog, pkt, l4, proto = run.prog, run.pkt, run.l4, run.proto
        backend = (pkt[26:30], int.from_bytes(pkt[l4:l4 + 2], "big"))
        frontend = (out[26:30], int.from_bytes(out[l4:l4 + 2], "big"), proto)
        if backend not in self.backends.get(svc_id, ()) or frontend not in self.frontends_of.get(svc_id, ()):
            raise Violation("reverse NAT that is not from a backend to a frontend of the same service")
        if flags & SNAT:
            if prog in WORKLOAD_PROGRAMS:
                if flags & UPLINK or pkt[30:34] != self.hairpin or out[30:34] != pkt[26:30]:
                    raise Violation(f"{prog} reverse NAT with a destination change that is not the hairpin case")
            elif pkt[30:34] != self.node_addr:
                raise Violation("uplink reverse NAT of a destination that is not the node's address")
        elif prog in ("from_workload", "xdp_uplink"):
            raise Violation(f"{prog} reverse-NATed a flow it does not own (no SNAT)")

    def _check_macs(self, run: Run, verdict: int, out: bytes, snat: bool) -> None:
        prog, pkt = run.prog, run.pkt
        kept = out[0:12] == pkt[0:12]
        swapped = out[0:6] == pkt[6:12] and out[6:12] == pkt[0:6]
        by_fib = out[0:6] in self.next_hop_macs and out[6:12] == self.node_mac
        if prog in XDP_PROGRAMS:
            ok = snat and by_fib
        elif not snat:
            ok = verdict == TC_ACT_NEXT and kept
        elif prog in WORKLOAD_PROGRAMS:
            ok = verdict == TC_ACT_REDIRECT and swapped
        else:
            ok = verdict == TC_ACT_REDIRECT and (by_fib or kept)
        if not ok:
            raise Violation(f"verdict {verdict} and Ethernet addresses do not fit a {'SNAT' if snat else 'DNAT-only'} "
                            f"translation by {prog}")


def nat_target(prog: str, saddr: bytes, sport: bytes, daddr: bytes, dport: bytes, entry):
    """What `prog` makes of a packet of this tuple by its conntrack entry (bpf/ct_target.h, the entry
    programs' conditions): (saddr, sport, daddr, dport, path, svc id), path "next", "back" or "fib";
    None when the entry is not this program's to apply."""
    _, last_seen, _, ct_type, flags, _, svc_id, nat_addr, nat_port, snat_port, snat_addr, _, _ = entry
    both = flags & (SNAT | UPLINK)
    if last_seen == 0xffffffffffffffff:
        return None
    applies = {"from_workload": both == SNAT if ct_type == REV else not flags & UPLINK,
               "to_workload": ct_type == REV and both != SNAT | UPLINK,
               "from_uplink": bool(flags & UPLINK),
               "to_uplink": ct_type == REV and both == UPLINK}.get(prog, False)
    if not applies:
        return None
    if ct_type == FWD:
        daddr, dport = nat_addr, nat_port
        if flags & SNAT:
            saddr, sport = snat_addr, snat_port if snat_port != b"\0\0" else sport
    else:
        saddr, sport = nat_addr, nat_port
        if flags & SNAT:
            daddr, dport = snat_addr, snat_port if snat_port != b"\0\0" else dport
    path = "next" if not flags & SNAT else "fib" if flags & UPLINK else "back"
    return saddr, sport, daddr, dport, path, svc_id


# --- The maps after the run

def snapshot(maps) -> dict[str, set[bytes]]:
    """The maps the programs only read, as sets of key+value bytes."""
    return {name: {to_bytes(k) + to_bytes(v) for k, v in getattr(maps, name).items()}
            for name in ("nat_fe", "nat_be", "svc_ips", "src_ranges", "config")}


def counters(maps) -> dict[int, tuple[int, int, int]]:
    """{id: (packets, bytes, connections)} summed over CPUs, for ids that counted anything. The
    array has an entry per possible id: batches read raw, only non-zero ones unpacked."""
    counters_map, out = maps.svc_counters, {}
    per_cpu = struct.Struct("=QQQ")
    for keys, values, n in counters_map._batches():
        raw = bytes(ffi.buffer(values, n * counters_map.ncpus * per_cpu.size))
        if not raw.strip(b"\0"):
            continue
        for i in range(n):
            cpus = [per_cpu.unpack_from(raw, (i * counters_map.ncpus + c) * per_cpu.size)
                    for c in range(counters_map.ncpus)]
            total = tuple(map(sum, zip(*cpus)))
            if any(total):
                out[keys[i]] = total
    return out


def check_counters(before: dict, after: dict, tally: Tally, ids: set[int]) -> list[str]:
    problems = []
    grown = {i: tuple(a - b for a, b in zip(after.get(i, (0, 0, 0)), before.get(i, (0, 0, 0))))
             for i in set(before) | set(after)}
    for i, (packets, nbytes, connections) in grown.items():
        if i not in ids and (packets or nbytes or connections):
            problems.append(f"counters of id {i}, which no frontend has, grew")
        if packets < tally.translated_by_id[i] or nbytes < tally.bytes_by_id[i]:
            problems.append(f"id {i} counted {packets} packets / {nbytes} bytes, fewer than the "
                            f"{tally.translated_by_id[i]} / {tally.bytes_by_id[i]} it translated")
        if connections > packets or min(packets, nbytes, connections) < 0:
            problems.append(f"id {i}: {connections} connections for {packets} packets")
    total = sum(p for p, _, _ in grown.values())
    if total > sum(tally.translated_by_id.values()) + tally.dropped:
        problems.append(f"{total} packets counted, more than translated plus dropped")
    return problems


def check_conntrack(maps, oracle: Oracle) -> tuple[list[str], Counter]:
    """Problems with conntrack entries (at most a few per kind), and entry counts by kind.

    Each entry: key padding zero, TCP, UDP or SCTP, type NAT_FWD or NAT_REV, known flags, a service id
    with frontends, created <= last seen, no stray bits. NAT_FWD: keyed to a frontend of its id,
    translating to a backend of that id; no SNAT fields without CT_FLAG_SNAT, hairpin SNAT from the
    backend itself to the hairpin address, uplink SNAT to the node's address with a port; its twin
    is the reply tuple that translation implies and exists as a NAT_REV of the same id. NAT_REV:
    keyed from a backend of its id, translating back to a frontend of it; its twin names that
    frontend as the destination and exists as a NAT_FWD whose twin is this entry. (No backend
    leaves during the fuzzing; when one does, the agent keeps the NAT_REV halves of the UDP flows
    it moves until they expire, without their NAT_FWD.)
    """
    entries = {to_bytes(k): v for k, v in maps.ct.items()}
    problems: dict[str, list[str]] = {}
    kinds = Counter()

    def bad(kind: str, key: bytes, value) -> None:
        problems.setdefault(kind, []).append(describe_ct(key, value))

    for key, v in entries.items():
        src, dst, sport, dport, proto, stray = ct_key_fields(key)
        twin = to_bytes(ffi.addressof(v, "twin"))
        t_src, t_dst, t_sport, t_dport, t_proto, t_stray = ct_key_fields(twin)
        nat = (struct.pack("=I", v.nat_addr), struct.pack("=H", v.nat_port))
        snat_addr, snat_port = struct.pack("=I", v.snat_addr), struct.pack("=H", v.snat_port)
        kinds[(v.type, v.flags)] += 1
        if stray or t_stray or proto not in FLOW_PROTOS or any(v.nat_addr6[1:4]) or any(v.snat_addr6[1:4]) or \
                t_proto != proto or v.family or v.pad0 or v.pad2 or v.tcp_seen & ~0x7f or v.flags & ~(SNAT | UPLINK) or \
                v.svc_id not in oracle.ids or not 0 < v.created_ns <= v.last_seen_ns:
            bad("malformed entry", key, v)
            continue
        backends = oracle.backends.get(v.svc_id, [])
        backend_keys = {(a, p.to_bytes(2, "big")) for a, p in backends}
        frontends = {(a, p.to_bytes(2, "big"), pr) for a, p, pr in oracle.frontends_of.get(v.svc_id, ())}
        other = entries.get(twin)
        if v.type == FWD:
            if (dst, dport, proto) not in frontends or nat not in backend_keys:
                bad("NAT_FWD not from a frontend to a backend of its id", key, v)
            if not v.flags & SNAT:
                reply = (src, sport)
                if v.snat_addr or v.snat_port:
                    bad("NAT_FWD with SNAT fields but no SNAT flag", key, v)
            elif v.flags & UPLINK:
                reply = (snat_addr, snat_port)
                if snat_addr != oracle.node_addr or not v.snat_port:
                    bad("uplink NAT_FWD SNATed to something else than the node address and a port", key, v)
            else:
                reply = (snat_addr, sport)
                if snat_addr != oracle.hairpin or src != nat[0] or v.snat_port:
                    bad("workload NAT_FWD SNATed other than a hairpin", key, v)
            if twin != ct_key_bytes(nat[0], reply[0], nat[1], reply[1], proto):
                bad("NAT_FWD twin is not the reply tuple of its translation", key, v)
            if other is None or other.type != REV or other.svc_id != v.svc_id:
                bad("NAT_FWD without its NAT_REV", key, v)
            elif to_bytes(ffi.addressof(other, "twin")) != key:
                bad("NAT_FWD whose NAT_REV belongs to another flow", key, v)
        elif v.type == REV:
            if (src, sport) not in backend_keys or nat + (proto,) not in frontends:
                bad("NAT_REV not from a backend to a frontend of its id", key, v)
            if t_dst != nat[0] or t_dport != nat[1]:
                bad("NAT_REV twin does not name its frontend", key, v)
            if v.flags & SNAT and v.flags & UPLINK and (dst != oracle.node_addr or t_src != snat_addr
                                                        or t_sport != snat_port):
                bad("uplink SNAT NAT_REV inconsistent with its twin", key, v)
            if v.flags & SNAT and not v.flags & UPLINK and (dst != oracle.hairpin or snat_addr != src):
                bad("hairpin NAT_REV inconsistent", key, v)
            if other is None or other.type != FWD:
                bad("NAT_REV without its NAT_FWD", key, v)
            elif to_bytes(ffi.addressof(other, "twin")) != key:
                bad("NAT_REV whose NAT_FWD belongs to another flow", key, v)
        else:
            bad("entry of unknown type", key, v)
    lines = [f"{kind}: {len(found)} entries, e.g. {'; '.join(found[:3])}" for kind, found in problems.items()]
    return lines, kinds


def describe_ct(key: bytes, v) -> str:
    src_b, dst_b, sport_b, dport_b, proto, _ = ct_key_fields(key)
    src, dst = ip_str(struct.unpack("=I", src_b)[0]), ip_str(struct.unpack("=I", dst_b)[0])
    sport, dport = int.from_bytes(sport_b, "big"), int.from_bytes(dport_b, "big")
    t = v.twin
    return (f"{src}:{sport}->{dst}:{dport}/{proto} type {v.type} flags {v.flags} id {v.svc_id} "
            f"nat {ip_str(v.nat_addr)}:{int.from_bytes(struct.pack('=H', v.nat_port), 'big')} "
            f"snat {ip_str(v.snat_addr)}:{int.from_bytes(struct.pack('=H', v.snat_port), 'big')} "
            f"twin {ip_str(t.src_addr)}:{int.from_bytes(struct.pack('=H', t.src_port), 'big')}->"
            f"{ip_str(t.dst_addr)}:{int.from_bytes(struct.pack('=H', t.dst_port), 'big')}")
