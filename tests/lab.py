"""Seed 004's three-node lab, built entirely in network namespaces.

Topology (every name below lives in a namespace called <prefix><name>, prefix = "elb<4 hex>-"):

    underlay "ul":  bridge ul, ports node0 node1 node2 (veth peers of each node's eth0)
    node-0  "node0": eth0 192.168.64.4/24, br0 10.200.0.1/24, ports veth-a0 veth-a1
    node-1  "node1": eth0 192.168.64.5/24, br1 10.200.1.1/24, port veth-b
    node-2  "node2": eth0 192.168.64.6/24, br2 10.200.2.1/24, port veth-c
    pods    "a0" 10.200.0.2, "a1" 10.200.0.3, "b" 10.200.1.2, "c" 10.200.2.2 (eth0, default via .1)

Dual stack: every address above has an IPv6 twin (NODE_IPS6, POD_IPS6, ...): the underlay
fd00:192:168:64::/64 (nodes ::4-::6, clients ::100 ::101, control plane ::1), pod subnets
fd00:10:200:N::/64 with the node's bridge at ::1, routed like IPv4's. Added without DAD
("nodad"), so an address is usable when the lab is built.

Nodes forward (ip_forward=1, IPv6 forwarding=1, rp_filter=0) and route the other nodes' pod /24s via their node IPs
(static routing, as in the seed). Nothing is created in the root network namespace.

As hard as a real node: pods and outside clients keep a veth's default offloads (checksums left to
offload, TSO/GSO super-packets), the nodes' uplinks have GRO on, and their peers on the underlay
are plain veths (no XDP program, no GRO), as kind's are: a node's XDP_TX is not delivered there.
Lab(uplink_peers="xdp" or "gro") models a peer that takes XDP frames (a NIC's wire), on purpose.

    with Lab() as lab:
        lab.start_pod_servers()
        lab.http_get("C", "10.200.0.2")            # -> "A0"  (HttpError .code 7 refused, 28 timeout)
        lab.http_get_many("C", SVC_IP, 100)        # 100 fresh connections from one helper
        with lab.udp_session("C", SVC_IP) as s:    # one connected UDP socket, s.sport
            s.request(timeout=1)                   # -> "B", or None (s.last_error)
        lab.ping("C", "10.200.0.2")                # -> bool (raw-socket ICMP; no ping binary here)
        d = lab.manifests_dir()                    # editable copy of examples/seed004
        for n in NODES: lab.start_agent(n, d)
        lab.wait_agent_programmed("node-0")
        lab.agent_cli("node-0", "nat", "dump")
        lab.remove_endpoint(d, "10.200.0.2")

Processes: run(ns, *argv) / spawn(ns, *argv) use `ip netns exec`; agents and the CLI use
`nsenter --net` (ip netns exec hides /sys/fs/bpf). Pins: /sys/fs/bpf/<lab name>/node-N.
Each node has its own cgroup, <cgroup v2 root>/<lab name>/node-N: every process started in a
node's namespace (its host processes, its agent) runs in it, and the node's agent attaches its
host-socket programs there (--cgroup-root), never to the machine's root cgroup.
Teardown (also on SIGTERM/SIGHUP, which become KeyboardInterrupt, and at exit) stops agents,
runs `ebpflb cleanup`, kills everything in the namespaces and cgroups and deletes them, pins and
temp dir.

Command line (from the repo root): python -m tests.lab demo | shell [--agents] | gc
"""
from __future__ import annotations

import argparse
import atexit
import json
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PODSERVER = Path(__file__).resolve().with_name("podserver.py")
EXAMPLES = REPO / "examples" / "seed004"
BPFFS = Path("/sys/fs/bpf")
OWNER_DIR = Path("/run/ebpflb-lab")     # one JSON file per live lab: owner pid, tmpdir (for `gc`)

NODES = ("node-0", "node-1", "node-2")
NODE_IPS = {"node-0": "192.168.64.4", "node-1": "192.168.64.5", "node-2": "192.168.64.6"}
NODE_SUBNETS = {"node-0": "10.200.0.0/24", "node-1": "10.200.1.0/24", "node-2": "10.200.2.0/24"}
NODE_GATEWAYS = {"node-0": "10.200.0.1", "node-1": "10.200.1.1", "node-2": "10.200.2.1"}
NODE_BRIDGES = {"node-0": "br0", "node-1": "br1", "node-2": "br2"}
UNDERLAY_BRIDGE = "ul"
# What the nodes' uplink veths are connected to (Lab.set_uplink_peers).
UPLINK_PEERS = ("plain", "xdp", "gro")
CONTROL_PLANE_IP = "192.168.64.1"
TCP_ECHO_PORT = 9000
UNDERLAY_PREFIXLEN = 24
POD_PREFIXLEN = 24

# IPv6 twins of the addresses above (dual stack, issue 19)
NODE_IPS6 = {"node-0": "fd00:192:168:64::4", "node-1": "fd00:192:168:64::5", "node-2": "fd00:192:168:64::6"}
NODE_SUBNETS6 = {"node-0": "fd00:10:200::/64", "node-1": "fd00:10:200:1::/64", "node-2": "fd00:10:200:2::/64"}
NODE_GATEWAYS6 = {"node-0": "fd00:10:200::1", "node-1": "fd00:10:200:1::1", "node-2": "fd00:10:200:2::1"}
CONTROL_PLANE_IP6 = "fd00:192:168:64::1"
PREFIXLEN6 = 64

PODS = ("A0", "A1", "B", "C")
POD_IPS = {"A0": "10.200.0.2", "A1": "10.200.0.3", "B": "10.200.1.2", "C": "10.200.2.2"}
POD_NODES = {"A0": "node-0", "A1": "node-0", "B": "node-1", "C": "node-2"}
POD_IPS6 = {"A0": "fd00:10:200::2", "A1": "fd00:10:200::3", "B": "fd00:10:200:1::2", "C": "fd00:10:200:2::2"}
# Clients outside the cluster, on the underlay; a load balancer would send LB_IP to node-0.
OUTSIDE = {"X": "192.168.64.100", "Y": "192.168.64.101"}
OUTSIDE6 = {"X": "fd00:192:168:64::100", "Y": "fd00:192:168:64::101"}
LB_IP = "192.168.64.200"
POD_VETHS = {"A0": "veth-a0", "A1": "veth-a1", "B": "veth-b", "C": "veth-c"}

SVC_IP = "10.96.0.2"          # default/svc-1: http 8080/TCP, dns 5353/UDP -> A0, B
SVC_EMPTY_IP = "10.96.0.3"    # default/svc-empty: 8080/TCP, no endpoints
HTTP_PORT = 8080
UDP_PORT = 5353

CURL_EXIT = {6: "could not resolve host", 7: "failed to connect (refused/unreachable)",
             28: "timeout", 52: "empty reply", 56: "receive failure (reset)"}


class LabError(RuntimeError):
    pass


class CommandError(subprocess.CalledProcessError):
    """A command failed; str() includes its stderr."""

    def __str__(self) -> str:
        err = (self.stderr or "").strip() if isinstance(self.stderr, str) else self.stderr
        return f"{' '.join(map(str, self.cmd))!r} exited {self.returncode}: {err or '(no stderr)'}"


class HttpError(RuntimeError):
    """curl failed: .code is curl's exit code (7 = connection refused/unreachable, 28 = timeout)."""

    def __init__(self, pod: str, url: str, code: int, stderr: str):
        self.pod, self.url, self.code, self.stderr = pod, url, code, stderr
        what = CURL_EXIT.get(code, "error")
        super().__init__(f"{pod} -> {url}: curl exit {code} ({what}): {stderr.strip()}")


class _LineReader:
    """Line reads with a timeout from a pipe fd (no stdio buffering in the way)."""

    def __init__(self, fd: int):
        self.fd, self.buf = fd, b""

    def readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:  # EOF
                if not self.buf:
                    return None
                line, self.buf = self.buf, b""
                return line.decode(errors="replace")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")


class UdpSession:
    """One connected UDP socket in a pod (one source port for its whole life); with
    kind="tcp" one TCP connection to the pod servers' line echo instead."""

    def __init__(self, lab: "Lab", pod: str, ip: str, port: int, kind: str = "udp", reconnect: bool = False):
        self.pod, self.ip, self.port = pod, ip, port
        self.last_error: str | None = None
        self.proc = lab.spawn(pod, sys.executable, str(PODSERVER), f"{kind}-client", ip, str(port),
                              *(["--reconnect"] if reconnect else []),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._out = _LineReader(self.proc.stdout.fileno())
        first = self._out.readline(10)
        if not first or not first.startswith("port "):
            self.close()
            raise LabError(f"udp-client in {pod} did not start (got {first!r})")
        self.sport = int(first.split()[1])

    def request(self, timeout: float = 1) -> str | None:
        """Send one datagram; the reply text, or None on timeout/error (see .last_error)."""
        if self.proc.poll() is not None:
            raise LabError(f"udp-client in {self.pod} has exited ({self.proc.returncode})")
        self.proc.stdin.write(f"go {timeout}\n".encode())
        self.proc.stdin.flush()
        line = self._out.readline(timeout + 5)
        if line is None:
            raise LabError(f"udp-client in {self.pod} stopped answering")
        if line.startswith("reply "):
            self.last_error = None
            return line[len("reply "):]
        self.last_error = line  # "timeout" or "error ECONNREFUSED" ...
        return None

    def reconnects(self) -> int:
        """How often the client connected again after its socket was aborted (reconnect=True)."""
        self.proc.stdin.write(b"reconnects\n")
        self.proc.stdin.flush()
        line = self._out.readline(5)
        if not line or not line.startswith("reconnects "):
            raise LabError(f"udp-client in {self.pod} answered {line!r}")
        return int(line.split()[1])

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except Exception:
            _kill(self.proc)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _kill(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 3) -> int | None:
    """Signal proc's process group (spawned with start_new_session) and wait; SIGKILL after timeout."""
    if proc.poll() is not None:
        return proc.returncode
    for s, wait in ((sig, timeout), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(s)
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def _bpffs_mounted() -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(l.split()[1:3] == [str(BPFFS), "bpf"] for l in f)
    except OSError:
        return False


def _list_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [l.split()[0] for l in out.splitlines() if l.strip()]


_LIVE: set["Lab"] = set()
_LIVE_LOCK = threading.Lock()


def _teardown_live() -> None:
    for lab in list(_LIVE):
        lab.teardown()


atexit.register(_teardown_live)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _install_signal_handlers() -> None:
    """SIGTERM/SIGHUP become KeyboardInterrupt so `finally`, context managers and pytest's fixture
    finalizers run (default action would kill us with the lab still up)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) in (signal.SIG_DFL, None):
            signal.signal(s, _raise_interrupt)


@contextlib.contextmanager
def in_netns(name: str):
    """Sockets made inside stay in that namespace (setns is per thread: this thread only)."""
    from pyroute2 import netns
    netns.pushns(name)
    try:
        yield
    finally:
        netns.popns()


@contextlib.contextmanager
def routed_uplink(address: str, mac: str, neighbours: dict[str, str], routes: dict[str, str]):
    """A namespace standing for a node's uplink, for BPF_PROG_TEST_RUN of the uplink programs
    (their FIB lookups and MACs depend on it): up0 with address/24 and mac, permanent neighbours
    {ip: mac}, routes {prefix: via}, forwarding on. Yields (namespace, up0's ifindex)."""
    ns = f"elbup-{os.urandom(3).hex()}"
    cmds = [f"link add up0 address {mac} type veth peer name up1", "link set up0 up", "link set up1 up",
            f"addr add {address}/24 dev up0",
            *(f"neigh add {ip} lladdr {lladdr} dev up0 nud permanent" for ip, lladdr in neighbours.items()),
            *(f"route add {prefix} via {via}" for prefix, via in routes.items())]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n", text=True, check=True)
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        index = int(subprocess.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/up0/ifindex"],
                                   capture_output=True, text=True, check=True).stdout)
        yield ns, index
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


class Lab:
    NODES = NODES
    NODE_IPS = NODE_IPS
    NODE_SUBNETS = NODE_SUBNETS
    NODE_GATEWAYS = NODE_GATEWAYS
    NODE_BRIDGES = NODE_BRIDGES
    PODS = PODS
    POD_IPS = POD_IPS
    POD_NODES = POD_NODES
    POD_VETHS = POD_VETHS
    NODE_IPS6 = NODE_IPS6
    POD_IPS6 = POD_IPS6
    OUTSIDE6 = OUTSIDE6
    SVC_IP = SVC_IP
    SVC_EMPTY_IP = SVC_EMPTY_IP
    HTTP_PORT = HTTP_PORT
    UDP_PORT = UDP_PORT

    def __init__(self, name: str | None = None, uplink_peers: str = "plain"):
        if uplink_peers not in UPLINK_PEERS:
            raise ValueError(f"uplink_peers {uplink_peers!r}: one of {', '.join(UPLINK_PEERS)}")
        self.uplink_peers = uplink_peers
        self.name = name or "elb" + os.urandom(2).hex()         # e.g. elb3fa2
        self.prefix = self.name + "-"                            # namespace prefix
        self.apiserver = None
        self.underlay_ns = self.prefix + "ul"
        self.node_ns = {n: self.prefix + n.replace("-", "") for n in NODES}   # elb3fa2-node0
        self.pod_ns = {p: self.prefix + p.lower() for p in PODS}              # elb3fa2-a0
        self.outside_ns = {c: self.prefix + "out" + c.lower() for c in OUTSIDE}  # elb3fa2-outx
        self.namespaces = [self.underlay_ns, *self.node_ns.values(), *self.pod_ns.values(),
                           *self.outside_ns.values()]
        self.bpf_dir = BPFFS / self.name
        self.cgroup_dir: Path | None = None    # <cgroup v2 root>/<name>, once build() made it
        self.reclaim_cgroups = False           # gc: remove the cgroups of a lab whose owner died
        self.tmpdir: Path | None = None
        self.agents: dict[str, subprocess.Popen] = {}
        self.servers: dict[str, subprocess.Popen] = {}
        self._procs: list[subprocess.Popen] = []
        self._logs: list = []
        self._built = False
        self._torn_down = False
        self._manifest_copies = 0
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ names
    def ns(self, what: str) -> str:
        """Namespace name of a pod ("A0", "a0"), node ("node-0", "node0"), "ul", or a full ns name."""
        s = str(what)
        if s in self.namespaces:
            return s
        key = s.lower().replace("-", "").replace("_", "")
        for p, n in (*self.pod_ns.items(), *self.outside_ns.items()):
            if key == p.lower():
                return n
        for node, n in self.node_ns.items():
            if key == node.replace("-", ""):
                return n
        if key in ("ul", "underlay"):
            return self.underlay_ns
        raise KeyError(f"no pod/node/namespace {what!r} in lab {self.name}")

    @staticmethod
    def pod(what: str) -> str:
        """Canonical pod (or outside client) name ("A0", "X") from "a0"/"A0"."""
        for p in (*PODS, *OUTSIDE):
            if str(what).lower() == p.lower():
                return p
        raise KeyError(f"no pod {what!r}")

    @staticmethod
    def node(what: str | int) -> str:
        """Canonical node name ("node-0") from "node-0"/"node0"/0."""
        key = str(what).lower().replace("-", "")
        for n in NODES:
            if key in (n.replace("-", ""), n[-1]):
                return n
        raise KeyError(f"no node {what!r}")

    def pin_dir(self, node: str) -> Path:
        return self.bpf_dir / self.node(node)

    def cgroup(self, node: str) -> Path:
        """The node's own cgroup: its host processes run in it, its agent attaches there."""
        if self.cgroup_dir is None:
            raise LabError("lab not built")
        return self.cgroup_dir / self.node(node)

    def _node_of_ns(self, ns: str) -> str | None:
        return next((node for node, name in self.node_ns.items() if name == ns), None)

    # ------------------------------------------------------------------ build
    def __enter__(self) -> "Lab":
        return self.build()

    def __exit__(self, *exc) -> None:
        self.teardown()

    def build(self) -> "Lab":
        with self._lock:
            if self._built:
                return self
            if self._torn_down:
                raise LabError("a torn-down Lab cannot be rebuilt; make a new one")
            if os.geteuid() != 0:
                raise LabError("the lab needs root (network namespaces)")
            _install_signal_handlers()
            with _LIVE_LOCK:
                _LIVE.add(self)
            try:
                self.tmpdir = Path(tempfile.mkdtemp(prefix=self.prefix))
                self._write_owner()
                self._build_cgroups()
                self._build_namespaces()
                self._build_underlay()
                for node in NODES:
                    self._build_node(node)
                for pod in PODS:
                    self._build_pod(pod)
                for client in OUTSIDE:
                    self._build_outside(client)
                self._built = True
            except BaseException:
                self.teardown()
                raise
            return self

    def _write_owner(self) -> None:
        try:
            OWNER_DIR.mkdir(parents=True, exist_ok=True)
            (OWNER_DIR / f"{self.name}.json").write_text(
                json.dumps({"pid": os.getpid(), "tmpdir": str(self.tmpdir)}))
        except OSError:
            pass

    def _ip_batch(self, ns: str, commands: list[str]) -> None:
        r = subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n",
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise LabError(f"ip -n {ns} -batch failed: {r.stderr.strip()}\ncommands:\n"
                           + "\n".join(commands))

    @staticmethod
    def _cgroup_root(mount: bool = True) -> Path | None:
        from ebpflb.datapath.cgroup import default_cgroup_root
        root = default_cgroup_root(mount=mount)
        return Path(root) if root else None

    def _build_cgroups(self) -> None:
        path = self._cgroup_root() / self.name
        try:
            path.mkdir()
        except FileExistsError:
            raise LabError(f"cgroup {path} already exists (another lab's?)") from None
        self.cgroup_dir = path
        for node in NODES:
            self.cgroup(node).mkdir()

    def _remove_cgroups(self) -> None:
        """Kill what is left in the lab's cgroups and remove them (their programs go with them)."""
        if self.cgroup_dir is None and self.reclaim_cgroups:
            root = self._cgroup_root(mount=False)
            self.cgroup_dir = root / self.name if root else None
        if self.cgroup_dir is None or not self.cgroup_dir.is_dir():
            return
        for cg in [*sorted(p for p in self.cgroup_dir.iterdir() if p.is_dir()), self.cgroup_dir]:
            if (cg / "cgroup.kill").exists():
                (cg / "cgroup.kill").write_text("1")
            deadline = time.monotonic() + 5
            while (cg / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.05)
            cg.rmdir()

    def _build_namespaces(self) -> None:
        existing = set(_list_netns())
        clash = [n for n in self.namespaces if n in existing]
        if clash:
            raise LabError(f"namespaces already exist: {clash}")
        for n in self.namespaces:
            subprocess.run(["ip", "netns", "add", n], check=True, capture_output=True, timeout=10)
        for node in NODES:
            # before any interface exists, so every new interface inherits rp_filter=0
            self.run(self.node_ns[node], "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                     "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                     "net.ipv6.conf.all.forwarding=1")

    def _build_underlay(self) -> None:
        # The bridge holds the seed's gateway address: the lab's control-plane host (API server).
        cmds = ["link set lo up", f"link add {UNDERLAY_BRIDGE} type bridge",
                f"addr add {CONTROL_PLANE_IP}/{UNDERLAY_PREFIXLEN} dev {UNDERLAY_BRIDGE}",
                f"addr add {CONTROL_PLANE_IP6}/{PREFIXLEN6} dev {UNDERLAY_BRIDGE} nodad",
                f"link set {UNDERLAY_BRIDGE} up"]
        for node in NODES:
            port = node.replace("-", "")                              # node0
            cmds += [f"link add {port} type veth peer name eth0 netns {self.node_ns[node]}",
                     f"link set {port} master {UNDERLAY_BRIDGE}", f"link set {port} up"]
        self._ip_batch(self.underlay_ns, cmds)
        self.set_uplink_peers(self.uplink_peers)

    def node_ports(self) -> list[str]:
        """The underlay's ends of the nodes' uplinks (the peers of each node's eth0)."""
        return [node.replace("-", "") for node in NODES]

    def set_uplink_peers(self, kind: str) -> None:
        """What the nodes' uplinks (veths) are connected to (UPLINK_PEERS). A veth delivers what
        its peer sends by XDP (XDP_TX) only while it runs an XDP program or GRO (NAPI): "plain"
        is neither, as kind's, k3d's and many VMs' veth uplinks; "xdp" and "gro" model a peer that
        takes XDP frames as a physical NIC's wire does, on purpose."""
        ports = self.node_ports()
        for port in ports:
            self.run(self.underlay_ns, "ethtool", "-K", port, "gro", "on" if kind == "gro" else "off")
        if kind == "xdp":
            self._passthrough_xdp(ports, attach=True)
        elif self.uplink_peers == "xdp":
            self._passthrough_xdp(ports, attach=False)
        self.uplink_peers = kind

    def _passthrough_xdp(self, ports: list[str], attach: bool) -> None:
        from pyroute2 import IPRoute
        fd = -1
        if attach:
            from bcc import BPF
            passthrough = BPF(text=b"int pass(struct xdp_md *ctx) { return XDP_PASS; }")
            fd = passthrough.load_func(b"pass", BPF.XDP).fd
        with in_netns(self.underlay_ns), IPRoute() as ipr:
            for port in ports:
                ipr.link("set", index=ipr.link_lookup(ifname=port)[0], xdp_fd=fd, xdp_flags=1 << 2)
        if attach:
            passthrough.cleanup()   # the links hold the program now

    def _build_node(self, node: str) -> None:
        br = NODE_BRIDGES[node]
        gw_cidr = f"{NODE_GATEWAYS[node]}/{POD_PREFIXLEN}"
        cmds = ["link set lo up",
                f"addr add {NODE_IPS[node]}/{UNDERLAY_PREFIXLEN} dev eth0",
                f"addr add {NODE_IPS6[node]}/{PREFIXLEN6} dev eth0 nodad", "link set eth0 up",
                f"link add {br} type bridge", f"addr add {gw_cidr} dev {br}",
                f"addr add {NODE_GATEWAYS6[node]}/{PREFIXLEN6} dev {br} nodad", f"link set {br} up"]
        for pod in PODS:
            if POD_NODES[pod] == node:
                veth = POD_VETHS[pod]
                cmds += [f"link add {veth} type veth peer name eth0 netns {self.pod_ns[pod]}",
                         f"link set {veth} master {br}", f"link set {veth} up"]
        for other in NODES:
            if other != node:
                cmds += [f"route add {NODE_SUBNETS[other]} via {NODE_IPS[other]}",
                         f"route add {NODE_SUBNETS6[other]} via {NODE_IPS6[other]}"]
        self._ip_batch(self.node_ns[node], cmds)
        ifaces = ["eth0", br] + [POD_VETHS[p] for p in PODS if POD_NODES[p] == node]
        self.run(self.node_ns[node], "sysctl", "-q", "-w",
                 *[f"net.ipv4.conf.{i}.rp_filter=0" for i in ifaces])
        # GRO on the uplink, as a NIC's: the uplink programs get merged super-packets.
        self.run(self.node_ns[node], "ethtool", "-K", "eth0", "gro", "on")

    def _build_outside(self, client: str) -> None:
        """A client outside the cluster on the underlay: it reaches node addresses directly and
        the LB address through node-0 (standing in for a load balancer)."""
        port = "out" + client.lower()
        self._ip_batch(self.underlay_ns, [
            f"link add {port} type veth peer name eth0 netns {self.outside_ns[client]}",
            f"link set {port} master {UNDERLAY_BRIDGE}", f"link set {port} up"])
        self._ip_batch(self.outside_ns[client], [
            "link set lo up", f"addr add {OUTSIDE[client]}/{UNDERLAY_PREFIXLEN} dev eth0",
            f"addr add {OUTSIDE6[client]}/{PREFIXLEN6} dev eth0 nodad", "link set eth0 up",
            f"route add {LB_IP}/32 via {NODE_IPS['node-0']}",
            f"route add 10.96.0.0/12 via {NODE_IPS['node-0']}"])   # to show ClusterIPs are not served

    def _build_pod(self, pod: str) -> None:
        """Pods and outside clients keep the veth's default offloads: TCP/UDP checksums left to
        "offload" (CHECKSUM_PARTIAL, only skb metadata says so) and TSO/GSO super-packets, as real
        pods send."""
        node = POD_NODES[pod]
        self._ip_batch(self.pod_ns[pod], [
            "link set lo up", f"addr add {POD_IPS[pod]}/{POD_PREFIXLEN} dev eth0",
            f"addr add {POD_IPS6[pod]}/{PREFIXLEN6} dev eth0 nodad",
            "link set eth0 up", f"route add default via {NODE_GATEWAYS[node]}",
            f"route add default via {NODE_GATEWAYS6[node]}"])

    def send_as_a_wire_carries(self, what: str, on: bool = True) -> None:
        """A sender (pod or outside client) that fills in its checksums and sends MTU-sized
        segments, as frames on a wire come (tx checksum offload off, which turns TSO off too); off
        again with on=False. For a test that needs wire frames on purpose; the lab's default is a
        real pod's offloads."""
        self.run(what, "ethtool", "-K", "eth0", "tx", "off" if on else "on")

    # ------------------------------------------------------------------ processes
    def _argv(self, ns: str, argv) -> list[str]:
        ns = self.ns(ns)
        return self._in_node_cgroup(self._node_of_ns(ns), ["ip", "netns", "exec", ns, *map(str, argv)])

    def _in_node_cgroup(self, node: str | None, argv: list[str]) -> list[str]:
        """argv run in the node's cgroup (a node's host process); unchanged for other namespaces."""
        if node is None:
            return argv
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.cgroup(node)), *argv]

    def run(self, ns: str, *argv, timeout: float = 10, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run argv in a namespace (ip netns exec); text output captured. check → CommandError."""
        cmd = self._argv(ns, argv)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise CommandError(r.returncode, cmd, r.stdout, r.stderr)
        return r

    def spawn(self, ns: str, *argv, **popen_kwargs) -> subprocess.Popen:
        """Start argv in a namespace; killed at teardown. stdin defaults to /dev/null, stdout and
        stderr to a log file in the lab's temp dir."""
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        if "stdout" not in popen_kwargs or "stderr" not in popen_kwargs:
            log = self._open_log(f"proc-{len(self._procs)}-{self.ns(ns)[len(self.prefix):]}"
                                 f"-{Path(str(argv[0])).name}")
            popen_kwargs.setdefault("stdout", log)
            popen_kwargs.setdefault("stderr", log)
        return self._track(subprocess.Popen(self._argv(ns, argv), start_new_session=True,
                                            **popen_kwargs))

    def _track(self, proc: subprocess.Popen) -> subprocess.Popen:
        with self._lock:
            if self._torn_down:
                _kill(proc)
                raise LabError("lab is torn down")
            self._procs.append(proc)
        return proc

    def _open_log(self, stem: str):
        if self.tmpdir is None:
            raise LabError("lab not built")
        f = open(self.tmpdir / f"{stem}.log", "ab")
        self._logs.append(f)
        return f

    def ping(self, pod: str, ip: str, count: int = 1, timeout: float = 2) -> bool:
        """ICMP echo from pod (or node) to ip; True if any reply came back. (No ping binary on
        this machine: podserver.py sends the echoes over a raw socket.)"""
        r = self.run(pod, sys.executable, str(PODSERVER), "ping", ip, count, timeout,
                     timeout=count * (timeout + 1) + 10, check=False)
        return r.returncode == 0

    # ------------------------------------------------------------------ pod servers / clients
    def start_pod_servers(self, timeout: float = 15) -> None:
        """In every pod: HTTP on 8080 (body = pod name) and UDP echo-name on 5353. Waits for them."""
        started = {}
        for pod in PODS:
            if pod in self.servers and self.servers[pod].poll() is None:
                continue
            log = self._open_log(f"server-{pod}")
            started[pod] = self.spawn(pod, sys.executable, str(PODSERVER), "serve", pod,
                                      stdout=subprocess.PIPE, stderr=log)
        deadline = time.monotonic() + timeout
        for pod, proc in started.items():
            line = _LineReader(proc.stdout.fileno()).readline(max(0.1, deadline - time.monotonic()))
            if line != "ready":
                err = (self.tmpdir / f"server-{pod}.log").read_text(errors="replace")[-2000:]
                raise LabError(f"pod server in {pod} did not start (got {line!r}): {err}")
            self.servers[pod] = proc

    def http_get(self, pod: str, ip: str, port: int = HTTP_PORT, timeout: float = 2,
                 path: str = "/") -> str:
        """GET http://ip:port/path with curl inside pod's namespace; body, or HttpError
        (.code: 7 refused/unreachable, 28 timeout)."""
        url = f"http://{f'[{ip}]' if ':' in ip else ip}:{port}{path}"
        r = self.run(pod, "curl", "-sS", "--fail", "--noproxy", "*", "-m", timeout, url,
                     timeout=timeout + 10, check=False)
        if r.returncode != 0:
            raise HttpError(self.pod(pod), url, r.returncode, r.stderr)
        return r.stdout

    def http_get_many(self, pod: str, ip: str, count: int, port: int = HTTP_PORT,
                      timeout: float = 2, path: str = "/") -> list[str]:
        """count GETs from one helper process, each on a new TCP connection (new source port).
        One entry per request: the body, or "error <reason>" (e.g. "error ECONNREFUSED")."""
        r = self.run(pod, sys.executable, str(PODSERVER), "http-many", ip, port, count, timeout,
                     path, timeout=count * (timeout + 1) + 15)
        return [l[3:] if l.startswith("ok ") else l for l in r.stdout.splitlines()]

    def echo(self, client: str, ip: str, port: int, size: int, timeout: float = 10) -> tuple[bool, str]:
        """POST size random bytes from client to http://ip:port/echo, which sends them back (the
        pod servers): (True, "SECONDS") when the same bytes came back, else (False, what went wrong)."""
        r = self.run(client, sys.executable, str(PODSERVER), "echo", ip, port, size, timeout,
                     timeout=timeout + 15, check=False)
        out = r.stdout.strip()
        return out.startswith("ok "), out.removeprefix("ok ") or r.stderr.strip()

    def sctp_many(self, pod: str, ip: str, port: int, count: int, timeout: float = 2) -> list[str]:
        """count SCTP packets over a raw socket (no SCTP in this kernel), each from a new port, to the
        pod servers' SCTP stand-in (podserver.py): one entry per packet, the answering pod's name or
        "error bad-crc" / "error timeout"."""
        r = self.run(pod, sys.executable, str(PODSERVER), "sctp-many", ip, port, count, timeout,
                     timeout=count * (timeout + 1) + 15)
        return [l[3:] if l.startswith("ok ") else l for l in r.stdout.splitlines()]

    def udp_session(self, pod: str, ip: str, port: int = UDP_PORT, reconnect: bool = False) -> UdpSession:
        """A connected UDP socket in a pod, or in a node's host namespace ("node-2"). reconnect: the
        client connects again when its socket is aborted (ECONNABORTED), as resolvers do."""
        return UdpSession(self, self._client(pod), ip, port, reconnect=reconnect)

    def tcp_session(self, pod: str, ip: str, port: int = TCP_ECHO_PORT) -> UdpSession:
        """One long-lived TCP connection from pod; .request() -> the answering pod's name."""
        return UdpSession(self, self._client(pod), ip, port, kind="tcp")

    def _client(self, where: str) -> str:
        """A pod's or outside client's canonical name, or a node's ("node-2")."""
        try:
            return self.pod(where)
        except KeyError:
            return self.node(where)

    # ------------------------------------------------------------------ agent
    @staticmethod
    def ebpflb_bin() -> str | None:
        """The ebpflb console script: next to sys.executable (a venv), else the repo's venv."""
        for cand in (Path(sys.executable).parent / "ebpflb", REPO / ".venv" / "bin" / "ebpflb"):
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
        return shutil.which("ebpflb")

    def _node_cmd(self, node: str, args, code: Path | None = None) -> list[str]:
        """code: another tree of ebpflb (its bpf/ and ebpflb/, e.g. an older version's) to run instead."""
        exe = self.ebpflb_bin()
        if exe is None:
            raise LabError("ebpflb is not installed (no .venv/bin/ebpflb); run scripts/install.sh")
        if code is not None:
            exe = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(code)!r}); from ebpflb.cli import main; main()"]
        node = self.node(node)
        return self._in_node_cgroup(node, ["nsenter", f"--net=/run/netns/{self.node_ns[node]}",
                                           *(exe if isinstance(exe, list) else [exe]), *map(str, args)])

    def _ensure_bpffs(self) -> None:
        if not _bpffs_mounted():
            BPFFS.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], check=True)
        self.bpf_dir.mkdir(exist_ok=True)

    def agent_log_path(self, node: str) -> Path:
        return self.tmpdir / f"agent-{self.node(node)}.log"

    def agent_log(self, node: str) -> str:
        try:
            return self.agent_log_path(node).read_text(errors="replace")
        except OSError:
            return ""

    def start_agent(self, node: str, manifests_dir=None, *extra_args, kubeconfig=None,
                    code: Path | None = None) -> subprocess.Popen:
        """ebpflb agent for node, in the node's network namespace only (nsenter --net), so it
        sees the real /sys/fs/bpf. Its source: manifests_dir, or the API through kubeconfig.
        code: another tree of ebpflb to run (an older version's). Log: agent_log(node)."""
        node = self.node(node)
        if not self._built:
            raise LabError("lab not built")
        old = self.agents.get(node)
        if old is not None and old.poll() is None:
            raise LabError(f"agent on {node} is already running (pid {old.pid})")
        self._ensure_bpffs()
        source = ["--kubeconfig", kubeconfig] if kubeconfig else ["--manifests", manifests_dir]
        cgroup = [] if "--cgroup-root" in extra_args else ["--cgroup-root", self.cgroup(node)]
        cmd = self._node_cmd(node, ["agent", *source, "--node-name", node,
                                    "--pin-dir", self.pin_dir(node), *cgroup, *extra_args], code)
        log = self._open_log(f"agent-{node}")
        log.write(f"### {' '.join(cmd)}\n".encode())
        log.flush()
        proc = self._track(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True))
        self.agents[node] = proc
        return proc

    def start_apiserver(self, **options):
        """tests/apiserver.py's FakeApiServer on the control-plane host (underlay namespace,
        192.168.64.1), reachable from every node. Returns (server, kubeconfig path)."""
        from tests.apiserver import FakeApiServer
        with in_netns(self.underlay_ns):
            self.apiserver = FakeApiServer(host=CONTROL_PLANE_IP, **options).start()
        kubeconfig = self.apiserver.write_kubeconfig(self.tmpdir / "kubeconfig")
        return self.apiserver, kubeconfig

    def restart_apiserver(self) -> None:
        with in_netns(self.underlay_ns):
            self.apiserver.restart()

    def stop_agent(self, node: str, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        """Send sig to the node's agent and wait (SIGKILL after timeout). Its exit code."""
        proc = self.agents.get(self.node(node))
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(proc, signal.SIGKILL)
        return proc.returncode

    def wait_agent_programmed(self, node: str, timeout: float = 30, interval: float = 0.5) -> float:
        """Wait until `ebpflb nat dump` on node succeeds with some output (programs attached
        and frontends written). Seconds waited; LabError if the agent exits or time runs out."""
        node = self.node(node)
        start = time.monotonic()
        while True:
            proc = self.agents.get(node)
            if proc is None:
                raise LabError(f"no agent started on {node}")
            if proc.poll() is not None:
                raise LabError(f"agent on {node} exited with code {proc.returncode}:\n"
                               + self.agent_log(node)[-3000:])
            try:
                r = subprocess.run(self._node_cmd(node, ["nat", "dump", "--pin-dir",
                                                         self.pin_dir(node)]),
                                   capture_output=True, text=True, timeout=30)
                if r.returncode == 0 and r.stdout.strip():
                    return time.monotonic() - start
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - start > timeout:
                raise LabError(f"agent on {node} not programmed after {timeout:.0f} s")
            time.sleep(interval)

    def agent_cli(self, node: str, *args, timeout: float = 30, check: bool = True) -> str:
        """`ebpflb ARGS --pin-dir <node's pin dir>` in the node's network namespace (and for
        cleanup `--cgroup-root <node's cgroup>`); stdout."""
        cgroup = ["--cgroup-root", self.cgroup(node)] if args[:1] == ("cleanup",) else []
        cmd = self._node_cmd(node, [*args, "--pin-dir", self.pin_dir(node), *cgroup])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise CommandError(r.returncode, cmd, r.stdout, r.stderr)
        return r.stdout

    # ------------------------------------------------------------------ manifests
    def manifests_dir(self) -> Path:
        """A fresh copy of examples/seed004 in the lab's temp dir (each call: a new copy)."""
        if self.tmpdir is None:
            raise LabError("lab not built")
        n = self._manifest_copies
        self._manifest_copies += 1
        dest = self.tmpdir / ("manifests" if n == 0 else f"manifests-{n}")
        shutil.copytree(EXAMPLES, dest)
        return dest

    @staticmethod
    def remove_endpoint(manifests_dir, ip: str) -> int:
        """Drop every endpoint with address ip from the EndpointSlices in manifests_dir (files
        rewritten atomically). How many were removed; ValueError if none."""
        removed = 0
        for path in sorted(Path(manifests_dir).iterdir()):
            if path.suffix not in (".yaml", ".yml") or path.name.startswith("."):
                continue
            docs = list(yaml.safe_load_all(path.read_text()))
            changed = False
            for doc in docs:
                if not isinstance(doc, dict) or doc.get("kind") != "EndpointSlice":
                    continue
                eps = doc.get("endpoints") or []
                keep = [e for e in eps if ip not in (e.get("addresses") or [])]
                if len(keep) != len(eps):
                    removed += len(eps) - len(keep)
                    doc["endpoints"] = keep
                    changed = True
            if changed:
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(yaml.safe_dump_all([d for d in docs if d is not None],
                                                  sort_keys=False))
                os.replace(tmp, path)
        if not removed:
            raise ValueError(f"no endpoint {ip} in {manifests_dir}")
        return removed

    # ------------------------------------------------------------------ teardown
    def teardown(self) -> None:
        """Stop everything and delete all the lab's namespaces, pins and files. Idempotent; never
        raises; also cleans up after a partial build."""
        with self._lock:
            self._torn_down = True
            masked = {}
            if threading.current_thread() is threading.main_thread():
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    try:
                        masked[s] = signal.signal(s, signal.SIG_IGN)
                    except (ValueError, OSError):
                        pass
            try:
                self._teardown_steps()
            finally:
                for s, h in masked.items():
                    try:
                        signal.signal(s, h)
                    except Exception:
                        pass
                with _LIVE_LOCK:
                    _LIVE.discard(self)

    def _teardown_steps(self) -> None:
        def step(fn, *a):
            try:
                fn(*a)
            except BaseException as e:  # never raise from teardown
                print(f"lab {self.name} teardown: {fn.__name__}: {e!r}", file=sys.stderr)

        for node in list(self.agents):
            step(self.stop_agent, node, signal.SIGTERM, 10)
        if self.apiserver is not None:
            step(self.apiserver.stop)
        for proc in list(self._procs):
            step(_kill, proc)
        self._procs.clear()
        step(self._cleanup_pins)
        try:
            ours = [n for n in _list_netns() if n.startswith(self.prefix)]
        except Exception:
            ours = list(self.namespaces)
        for n in ours:
            step(self._kill_ns_pids, n)
        for n in ours:
            step(self._del_ns, n)
        step(self._remove_cgroups)
        for f in self._logs:
            step(f.close)
        self._logs.clear()
        if self.bpf_dir.exists():
            step(shutil.rmtree, self.bpf_dir)
        if self.tmpdir is not None and self.tmpdir.exists():
            step(shutil.rmtree, self.tmpdir)
        step((OWNER_DIR / f"{self.name}.json").unlink, True)

    @staticmethod
    def _del_ns(ns: str) -> None:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def _cleanup_pins(self) -> None:
        exe = self.ebpflb_bin()
        if exe is None or not (self.agents or self.bpf_dir.exists()):
            return
        live = set(_list_netns())
        for node in NODES:
            cmd = [exe, "cleanup", "--pin-dir", str(self.pin_dir(node))]
            if self.cgroup_dir is not None and self.cgroup(node).is_dir():
                cmd += ["--cgroup-root", str(self.cgroup(node))]
            if self.node_ns[node] in live:
                cmd = ["nsenter", f"--net=/run/netns/{self.node_ns[node]}", *cmd]
            try:
                subprocess.run(cmd, capture_output=True, timeout=30)
            except Exception:
                pass

    @staticmethod
    def _kill_ns_pids(ns: str) -> None:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                             timeout=10).stdout
        pids = [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
                time.sleep(0.05)
            if not pids:
                return

    def __repr__(self) -> str:
        return f"<Lab {self.name} built={self._built} torn_down={self._torn_down}>"


# ---------------------------------------------------------------------- stale labs
def gc_stale() -> list[str]:
    """Tear down labs whose owning process is gone (left by SIGKILL). Returns their names."""
    cleaned = []
    if not OWNER_DIR.is_dir():
        return cleaned
    for f in OWNER_DIR.glob("elb*.json"):
        try:
            info = json.loads(f.read_text())
            alive = os.path.exists(f"/proc/{int(info['pid'])}")
        except (OSError, ValueError, KeyError):
            info, alive = {}, False
        if alive:
            continue
        lab = Lab(name=f.stem)
        lab.tmpdir = Path(info["tmpdir"]) if info.get("tmpdir") else None
        lab.reclaim_cgroups = True
        lab.teardown()
        cleaned.append(f.stem)
    return cleaned


# ---------------------------------------------------------------------- demo / shell
CASES = (  # (title, client pod, pods that may answer, what the reader should know)
    ("case 1: C (node-2, no local endpoint) -> svc-1", "C", {"A0", "B"}, ""),
    ("case 2: A1 (node-0, next to endpoint A0) -> svc-1", "A1", {"A0", "B"}, ""),
    ("case 3: A0 (an endpoint itself) -> svc-1", "A0", {"A0", "B"},
     "A0 may land on itself (hairpin): ebpflb SNATs it to 169.254.42.1 and sends it straight "
     "back, as kube-proxy masquerades it"),
)


def _tail(text: str, n: int = 20) -> str:
    return "\n".join("      | " + l for l in text.rstrip().splitlines()[-n:]) or "      | (empty)"


def demo(requests: int = 10) -> int:
    ok = True
    with Lab() as lab:
        print(f"lab {lab.name}: namespaces {' '.join(lab.namespaces)}")
        lab.start_pod_servers()
        print("pod servers up: " + ", ".join(f"{p} {POD_IPS[p]}" for p in PODS))
        mdir = lab.manifests_dir()
        print(f"manifests: {mdir}")
        for node in NODES:
            try:
                proc = lab.start_agent(node, mdir)
                print(f"agent {node}: started pid {proc.pid}, pin dir {lab.pin_dir(node)}")
            except Exception as e:
                ok = False
                print(f"agent {node}: FAILED TO START: {e}")
        time.sleep(2)
        for node, proc in lab.agents.items():
            try:
                waited = lab.wait_agent_programmed(node, timeout=30)
                print(f"agent {node}: running, programmed ({2 + waited:.1f} s after start)")
            except LabError:
                ok = False
                if proc.poll() is not None:
                    print(f"agent {node}: FAILED - exited with code {proc.returncode}; log tail:")
                else:
                    print(f"agent {node}: FAILED - running but `ebpflb nat dump` still empty or "
                          f"failing after 30 s; log tail:")
                print(_tail(lab.agent_log(node)))

        for title, pod, allowed, note in CASES:
            print(f"\n== {title}: {requests} x GET http://{SVC_IP}:{HTTP_PORT}/")
            seen: Counter = Counter()
            for i in range(1, requests + 1):
                try:
                    body = lab.http_get(pod, SVC_IP, HTTP_PORT, timeout=2).strip()
                    seen[body] += 1
                    print(f"  {pod} #{i:2}: answered by {body}")
                except HttpError as e:
                    seen["FAILED"] += 1
                    print(f"  {pod} #{i:2}: FAILED: {e}")
            answered = {k for k in seen if k != "FAILED"}
            counts = ", ".join(f"{k} x{v}" for k, v in sorted(seen.items()))
            verdict = "FAIL" if seen["FAILED"] or not answered <= allowed else "OK"
            ok = ok and verdict == "OK"
            print(f"  summary: {counts} -> {verdict}" + (f"\n  note: {note}" if note else ""))

        print(f"\n== C pings the ClusterIP {SVC_IP}: a service answers no ping (nor does kube-proxy's); "
              f"from_workload drops it and counts why")
        answered = lab.ping("C", SVC_IP, timeout=1)
        ok = ok and not answered
        print(f"  {'answered -> FAIL' if answered else 'no answer -> OK'}")
        print("\n== node-2: ebpflb drops")
        try:
            print(lab.agent_cli("node-2", "drops").rstrip())
        except Exception as e:
            print(f"  FAILED: {e}")

        for node in NODES:
            for verb in (("nat", "dump"), ("conntrack", "dump")):
                print(f"\n== {node}: ebpflb {' '.join(verb)}")
                try:
                    print(lab.agent_cli(node, *verb).rstrip() or "(empty)")
                except Exception as e:
                    print(f"  FAILED: {e}")
        if not ok:
            for node in NODES:
                if node in lab.agents:
                    print(f"\n== {node}: agent log tail")
                    print(_tail(lab.agent_log(node)))
        print(f"\ntearing down lab {lab.name}")
    print("demo: " + ("all cases OK" if ok else "FAILURES (see above)"))
    return 0 if ok else 1


def shell(agents: bool = False) -> int:
    with Lab() as lab:
        lab.start_pod_servers()
        if agents:
            mdir = lab.manifests_dir()
            for node in NODES:
                lab.start_agent(node, mdir)
            print(f"agents started with manifests {mdir}; logs in {lab.tmpdir}")
        print(f"lab {lab.name} is up. Namespaces:")
        for n in NODES:
            print(f"  {n}: {lab.node_ns[n]}  ({NODE_IPS[n]}, {NODE_BRIDGES[n]} {NODE_SUBNETS[n]})")
        for p in PODS:
            print(f"  pod {p}: {lab.pod_ns[p]}  ({POD_IPS[p]} on {POD_NODES[p]})")
        print(f"  underlay: {lab.underlay_ns}")
        print("Try:")
        print(f"  ip netns exec {lab.pod_ns['C']} curl -s http://{POD_IPS['A0']}:8080/")
        print(f"  ip netns exec {lab.pod_ns['C']} curl -s http://{SVC_IP}:8080/")
        print(f"  nsenter --net=/run/netns/{lab.node_ns['node-0']} {lab.ebpflb_bin() or 'ebpflb'}"
              f" nat dump --pin-dir {lab.pin_dir('node-0')}")
        try:
            input("Press Enter to tear down... ")
        except EOFError:
            pass
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="build, start agents, run seed 004's three cases, tear down")
    d.add_argument("--requests", type=int, default=10)
    s = sub.add_parser("shell", help="build the lab (pod servers up) and wait for Enter")
    s.add_argument("--agents", action="store_true", help="also start one agent per node")
    sub.add_parser("gc", help="tear down labs left behind by killed processes")
    args = ap.parse_args(argv)
    if args.cmd == "demo":
        return demo(args.requests)
    if args.cmd == "shell":
        return shell(args.agents)
    names = gc_stale()
    print("removed: " + (" ".join(names) if names else "nothing"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
