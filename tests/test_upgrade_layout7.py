"""An agent of layout 8 on the previous version's pins (layout 7): the flows the old programs made
go on through the new programs, translated as before; the service ids stay with their ports.
The old side is the previous version's own code (`git archive` of its last commit), loaded in a
process of its own, making its flows with real packets through its programs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpflb.datapath import upgrade
from ebpflb.datapath.conntrack import Timeouts, sweep_in_kernel
from ebpflb.datapath.loader import Datapath
from ebpflb.datapath.maps import read_layout_version
from ebpflb.datapath.structs import C, LAYOUT_VERSION, ffi, ip_be, ip_str, new, port_be, port_int, to_bytes
from tests.conftest import NODE_ADDR
from tests.test_datapath_packets import TC_ACT_NEXT, run

LAYOUT7_COMMIT = "24be14513e396bb090168c5363fc01a4e048c7b6"   # main's last commit of layout 7 (before issue 19's layout 8)
ROOT = Path(__file__).resolve().parents[1]
VIP, B, A0, C_POD, CLIENT = "10.96.0.2", "10.200.1.2", "10.200.0.2", "10.200.2.2", "192.168.64.100"
NODEPORT = 30080

OLD_SIDE = r'''
import json, sys
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath.libbpf import prog_test_run
from ebpflb.datapath.conntrack import Timeouts, sweep_in_kernel
from ebpflb.datapath.loader import Datapath
from ebpflb.datapath.structs import C, LAYOUT_VERSION
from ebpflb.sync.writer import MapWriter

pin, vip, b, a0, c_pod, client, node, nodeport = sys.argv[1:9]
dp = Datapath(pin).load(node_addr=node)
MapWriter(dp.maps).apply(DesiredState(
    frontends={FrontendKey(vip, 80, 6): Frontend(1, 1, 0, 0),
               FrontendKey(node, int(nodeport), 6): Frontend(2, 1, 1, C.NAT_FLG_EXTERNAL)},
    backends={1: (Backend(b, 8080),), 2: (Backend(a0, 8080),)},
    service_ips=frozenset([vip])))
out = {"layout": LAYOUT_VERSION}
for prog, pkt in (("from_workload", IP(src=c_pod, dst=vip) / TCP(sport=40000, dport=80, flags="S")),
                  ("from_uplink", IP(src=client, dst=node) / TCP(sport=40001, dport=int(nodeport), flags="S"))):
    _, data, _ = prog_test_run(dp.fds[prog], bytes(Ether() / pkt), ifindex=1)
    ip = Ether(data)[IP]
    out[prog] = [ip.dst, ip[TCP].dport]
# the backend answers the pod's SYN: established for layout 7
prog_test_run(dp.fds["to_workload"], bytes(Ether() / IP(src=b, dst=c_pod) / TCP(sport=8080, dport=40000, flags="SA")),
              ifindex=1)
out["ct"] = len(dp.maps.ct.items())
print(json.dumps(out))
dp.close()
'''


@pytest.fixture
def layout7_code(tmp_path):
    """The previous version's bpf/ and ebpflb/, as they were at its last commit."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", LAYOUT7_COMMIT, "bpf", "ebpflb"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    return tmp_path


def test_flows_of_layout_7_go_on_through_layout_8(layout7_code, pin_dir):
    made = subprocess.run([sys.executable, "-c", OLD_SIDE, pin_dir, VIP, B, A0, C_POD, CLIENT, NODE_ADDR, str(NODEPORT)],
                          cwd=layout7_code, env={**os.environ, "PYTHONPATH": str(layout7_code)},
                          check=True, capture_output=True, text=True)
    old = json.loads(made.stdout.strip().splitlines()[-1])
    assert old == {"layout": 7, "from_workload": [B, 8080], "from_uplink": [A0, 8080], "ct": 4}
    assert read_layout_version(pin_dir) == 7

    dp = Datapath(pin_dir).load(node_addr=NODE_ADDR)
    try:
        assert read_layout_version(pin_dir) == LAYOUT_VERSION and dp.upgrade_aside == os.path.join(pin_dir, upgrade.ASIDE)
        # the service ids came along with their frontends: a restarted agent takes them back
        assert sorted((ip_str(k.addr), port_int(k.port), v.id) for k, v in dp.maps.nat_fe.items()) == \
            [(VIP, 80, 1), (NODE_ADDR, NODEPORT, 2)]
        assert len(dp.maps.ct.items()) == 4

        def established(aside_gone: bool, nodeport: bool = True):
            # the pod's flow: its next packet to the VIP goes to the backend the old program chose ...
            _, out = run(dp, "from_workload", Ether() / IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=80, flags="A"))
            assert (Ether(out)[IP].dst, Ether(out)[TCP].dport) == (B, 8080)
            # ... and the backend's answer comes back from the VIP
            _, out = run(dp, "to_workload", Ether() / IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="A"))
            assert (Ether(out)[IP].src, Ether(out)[TCP].sport) == (VIP, 80)
            assert os.path.exists(os.path.join(pin_dir, upgrade.ASIDE)) != aside_gone
            if not nodeport:
                return
            # the outside client's NodePort flow to the local backend, both ways
            verdict, out = run(dp, "from_uplink", Ether() / IP(src=CLIENT, dst=NODE_ADDR) /
                               TCP(sport=40001, dport=NODEPORT, flags="A"))
            assert verdict == TC_ACT_NEXT and (Ether(out)[IP].dst, Ether(out)[TCP].dport) == (A0, 8080)
            _, out = run(dp, "to_uplink", Ether() / IP(src=A0, dst=CLIENT) / TCP(sport=8080, dport=40001, flags="A"))
            assert (Ether(out)[IP].src, Ether(out)[TCP].sport) == (NODE_ADDR, NODEPORT)

        # idle past tcp_syn_sent, not past tcp_established: the sweep keeps the flow layout 7 judged
        # established (the pod's), and takes the NodePort flow its backend never answered
        created = max(v.created_ns for _, v in dp.maps.ct.items())
        swept = sweep_in_kernel(dp.maps, dp.fds["ct_sweep_keys"], Timeouts(),
                                now_ns=created + int((Timeouts().tcp_syn_sent + 1) * 1e9))
        assert sorted((ip_str(k.src_addr), port_int(k.src_port)) for k, _ in dp.maps.ct.items()) == \
            [(B, 8080), (C_POD, 40000)], swept
        established(aside_gone=False, nodeport=False)
        # finishing copies what the old maps hold once more (BPF_NOEXIST: the old programs' last flows),
        # the swept NodePort flow with it
        dp.finish_upgrade()
        established(aside_gone=True)
        # and a new flow is the new programs' own
        _, out = run(dp, "from_workload", Ether() / IP(src=C_POD, dst=VIP) / TCP(sport=40002, dport=80, flags="S"))
        assert Ether(out)[IP].dst == B and len(dp.maps.ct.items()) == 6
    finally:
        dp.close()


def test_layout_7_structs_convert_field_by_field():
    """IPv4 to the first word of 16 bytes (family 0), the twin key inside a conntrack value too, a bare
    __u32 service address to struct svc_ip_key, and an LPM key's prefix length to layout 8's base."""
    old_key = upgrade.ffi7.new("struct ct_key *", {"src_addr": ip_be(C_POD), "dst_addr": ip_be(VIP),
                                                   "src_port": port_be(40000), "dst_port": port_be(80), "proto": 6})
    want_key = new("struct ct_key", src_addr=ip_be(C_POD), dst_addr=ip_be(VIP), src_port=port_be(40000),
                   dst_port=port_be(80), proto=6)
    assert upgrade.convert(old_key, "struct ct_key", "struct ct_key") == to_bytes(want_key)
    old_value = upgrade.ffi7.new("struct ct_value *", {"created_ns": 5, "last_seen_ns": 7, "tcp_seen": 3, "type": 1,
                                                       "flags": 1, "svc_id": 9, "nat_addr": ip_be(B),
                                                       "nat_port": port_be(8080), "snat_addr": ip_be("169.254.42.1"),
                                                       "twin": old_key[0]})
    value = ffi.new("struct ct_value *")
    ffi.memmove(value, upgrade.convert(old_value, "struct ct_value", "struct ct_value"), ffi.sizeof("struct ct_value"))
    # established for layout 7 (SYN both ways): established for layout 8 too, the client's ACK taken as seen
    assert (value.created_ns, value.last_seen_ns, value.tcp_seen, value.type, value.flags, value.svc_id) == \
        (5, 7, C.CT_TCP_SYN_FWD | C.CT_TCP_SYN_REV | C.CT_TCP_ACK_FWD, 1, 1, 9)
    for half_open in (C.CT_TCP_SYN_FWD, 0):   # a SYN without answer, and UDP's none, stay as they were
        old_value.tcp_seen = half_open
        ffi.memmove(value, upgrade.convert(old_value, "struct ct_value", "struct ct_value"), ffi.sizeof("struct ct_value"))
        assert value.tcp_seen == half_open
    assert (ip_str(value.nat_addr), list(value.nat_addr6)[1:], port_int(value.nat_port), ip_str(value.snat_addr)) == \
        (B, [0, 0, 0], 8080, "169.254.42.1")
    assert to_bytes(ffi.addressof(value, "twin")) == to_bytes(want_key) and value.family == C.FAMILY_IPV4
    assert upgrade.convert(upgrade.ffi7.new("__u32 *", ip_be(VIP)), "__u32", "struct svc_ip_key") == \
        to_bytes(new("struct svc_ip_key", addr=ip_be(VIP)))
    old_range = upgrade.ffi7.new("struct src_range_key *", {"prefixlen": 32 + 24, "id": 4, "addr": ip_be("10.1.2.0")})
    assert upgrade.convert(old_range, "struct src_range_key", "struct src_range_key") == \
        to_bytes(new("struct src_range_key", prefixlen=C.SRC_RANGE_PREFIX_BASE + 24, id=4, addr=ip_be("10.1.2.0")))
