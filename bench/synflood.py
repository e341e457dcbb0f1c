"""SYN flood against established flows (issue 21): the real programs with BPF_PROG_TEST_RUN, and
the lab through a NodePort.

    .venv/bin/python -m bench.synflood [--only programs|lab]

programs (below)  the programs alone, one CPU, single test runs.
lab               tests/lab.py (run_lab()): outside client X -> node-0's NodePort 30201 (TCP, iperf3)
                  -> B on node-1, DNATed and SNATed by node-0's agent (`--uplinks eth0`, tc: the
                  lab's plain veth uplink), conntrack at its default size. Established flows:
                  iperf3, STREAMS parallel TCP streams (and its control connection), FLOOD_SECONDS
                  each: alone, during a flood, alone again. The flood: generate() in X's
                  namespace, a Python AF_PACKET socket on X's eth0 sending SYNs to node-0:30201
                  from sources never used twice (100.64.0.0/10, a new address each), as fast as
                  one process sends them; every one is a new flow for node-0 (frontend lookup,
                  backend, SNAT port, two conntrack writes, forwarded to B, whose kernel answers
                  them). Figures: the generator's rate, the new flows node-0 counted
                  (svc_counters' connections) per second, iperf3's throughput each time, and,
                  sampled every 0.2 s, whether every established connection's two conntrack
                  halves were there and its own; during the flood, a new connection from X
                  through the NodePort tried every second (a TCP handshake, 3 s allowed); after
                  it, the flows node-0 holds towards B by TCP state, a handshake right away, how
                  long until a new iperf3 test through the NodePort gets through (tried every
                  second, up to RECOVERY_WAIT_S), and node-0's drops by reason. Not a line-rate
                  generator: one Python process, a syscall per frame (no pktgen module on this
                  kernel); the rate is what it reaches here. Generator, node, B and iperf3 share
                  this machine's 2 CPUs, so the same run has a control arm after the flood: the
                  same generator for as long, paced at the rate it reached in the flood, to
                  CONTROL_PORT of node-0, which no Service uses (the programs pass it, node-0's
                  kernel resets it): throughput during the NodePort flood over throughput during
                  the control flood is the data plane's own share.

conntrack at its default size (CT_MAX entries), filled with idle flows first (a busy node's map is
full: the established packets' cost before the flood is taken at the same fill). ESTABLISHED pod
flows through a VIP, then ROUNDS
rounds of a whole map's worth of SYNs from random sources and ports (each a new flow, two
entries), each round followed by one packet each way of every established flow. Figures: the
flood's new flows admitted and their cost per SYN (the kernel's duration of each single run,
so the timer's own reading is in it), i.e. the rate one CPU holds in the programs; the established
packets' cost during the flood against the same packets before it (same single-run timing); how
many established packets went untranslated and how many flows lost a half. On one pinned CPU.
Single runs: each starts cache-cold after a syscall, so these are µs where the repeat-mode
figures of bench/packets.py are tens of ns; compare them with each other only.
tests/test_syn_flood.py checks the same at a small map size.
"""
import json
import random
import shutil
import statistics
import sys
import time
import uuid

from scapy.layers.inet import IP, TCP

from bench.common import pinned_to_one_cpu, save_results
from bench.upkeep import fill_conntrack
from ebpflb.datapath.libbpf import prog_test_run
from ebpflb.datapath.loader import Datapath
from ebpflb.datapath.structs import ffi, ip_be, port_be

ESTABLISHED, ROUNDS = 1000, 2
VIP, B, C_POD = "10.96.0.2", "10.200.1.2", "10.200.2.2"


def frame(src, dst, sport, dport, flags, to_pod=False) -> bytes:
    from scapy.layers.l2 import Ether
    macs = ("02:00:00:00:00:01", "02:00:00:00:00:02") if to_pod else ("02:00:00:00:00:02", "02:00:00:00:00:01")
    return bytes(Ether(src=macs[0], dst=macs[1]) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


def key(src, sport, dst, dport):
    return ffi.new("struct ct_key *", {"src_addr": ip_be(src), "dst_addr": ip_be(dst), "src_port": port_be(sport),
                                       "dst_port": port_be(dport), "proto": 6})


def run() -> dict:
    from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
    from ebpflb.sync.writer import MapWriter

    pin_dir = f"/sys/fs/bpf/elbbench-flood-{uuid.uuid4().hex[:6]}"
    dp = Datapath(pin_dir).load(node_addr="192.168.64.6")
    try:
        MapWriter(dp.maps).apply(DesiredState(frontends={FrontendKey(VIP, 8080, 6): Frontend(1, 1, 0, 0)},
                                              backends={1: (Backend(B, 8080),)}, service_ips=frozenset([VIP])))
        fw, tw = dp.fds["from_workload"], dp.fds["to_workload"]
        fill_conntrack(dp.maps.ct, time.monotonic_ns())   # a full map of idle flows, before as during
        ports = range(20000, 20000 + ESTABLISHED)
        for p in ports:
            prog_test_run(fw, frame(C_POD, VIP, p, 8080, "S"))
            prog_test_run(tw, frame(B, C_POD, 8080, p, "SA", to_pod=True))
        acks = [(fw, frame(C_POD, VIP, p, 8080, "A"), "dst", B) for p in ports] + \
               [(tw, frame(B, C_POD, 8080, p, "A", to_pod=True), "src", VIP) for p in ports]

        def established() -> tuple[list[int], int]:
            ns, untranslated = [], 0
            for fd, pkt, field, want in acks:
                _, out, took = prog_test_run(fd, pkt)
                ns.append(took)
                untranslated += getattr(IP(out[14:]), field) != want
            return ns, untranslated

        rng, per_round = random.Random(21), dp.maps.ct.max_entries
        syn = bytearray(frame("10.201.0.1", VIP, 1, 8080, "S"))
        with pinned_to_one_cpu():
            before, lost_before = established()
            during, flood_ns, untranslated, admitted = [], [], 0, 0
            for _ in range(ROUNDS):
                for _ in range(per_round):
                    syn[26:30] = rng.getrandbits(32).to_bytes(4, "big")
                    syn[34:36] = rng.getrandbits(16).to_bytes(2, "big")
                    _, out, took = prog_test_run(fw, bytes(syn))
                    flood_ns.append(took)
                    admitted += out[30:34] == bytes(map(int, B.split(".")))
                ns, lost = established()
                during += ns
                untranslated += lost
        whole = sum(1 for p in ports if dp.maps.ct.lookup(key(C_POD, p, VIP, 8080)) and
                    dp.maps.ct.lookup(key(B, 8080, C_POD, p)))
    finally:
        dp.close()
        shutil.rmtree(pin_dir, ignore_errors=True)
    flood_mean = statistics.mean(flood_ns)
    return {"ct_entries_max": per_round, "established": ESTABLISHED, "rounds": ROUNDS, "flood_syns": len(flood_ns),
            "admitted": admitted, "flood_syn_ns_mean": flood_mean, "flood_syn_ns_median": statistics.median(flood_ns),
            "flood_syns_per_s_one_cpu": 1e9 / flood_mean,
            "established_ns_before": statistics.mean(before), "established_ns_during": statistics.mean(during),
            "established_untranslated": untranslated + lost_before, "established_whole_after": whole}


# ---------------------------------------------------------------- the lab

STREAMS, FLOOD_SECONDS, RECOVERY_WAIT_S = 4, 6, 60
CONTROL_PORT = 9                # node-0's discard port: no Service, nothing listening
FLOOD_NET = 0x64400000          # 100.64.0.0/10: sources never used twice


def _sum16(data: bytes) -> int:
    return sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


def generate(dst_mac: str, dst_ip: str, dport: int, seconds: float, rate: float = 0) -> dict:
    """SYNs out of this namespace's eth0 to dst_ip:dport, a new source address each (FLOOD_NET + i),
    for `seconds`, as fast as it can or at `rate` a second: checksums whole, kept incrementally (the
    source is the only field that changes). {"sent": frames, "seconds": elapsed}."""
    import socket
    import struct
    src_mac = open("/sys/class/net/eth0/address").read().strip()
    dst = socket.inet_aton(dst_ip)
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, bytes(4), dst))
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0))
    ip_base = _sum16(bytes(ip))                                  # with the source 0.0.0.0
    tcp_base = _sum16(bytes(tcp)) + _sum16(dst) + 6 + 20         # pseudo-header without the source
    frame = bytearray(eth + ip + tcp)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind(("eth0", 0))
    send, pack_into = sock.send, struct.pack_into
    sent = refused = 0
    started = time.monotonic()
    deadline = started + seconds
    while True:
        for _ in range(1000):
            src = FLOOD_NET + (sent & 0x3fffff)
            s = (src >> 16) + (src & 0xffff)
            pack_into("!I", frame, 26, src)
            pack_into("!H", frame, 24, ~_fold(ip_base + s) & 0xffff)
            pack_into("!H", frame, 50, ~_fold(tcp_base + s) & 0xffff)
            try:
                send(frame)
                sent += 1
            except OSError:          # ENOBUFS: the device's queue is full, as a wire would drop it
                refused += 1
        now = time.monotonic()
        if now >= deadline:
            break
        if rate and (ahead := started + (sent + refused) / rate - now) > 0:
            time.sleep(ahead)
    return {"sent": sent, "refused": refused, "seconds": time.monotonic() - started}


def run_lab(streams: int = STREAMS, seconds: int = FLOOD_SECONDS) -> dict:
    import subprocess
    import threading
    from bench.common import ensure_apt_tool
    from bench.xdp import IPERF_PORT, LAB_NODE, LAB_NODEPORT, LabBench, lab_manifests
    from ebpflb.datapath.conntrack import tcp_state
    from ebpflb.datapath.maps import Maps
    from ebpflb.datapath.structs import port_int
    from ebpflb.views.drops import drop_totals
    from tests.lab import NODE_IPS, OUTSIDE, Lab

    ensure_apt_tool("iperf3", "iperf3")
    node_ip, x_ip = NODE_IPS[LAB_NODE], OUTSIDE["X"]
    out = {"streams": streams, "seconds": seconds, "generator": "one Python process, AF_PACKET, a syscall a frame",
           "path": f"X {x_ip} -> {LAB_NODE} {node_ip}:{LAB_NODEPORT} -> B (node-1), DNAT+SNAT, tc"}
    with Lab() as lab:
        lab.start_pod_servers()
        lab.spawn("B", "iperf3", "-s", "-p", IPERF_PORT)
        bench = LabBench(lab, lab_manifests(lab.tmpdir / "bench-synflood"))
        bench.start("off")
        node_mac = lab.run(LAB_NODE, "cat", "/sys/class/net/eth0/address").stdout.strip()
        maps = Maps.open(str(lab.pin_dir(LAB_NODE)))
        out["ct_entries_max"] = maps.ct.max_entries
        try:
            def connections() -> int:
                return sum(c.connections for key, per_cpu in maps.svc_counters.items() for c in per_cpu)

            def iperf_ports() -> list[int]:
                """X's ports of iperf3's connections through the NodePort (its control one too)."""
                ss = lab.run("X", "ss", "-Htn", "state", "established", "dst", f"{node_ip}:{LAB_NODEPORT}").stdout
                return [int(line.split()[-2].rsplit(":", 1)[1]) for line in ss.splitlines() if line.strip()]

            def pairs_whole(ports) -> int:
                whole = 0
                for port in ports:
                    fwd_key = key(x_ip, port, node_ip, LAB_NODEPORT)
                    fwd = maps.ct.lookup(fwd_key)
                    rev = fwd and maps.ct.lookup(ffi.new("struct ct_key *", fwd.twin))
                    whole += bool(rev and rev.type == 2 and bytes(ffi.buffer(ffi.addressof(rev.twin))) ==
                                  bytes(ffi.buffer(fwd_key)))
                return whole

            def iperf() -> dict:
                r = lab.run("X", "iperf3", "-c", node_ip, "-p", LAB_NODEPORT, "-t", seconds - 1, "-O", 1, "-J",
                            "-P", streams, timeout=seconds + 30, check=False)
                end = json.loads(r.stdout)
                if "error" in end:
                    raise RuntimeError(f"iperf3: {end['error']}")
                return {"gbps": end["end"]["sum_received"]["bits_per_second"] / 1e9,
                        "retransmits": end["end"]["sum_sent"].get("retransmits", 0)}

            def handshake() -> float | None:
                """A new connection from X through the NodePort (B's iperf3 server accepts it even
                while busy with a test): seconds to connect, None when refused within 3 s (a SYN
                retransmission included)."""
                code = ("import socket, time; t = time.monotonic(); "
                        f"s = socket.create_connection(('{node_ip}', {LAB_NODEPORT}), timeout=3); "
                        "print(time.monotonic() - t)")
                r = lab.run("X", sys.executable, "-c", code, timeout=10, check=False)
                return float(r.stdout) if r.returncode == 0 else None

            def under(dport: int | None, rate: float = 0) -> dict:
                """iperf3 during a flood to dport (None: alone), sampling the established pairs and,
                during a flood, trying a new connection through the NodePort every second."""
                gen, samples, tries, done = None, [], [], threading.Event()
                conns = connections()
                before = drops()
                if dport:
                    gen = lab.spawn("X", sys.executable, "-m", "bench.synflood", "--generate",
                                    node_mac, node_ip, str(dport), str(seconds + 1.5), "--rate", str(rate),
                                    stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
                    time.sleep(0.5)

                def sample():
                    ports = []
                    while not done.wait(0.2):
                        ports = ports if len(ports) == streams + 1 else iperf_ports()
                        samples.append((len(ports), pairs_whole(ports)))
                def try_new():
                    while not done.wait(1):
                        tries.append(handshake())
                watchers = [threading.Thread(target=sample)] + ([threading.Thread(target=try_new)] if dport else [])
                for watcher in watchers:
                    watcher.start()
                try:
                    result = iperf()
                finally:
                    done.set()
                    for watcher in watchers:
                        watcher.join()
                if gen:
                    stdout, stderr = gen.communicate(timeout=30)
                    if gen.returncode:
                        raise RuntimeError(f"the flood generator failed: {stderr.decode()[-2000:]}")
                    flood = json.loads(stdout)
                    result.update(sent=flood["sent"], refused=flood["refused"],
                                  sent_per_s=flood["sent"] / flood["seconds"],
                                  new_flows=connections() - conns - 1 - streams)
                    result["new_flows_per_s"] = result["new_flows"] / flood["seconds"]
                    result["new_connections_tried"] = len(tries)
                    result["new_connections_made"] = sum(t is not None for t in tries)
                    result["new_connection_s_max"] = max((t for t in tries if t is not None), default=None)
                    after = drops()
                    result["drops"] = {reason: after[reason][0] - before.get(reason, (0, 0))[0]
                                       for reason in after if after[reason][0] != before.get(reason, (0, 0))[0]}
                full = [whole for seen, whole in samples if seen == streams + 1]
                result.update(pairs_sampled=len(full), pairs_expected=streams + 1,
                              pairs_whole_min=min(full, default=0))
                return result

            def drops() -> dict:
                return drop_totals(maps.drops.items())

            def connects() -> bool:
                """A new connection through the NodePort (to the flood's backend port) within 2 s."""
                r = lab.run("X", "iperf3", "-c", node_ip, "-p", LAB_NODEPORT, "-t", 1, "--connect-timeout", 2000,
                            "-J", timeout=20, check=False)
                return r.returncode == 0 and "error" not in json.loads(r.stdout or "{}")

            def held() -> dict:
                """The flows towards B's iperf3 port node-0 holds, by TCP state (its SNAT ports)."""
                states = {}
                for _, value in maps.ct.items():
                    if value.type == 2 and value.flags & 1 and port_int(value.nat_port) == LAB_NODEPORT:
                        state = tcp_state(value.tcp_seen)
                        states[state] = states.get(state, 0) + 1
                return states

            under(None)                                   # warm-up
            out["alone"] = under(None)
            before = drops()
            out["flood"] = under(LAB_NODEPORT)            # the generator's full rate
            flood_over = time.monotonic()
            out["ct_entries_after"] = maps.ct.count()
            out["held_after"] = held()
            out["new_connection_right_after_s"] = handshake()
            # Through a SNAT NodePort, a flood's half-open flows hold the SNAT ports towards the
            # backend until they expire (tcp_syn_sent): is a new connection refused meanwhile?
            waited = None
            while time.monotonic() - flood_over < RECOVERY_WAIT_S:
                if connects():
                    waited = time.monotonic() - flood_over
                    break
                time.sleep(1)
            after = drops()
            out["new_connection_after_s"] = waited     # None: refused for all of RECOVERY_WAIT_S
            out["drops"] = {reason: after[reason][0] - before[reason][0]
                            for reason in after if after[reason][0] != before[reason][0]}
            if waited is not None:
                out["alone_after"] = under(None)
            # The control arm: the same generator at the rate it reached in the flood, to a port of
            # node-0 no Service uses (the programs pass those SYNs, node-0's kernel answers each
            # with a reset), so flood / control is the data plane's own share of the slowdown, the
            # generator's CPU being in both.
            if waited is not None:   # else no iperf3 gets through the NodePort (the ports held)
                out["control"] = under(CONTROL_PORT, rate=out["flood"]["sent_per_s"])
                out["flood_vs_control"] = out["flood"]["gbps"] / out["control"]["gbps"]
            out["flood_vs_alone"] = out["flood"]["gbps"] / out["alone"]["gbps"]
        finally:
            for m in vars(maps).values():
                if hasattr(m, "close"):
                    m.close()
            bench.stop()
    return out


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m bench.synflood", description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("programs", "lab"))
    parser.add_argument("--generate", nargs=4, metavar=("DST_MAC", "DST_IP", "DPORT", "SECONDS"),
                        help="(the lab's flood generator, run in X's namespace)")
    parser.add_argument("--rate", type=float, default=0, help="(the generator's SYNs a second; 0: as fast as it can)")
    args = parser.parse_args(argv)
    if args.generate:
        mac, ip, dport, seconds = args.generate
        print(json.dumps(generate(mac, ip, int(dport), float(seconds), args.rate)), flush=True)
        return 0
    from bench.common import load_results
    results = load_results().get("synflood", {}) if args.only == "lab" else {}
    if args.only in (None, "programs"):
        results = {**run(), "lab": results.get("lab")}
    if args.only in (None, "lab"):
        results["lab"] = run_lab()
    save_results("synflood", results)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
