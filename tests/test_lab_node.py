"""The lab as hard as a real node (issue 14): pods and outside clients with a veth's default
offloads (checksums left to offload, TSO super-packets), GRO on the nodes' uplinks, uplinks that
are veths whose peers run no XDP (kind's), and, on purpose, peers that do (a NIC's wire).

An outside client X pushes 2 MB through node-2's NodePort to B, a backend on node-1 (SNAT), and
reads it back, under each --xdp mode and each kind of peer; --xdp auto chooses per uplink and
falls back to tc when XDP's transmit errors grow; tc filters behind ebpflb's still see what it
lets go on; many clients through a one-backend SNAT NodePort never cross."""
import re
import time
from pathlib import Path

import pytest
import yaml

from ebpflb.datapath.maps import Maps
from tests.apiserver import endpoint_slice, service
from tests.lab import NODE_IPS, NODES, OUTSIDE, POD_IPS, in_netns
from tests.reliability import Load
from tests.test_conntrack_pairs import pair_problems
from tests.test_lab_dataplane import VIP, wait_for

ECHO_NODEPORT = 30180
NODE2 = NODE_IPS["node-2"]
ECHO_BYTES = 2 << 20


def echo_manifests(lab) -> Path:
    """Seed 004's services, and svc-echo: NodePort 30180 -> B only (on node-1), so node-2 SNATs."""
    path = lab.manifests_dir()
    svc = service("default", "svc-echo", "10.96.5.1", [("http", 8080, "TCP")], type="NodePort")
    svc["spec"]["ports"][0].update(nodePort=ECHO_NODEPORT, targetPort=8080)
    eps = endpoint_slice("default", "svc-echo-a", "svc-echo", [(POD_IPS["B"], "node-1", True)])
    (path / "svc-echo.yaml").write_text(yaml.safe_dump_all([svc, eps]))
    return path


class Agents:
    """One agent per node, restarted only when what they run differs: uplink peers and --xdp."""

    def __init__(self, lab):
        self.lab, self.manifests, self.running = lab, echo_manifests(lab), None

    def run(self, peers: str, xdp: str | None) -> None:
        """xdp None: the agent's default."""
        if self.running == (peers, xdp):
            return
        self.stop()
        self.lab.set_uplink_peers(peers)
        for node in NODES:
            self.lab.start_agent(node, self.manifests, "--uplinks", "eth0", *(("--xdp", xdp) if xdp else ()))
        for node in NODES:
            wait_for(lambda: f"{NODE_IPS[node]} port {ECHO_NODEPORT} proto 6" in self.lab.agent_cli(
                node, "nat", "dump", check=False), timeout=90, what=f"the NodePort on {node}")
            wait_for(lambda: "uplink eth0: " in self.lab.agent_log(node), timeout=10, what=f"{node}'s XDP choice")
        self.running = (peers, xdp)

    def stop(self) -> None:
        if self.running is None:
            return
        for node in NODES:
            self.lab.stop_agent(node)
            self.lab.agent_cli(node, "cleanup")
        self.running = None


@pytest.fixture(scope="module")
def agents(lab):
    agents = Agents(lab)
    try:
        yield agents
    finally:
        agents.stop()
        lab.set_uplink_peers("plain")


def metric(lab, node: str, name: str, **labels) -> float | None:
    """The value of one series of the node's agent's metric name (None: no such series)."""
    text = lab.run(node, "curl", "-s", "-m", "2", "http://127.0.0.1:10249/metrics").stdout
    for m in re.finditer(rf"^{name}{{(.*)}} (\S+)$", text, re.M):
        if dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))) == labels:
            return float(m.group(2))
    return None


def xdp_on(lab, node: str) -> bool:
    return "prog/xdp" in lab.run(node, "ip", "-d", "link", "show", "eth0").stdout


def echoes(lab, n=3, client="X") -> list[tuple[bool, str]]:
    return [lab.echo(client, NODE2, ECHO_NODEPORT, ECHO_BYTES, timeout=10) for _ in range(n)]


class wire_frames:
    """X sends as a wire carries frames (whole checksums, MTU-sized), within the block."""

    def __init__(self, lab, client="X"):
        self.lab, self.client = lab, client

    def __enter__(self):
        self.lab.send_as_a_wire_carries(self.client)

    def __exit__(self, *exc):
        self.lab.send_as_a_wire_carries(self.client, on=False)


# --- the default, on a veth uplink whose peer takes no XDP frames (kind's)

def test_the_default_on_a_veth_uplink_whose_peer_takes_no_xdp_frames_is_tc_alone_and_said(lab, agents):
    agents.run("plain", None)
    for node in NODES:
        assert "uplink eth0: tc alone (veth whose peer takes no XDP frames" in lab.agent_log(node)
        assert not xdp_on(lab, node)
        assert metric(lab, node, "ebpflb_uplink_xdp", uplink="eth0", mode="tc") == 1
        assert metric(lab, node, "ebpflb_uplink_xdp", uplink="eth0", mode="xdp") == 0
    # The case: 4 of 20 answered with --xdp native (all by the local backend), here 20 of 20,
    # from a client with offloads and from one sending wire frames.
    assert lab.http_get_many("X", NODE2, 20, port=ECHO_NODEPORT) == ["B"] * 20
    with wire_frames(lab):
        assert lab.http_get_many("X", NODE2, 20, port=ECHO_NODEPORT) == ["B"] * 20


# --- the 2 MB echo, every mode on either kind of peer (the figures of issue 14)

CASES = [("plain", "auto"), ("plain", "native"), ("plain", "off"), ("xdp", "auto"), ("xdp", "native"), ("xdp", "off")]


@pytest.mark.parametrize("peers, xdp", CASES, ids=[f"{p}-peer-{x}" for p, x in CASES])
def test_a_2mb_echo_through_a_nodeport_to_a_remote_backend(lab, agents, figure, peers, xdp):
    """With the default offloads it always goes through (TSO/GRO super-packets forwarded by the SNAT
    path; what XDP cannot see the checksum state of is left to tc). With wire frames, XDP finishes
    established flows itself: forced on a peer that takes no XDP frames (native on "plain"), its
    XDP_TX is lost, and the agent says so."""
    agents.run(peers, xdp)
    offloads = echoes(lab)
    with wire_frames(lab):
        tx_before = xdp_tx(lab)
        wire = echoes(lab)
        tx = xdp_tx(lab) - tx_before
    figure(f"2 MB NodePort echo X -> node-2 -> B (SNAT), {peers} uplink peer, --xdp {xdp}: default offloads "
           f"{summary(offloads)}; wire frames {summary(wire)} ({tx} frames XDP_TX'd by node-2)")
    assert all(ok for ok, _ in offloads), offloads
    if (peers, xdp) == ("plain", "native"):
        assert not any(ok for ok, _ in wire), wire   # forced XDP: its XDP_TX is dropped by the veth
        wait_for(lambda: "more XDP transmit errors: what XDP sends is dropped" in lab.agent_log("node-2"),
                 timeout=5, what="the agent to say XDP_TX is lost")
        return
    assert all(ok for ok, _ in wire), wire
    assert (tx > 0) == (peers == "xdp" and xdp != "off")   # XDP did the work where it runs


def xdp_tx(lab) -> int:
    stats = lab.run("node-2", "ethtool", "-S", "eth0").stdout
    return sum(int(v) for v in re.findall(r"xdp_tx: (\d+)", stats))


def summary(results) -> str:
    return ", ".join(f"{float(text):.3f} s" if ok else f"FAILED ({text})" for ok, text in results)


# --- auto, on a peer that takes XDP frames, and when it stops

def test_auto_takes_xdp_on_a_peer_that_runs_xdp_and_falls_back_to_tc_when_its_xdp_tx_fails(lab, agents):
    agents.run("xdp", "auto")
    assert "uplink eth0: XDP in front of tc (veth whose peer runs XDP)" in lab.agent_log("node-2")
    assert xdp_on(lab, "node-2")
    assert metric(lab, "node-2", "ebpflb_uplink_xdp", uplink="eth0", mode="xdp") == 1
    with wire_frames(lab):
        assert lab.http_get_many("X", NODE2, 20, port=ECHO_NODEPORT) == ["B"] * 20
        lab.set_uplink_peers("plain")   # the peer loses its XDP program: XDP_TX is dropped from now
        agents.running = ("changed", "auto")   # not what they were started on: restarted next time
        lost = lab.http_get_many("X", NODE2, 20, port=ECHO_NODEPORT, timeout=1)
        wait_for(lambda: "more XDP transmit errors: falling back to tc" in lab.agent_log("node-2"), timeout=10,
                 what="node-2 to fall back to tc")
        assert not xdp_on(lab, "node-2")
        assert metric(lab, "node-2", "ebpflb_uplink_xdp", uplink="eth0", mode="tc") == 1
        assert metric(lab, "node-2", "ebpflb_uplink_xdp_fallbacks_total", uplink="eth0") == 1
        assert lab.http_get_many("X", NODE2, 20, port=ECHO_NODEPORT) == ["B"] * 20, lost


# --- chaining: a filter behind ebpflb's still sees what it lets go on

COUNTER = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
BPF_HASH(seen, u32, u64, 1024);   /* destination address -> packets this filter saw */
int count(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	if ((void *)(ip + 1) > data_end || eth->h_proto != htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	u32 dst = ip->daddr;
	seen.increment(dst);
	return TC_ACT_UNSPEC;
}
"""


def test_a_tc_filter_behind_ebpflbs_sees_what_ebpflb_lets_go_on(lab, agents):
    """A CNI's policy program or a monitoring tool on the same hook, after ebpflb's filter (prio
    0xEC, ours is 0xEB): it must see pod-to-pod traffic, service traffic as translated, and what
    reaches the uplink for the node itself."""
    from bcc import BPF
    from pyroute2 import IPRoute
    agents.run("plain", "off")
    counter = BPF(text=COUNTER.encode())
    fd = counter.load_func(b"count", BPF.SCHED_CLS).fd
    hooks = [("veth-c", "ffff:fff2"), ("eth0", "ffff:fff2")]
    with in_netns(lab.ns("node-2")), IPRoute() as ipr:
        for dev, parent in hooks:
            ipr.tc("add-filter", "bpf", ipr.link_lookup(ifname=dev)[0], ":1", fd=fd, name="behind", parent=parent,
                   classid=1, direct_action=True, prio=0xEC)
        try:
            assert set(lab.http_get_many("C", VIP, 20)) == {"A0", "B"}        # translated on veth-c
            assert lab.http_get("C", POD_IPS["A0"]).strip() == "A0"            # pod to pod: untouched
            lab.run("X", "curl", "-s", "-m", "1", f"http://{NODE2}:22/", check=False)   # for the node itself
            seen = {socket_ntoa(k.value): v.value for k, v in counter[b"seen"].items()}
        finally:
            for dev, parent in hooks:
                ipr.tc("del-filter", "bpf", ipr.link_lookup(ifname=dev)[0], parent=parent, prio=0xEC)
            counter.cleanup()
    assert seen.get(POD_IPS["B"], 0) > 0 and seen.get(POD_IPS["A0"], 0) > 0, seen   # as translated
    assert VIP not in seen, seen                                                    # never untranslated
    assert seen.get(NODE2, 0) > 0, seen


def socket_ntoa(be: int) -> str:
    import socket
    import struct
    return socket.inet_ntoa(struct.pack("=I", be))


# --- many clients through a one-backend SNAT NodePort, both CPUs busy

def test_many_clients_through_a_one_backend_snat_nodeport_never_cross(lab, agents, figure):
    """X and Y open connections as fast as they can from the same 32 source ports to node-2's
    NodePort, whose one backend (B) is on node-1: every new flow's first SNAT choice is its own
    port, so the two clients fight for the same reply tuples on both CPUs. Every request must be
    answered, none late, and every conntrack pair on node-2 be whole and its own."""
    agents.run("plain", "off")
    ports = "40000 40063"
    defaults = {c: lab.run(c, "sysctl", "-n", "net.ipv4.ip_local_port_range").stdout.split() for c in OUTSIDE}
    tw = lab.run("B", "sysctl", "-n", "net.ipv4.tcp_max_tw_buckets").stdout.strip()
    try:
        # B keeps no TIME_WAIT: the clients' TCP timestamps differ, and B's TIME_WAIT on a 4-tuple
        # the other client reuses would make PAWS drop its SYN (any SNAT does that, not ebpflb).
        lab.run("B", "sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0")
        for client in OUTSIDE:
            lab.run(client, "sysctl", "-qw", f"net.ipv4.ip_local_port_range={ports}")
        loads = [Load(lab, client, NODE2, "--http-port", ECHO_NODEPORT, "--http-workers", 3, "--long-lived", 0,
                      "--udp-flows", 0) for client in OUTSIDE]
        time.sleep(10)
        reports = [load.stop() for load in loads]
    finally:
        lab.run("B", "sysctl", "-qw", f"net.ipv4.tcp_max_tw_buckets={tw}")
        for client, default in defaults.items():
            lab.run(client, "sysctl", "-qw", f"net.ipv4.ip_local_port_range={' '.join(default)}")
    figure("many clients through a one-backend SNAT NodePort (X and Y from the same 32 ports, 3 workers "
           "each, 10 s): " + "; ".join(f"{c}: {r.summary()}" for c, r in zip(OUTSIDE, reports)))
    for report in reports:
        report.assert_nothing_lost()
    maps = Maps.open(str(lab.pin_dir("node-2")))
    try:
        assert not pair_problems(maps), pair_problems(maps)[:5]
    finally:
        maps.close()
