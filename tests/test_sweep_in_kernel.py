"""Issue 21: the conntrack sweep judges and deletes in the kernel (bpf/ct_sweep.c's ct_sweep_keys,
sweep_in_kernel()): userspace reads keys in batches and gets counts. It must judge as the Python
sweep does (expired()), delete pairs as pairs, spare a flow woken meanwhile, and say which
service ids it saw."""
import multiprocessing
import random
import time

from scapy.layers.inet import IP, TCP, UDP

from ebpflb.datapath.conntrack import Timeouts, expired, sweep_in_kernel
from ebpflb.datapath.maps import BATCH
from ebpflb.datapath.structs import C, ffi, ip_be, port_be, to_bytes
from tests.test_conntrack_pairs import established_pod_flows, key_of, pair_problems, with_ports
from tests.test_datapath_packets import B, C_POD, SYN, VIP, ct_entries, from_pod, program, run, to_pod
from tests.two_cpus import on_all_cpus

TIMEOUTS = Timeouts()


def sweep(dp, now_ns, ids_seen=None, timeouts=TIMEOUTS):
    return sweep_in_kernel(dp.maps, dp.fds["ct_sweep_keys"], timeouts, now_ns, ids_seen)


def flows_in_every_state(dp) -> None:
    """TCP SYN-SENT, ESTABLISHED, CLOSED, RESET; UDP; and two flows that lost a half (LRU)."""
    program(dp, (VIP, 8080, 6, [B], 0), (VIP, 5353, 17, [B], 0))
    for sport, answer, close in ((40001, None, None), (40002, "SA", None), (40003, "SA", "F"), (40004, "SA", "R"),
                                 (40005, "SA", None), (40006, "SA", None)):
        run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=sport, dport=8080, flags="S")))
        if answer:
            run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=sport, flags=answer)))
        if close == "F":
            run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=sport, dport=8080, flags="FA")))
            run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=sport, flags="FA")))
        elif close == "R":
            run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=sport, flags="R")))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / UDP(sport=5000, dport=5353)))
    dp.maps.ct.delete(key_of(C_POD, 40005, VIP, 8080))   # evicted forward half
    dp.maps.ct.delete(key_of(B, 8080, C_POD, 40006))     # evicted reply half


def test_the_kernel_judges_every_state_as_the_python_sweep_does(dp):
    flows_in_every_state(dp)
    now = max(v.last_seen_ns for v in ct_entries(dp).values())
    for idle_s in (0, 6, 21, 31, 41, 61, 601, 3601):
        judged = expired(dp.maps.ct.items(), TIMEOUTS, now + int(idle_s * 1e9))
        doomed = {to_bytes(key) for key, value, twin in judged} | \
            {to_bytes(ffi.addressof(value, "twin")) for key, value, twin in judged if twin is not None}
        before = {to_bytes(k) for k, _ in dp.maps.ct.items()}
        result = sweep(dp, now + int(idle_s * 1e9))
        after = {to_bytes(k) for k, _ in dp.maps.ct.items()}
        assert before - after == doomed, idle_s
        assert (result.deleted, result.spared, result.read) == (len(doomed), 0, len(before)), idle_s
        assert not [p for p in pair_problems(dp.maps) if "missing" not in p]
    assert not ct_entries(dp)


def test_a_full_walk_past_many_batches_deletes_pairs_and_keeps_the_live_ones(dp):
    """More entries than one batch read (BATCH) and than one test run takes (CT_SWEEP_KEYS), deleted
    while the walk goes on; a random third of the flows is fresh and stays, whole."""
    flows, now = BATCH + 3 * C.CT_SWEEP_KEYS + 5, time.monotonic_ns()
    rng, keys, values, live = random.Random(21), [], [], set()
    for i in range(flows):
        client, port = f"10.{200 + i // 65536}.{(i // 256) % 256}.{i % 256}", 30000 + i % 7
        fwd_k = key_of(client, port, VIP, 80)
        rev_k = key_of(B, 8080, client, port)
        fresh = rng.random() < 1 / 3
        seen = now if fresh else now - int(61e9)
        common = dict(created_ns=seen, last_seen_ns=seen, svc_id=1 + i % 5)
        fwd_v = ffi.new("struct ct_value *", dict(type=C.CT_TYPE_NAT_FWD, nat_addr=ip_be(B), nat_port=port_be(8080),
                                                  **common))
        rev_v = ffi.new("struct ct_value *", dict(type=C.CT_TYPE_NAT_REV, nat_addr=ip_be(VIP), nat_port=port_be(80),
                                                  **common))
        fwd_v.twin, rev_v.twin = rev_k[0], fwd_k[0]
        fwd_k.proto = rev_k.proto = 17
        fwd_v.twin.proto = rev_v.twin.proto = 17
        keys += [rev_k[0], fwd_k[0]]
        values += [rev_v[0], fwd_v[0]]
        if fresh:
            live |= {to_bytes(rev_k), to_bytes(fwd_k)}
    dp.maps.ct.update_many(ffi.new("struct ct_key[]", keys), ffi.new("struct ct_value[]", values))

    seen = set()
    result = sweep(dp, now, seen)
    # the walk reads every entry but the twins deleted ahead of it
    assert 2 * flows - result.deleted // 2 <= result.read <= 2 * flows and result.spared == 0
    assert result.deleted == 2 * flows - len(live)
    assert {to_bytes(k) for k, _ in dp.maps.ct.items()} == live
    assert not pair_problems(dp.maps)
    assert seen == {1, 2, 3, 4, 5}


def test_a_flow_reopened_on_its_closed_keys_is_not_swept(dp):
    """A SYN reusing a closed flow's port makes a new flow at the same keys: judged by what the
    kernel reads at the sweep, it is fresh and stays (its SYN-ACK still translated)."""
    program(dp, (VIP, 8080, 6, [B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA")))
    run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="FA")))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=8080, flags="FA")))
    closed_at = max(v.last_seen_ns for v in ct_entries(dp).values())
    time.sleep(0.05)
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))   # the port reused
    reopened_at = max(v.last_seen_ns for v in ct_entries(dp).values())
    assert reopened_at > closed_at
    # long past the closed flow's timeout, well within the new one's (SYN-SENT: 20 s)
    assert sweep(dp, reopened_at + int(1e9), timeouts=Timeouts(tcp_fin=0.01)).deleted == 0
    assert len(ct_entries(dp)) == 2
    _, out = run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA")))
    assert IP(out[14:]).src == VIP


def test_the_sweep_on_one_cpu_never_splits_a_pair_the_other_cpu_wakes(dp):
    """The kernel sweep on one CPU (every flow expired: the clock an hour ahead) while the other
    sends on every other flow the whole time. The sweep starts only once the sender is sending,
    and the sender stops only once the last sweep is done, so every woken flow the sweep deletes
    is deleted while its packets flow: that is the race, run by construction (how many the claim
    spares depends on timing: the window is a few instructions wide). Every flow goes whole or
    stays whole."""
    program(dp, (VIP, 8080, 6, [B], 0))
    ports = range(30000, 30000 + 1500)
    established_pod_flows(dp, ports)
    program(dp)   # the service goes: the flows live on in conntrack, and no packet makes a new one
    frame = bytes(to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=1, flags="A")))
    woken = ports[::2]
    ctx = multiprocessing.get_context("fork")
    sending, swept = ctx.Event(), ctx.Event()

    def work(cpu, lockstep):
        if cpu % 2 == 0:
            try:
                assert sending.wait(60)
                deleted, split = 0, []
                for _ in range(12):
                    deleted += sweep(dp, time.monotonic_ns() + int(3601e9)).deleted
                    split += pair_problems(dp.maps)   # the packets add and remove no entry: only the sweep does
                return deleted, split
            finally:
                swept.set()
        frames, rounds = [with_ports(frame, dport=port) for port in woken], 0
        while not swept.is_set():
            for f in frames:
                run(dp, "to_workload", f)
            rounds += 1
            sending.set()
        return rounds

    (deleted, split), rounds = on_all_cpus(work)
    split += pair_problems(dp.maps)
    assert not split, f"{len(split)} split pairs, e.g. {split[:3]}"
    left = {port for (_, _, _, port, _), v in ct_entries(dp).items() if v.type == C.CT_TYPE_NAT_REV}
    assert deleted == 2 * (len(ports) - len(left)) and rounds > 0
    assert not left & set(ports[1::2]), "an idle flow outlived the sweep"
    assert len(set(woken) - left) > 0, "no woken flow was swept while its packets flowed"
