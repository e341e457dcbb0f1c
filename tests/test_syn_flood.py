"""Issue 21: a SYN flood must not evict established flows. New flows from random sources, several
times the conntrack map's size, between the established flows' packets (one each way per round):
every established packet is still translated and every established flow keeps both halves, and
every flood SYN is still admitted (the LRU evicts, a new flow is never refused).

Why it holds with today's LRU map (nothing of ours protects them): a flood SYN's two entries are
written and never looked up again, while an established flow's are looked up by its packets; the
kernel's LRU evicts from its inactive list and gives a looked-up entry a second chance (its
reference bit), so the flood's entries go first. Only an established flow idle through the whole
flood is lost (as on any LRU; the idle case below shows it is the flood that evicts, not chance).

The real programs, with a conntrack map of CT_MAP entries so that a flood of several maps' worth
runs in seconds."""
import random
import shutil
import uuid

import pytest
from scapy.layers.inet import IP, TCP

from ebpflb.datapath.loader import Datapath, DatapathOptions
from tests.conftest import NODE_ADDR
from tests.test_conntrack_pairs import key_of, with_ports
from tests.test_datapath_packets import B, C_POD, VIP, from_pod, program, run, to_pod

CT_MAP, ESTABLISHED = 8192, 1000
FLOOD_SRC = "10.201.0.1"


@pytest.fixture(scope="module")
def small_ct():
    pin_dir = f"/sys/fs/bpf/ebpflb-test-{uuid.uuid4().hex[:8]}"
    datapath = Datapath(pin_dir, DatapathOptions(ct_map_max=CT_MAP))
    try:
        yield datapath.load(node_addr=NODE_ADDR)
    finally:
        datapath.close()
        shutil.rmtree(pin_dir, ignore_errors=True)


def whole(dp, ports) -> int:
    return sum(1 for p in ports if dp.maps.ct.lookup(key_of(C_POD, p, VIP, 8080)) and
               dp.maps.ct.lookup(key_of(B, 8080, C_POD, p)))


def flood(dp, rng, syns: int) -> int:
    """syns SYNs to the VIP from random sources and ports: how many were translated (admitted)."""
    frame = bytearray(bytes(from_pod(IP(src=FLOOD_SRC, dst=VIP) / TCP(sport=1, dport=8080, flags="S"))))
    admitted = 0
    for _ in range(syns):
        frame[26:30] = rng.getrandbits(32).to_bytes(4, "big")   # source address
        frame[34:36] = rng.getrandbits(16).to_bytes(2, "big")   # source port
        _, out = run(dp, "from_workload", bytes(frame))
        admitted += IP(out[14:]).dst == B
    return admitted


@pytest.mark.parametrize("established_traffic", ["each-round", "idle"])
def test_a_syn_flood_of_four_maps_does_not_evict_established_flows(small_ct, established_traffic):
    dp = small_ct
    for key, _ in dp.maps.ct.items():
        dp.maps.ct.delete(key)
    program(dp, (VIP, 8080, 6, [B], 0))
    ports = range(20000, 20000 + ESTABLISHED)
    syn = bytes(from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=1, dport=8080, flags="S")))
    syn_ack = bytes(to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=1, flags="SA")))
    ack = bytes(from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=1, dport=8080, flags="A")))
    answer = bytes(to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=1, flags="A")))
    for p in ports:
        run(dp, "from_workload", with_ports(syn, sport=p))
        run(dp, "to_workload", with_ports(syn_ack, dport=p))
    assert whole(dp, ports) == ESTABLISHED

    rng, rounds, per_round = random.Random(21), 4, CT_MAP   # a whole map's worth of SYNs a round
    untranslated = admitted = 0
    for _ in range(rounds):
        admitted += flood(dp, rng, per_round)
        if established_traffic == "each-round":
            for p in ports:
                untranslated += IP(run(dp, "from_workload", with_ports(ack, sport=p))[1][14:]).dst != B
                untranslated += IP(run(dp, "to_workload", with_ports(answer, dport=p))[1][14:]).src != VIP
    assert admitted == rounds * per_round, "the flood's new flows were refused"
    if established_traffic == "each-round":
        assert untranslated == 0
        assert whole(dp, ports) == ESTABLISHED
    else:
        assert whole(dp, ports) < ESTABLISHED // 10   # idle through it all: the flood evicted them


def test_the_sweep_leaves_the_lru_order_alone(small_ct):
    """The kernel sweep must not mark the entries it passes over as recently used: a sweep that
    looked every entry up made the LRU evict a new connection's entries (unmarked until its first
    reply) before thousands of idle ones (the lab's conntrack flood test lost an HTTP request).
    Fresh idle UDP flows, a sweep (nothing expires), a new TCP flow, then enough new flows to
    evict a quarter of the map: the oldest go, the new TCP flow stays."""
    from ebpflb.datapath.conntrack import Timeouts, sweep_in_kernel
    from scapy.layers.inet import UDP

    dp = small_ct
    for key, _ in dp.maps.ct.items():
        dp.maps.ct.delete(key)
    program(dp, (VIP, 8080, 6, [B], 0), (VIP, 5353, 17, [B], 0))
    udp = bytearray(bytes(from_pod(IP(src=FLOOD_SRC, dst=VIP) / UDP(sport=1, dport=5353))))

    def udp_flows(first: int, count: int) -> None:
        for i in range(first, first + count):
            udp[26:30] = bytes([10, 202, i // 256 % 256, i % 256])
            run(dp, "from_workload", bytes(udp))

    udp_flows(0, 3000)   # 6000 entries, idle but far from expired
    result = sweep_in_kernel(dp.maps, dp.fds["ct_sweep_keys"], Timeouts())
    assert result.deleted == 0 and result.read == 6000
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=8080, flags="S")))
    udp_flows(3000, 2000)   # 4000 more: past the map's 8192, the LRU evicts
    assert len(dp.maps.ct.items()) <= CT_MAP
    assert whole(dp, [40000]) == 1, "the sweep made the new flow the LRU's first victim"
