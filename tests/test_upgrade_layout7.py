"""An agent of layout 8 on the previous version's pins (layout 7): the flows the old programs made
go on through the new programs, translated as before; the service ids stay with their ports.
The old side is the previous version's own code (`git archive` of its last commit), loaded in a
process of its own, making its flows with real packets through its programs."""
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpflb.datapath import upgrade
from ebpflb.datapath.loader import Datapath
from ebpflb.datapath.maps import read_layout_version
from ebpflb.datapath.structs import LAYOUT_VERSION, ip_str, port_int
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


@pytest.fixture
def pin_dir():
    path = f"/sys/fs/bpf/ebpflb-test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


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

        def established(aside_gone: bool):
            # the pod's flow: its next packet to the VIP goes to the backend the old program chose ...
            _, out = run(dp, "from_workload", Ether() / IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=80, flags="A"))
            assert (Ether(out)[IP].dst, Ether(out)[TCP].dport) == (B, 8080)
            # ... and the backend's answer comes back from the VIP
            _, out = run(dp, "to_workload", Ether() / IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="A"))
            assert (Ether(out)[IP].src, Ether(out)[TCP].sport) == (VIP, 80)
            # the outside client's NodePort flow to the local backend, both ways
            verdict, out = run(dp, "from_uplink", Ether() / IP(src=CLIENT, dst=NODE_ADDR) /
                               TCP(sport=40001, dport=NODEPORT, flags="A"))
            assert verdict == TC_ACT_NEXT and (Ether(out)[IP].dst, Ether(out)[TCP].dport) == (A0, 8080)
            _, out = run(dp, "to_uplink", Ether() / IP(src=A0, dst=CLIENT) / TCP(sport=8080, dport=40001, flags="A"))
            assert (Ether(out)[IP].src, Ether(out)[TCP].sport) == (NODE_ADDR, NODEPORT)
            assert os.path.exists(os.path.join(pin_dir, upgrade.ASIDE)) != aside_gone

        established(aside_gone=False)
        dp.finish_upgrade()
        established(aside_gone=True)
        # and a new flow is the new programs' own
        _, out = run(dp, "from_workload", Ether() / IP(src=C_POD, dst=VIP) / TCP(sport=40002, dport=80, flags="S"))
        assert Ether(out)[IP].dst == B and len(dp.maps.ct.items()) == 6
    finally:
        dp.close()
