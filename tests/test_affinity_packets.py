"""Session affinity through the real programs (BPF_PROG_TEST_RUN): new connections of a client go
to the backend of its last new connection within the timeout, on pod veths and on the uplink; the
timeout runs on the programs' own clock; a backend that left is forgotten."""
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath import affinity
from ebpflb.datapath.structs import C, ffi, ip_be, ip_str, port_int
from ebpflb.sync.writer import MapWriter
from tests.conftest import NODE_ADDR
from tests.test_datapath_packets import TC_ACT_NEXT, VIP, ct_entries, from_pod, run
from tests.test_uplink_packets import CLIENT, NODEPORT, inbound, routed, run_routed  # noqa: F401 (fixture)

BACKENDS = ["10.200.0.2", "10.200.0.3", "10.200.1.2", "10.200.1.3"]
C_POD = "10.200.2.2"
EXT, EXT_LOCAL = C.NAT_FLG_EXTERNAL, C.NAT_FLG_EXTERNAL_LOCAL


def desired(backends=BACKENDS, timeout=10800, local=0, external=(), proto=6) -> DesiredState:
    """Service port 1 at VIP:8080 (and `external` (addr, port, flags) frontends) over `backends`
    (port 8080, local first), with session affinity `timeout` (0: none)."""
    state = DesiredState(service_ips=frozenset([VIP]))
    state.frontends[FrontendKey(VIP, 8080, proto)] = Frontend(1, len(backends), local, 0)
    for addr, number, flags in external:
        state.frontends[FrontendKey(addr, number, proto)] = Frontend(1, len(backends), local, flags)
    state.backends[1] = tuple(Backend(a, 8080) for a in backends)
    if timeout:
        state.affinity[1] = timeout
    return state


def syn(sport, client=C_POD):
    return from_pod(IP(src=client, dst=VIP) / TCP(sport=sport, dport=8080, flags="S"))


def connect(dp, sport, client=C_POD) -> str:
    """A new connection's SYN through from_workload: the backend it went to."""
    verdict, out = run(dp, "from_workload", syn(sport, client))
    assert verdict == TC_ACT_NEXT
    return Ether(out)[IP].dst


def entries(dp) -> dict:
    """{(id, client): (backend, last_used_ns)}"""
    return {(k.svc_id, ip_str(k.client_addr)): (ip_str(v.backend_addr), v.last_used_ns)
            for k, v in dp.maps.affinity.items()}


def forget_flow(dp, client, sport):
    """Delete a flow's two conntrack entries, so the same tuple is a new connection again."""
    for k, _ in dp.maps.ct.items():
        if (ip_str(k.src_addr), port_int(k.src_port)) == (client, sport) or \
                (ip_str(k.dst_addr), port_int(k.dst_port)) == (client, sport):
            dp.maps.ct.delete(k)


def natural_pick(dp, writer, sport, client=C_POD) -> str:
    """Where a new connection from (client, sport) goes without affinity: the flow's hash."""
    timeout = writer.affinity.get(1, 0)
    dp.maps.affinity_svc.update(ffi.new("__u32 *", 1), ffi.new("struct affinity_svc *"))
    try:
        forget_flow(dp, client, sport)
        backend = connect(dp, sport, client)
        forget_flow(dp, client, sport)
    finally:
        dp.maps.affinity_svc.update(ffi.new("__u32 *", 1), ffi.new("struct affinity_svc *", {"timeout_s": timeout}))
    return backend


def port_going_elsewhere(dp, writer, not_to: str, start=50000, client=C_POD) -> int:
    """A source port whose own pick (without affinity) is not `not_to`."""
    return next(p for p in range(start, start + 100) if natural_pick(dp, writer, p, client) != not_to)


def age_entry(dp, client, seconds, svc_id=1):
    """Make the client's entry as if its last new connection were `seconds` ago (on the programs'
    clock, CLOCK_MONOTONIC): the map is written, the kernel is not mocked."""
    key = ffi.new("struct affinity_key *", {"svc_id": svc_id, "client_addr": ip_be(client)})
    value = dp.maps.affinity.lookup(key)
    value.last_used_ns = time.monotonic_ns() - int(seconds * 1e9)
    dp.maps.affinity.update(key, value)


def test_the_same_client_from_any_port_lands_on_one_backend(dp):
    writer = MapWriter(dp.maps)
    writer.apply(desired())
    picked = {connect(dp, sport) for sport in range(41000, 41040)}
    assert len(picked) == 1
    assert entries(dp) == {(1, C_POD): (picked.pop(), entries(dp)[(1, C_POD)][1])}
    writer.apply(desired(timeout=0))
    assert len({natural_pick(dp, writer, sport) for sport in range(41000, 41040)}) > 1   # the hash alone spreads


def test_udp_flows_of_a_client_stick_too(dp):
    MapWriter(dp.maps).apply(desired(proto=17))
    picked = set()
    for sport in range(5000, 5020):
        _, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / UDP(sport=sport, dport=8080)))
        picked.add(Ether(out)[IP].dst)
    assert len(picked) == 1


def test_clients_are_remembered_apart_and_can_land_elsewhere(dp):
    MapWriter(dp.maps).apply(desired())
    clients = [f"10.200.2.{i}" for i in range(10, 30)]
    first = {client: connect(dp, 42000, client) for client in clients}
    for client in clients:
        assert {connect(dp, sport, client) for sport in range(42001, 42006)} == {first[client]}
    assert len(set(first.values())) > 1
    assert {k for k in entries(dp)} == {(1, c) for c in clients}


def test_the_timeout_counts_from_the_last_new_connection_on_the_programs_clock(dp):
    """1 s timeout, real time: a connection 0.6 s after the first renews it, so 1.2 s after the first
    (0.6 s after the renewal) the client still sticks; 1.2 s after its last one it picks anew."""
    writer = MapWriter(dp.maps)
    writer.apply(desired(timeout=1))
    sticky = connect(dp, 43000)
    elsewhere = [port_going_elsewhere(dp, writer, sticky, start) for start in (43100, 43300, 43500)]
    time.sleep(0.6)
    assert connect(dp, elsewhere[0]) == sticky          # within the timeout: renewed
    time.sleep(0.6)
    assert connect(dp, elsewhere[1]) == sticky          # 1.2 s after the first, 0.6 s after the last
    time.sleep(1.2)
    repicked = connect(dp, elsewhere[2])
    assert repicked != sticky                           # expired: the flow's own pick, remembered anew
    assert entries(dp)[(1, C_POD)][0] == repicked


def test_an_entry_just_within_the_timeout_is_followed_and_one_past_it_is_not(dp):
    writer = MapWriter(dp.maps)
    writer.apply(desired(timeout=60))
    sticky = connect(dp, 44000)
    other = port_going_elsewhere(dp, writer, sticky, 44100)
    age_entry(dp, C_POD, 55)
    assert connect(dp, other) == sticky
    assert time.monotonic_ns() - entries(dp)[(1, C_POD)][1] < 5e9      # renewed from now
    forget_flow(dp, C_POD, other)
    age_entry(dp, C_POD, 65)
    assert connect(dp, other) != sticky


def test_packets_of_an_established_flow_do_not_renew(dp):
    MapWriter(dp.maps).apply(desired(timeout=60))
    connect(dp, 45000)
    age_entry(dp, C_POD, 30)
    before = entries(dp)[(1, C_POD)][1]
    for seq in range(5):
        run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=45000, dport=8080, flags="A", seq=seq)))
    assert entries(dp)[(1, C_POD)][1] == before


def test_switching_affinity_off_and_on_and_changing_the_timeout_take_effect_at_once(dp):
    writer = MapWriter(dp.maps)
    writer.apply(desired(timeout=60))
    sticky = connect(dp, 46000)
    other = port_going_elsewhere(dp, writer, sticky, 46100)
    stats = writer.apply(desired(timeout=0))
    assert stats.affinity_left == {1}
    assert connect(dp, other) != sticky                 # off: the entry is not followed
    assert affinity.prune(dp.maps, {}, {}) == 1 and not entries(dp)
    writer.apply(desired(timeout=60))
    back = connect(dp, 46200)
    assert {connect(dp, sport) for sport in range(46201, 46220)} == {back}
    age_entry(dp, C_POD, 90)                            # past 60 s ...
    writer.apply(desired(timeout=120))                  # ... but within the new timeout
    forget_flow(dp, C_POD, 46201)
    assert connect(dp, 46201) == back


def test_a_removed_backend_is_forgotten_and_the_next_connection_picks_a_live_one(dp):
    writer = MapWriter(dp.maps)
    writer.apply(desired())
    sticky = connect(dp, 47000)
    bystander = next(f"10.200.2.{i}" for i in range(40, 90) if connect(dp, 47000, f"10.200.2.{i}") != sticky)
    stats = writer.apply(desired(backends=[b for b in BACKENDS if b != sticky]))
    assert stats.affinity_left == {1}
    # before any pruning, the programs already ignore the entry
    moved = connect(dp, 47001)
    assert moved != sticky and moved in BACKENDS
    assert entries(dp)[(1, C_POD)][0] == moved
    assert {connect(dp, sport) for sport in range(47002, 47010)} == {moved}
    # a client whose entry still names the gone backend loses it to the agent's pruning; others stay
    lost = f"10.200.2.{200}"
    dp.maps.affinity.update(ffi.new("struct affinity_key *", {"svc_id": 1, "client_addr": ip_be(lost)}),
                            ffi.new("struct affinity_value *", {"last_used_ns": time.monotonic_ns(),
                                                                "backend_addr": ip_be(sticky),
                                                                "backend_port": 0x901f}))   # 8080
    state = desired(backends=[b for b in BACKENDS if b != sticky])
    assert affinity.prune(dp.maps, state.affinity, state.backends) == 1
    assert set(entries(dp)) == {(1, C_POD), (1, bystander)}


def test_a_backend_that_moved_to_another_ordinal_keeps_its_clients(dp):
    writer = MapWriter(dp.maps)
    writer.apply(desired())
    sticky = connect(dp, 48000)
    writer.apply(desired(backends=["10.200.0.1", *BACKENDS]))   # every ordinal shifts by one
    assert {connect(dp, sport) for sport in range(48001, 48010)} == {sticky}


def test_the_writer_keeps_members_and_timeouts_and_rereads_them_after_a_restart(dp):
    writer = MapWriter(dp.maps)
    writer.apply(desired(timeout=30))
    assert dp.maps.affinity_svc.nonzero_u32() == {1: 30}
    members = {(k.svc_id, ip_str(k.addr), port_int(k.port)): v[0] for k, v in dp.maps.affinity_be.items()}
    assert members == {(1, addr, 8080): ordinal for ordinal, addr in enumerate(BACKENDS)}
    restarted = MapWriter(dp.maps)
    assert not restarted.apply(desired(timeout=30)).changed
    restarted.apply(desired(timeout=0))
    assert dp.maps.affinity_svc.nonzero_u32() == {} and not dp.maps.affinity_be.items()


# --- The uplink: NodePort, externalIPs, LB IPs (tc; XDP leaves new flows to tc)

def nodeport_syn(sport, client=CLIENT):
    return inbound(IP(src=client, dst=NODE_ADDR) / TCP(sport=sport, dport=NODEPORT, flags="S"))


def test_an_outside_client_sticks_to_one_backend_through_a_node_port(dp, routed):
    MapWriter(dp.maps).apply(desired(backends=["10.200.1.2", "10.200.1.3", "10.200.1.4"],
                                     external=[(NODE_ADDR, NODEPORT, EXT)]))
    picked = {Ether(run_routed(dp, routed, "from_uplink", nodeport_syn(sport))[1])[IP].dst
              for sport in range(40000, 40030)}
    assert len(picked) == 1
    assert entries(dp) == {(1, CLIENT): (picked.pop(), entries(dp)[(1, CLIENT)][1])}   # the client, not the SNAT


def test_a_local_policy_follows_only_entries_of_local_backends(dp):
    """An entry naming a remote backend (from the cluster-set path) is no candidate under
    externalTrafficPolicy Local: the local backend is picked and remembered."""
    local, remote = "10.200.0.2", "10.200.1.2"
    MapWriter(dp.maps).apply(desired(backends=[local, remote], local=1,
                                     external=[(NODE_ADDR, NODEPORT, EXT | EXT_LOCAL)]))
    dp.maps.affinity.update(ffi.new("struct affinity_key *", {"svc_id": 1, "client_addr": ip_be(CLIENT)}),
                            ffi.new("struct affinity_value *", {"last_used_ns": time.monotonic_ns(),
                                                                "backend_addr": ip_be(remote),
                                                                "backend_port": 0x901f}))
    verdict, out = run(dp, "from_uplink", nodeport_syn(40000))
    assert verdict == TC_ACT_NEXT and Ether(out)[IP].dst == local
    assert entries(dp)[(1, CLIENT)][0] == local
    assert ct_entries(dp)[(CLIENT, 40000, NODE_ADDR, NODEPORT, 6)].nat_addr == ip_be(local)


@pytest.mark.parametrize("prog", ["from_workload", "from_uplink"])
def test_without_affinity_nothing_is_remembered(dp, prog):
    MapWriter(dp.maps).apply(desired(timeout=0, external=[(NODE_ADDR, NODEPORT, EXT)], local=4))
    pkt = syn(41000) if prog == "from_workload" else nodeport_syn(41000)
    run(dp, prog, pkt)
    assert not entries(dp)


def test_pins_of_an_agent_before_affinity_get_its_maps_and_keep_the_others():
    """The affinity maps are new maps, not a new layout of old ones (EBPFLB_LAYOUT_VERSION stays): an
    agent starting over an older agent's pins creates them beside the maps it keeps."""
    import os
    from tests.conftest import loaded_datapath
    with loaded_datapath() as first:
        MapWriter(first.maps).apply(desired())
        for name in ("affinity", "affinity_svc", "affinity_be"):
            os.unlink(os.path.join(first.pin_dir, name))
        from ebpflb.datapath.loader import Datapath
        again = Datapath(first.pin_dir).load(node_addr=NODE_ADDR)
        try:
            assert MapWriter(again.maps).frontends == {FrontendKey(VIP, 8080, 6): Frontend(1, 4, 0, 0)}
            assert again.maps.affinity_svc.nonzero_u32() == {}     # the writer puts it back at its next sync
            MapWriter(again.maps).apply(desired())
            verdict, out = run(again, "from_workload", syn(49000))
            assert verdict == TC_ACT_NEXT and len(again.maps.affinity.items()) == 1
        finally:
            again.close()
