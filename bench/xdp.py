"""XDP vs tc on the uplink (issue 7, item 5): an established NodePort flow to a remote backend,
DNATed, SNATed to the node's address and forwarded, by xdp_uplink (XDP_TX) or by from_uplink
(tc, redirect after a FIB lookup). Three figures, each side by side in one run:

    .venv/bin/python -m bench.xdp [--only packets|frames|lab] [--repeat N] [--runs N] [--rounds N]

frames   The goal's figure: frames forwarded per second when they arrive as a NIC's receive ring
         hands them over, as XDP frames before any skb exists, which is what XDP saves work on.
         Two namespaces of our own, joined by a veth: the wire's port wire0 and the node's uplink
         eth0 (the programs' node address, a route to B's node, the real programs attached as the
         agent attaches them: tc from_uplink/to_uplink, and xdp_uplink natively in XDP mode).
         The kernel's XDP traffic generator (BPF_PROG_TEST_RUN, live-frames mode) runs
         bpf/bench_wire.c's wire_source, which redirects each frame out of wire0, so eth0 receives
         an XDP frame: UDP X:40000 -> node:30080, an established flow (made by tc from the first
         frames) whose only backend is B on another node. XDP mode: xdp_uplink translates it
         (DNAT+SNAT), looks up the next hop and sends it back out (XDP_TX). tc mode (no XDP
         program; the veth takes XDP frames through NAPI, as a NIC's driver does): the frame
         becomes an skb, goes up to tc ingress, from_uplink translates it and redirects it out of
         eth0. Either way wire0's wire_sink counts the frames that come back translated (source
         node, destination B) and drops them. The generator offers frames as fast as it can, as
         a line-rate generator does: a node that cannot keep up loses some to its full receive
         ring (the veth's, 256 frames), so the figure is frames forwarded (translated, back on
         the wire) per second of the generator's time, and the lost share is shown. Checked each
         round: nothing comes back untranslated, and node eth0's XDP_TX counter says which path
         took the frames (every forwarded one in XDP mode, none in tc mode). Generator, node and
         sink all run on the generator's CPU (the veth schedules NAPI there), so the figure is
         the whole path's, node work being the part that differs. 1M frames per round, 5 rounds
         after a dropped warm-up, modes alternating in order; median, min-max.

packets  Per-packet cost with BPF_PROG_TEST_RUN, the real programs (ebpflb.loader.Datapath, bcc,
         JIT on) on an uplink in a namespace of our own (tests/test_uplink_packets.py's `routed`
         idea: an uplink up0, a route to the backend's node 10.200.1.0/24 via 192.168.64.5, and
         permanent neighbours, so the programs' FIB lookups succeed as on a node).
         BPF_PROG_TEST_RUN runs the program `repeat` times on ONE packet, and what a run rewrites
         the next run sees. So the packet goes round a two-leg cycle, each leg the full work:
           leg 1  X:40000 -> node:30080, the real flow (its conntrack pair made by from_uplink
                  itself from a SYN): NAT_FWD hit, touch, counter, DNAT to B:8080 and SNAT to
                  node:40000, FIB lookup (B via 192.168.64.5), MACs, XDP_TX / redirect;
           leg 2  node:40000 -> B:8080, a NAT_REV entry written from user space (svc id 2, the
                  reply path: X:40000 as "frontend", node:30080 as "client"): NAT_REV hit,
                  touch, counter, source and destination rewritten, FIB lookup, MACs, TX /
                  redirect, which puts the packet back where it started.
         Leg 2's FIB lookup goes to the node address, so in this namespace the node address
         (192.168.64.6, the programs' SNAT source) is a permanent neighbour and up0 holds
         another one (192.168.64.9): to a FIB lookup both legs are then ordinary forwards.
         Every figure is the average over a forward and a reply-path translation.
         Checked before timing, for each program: every one of `repeat` runs was counted
         (svc_counters of ids 1 and 2 grow by exactly `repeat`), the verdict is XDP_TX /
         TC_ACT_REDIRECT, an even number of runs gives the input packet back byte for byte
         and one run gives leg 1's output; both programs write the same bytes.
         1M repeats, 5 runs after one dropped warm-up, tc and XDP interleaved; median, min-max.
         What it leaves out is what XDP exists to save: the skb (allocation, GRO, the stack up
         to tc ingress). BPF_PROG_TEST_RUN hands tc one prebuilt skb, so this is the programs'
         own cost, XDP's direct packet access against tc's skb helpers, not a NIC's packet rate.
lab      tests/lab.py: outside client X (192.168.64.100) on the underlay -> node-0:30201 (a
         NodePort, TCP and UDP, whose only endpoint is B on node-1: every packet DNATed, SNATed
         and forwarded by node-0; replies translated back by node-0). iperf3's server in pod B.
         The agent runs on node-0 only (`--uplinks eth0 --xdp native|off`); node-1 just routes.
         Each round starts node-0's agent in one mode, measures, stops it and runs `ebpflb
         cleanup`; modes alternate in order round by round, after a dropped warm-up round.
         TCP throughput (iperf3 4 s, first second omitted) and UDP packet rate (iperf3 -u,
         64-byte datagrams, unlimited rate, 3 s after 1 s omitted: datagrams received per
         second). node-0 eth0's veth counters (ethtool -S, xdp_tx) show how many packets
         XDP sent. The first packet of every flow goes through tc either way.
         The lab is built with uplink peers that run XDP (Lab(uplink_peers="xdp"): without, a
         veth drops XDP_TX frames) and X and B send frames with whole checksums (offloaded ones
         are left to tc by XDP): on purpose, to measure XDP's own path.
         Honest label: eth0 is a veth in a namespace, not a NIC. With XDP attached a veth runs
         NAPI and copies each skb its peer sends into an XDP buffer, and XDP_TX hands a frame
         to the peer, which builds an skb again; with XDP off the frame stays one skb. Sender,
         node-0 and receiver share this VM's 2 cores. So these numbers say what XDP does on
         veth here, not what it does on a NIC.
"""
import argparse
import json
import shutil
import sys
import time
import uuid

from bench.common import Stopwatch, ensure_apt_tool, pinned_to_one_cpu, save_results, spread

XDP_TX, TC_ACT_REDIRECT = 3, 7
NODE_ADDR, UPLINK_ADDR = "192.168.64.6", "192.168.64.9"
CLIENT, CPORT, NODEPORT = "192.168.64.100", 40000, 30080
B, BPORT, NEXT_HOP = "10.200.1.2", 8080, "192.168.64.5"
UP0_MAC, ROUTER_MAC, NEXT_HOP_MAC, NODE_NEIGH_MAC = ("02:00:00:00:01:09", "02:00:00:00:01:00",
                                                     "02:00:00:00:01:05", "02:00:00:00:01:06")
PAYLOAD = b"x" * 64
CASES = ("tc", "xdp")


# ---------------------------------------------------------------- 1. BPF_PROG_TEST_RUN

def routed_namespace():
    """An uplink up0 (UPLINK_ADDR), a route to B's node and fixed neighbours: the next hop, the
    client X, and the node address (leg 2's destination)."""
    from tests.lab import routed_uplink
    return routed_uplink(UPLINK_ADDR, UP0_MAC,
                         {NEXT_HOP: NEXT_HOP_MAC, CLIENT: ROUTER_MAC, NODE_ADDR: NODE_NEIGH_MAC},
                         {"10.200.1.0/24": NEXT_HOP})


def frames():
    """(leg 1's input: X -> node:NodePort, as leg 2 leaves it; leg 1's expected output), and the SYN."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    def frame(dst_mac, src, sport, dst, dport, flags="PA", payload=PAYLOAD):
        pkt = Ether(src=UP0_MAC, dst=dst_mac) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)
        return bytes(pkt / Raw(payload) if payload else pkt)

    start = frame(NODE_NEIGH_MAC, CLIENT, CPORT, NODE_ADDR, NODEPORT)
    after_leg1 = frame(NEXT_HOP_MAC, NODE_ADDR, CPORT, B, BPORT)
    syn = frame(NODE_NEIGH_MAC, CLIENT, CPORT, NODE_ADDR, NODEPORT, flags="S", payload=b"")
    return start, after_leg1, syn


def program_flows(dp, syn: bytes, ns: str, index: int) -> None:
    """Service id 1: NodePort node:30080 -> B:8080 (external); its flow made by from_uplink from a
    SYN. Leg 2: a NAT_REV entry (svc id 2) keyed node:40000 -> B:8080 that rewrites it to
    X:40000 -> node:30080."""
    from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
    from ebpflb.datapath.libbpf import prog_test_run
    from ebpflb.datapath.structs import C, ffi, ip_be, new, port_be
    from ebpflb.sync.writer import MapWriter
    from tests.lab import in_netns

    MapWriter(dp.maps).apply(DesiredState(
        frontends={FrontendKey(NODE_ADDR, NODEPORT, 6): Frontend(1, 1, 0, C.NAT_FLG_EXTERNAL)},
        backends={1: (Backend(B, BPORT),)}))
    zeros = ffi.new(f"struct svc_counters[{dp.maps.svc_counters.ncpus}]")
    for svc_id in (1, 2):
        dp.maps.svc_counters.update(ffi.new("__u32 *", svc_id), zeros)
    with in_netns(ns):
        verdict, out, _ = prog_test_run(dp.fds["from_uplink"], syn, ifindex=index)
    if verdict != TC_ACT_REDIRECT:
        raise AssertionError(f"the SYN to the NodePort was not forwarded (verdict {verdict})")
    with in_netns(ns):   # the client's first ACK (tc's: XDP forwards a TCP flow only once it has it)
        verdict, out, _ = prog_test_run(dp.fds["from_uplink"], frames()[0], ifindex=index)
    if verdict != TC_ACT_REDIRECT:
        raise AssertionError(f"the client's first ACK was not forwarded (verdict {verdict})")

    def key(src, sport, dst, dport):
        return new("struct ct_key", src_addr=ip_be(src), dst_addr=ip_be(dst), src_port=port_be(sport),
                   dst_port=port_be(dport), proto=6)

    fwd = dp.maps.ct.lookup(key(CLIENT, CPORT, NODE_ADDR, NODEPORT))
    if fwd is None or fwd.snat_port not in (0, port_be(CPORT)):
        raise AssertionError("the NodePort flow was not SNATed to the client's own port")
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    rev = new("struct ct_value", created_ns=now, last_seen_ns=now, type=C.CT_TYPE_NAT_REV,
              flags=C.CT_FLAG_UPLINK | C.CT_FLAG_SNAT, svc_id=2, nat_addr=ip_be(CLIENT), nat_port=port_be(CPORT),
              snat_addr=ip_be(NODE_ADDR), snat_port=port_be(NODEPORT),
              tcp_seen=C.CT_TCP_SYN_FWD | C.CT_TCP_SYN_REV | C.CT_TCP_ACK_REV | C.CT_TCP_ACK_FWD)
    rev.twin = key(B, BPORT, "10.255.255.1", 1)[0]    # no twin: only a SYN-ACK on a closed flow looks
    dp.maps.ct.update(key(NODE_ADDR, CPORT, B, BPORT), rev)


def counted(dp) -> int:
    from ebpflb.datapath.structs import ffi
    return sum(c.packets for svc_id in (1, 2) for c in dp.maps.svc_counters.lookup(ffi.new("__u32 *", svc_id)))


def check_cycle(dp, ns: str, index: int, start: bytes, after_leg1: bytes, n: int = 1000) -> None:
    """Every run takes the full path, for both programs (see the module's docstring)."""
    from ebpflb.datapath.libbpf import prog_test_run
    from tests.lab import in_netns
    outs = {}
    for case, prog, want in (("tc", "from_uplink", TC_ACT_REDIRECT), ("xdp", "xdp_uplink", XDP_TX)):
        with in_netns(ns):
            verdict, one, _ = prog_test_run(dp.fds[prog], start, ifindex=index, xdp=case == "xdp")
            before = counted(dp)
            verdict_n, back, _ = prog_test_run(dp.fds[prog], start, repeat=n, ifindex=index, xdp=case == "xdp")
            grew = counted(dp) - before
        if verdict != want or verdict_n != want:
            raise AssertionError(f"{prog}: verdict {verdict}/{verdict_n}, wanted {want}")
        if one != after_leg1:
            raise AssertionError(f"{prog}: leg 1 wrote {one.hex()}, wanted {after_leg1.hex()}")
        if back != start:
            raise AssertionError(f"{prog}: {n} runs did not bring the packet back round the cycle")
        if grew != n:
            raise AssertionError(f"{prog}: {n} runs counted {grew} packets: not every run did the work")
        outs[case] = one
    if outs["tc"] != outs["xdp"]:
        raise AssertionError("tc and XDP wrote different bytes")


def run_packets(repeat: int = 1_000_000, runs: int = 5) -> dict:
    from ebpflb.datapath.libbpf import prog_test_run
    from ebpflb.datapath.loader import Datapath
    from tests.lab import in_netns

    if repeat % 2:
        raise ValueError("repeat must be even (a two-leg cycle)")
    root = f"/sys/fs/bpf/elbbench-xdp-{uuid.uuid4().hex[:6]}"
    with routed_namespace() as (ns, index):
        dp = None
        try:
            watch = Stopwatch()
            dp = Datapath(root).load(node_addr=NODE_ADDR)
            start, after_leg1, syn = frames()
            program_flows(dp, syn, ns, index)
            check_cycle(dp, ns, index, start, after_leg1)
            print(f"  programs loaded, cycle checked ({watch})", flush=True)
            times = {case: [] for case in CASES}
            counts = {case: [] for case in CASES}
            progs = {"tc": "from_uplink", "xdp": "xdp_uplink"}
            watch = Stopwatch()
            with pinned_to_one_cpu():
                for round_ in range(1 + runs):           # round 0: warm-up, dropped
                    order = CASES if round_ % 2 else CASES[::-1]
                    for case in order:
                        with in_netns(ns):
                            before = counted(dp)
                            verdict, out, ns_per = prog_test_run(dp.fds[progs[case]], start, repeat=repeat,
                                                                 ifindex=index, xdp=case == "xdp")
                            grew = counted(dp) - before
                        if grew != repeat or out != start or verdict not in (XDP_TX, TC_ACT_REDIRECT):
                            raise AssertionError(f"{case}: {repeat} runs counted {grew} (verdict {verdict})")
                        if round_:
                            times[case].append(ns_per)
                            counts[case].append(grew)
            out = {"repeat": repeat, "runs": runs, "warmup_rounds": 1,
                   "unit": "ns per packet (BPF_PROG_TEST_RUN average over `repeat` runs)",
                   "cycle": "leg 1 X:40000->node:30080 (NAT_FWD, DNAT+SNAT) / leg 2 node:40000->B:8080 "
                            "(NAT_REV path) alternating; every run counted",
                   "packet_bytes": len(start), "counted_per_run": counts}
            for case in CASES:
                out[case] = spread(times[case])
                out[case]["pps"] = 1e9 / out[case]["median"]
            print(f"  tc (from_uplink) {out['tc']['median']:.0f} ns, XDP (xdp_uplink) {out['xdp']['median']:.0f} ns "
                  f"per packet: tc/XDP {out['tc']['median'] / out['xdp']['median']:.2f}x ({watch})", flush=True)
            return out
        finally:
            if dp is not None:
                dp.close()
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- 2. frames from the wire

WIRE_MAC, NODE_MAC = "02:00:00:00:02:01", "02:00:00:00:02:06"
UDP_BACKEND_PORT = 5201


class WireAndNode:
    """Two namespaces of our own joined by a veth: the wire's port `wire0` and the node's uplink
    eth0 (NODE_ADDR, a route to B's node via NEXT_HOP, permanent neighbours on the wire's MAC,
    forwarding on). Torn down on exit."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.wire, self.node = f"elbbench-wire-{tag}", f"elbbench-node-{tag}"

    def __enter__(self):
        import subprocess
        for ns in (self.wire, self.node):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            for ns in (self.wire, self.node):   # no IPv6 neighbour discovery on the wire: only the frames
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                                "net.ipv6.conf.default.disable_ipv6=1"], check=True)
            self._run(self.wire, "link add wire0 type veth peer name eth0 netns " + self.node,
                      f"link set wire0 address {WIRE_MAC} up", "link set lo up")
            self._run(self.node, "link set lo up", f"link set eth0 address {NODE_MAC} up",
                      f"addr add {NODE_ADDR}/24 dev eth0", f"route add 10.200.1.0/24 via {NEXT_HOP}",
                      *(f"neigh replace {ip} lladdr {WIRE_MAC} dev eth0 nud permanent" for ip in (NEXT_HOP, CLIENT)))
            subprocess.run(["ip", "netns", "exec", self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                            "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.eth0.rp_filter=0"], check=True)
            # No XDP program: the veth still runs NAPI (and GRO) to take XDP frames, as a NIC does.
            subprocess.run(["ip", "netns", "exec", self.node, "ethtool", "-K", "eth0", "gro", "on"], check=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        import subprocess
        for ns in (self.wire, self.node):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    @staticmethod
    def _run(ns: str, *commands: str) -> None:
        import subprocess
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n", text=True, check=True)

    def ifindex(self, ns: str, name: str) -> int:
        from pyroute2 import IPRoute
        from tests.lab import in_netns
        with in_netns(ns), IPRoute() as ipr:
            return ipr.link_lookup(ifname=name)[0]


def xdp_counters(ns: str, dev: str = "eth0") -> dict:
    """A veth's XDP counters (ethtool -S), summed over its queues."""
    import subprocess
    out = {}
    stats = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-S", dev], capture_output=True, text=True,
                           check=True).stdout
    for line in stats.splitlines()[1:]:
        name, _, value = line.strip().partition(":")
        for key in ("xdp_packets", "xdp_tx", "xdp_redirect", "xdp_drops"):
            if name.endswith(key) and not name.endswith(key + "_errors"):
                out[key] = out.get(key, 0) + int(value)
    return out


def wire_frame() -> bytes:
    """X:40000 -> node:30080, UDP, 64 bytes of payload (106-byte frame)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    return bytes(Ether(src=WIRE_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=NODE_ADDR) /
                 UDP(sport=CPORT, dport=NODEPORT) / Raw(PAYLOAD))


def run_frames(rounds: int = 5, frames: int = 1_000_000) -> dict:
    """NodePort forwarding rate of an established UDP flow to a remote backend, frames arriving as
    XDP frames: xdp_uplink (XDP_TX) vs from_uplink (tc: skb, then redirect). See the docstring."""
    from bcc import BPF
    from pyroute2 import IPRoute
    from ebpflb.datapath.attach import UPLINK, attach_tc, attach_xdp, detach_xdp
    from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
    from ebpflb.datapath.libbpf import xdp_live_frames
    from ebpflb.datapath.loader import Datapath, program_text
    from ebpflb.paths import BPF_DIR
    from ebpflb.datapath.structs import C, ip_be
    from ebpflb.sync.writer import MapWriter
    from tests.lab import in_netns

    frame = wire_frame()
    root = f"/sys/fs/bpf/elbbench-frames-{uuid.uuid4().hex[:6]}"
    with WireAndNode() as topo:
        dp = wire = None
        try:
            watch = Stopwatch()
            wire0, eth0 = topo.ifindex(topo.wire, "wire0"), topo.ifindex(topo.node, "eth0")
            dp = Datapath(root).load(node_addr=NODE_ADDR)
            MapWriter(dp.maps).apply(DesiredState(
                frontends={FrontendKey(NODE_ADDR, NODEPORT, 17): Frontend(1, 1, 0, C.NAT_FLG_EXTERNAL)},
                backends={1: (Backend(B, UDP_BACKEND_PORT),)}))
            with in_netns(topo.node), IPRoute() as ipr:
                attach_tc(ipr, eth0, dp.fds, UPLINK)
            wire = BPF(text=program_text(BPF_DIR / "bench_wire.c").encode(), cflags=[
                f"-DWIRE_IFINDEX={wire0}", f"-DWIRE_HEADER={','.join(map(str, frame[:42]))}",
                f"-DSINK_SADDR={ip_be(NODE_ADDR)}U", f"-DSINK_DADDR={ip_be(B)}U"])
            source = wire.load_func(b"wire_source", BPF.XDP).fd
            with in_netns(topo.wire), IPRoute() as ipr:
                attach_xdp(ipr, wire0, wire.load_func(b"wire_sink", BPF.XDP).fd)

            def sunk() -> tuple[int, int]:
                counts = wire["sunk"]
                return sum(counts[0]), sum(counts[1])

            def send(n: int) -> tuple[float, int, int, dict]:
                """(seconds, translated frames back, others back, node eth0's XDP counter deltas)"""
                before, counters = sunk(), xdp_counters(topo.node)
                with in_netns(topo.wire):
                    started = time.perf_counter()
                    xdp_live_frames(source, frame, n, wire0)
                    elapsed = time.perf_counter() - started
                after, counters_after = sunk(), xdp_counters(topo.node)
                return (elapsed, after[0] - before[0], after[1] - before[1],
                        {k: counters_after.get(k, 0) - counters.get(k, 0) for k in counters_after})

            def mode(name: str) -> None:
                with in_netns(topo.node), IPRoute() as ipr:
                    (attach_xdp if name == "xdp" else lambda ipr, i, *_: detach_xdp(ipr, i))(
                        ipr, eth0, dp.fds["xdp_uplink"])

            mode("tc")
            _, back, other, _ = send(4)        # the flow's first frame: tc makes the conntrack pair
            if back != 4 or other:
                raise AssertionError(f"the node forwarded {back} of 4 frames translated ({other} not)")
            print(f"  wire and node ready, flow made ({watch})", flush=True)
            pps = {case: [] for case in CASES}
            xdp_tx = {case: [] for case in CASES}
            lost = {case: [] for case in CASES}
            for round_ in range(1 + rounds):          # round 0: warm-up, dropped
                for case in (CASES if round_ % 2 else CASES[::-1]):
                    mode(case)
                    n = frames if round_ else frames // 10
                    elapsed, back, other, counters = send(n)
                    sent_by_xdp = counters.get("xdp_tx", 0)
                    if other or back < n // 2:
                        raise AssertionError(f"{case}: {back} of {n} frames came back translated, {other} not")
                    if sent_by_xdp != (back if case == "xdp" else 0):
                        raise AssertionError(f"{case}: node eth0 sent {sent_by_xdp} of {back} frames with XDP_TX")
                    if round_:
                        pps[case].append(back / elapsed)
                        xdp_tx[case].append(sent_by_xdp)
                        lost[case].append((n - back) / n)
            out = {"frames_per_round": frames, "rounds": rounds, "warmup_rounds": 1, "frame_bytes": len(frame),
                   "path": f"wire0 --XDP frame--> node eth0 ({NODE_ADDR}:{NODEPORT} UDP, established) --DNAT+SNAT--> "
                           f"{B}:{UDP_BACKEND_PORT} via {NEXT_HOP}, back out eth0 --> wire0 (counted, dropped)",
                   "xdp_tx": xdp_tx}
            for case in CASES:
                out[case] = spread(pps[case])
                out[case]["lost"] = spread(lost[case])
            print(f"  frames forwarded per second: XDP {out['xdp']['median']:,.0f}, tc {out['tc']['median']:,.0f}: "
                  f"{out['xdp']['median'] / out['tc']['median']:.2f}x ({watch})", flush=True)
            return out
        finally:
            if wire is not None:
                wire.cleanup()
            if dp is not None:
                dp.close()
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- 3. the lab

LAB_NODE, LAB_NODEPORT, LAB_HTTP_NODEPORT, IPERF_PORT = "node-0", 30201, 30280, 5201


def lab_manifests(directory):
    """svc-xdp: NodePort 30201 (TCP and UDP, iperf3) and 30280 (HTTP, the pod server), only
    endpoint B on node-1."""
    import yaml
    from tests.apiserver import endpoint_slice, service
    from tests.lab import POD_IPS
    ports = [("iperf", IPERF_PORT, "TCP", LAB_NODEPORT), ("iperf-udp", IPERF_PORT, "UDP", LAB_NODEPORT),
             ("http", 8080, "TCP", LAB_HTTP_NODEPORT)]
    svc = service("default", "svc-xdp", "10.96.2.1", [(n, p, proto) for n, p, proto, _ in ports], type="NodePort")
    for spec, (_, _, _, node_port) in zip(svc["spec"]["ports"], ports):
        spec["nodePort"] = node_port
    eps = endpoint_slice("default", "svc-xdp-a", "svc-xdp", [(POD_IPS["B"], "node-1", True)],
                         ports=[(n, p, proto) for n, p, proto, _ in ports])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "svc.yaml").write_text(yaml.safe_dump_all([svc, eps]))
    return directory


class LabBench:
    def __init__(self, lab, manifests):
        from tests.lab import NODE_IPS
        self.lab, self.manifests, self.node_ip = lab, manifests, NODE_IPS[LAB_NODE]

    def start(self, mode: str) -> None:
        lab = self.lab
        offset = len(lab.agent_log(LAB_NODE))
        lab.start_agent(LAB_NODE, self.manifests, "--uplinks", "eth0", "--xdp", mode)
        deadline = time.monotonic() + 120
        want = f"{self.node_ip} port {LAB_NODEPORT} proto 17"
        while want not in lab.agent_cli(LAB_NODE, "nat", "dump", check=False) or \
                (mode == "native" and "xdp_uplink (native)" not in lab.agent_log(LAB_NODE)[offset:]):
            if time.monotonic() > deadline or lab.agents[LAB_NODE].poll() is not None:
                raise RuntimeError(f"agent on {LAB_NODE} ({mode}) not ready: {lab.agent_log(LAB_NODE)[-2000:]}")
            time.sleep(0.2)
        link = lab.run(LAB_NODE, "ip", "link", "show", "eth0").stdout
        if ("xdp" in link) != (mode == "native"):
            raise RuntimeError(f"--xdp {mode}, but node-0's eth0 says: {link}")
        deadline = time.monotonic() + 20
        while True:      # through the NodePort to B, SNATed by node-0
            try:
                peer = lab.http_get("X", self.node_ip, LAB_HTTP_NODEPORT, path="/client", timeout=2)
                if lab.http_get("X", self.node_ip, LAB_HTTP_NODEPORT, timeout=2).strip() != "B":
                    raise RuntimeError("the NodePort does not lead to B")
                if peer.split(":")[0] != self.node_ip:
                    raise RuntimeError(f"B sees {peer}, not node-0's address: not SNATed")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        self.lab.stop_agent(LAB_NODE)
        self.lab.agent_cli(LAB_NODE, "cleanup")

    def xdp_stats(self) -> dict:
        return xdp_counters(self.lab.ns(LAB_NODE))

    def iperf(self, *args, seconds: int, omit: int) -> dict:
        r = self.lab.run("X", "iperf3", "-c", self.node_ip, "-p", LAB_NODEPORT, "-t", seconds, "-O", omit, "-J",
                         *args, timeout=seconds + omit + 30, check=False)
        data = json.loads(r.stdout)
        if "error" in data:
            raise RuntimeError(f"iperf3 {' '.join(map(str, args))}: {data['error']}")
        return data["end"]

    def tcp(self, seconds=4, omit=1) -> float:
        return self.iperf(seconds=seconds, omit=omit)["sum_received"]["bits_per_second"] / 1e9

    def udp(self, seconds=3, omit=1) -> tuple[float, float]:
        """Datagrams received per second, and the share lost."""
        s = self.iperf("-u", "-b", "0", "-l", "64", seconds=seconds, omit=omit)["sum"]
        received = s["packets"] - s["lost_packets"]
        return received / s["seconds"], s["lost_packets"] / max(1, s["packets"])


def run_lab(rounds: int = 5) -> dict:
    from tests.lab import Lab
    ensure_apt_tool("iperf3", "iperf3")
    modes = ("native", "off")
    data = {m: {"gbps": [], "udp_pps": [], "udp_loss": [], "xdp_tx": [], "xdp_packets": []} for m in modes}
    # XDP's XDP_TX needs an uplink peer that takes XDP frames (a NIC's wire), and frames with whole
    # checksums (what XDP finishes itself; offloaded ones are tc's): both on purpose here.
    with Lab(uplink_peers="xdp") as lab:
        for sender in ("X", "B"):
            lab.send_as_a_wire_carries(sender)
        lab.start_pod_servers()
        lab.spawn("B", "iperf3", "-s", "-p", IPERF_PORT)
        bench = LabBench(lab, lab_manifests(lab.tmpdir / "bench-xdp"))
        for round_ in range(rounds + 1):            # round 0: warm-up, dropped
            warm = round_ == 0
            order = modes if round_ % 2 else modes[::-1]
            for mode in order:
                watch = Stopwatch()
                bench.start(mode)
                try:
                    before = bench.xdp_stats()
                    gbps = bench.tcp(seconds=1 if warm else 4, omit=0 if warm else 1)
                    pps, loss = bench.udp(seconds=1 if warm else 3, omit=0 if warm else 1)
                    after = bench.xdp_stats()
                finally:
                    bench.stop()
                if warm:
                    continue
                d = data[mode]
                d["gbps"].append(gbps)
                d["udp_pps"].append(pps)
                d["udp_loss"].append(loss)
                for key in ("xdp_tx", "xdp_packets"):
                    d[key].append(after.get(key, 0) - before.get(key, 0))
                print(f"  round {round_} xdp {mode}: TCP {gbps:.2f} Gbit/s, UDP {pps:,.0f} datagrams/s received "
                      f"({loss:.0%} lost), node-0 eth0 XDP_TX {d['xdp_tx'][-1]:,} ({watch})", flush=True)
    out = {"rounds": rounds, "warmup_rounds": 1, "iperf_tcp_seconds": 4, "iperf_udp_seconds": 3, "omit": 1,
           "udp_datagram_bytes": 64,
           "path": "X (192.168.64.100) -> node-0 192.168.64.4:30201 -> B 10.200.1.2:5201 (node-1); "
                   "agent on node-0 only, --uplinks eth0",
           "uplink": "veth in a network namespace (not a NIC)"}
    for mode in modes:
        out[mode] = {"gbps": spread(data[mode]["gbps"]), "udp_pps": spread(data[mode]["udp_pps"]),
                     "udp_loss": spread(data[mode]["udp_loss"]), "xdp_tx": data[mode]["xdp_tx"],
                     "xdp_packets": data[mode]["xdp_packets"]}
    return out


def run(only=None, repeat: int = 1_000_000, runs: int = 5, rounds: int = 5) -> dict:
    out = {}
    if only in (None, "packets"):
        out["packets"] = run_packets(repeat, runs)
    if only in (None, "frames"):
        out["frames"] = run_frames(rounds)
    if only in (None, "lab"):
        out["lab"] = run_lab(rounds)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.xdp", description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("packets", "frames", "lab"))
    parser.add_argument("--repeat", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    from bench.common import load_results
    results = run(args.only, args.repeat, args.runs, args.rounds)
    merged = dict(load_results().get("xdp", {}))
    merged.update(results)
    save_results("xdp", merged)
    from bench.report import print_table
    print_table(sections=("xdp",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
