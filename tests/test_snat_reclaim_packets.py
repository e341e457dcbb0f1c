"""Issue 21: a SYN flood through a SNAT NodePort must not lock new connections out. Every SNAT port
towards a backend (SNAT_PORT_RANGE of them) held by a flow: a new SYN reclaims the port of a
half-open one (no ACK from its client, bpf/snat.h's snat_reclaim()), never an established one's,
and a client's first ACK racing that reclaim on the other CPU is either in before the claim (the
flow keeps its port) or dropped (the port is the new flow's): never both translated with it.

The real programs (from_uplink, BPF_PROG_TEST_RUN); the map is filled with copies of a flow the
programs made, one per port, written in batches."""
import random
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.datapath.structs import C, ffi, ip_be, ip_str, port_be, port_int
from tests.conftest import NODE_ADDR
from tests.lab import in_netns
from tests.test_conntrack_pairs import key_of, l4_ports, pair_problems, with_ports
from tests.test_datapath_packets import TC_ACT_REDIRECT, dropped_since, drops, run
from tests.test_uplink_packets import B, CLIENT, EXT, NODEPORT, OTHER_CLIENT, inbound, program, routed, run_routed, syn  # noqa: F401
from tests.two_cpus import on_all_cpus

PORT_MIN = 32768
PORTS = range(PORT_MIN, 65536)
HALF_OPEN = C.CT_TCP_SYN_FWD | C.CT_TCP_SYN_REV | C.CT_TCP_ACK_REV   # the backend answered; its client never did


def holder(port: int) -> tuple[str, int]:
    """The client whose flow the filled map gives SNAT port `port` (a source no test sends from): from
    that very port, the first candidate (the client's own port is kept while it is free)."""
    i = port - PORT_MIN
    return f"10.203.{i >> 8}.{i & 255}", port


def fill(dp, routed, tcp_seen: int, age_s: float) -> None:
    """Every SNAT port towards B held by a flow of tcp_seen, created age_s ago (older ports first)."""
    first = syn("10.203.255.255", NODE_ADDR, sport=999)
    verdict, out = run_routed(dp, routed, "from_uplink", first)
    assert verdict == TC_ACT_REDIRECT
    template_fwd_key = key_of("10.203.255.255", 999, NODE_ADDR, NODEPORT)
    fwd_template = ffi.new("struct ct_value *", dp.maps.ct.lookup(template_fwd_key)[0])
    rev_template_key = key_of(B, 8080, NODE_ADDR, l4_ports(out)[0])
    rev_template = ffi.new("struct ct_value *", dp.maps.ct.lookup(rev_template_key)[0])
    dp.maps.ct.delete(template_fwd_key)
    dp.maps.ct.delete(rev_template_key)

    n = len(PORTS)
    keys, values = ffi.new("struct ct_key[]", 2 * n), ffi.new("struct ct_value[]", 2 * n)
    created = time.monotonic_ns() - int(age_s * 1e9) - n   # CLOCK_MONOTONIC, as bpf_ktime_get_ns()
    for i, port in enumerate(PORTS):
        client, sport = holder(port)
        fwd_key, rev_key = key_of(client, sport, NODE_ADDR, NODEPORT), key_of(B, 8080, NODE_ADDR, port)
        keys[2 * i], keys[2 * i + 1] = fwd_key[0], rev_key[0]
        fwd, rev = values + 2 * i, values + 2 * i + 1
        fwd[0], rev[0] = fwd_template[0], rev_template[0]
        for value in (fwd, rev):
            value.created_ns = value.last_seen_ns = created + i
        fwd.snat_port = port_be(port)
        fwd.twin = rev_key[0]
        fwd.tcp_seen = tcp_seen & C.CT_TCP_ACK_FWD
        rev.snat_addr, rev.snat_port = ip_be(client), port_be(sport)
        rev.twin = fwd_key[0]
        rev.tcp_seen = tcp_seen
    dp.maps.ct.update_many(keys, values)


def client_ack(port: int) -> bytes:
    """The handshake's last packet from the client holding `port`."""
    client, sport = holder(port)
    return bytes(inbound(IP(src=client, dst=NODE_ADDR) / TCP(sport=sport, dport=NODEPORT, flags="A") / Raw(b"hi")))


def answer_to(dp, routed, port: int) -> tuple[int, str, int]:
    """The backend's SYN-ACK on SNAT port `port`: (verdict, the client it went to, its port)."""
    verdict, out = run_routed(dp, routed, "from_uplink", inbound(IP(src=B, dst=NODE_ADDR) /
                                                                TCP(sport=8080, dport=port, flags="SA")))
    return verdict, Ether(out)[IP].dst, Ether(out)[TCP].dport


def new_clients(n: int) -> list[tuple[str, int]]:
    """n outside connections (the two clients routed() has neighbours for) from random ports in the
    SNAT range, so their own is taken: each SYN's candidates are its hash's, as a flood's are."""
    rng, seen = random.Random(21), set()
    while len(seen) < n:
        seen.add((rng.choice((CLIENT, OTHER_CLIENT)), rng.randrange(PORT_MIN, 65536)))
    return sorted(seen, key=lambda c: rng.random())


@pytest.fixture
def nodeport(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    return dp


def test_every_port_half_open_a_new_syn_reclaims_the_oldest_candidate(nodeport, routed):
    dp = nodeport
    fill(dp, routed, HALF_OPEN, age_s=1)
    verdict, out = run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))
    assert verdict == TC_ACT_REDIRECT
    port = l4_ports(out)[0]
    assert Ether(out)[IP].src == NODE_ADDR and port in PORTS
    assert answer_to(dp, routed, port) == (TC_ACT_REDIRECT, CLIENT, 40000)   # the port is the new flow's
    old_client, old_sport = holder(port)
    assert not dp.maps.ct.lookup(key_of(old_client, old_sport, NODE_ADDR, NODEPORT))   # the old pair went whole
    assert not pair_problems(dp.maps)
    # The reclaimed flow's client ACKs late: it never goes out with its old port (now CLIENT's).
    before = drops(dp)
    assert run_routed(dp, routed, "from_uplink", client_ack(port))[0] != TC_ACT_REDIRECT
    assert dropped_since(dp, before) == {"no-snat-port": 1}   # a new flow mid-stream: no port, no reclaim


def test_every_port_established_a_new_syn_still_finds_none(nodeport, routed):
    dp = nodeport
    fill(dp, routed, HALF_OPEN | C.CT_TCP_ACK_FWD, age_s=1)
    before = drops(dp)
    assert run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))[0] != TC_ACT_REDIRECT
    assert dropped_since(dp, before) == {"no-snat-port": 1}
    assert len(dp.maps.ct) == 2 * len(PORTS)


def test_a_half_open_flow_younger_than_the_minimum_age_keeps_its_port(nodeport, routed):
    """A handshake in flight (its client's ACK an RTT away) is not taken."""
    dp = nodeport
    fill(dp, routed, HALF_OPEN, age_s=-0.5)   # created "0.5 s from now": filling the map takes that long
    before = drops(dp)
    assert run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))[0] != TC_ACT_REDIRECT
    assert dropped_since(dp, before) == {"no-snat-port": 1}
    time.sleep(0.5 + 0.06)   # SNAT_RECLAIM_MIN_AGE_NS (50 ms) past their creation
    assert run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR))[0] == TC_ACT_REDIRECT


def test_a_handshake_completed_on_a_port_is_never_reclaimed_afterwards(nodeport, routed):
    """Every other port's flow gets its client's ACK (through the real program): hundreds of new
    SYNs then reclaim only the others' ports, and every completed flow keeps its pair."""
    dp = nodeport
    fill(dp, routed, HALF_OPEN, age_s=1)
    completed = PORTS[::2]
    with in_netns(routed[0]):
        for port in completed:
            verdict, out = run(dp, "from_uplink", client_ack(port), ifindex=routed[1])
            assert verdict == TC_ACT_REDIRECT and l4_ports(out)[0] == port
        taken = []
        for client, sport in new_clients(500):
            verdict, out = run(dp, "from_uplink", bytes(syn(client, NODE_ADDR, sport=sport)), ifindex=routed[1])
            if verdict == TC_ACT_REDIRECT:
                taken.append(l4_ports(out)[0])
    assert len(taken) > 450, (len(taken), drops(dp))   # a SYN whose 8 candidates all completed is refused: ~1 in 256
    assert not set(taken) & set(completed)
    for port in completed:
        client, sport = holder(port)
        fwd = dp.maps.ct.lookup(key_of(client, sport, NODE_ADDR, NODEPORT))
        rev = dp.maps.ct.lookup(key_of(B, 8080, NODE_ADDR, port))
        assert fwd and rev and rev[0].tcp_seen & C.CT_TCP_ACK_FWD and fwd[0].tcp_seen & C.CT_TCP_ACK_FWD
    assert not pair_problems(dp.maps)


def test_a_reclaim_racing_the_flows_first_ack_on_the_other_cpu_never_cross_wires(nodeport, routed):
    """CPU 0 sends new SYNs, each reclaiming an old half-open flow's port; CPU 1 at the same moment
    sends the client ACK of the very flow that SYN reclaims (found by a dry run on the same fill).
    Per pair of packets: the SYN got the port and the ACK was dropped, or the ACK went out with it
    and the SYN got another port or none. Never both with the same port."""
    dp = nodeport
    rounds = 3000
    clients = new_clients(rounds)
    syns = [bytes(syn(client, NODE_ADDR, sport=sport)) for client, sport in clients]
    answer = bytes(inbound(IP(src=B, dst=NODE_ADDR) / TCP(sport=8080, dport=1, flags="SA")))
    fill(dp, routed, HALF_OPEN, age_s=1)
    victims = []
    with in_netns(routed[0]):
        for frame in syns:
            verdict, out = run(dp, "from_uplink", frame, ifindex=routed[1])
            victims.append(l4_ports(out)[0] if verdict == TC_ACT_REDIRECT else None)
    assert sum(v is not None for v in victims) > rounds * 0.99
    for key, _ in list(dp.maps.ct.items()):
        dp.maps.ct.delete(key)
    fill(dp, routed, HALF_OPEN, age_s=1)
    acks = [client_ack(v) if v else None for v in victims]

    def work(cpu, lockstep):
        got, crossed = [], []
        with in_netns(routed[0]):
            for i in range(rounds):
                lockstep()
                if cpu:   # the ACK later by 0-10 µs, round by round: both orders, and overlaps (~40 ACKs meet a claim)
                    for _ in range(i % 400):
                        pass
                frame = syns[i] if cpu == 0 else acks[i]
                if frame is None:
                    got.append(None)
                    continue
                verdict, out = run(dp, "from_uplink", frame, ifindex=routed[1])
                got.append(l4_ports(out)[0] if verdict == TC_ACT_REDIRECT else None)
                if cpu == 0 and got[-1]:   # the backend's answer on the port reaches this SYN's client
                    verdict, back = run(dp, "from_uplink", with_ports(answer, dport=got[-1]), ifindex=routed[1])
                    to = (verdict, ip_str(int.from_bytes(back[30:34], "little")), l4_ports(back)[1])
                    if to != (TC_ACT_REDIRECT, *clients[i]):
                        crossed.append(f"round {i}: SNAT port {got[-1]}'s answer went to {to}")
        return got, crossed

    (syn_ports, crossed), (ack_ports, _) = on_all_cpus(work)[:2]
    assert not crossed, f"{len(crossed)} answers cross-wired, e.g. {crossed[:3]}"
    both = [i for i in range(rounds) if syn_ports[i] and syn_ports[i] == ack_ports[i]]
    assert not both, f"{len(both)} ports went out with two flows, e.g. round {both[0]}"
    acks_in = sum(1 for i in range(rounds) if ack_ports[i])
    reclaimed = sum(1 for i in range(rounds) if syn_ports[i] and syn_ports[i] == victims[i])
    assert acks_in and reclaimed, (acks_in, reclaimed)   # both sides won some: the race was run
    assert not pair_problems(dp.maps), pair_problems(dp.maps)[:5]
    # A flow whose ACK went out keeps its port: its backend's answers still reach its client.
    for port in filter(None, ack_ports):
        rev = dp.maps.ct.lookup(key_of(B, 8080, NODE_ADDR, port))
        assert rev and (ip_str(rev[0].snat_addr), port_int(rev[0].snat_port)) == holder(port)
        assert rev[0].tcp_seen & C.CT_TCP_ACK_FWD
