"""Conntrack pairs stay whole and never cross (issue 14, item 4): the real programs on both CPUs
at once (tests/two_cpus.py, one process pinned to each CPU), and the pairs checked after; and the
ways a pair loses a half (LRU eviction, the sweep) one at a time, with what must follow."""
import multiprocessing
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.datapath.conntrack import Timeouts, entries_of, expired, in_kernel, tcp_state
from ebpflb.datapath.structs import C, ffi, ip_be, ip_str, port_be, port_int, to_bytes
from tests.conftest import NODE_ADDR
from tests.lab import in_netns
from tests.test_datapath_packets import (TC_ACT_NEXT, TC_ACT_REDIRECT, VIP, B, C_POD, SYN, ct_entries, from_pod,
                                         program as program_services, run, to_pod)
from tests.test_uplink_packets import (CLIENT, EXT, NODEPORT, OTHER_CLIENT, inbound, program, routed,  # noqa: F401
                                       run_routed, syn)
from tests.two_cpus import on_all_cpus


def key_of(src, sport, dst, dport, proto=6):
    return ffi.new("struct ct_key *", {"src_addr": ip_be(src), "dst_addr": ip_be(dst), "src_port": port_be(sport),
                                       "dst_port": port_be(dport), "proto": proto})


def describe(key) -> str:
    return f"{ip_str(key.src_addr)}:{port_int(key.src_port)}->{ip_str(key.dst_addr)}:{port_int(key.dst_port)}"


def pair_problems(maps) -> list[str]:
    """Every forward half has its reply half, which names it back, and the other way round; an
    uplink SNAT pair's halves agree on the client and the port (so no two flows share a reply)."""
    entries = {to_bytes(k): (k, v) for k, v in maps.ct.items()}
    problems = []
    for raw, (key, value) in entries.items():
        twin = entries.get(to_bytes(ffi.addressof(value, "twin")))
        if twin is None or to_bytes(ffi.addressof(twin[1], "twin")) != raw or twin[1].type == value.type:
            problems.append(f"{describe(key)} type {value.type}: its twin {describe(value.twin)} is "
                            f"{'missing' if twin is None else 'not its own'}")
            continue
        if value.type == C.CT_TYPE_NAT_FWD and value.flags & C.CT_FLAG_SNAT and value.flags & C.CT_FLAG_UPLINK:
            rev = twin[1]
            if (rev.snat_addr, rev.snat_port, value.snat_port) != (key.src_addr, key.src_port, value.twin.dst_port):
                problems.append(f"{describe(key)}: SNAT pair disagrees: reply to {ip_str(rev.snat_addr)}:"
                                f"{port_int(rev.snat_port)}, SNAT port {port_int(value.snat_port)}")
    return problems


def with_ports(frame: bytes, sport: int | None = None, dport: int | None = None) -> bytes:
    """A TCP/UDP frame (IPv4 without options) with other ports; its L4 checksum is not fixed (the
    programs translate whatever they are given, incrementally)."""
    out = bytearray(frame)
    if sport is not None:
        out[34:36] = sport.to_bytes(2, "big")
    if dport is not None:
        out[36:38] = dport.to_bytes(2, "big")
    return bytes(out)


def l4_ports(frame: bytes) -> tuple[int, int]:
    return int.from_bytes(frame[34:36], "big"), int.from_bytes(frame[36:38], "big")


# --- both CPUs at once

def test_two_cpus_taking_snat_ports_for_two_clients_never_cross_wire_them(dp, routed):
    """X on one CPU and Y on the other open and reset connections from the same four source
    ports through a one-backend SNAT NodePort, so they fight for the same reply tuples (the
    client's own port is every flow's first choice). Each checks the backend's answer to its SYN
    comes back to itself."""
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    clients, ports, rounds = (CLIENT, OTHER_CLIENT), (40000, 40001, 40002, 40003), 4000
    answer = bytes(inbound(IP(src=B, dst=NODE_ADDR) / TCP(sport=8080, dport=1, flags="SA", ack=8)))

    def work(cpu, lockstep):
        client = clients[cpu % 2]
        first = {p: bytes(syn(client, NODE_ADDR, sport=p)) for p in ports}
        reset = {p: bytes(inbound(IP(src=client, dst=NODE_ADDR) / TCP(sport=p, dport=NODEPORT, flags="R")))
                 for p in ports}
        crossed, refused = [], 0
        with in_netns(routed[0]):
            for i in range(rounds):
                port = ports[i % len(ports)]
                lockstep()
                verdict, out = run(dp, "from_uplink", first[port], ifindex=routed[1])
                if verdict != TC_ACT_REDIRECT:
                    refused += 1
                    continue
                snat_port = l4_ports(out)[0]
                verdict, back = run(dp, "from_uplink", with_ports(answer, dport=snat_port), ifindex=routed[1])
                to = (verdict, ip_str(int.from_bytes(back[30:34], "little")), l4_ports(back)[1])
                if to != (TC_ACT_REDIRECT, client, port):
                    crossed.append(f"{client}:{port} (SNAT port {snat_port}): the answer went to {to}")
                run(dp, "from_uplink", reset[port], ifindex=routed[1])
        return crossed, refused

    results = on_all_cpus(work)
    crossed = [c for r, _ in results for c in r]
    assert not crossed, f"{len(crossed)} answers cross-wired, e.g. {crossed[:5]}"
    assert all(refused == 0 for _, refused in results), results
    assert not pair_problems(dp.maps), pair_problems(dp.maps)[:5]


def established_pod_flows(dp, ports):
    """C:port -> VIP for each port, answered by B: ESTABLISHED pod flows."""
    first = bytes(from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    answer = bytes(to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA")))
    for port in ports:
        assert run(dp, "from_workload", with_ports(first, sport=port))[0] == TC_ACT_NEXT
        assert run(dp, "to_workload", with_ports(answer, dport=port))[0] == TC_ACT_NEXT


def test_tcp_flags_set_from_two_cpus_at_once_are_all_kept(dp):
    """The client's FIN on one CPU and the backend's FIN on the other, for the same flow at the
    same moment, flow after flow: both must end up in the flow's state (CLOSED), none lost to
    the other CPU's write."""
    program_services(dp, (VIP, 8080, 6, [B], 0))
    ports = range(20000, 20000 + 12000)
    established_pod_flows(dp, ports)
    client_fin = bytes(from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=1, dport=8080, flags="FA")))
    backend_fin = bytes(to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=1, flags="FA")))

    def work(cpu, lockstep):
        for port in ports:
            lockstep()
            if cpu % 2:
                run(dp, "to_workload", with_ports(backend_fin, dport=port))
            else:
                run(dp, "from_workload", with_ports(client_fin, sport=port))

    on_all_cpus(work)
    states = {}
    for key, value in dp.maps.ct.items():
        if value.type == C.CT_TYPE_NAT_REV:
            states.setdefault(tcp_state(value.tcp_seen), []).append(port_int(key.dst_port))
    assert set(states) == {"CLOSED"}, {state: len(p) for state, p in states.items()}
    assert len(states["CLOSED"]) == len(ports)


def test_a_closed_flow_reopened_on_both_cpus_at_once_is_one_whole_new_pair(dp):
    """The same SYN reopening a closed flow on both CPUs at the same moment (a client's SYN and its
    retransmission), flow after flow. The reopen looks its own closed pair up rather than insert
    first, and leaves its forward half for the commit to replace (issue 21): every flow must end
    as one whole pair in the new connection's state, and at least one of the two SYNs translated."""
    program_services(dp, (VIP, 8080, 6, [B], 0))
    ports = range(20000, 20000 + 4000)
    established_pod_flows(dp, ports)
    client_fin = bytes(from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=1, dport=8080, flags="FA")))
    backend_fin = bytes(to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=1, flags="FA")))
    for port in ports:
        run(dp, "from_workload", with_ports(client_fin, sport=port))
        run(dp, "to_workload", with_ports(backend_fin, dport=port))
    syn = bytes(from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=1, dport=8080, flags="S")))

    def work(cpu, lockstep):
        translated = []
        for port in ports:
            lockstep()
            verdict, out = run(dp, "from_workload", with_ports(syn, sport=port))
            translated.append(verdict == TC_ACT_NEXT and Ether(out)[IP].dst == B)
        return translated

    per_cpu = on_all_cpus(work)
    lost = [port for port, got in zip(ports, zip(*per_cpu)) if not any(got)]
    assert not lost, f"{len(lost)} flows had both SYNs dropped, e.g. {lost[:3]}"
    assert not pair_problems(dp.maps)
    states = [tcp_state(v.tcp_seen) for _, v in dp.maps.ct.items() if v.type == C.CT_TYPE_NAT_REV]
    assert len(states) == len(ports) and set(states) == {tcp_state(C.CT_TCP_SYN_FWD)}, set(states)


@pytest.mark.parametrize("woken", ["reply", "forward"])
def test_the_sweep_on_one_cpu_never_splits_a_pair_the_other_cpu_wakes(dp, woken):
    """One CPU sweeps (every flow judged expired: the clock is an hour ahead) while the other keeps
    sending on one half of every flow. A flow goes whole or stays whole: woken between judgement
    and delete, both halves stay."""
    program_services(dp, (VIP, 8080, 6, [B], 0))
    ports = range(30000, 30000 + 1500)
    established_pod_flows(dp, ports)
    program_services(dp)   # the service goes: the flows live on in conntrack, and no packet makes a new one
    if woken == "reply":
        prog, frame = "to_workload", bytes(to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=1, flags="A")))
        wake = lambda port: with_ports(frame, dport=port)   # noqa: E731
    else:
        prog, frame = "from_workload", bytes(from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=1, dport=8080, flags="A")))
        wake = lambda port: with_ports(frame, sport=port)   # noqa: E731
    sweeps, swept = 12, multiprocessing.get_context("fork").Event()
    delete = in_kernel(dp.fds["ct_delete_unchanged"])

    def work(cpu, lockstep):
        if cpu % 2 == 0:
            try:
                deleted = spared = 0
                split = []
                for _ in range(sweeps):
                    judged = expired(dp.maps.ct.items(), Timeouts(), time.monotonic_ns() + int(3601e9))
                    gone = delete(dp.maps.ct, judged)
                    deleted, spared = deleted + gone, spared + entries_of(judged) - gone
                    split += pair_problems(dp.maps)   # the packets add no entry, and remove none: only the sweep does
                return deleted, spared, split
            finally:
                swept.set()
        frames, rounds = [wake(port) for port in ports[::2]], 0   # every other flow: the rest stays idle
        while not swept.is_set():
            for frame in frames:
                run(dp, prog, frame)
            rounds += 1
        return rounds

    (deleted, spared, split), rounds = on_all_cpus(work)
    assert deleted >= len(ports) and spared > 0 and rounds > 0, (deleted, spared, rounds)   # the race was run
    split += pair_problems(dp.maps)
    assert not split, f"{len(split)} split pairs, e.g. {split[:3]}"


# --- a pair that lost a half, one case at a time

def reply_to(dp, routed, snat_port, flags="A", payload=b"ok"):
    return run_routed(dp, routed, "from_uplink", inbound(IP(src=B, dst=NODE_ADDR) /
                                                          TCP(sport=8080, dport=snat_port, flags=flags) / Raw(payload)))


def established_snat_flow(dp, routed, client=CLIENT, sport=40000) -> int:
    """An outside client's connection through the NodePort to B, SNATed: its SNAT port."""
    verdict, out = run_routed(dp, routed, "from_uplink", syn(client, NODE_ADDR, sport=sport))
    assert verdict == TC_ACT_REDIRECT
    snat_port = Ether(out)[TCP].sport
    assert reply_to(dp, routed, snat_port, flags="SA")[0] == TC_ACT_REDIRECT
    assert client_ack(dp, routed, client, sport)[0] == TC_ACT_REDIRECT   # the handshake's last packet
    return snat_port


def client_ack(dp, routed, client=CLIENT, sport=40000):
    return run_routed(dp, routed, "from_uplink", inbound(IP(src=client, dst=NODE_ADDR) /
                                                          TCP(sport=sport, dport=NODEPORT, flags="A") / Raw(b"more")))


def test_a_snat_flow_that_lost_its_forward_half_gets_it_back_with_the_same_port_and_state(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    # Y holds the port X would try first, so X's flow gets one of its hash's candidates...
    established_snat_flow(dp, routed, client=OTHER_CLIENT, sport=40000)
    snat_port = established_snat_flow(dp, routed)
    assert snat_port != 40000
    # ...then Y's flow ends (its port is free again) and the LRU evicts X's forward half.
    run_routed(dp, routed, "from_uplink", inbound(IP(src=OTHER_CLIENT, dst=NODE_ADDR) /
                                                  TCP(sport=40000, dport=NODEPORT, flags="R")))
    dp.maps.ct.delete(key_of(CLIENT, 40000, NODE_ADDR, NODEPORT))
    verdict, out = client_ack(dp, routed)
    assert verdict == TC_ACT_REDIRECT
    assert (Ether(out)[IP].src, Ether(out)[TCP].sport, Ether(out)[IP].dst) == (NODE_ADDR, snat_port, B)
    rev = ct_entries(dp)[(B, 8080, NODE_ADDR, snat_port, 6)]
    assert tcp_state(rev.tcp_seen) == "ESTABLISHED"
    assert not pair_problems(dp.maps)


def test_a_pod_flow_that_lost_its_forward_half_keeps_its_tcp_state(dp):
    program_services(dp, (VIP, 8080, 6, [B], 0))
    established_pod_flows(dp, [40000])
    dp.maps.ct.delete(key_of(C_POD, 40000, VIP, 8080))
    verdict, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=8080, flags="A")))
    assert verdict == TC_ACT_NEXT and Ether(out)[IP].dst == B
    rev = ct_entries(dp)[(B, 8080, C_POD, 40000, 6)]
    assert tcp_state(rev.tcp_seen) == "ESTABLISHED"    # not SYN-SENT: it would expire in 20 s
    assert not pair_problems(dp.maps)


def next_tick():
    time.sleep(0.02)   # past a jiffy: the forward half's once-a-tick check runs


def test_a_snat_flow_that_lost_its_reply_half_gets_it_back_and_its_answers_translated(dp, routed):
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    snat_port = established_snat_flow(dp, routed)
    dp.maps.ct.delete(key_of(B, 8080, NODE_ADDR, snat_port))
    next_tick()
    assert client_ack(dp, routed)[0] == TC_ACT_REDIRECT
    verdict, out = reply_to(dp, routed, snat_port)
    assert verdict == TC_ACT_REDIRECT
    assert (Ether(out)[IP].src, Ether(out)[IP].dst, Ether(out)[TCP].dport) == (NODE_ADDR, CLIENT, 40000)
    assert not pair_problems(dp.maps)


def test_a_flow_whose_snat_port_went_to_another_is_started_again_never_shares_it(dp, routed):
    """X's reply half is evicted and its port, free-looking, goes to Y's new flow. X's next
    packet must not go out from that port (the backend would take it for Y's): X's flow starts
    again from another, and Y's pair is untouched."""
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    snat_port = established_snat_flow(dp, routed)             # X: 40000 -> SNAT port 40000
    dp.maps.ct.delete(key_of(B, 8080, NODE_ADDR, snat_port))
    assert established_snat_flow(dp, routed, client=OTHER_CLIENT) == snat_port
    next_tick()
    verdict, out = client_ack(dp, routed)
    assert verdict == TC_ACT_REDIRECT and Ether(out)[TCP].sport != snat_port
    rev = ct_entries(dp)[(B, 8080, NODE_ADDR, snat_port, 6)]
    assert (ip_str(rev.snat_addr), port_int(rev.snat_port)) == (OTHER_CLIENT, 40000)
    assert reply_to(dp, routed, snat_port)[1][30:34] == bytes(map(int, OTHER_CLIENT.split(".")))
    assert not pair_problems(dp.maps)



def test_a_syn_on_a_flow_whose_snat_port_went_to_another_is_a_new_flow_within_the_tick(dp, routed):
    """As above, but X's next packet is a SYN (a new connection from the same port) within the
    tick that skips the forward half's check: it must not go out with the SNAT port whose replies
    are Y's now. (What two CPUs did: Y took X's closed pair's port while X's SYN held X's old
    forward half; X was told the port, and its SYN-ACK went to Y.)"""
    program(dp, [(NODE_ADDR, NODEPORT, EXT)], [B])
    snat_port = established_snat_flow(dp, routed)             # X: 40000 -> SNAT port 40000
    dp.maps.ct.delete(key_of(B, 8080, NODE_ADDR, snat_port))
    assert established_snat_flow(dp, routed, client=OTHER_CLIENT) == snat_port
    fwd_key = key_of(CLIENT, 40000, NODE_ADDR, NODEPORT)
    fwd = dp.maps.ct.lookup(fwd_key)
    fwd.last_seen_ns = time.monotonic_ns() + int(60e9)   # "this tick" for the next minute
    dp.maps.ct.update(fwd_key, fwd)
    verdict, out = run_routed(dp, routed, "from_uplink", syn(CLIENT, NODE_ADDR, sport=40000))
    assert verdict == TC_ACT_REDIRECT and Ether(out)[TCP].sport != snat_port
    x_port = Ether(out)[TCP].sport
    assert reply_to(dp, routed, x_port, flags="SA")[1][30:34] == bytes(map(int, CLIENT.split(".")))
    assert reply_to(dp, routed, snat_port)[1][30:34] == bytes(map(int, OTHER_CLIENT.split(".")))
    assert not pair_problems(dp.maps)
