"""The host-socket programs (bpf/sock.c) through real sockets: BPF_PROG_TEST_RUN cannot run cgroup
sock_addr programs. A network namespace of its own stands for a node's (the backends' addresses
are its own, so its sockets reach them), a cgroup of its own for the node's host processes;
the programs are attached to that cgroup only, never to the machine's root cgroup. The lab tests
(test_lab_host.py) run the same things across nodes with the agents."""
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath import cgroup as cgroups
from ebpflb.datapath.loader import SOCK_REAPER, Datapath
from ebpflb.datapath.sockets import SocketReaper, netns_cookie
from ebpflb.datapath.structs import C
from ebpflb.sync.writer import MapWriter
from tests.lab import PODSERVER, _LineReader, in_netns
from tests.test_datapath_packets import dropped_since, drops

VIP, VIP_EMPTY, VIP_LOCAL = "10.96.0.2", "10.96.0.3", "10.96.0.4"
A0, B = "10.200.0.2", "10.200.1.2"
NODE_ADDR, NODEPORT = "192.168.64.6", 30080
TCP, UDP = 6, 17


class Host:
    """A node's namespace and cgroup; processes run in both, or in either alone."""

    def __init__(self):
        self.name = f"elbhs-{uuid.uuid4().hex[:6]}"
        self.other = self.name + "-o"      # another namespace whose processes share the cgroup
        self.pin_dir = f"/sys/fs/bpf/ebpflb-test-{self.name}"
        self.cgroup = Path(cgroups.default_cgroup_root()) / self.name
        self.procs: list[subprocess.Popen] = []
        self.datapath = self.writer = None

    def build(self) -> "Host":
        self.cgroup.mkdir()
        for ns in (self.name, self.other):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        batch = ["link set lo up", "link add dummy0 type veth peer name dummy1", "link set dummy0 up", "link set dummy1 up",
                 f"addr add {A0}/32 dev dummy0", f"addr add {B}/32 dev dummy0", f"addr add {NODE_ADDR}/24 dev dummy0",
                 "route add default via 192.168.64.1"]   # as a node has: what is not translated leaves
        subprocess.run(["ip", "-n", self.name, "-batch", "-"], input="\n".join(batch) + "\n", text=True, check=True)
        # The other namespace routes service addresses away, so its sockets can connect to them untranslated.
        batch = ["link set lo up", "link add dummy0 type veth peer name dummy1", "link set dummy0 up", "link set dummy1 up",
                 "addr add 10.1.0.1/24 dev dummy0", "route add 10.96.0.0/12 via 10.1.0.2"]
        subprocess.run(["ip", "-n", self.other, "-batch", "-"], input="\n".join(batch) + "\n", text=True, check=True)
        for name, addr in (("A0", A0), ("B", B)):
            server = self.spawn(sys.executable, str(PODSERVER), "serve", name, "--addr", addr, stdout=subprocess.PIPE)
            assert _LineReader(server.stdout.fileno()).readline(10) == "ready"
        return self

    def load(self, **options) -> Datapath:
        """The programs, compiled and loaded anew (as a restarted agent does), on the cgroup."""
        if self.datapath:
            self.datapath.close()
        with in_netns(self.name):
            cookie = netns_cookie()
        self.datapath = Datapath(self.pin_dir).load(node_addr=NODE_ADDR, netns_cookie=cookie, **options)
        self.attached = cgroups.attach(self.datapath.fds, self.pin_dir, str(self.cgroup))
        return self.datapath

    def program(self, *services):
        """services: (frontend addr, port, proto, [backends], flags). Backends listen on 8080 (HTTP),
        5353 (UDP) and 9000 (TCP echo)."""
        desired = DesiredState(service_ips=frozenset((VIP, VIP_EMPTY, VIP_LOCAL)))
        for svc_id, (addr, port, proto, backends, flags) in enumerate(services, start=1):
            be_port = 5353 if proto == UDP else 9000 if port == 9000 else 8080
            local = 0 if flags & C.NAT_FLG_INTERNAL_LOCAL else len(backends)
            desired.frontends[FrontendKey(addr, port, proto)] = Frontend(svc_id, local, local, flags)
            desired.backends[svc_id] = tuple(Backend(ip, be_port) for ip in backends)
        if self.writer is None:
            self.writer = MapWriter(self.datapath.maps)
        return self.writer.apply(desired)

    def argv(self, argv, ns=None, in_cgroup=True) -> list[str]:
        argv = ["ip", "netns", "exec", ns or self.name, *map(str, argv)]
        if in_cgroup:
            argv = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.cgroup), *argv]
        return argv

    def spawn(self, *argv, ns=None, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(argv, ns), start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def ask(self, *args, ns=None, in_cgroup=True) -> list[dict]:
        """podserver.py's udp-ask / tcp-ask here; its JSON lines."""
        out = subprocess.run(self.argv([sys.executable, PODSERVER, *args], ns, in_cgroup),
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return [json.loads(line) for line in out.splitlines()]

    def teardown(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        if self.datapath:
            cgroups.detach(self.pin_dir, str(self.cgroup))
            self.datapath.close()
        for ns in (self.name, self.other):
            subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.pin_dir, ignore_errors=True)
        if self.cgroup.exists():
            (self.cgroup / "cgroup.kill").write_text("1")
            deadline = time.monotonic() + 5
            while (self.cgroup / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.cgroup.rmdir()


@pytest.fixture(scope="module")
def host():
    host = Host()
    try:
        host.build().load()
        yield host
    finally:
        host.teardown()


@pytest.fixture
def svc(host):
    """svc-1 on VIP (TCP 8080, UDP 5353, TCP 9000) -> A0, B; svc-empty on VIP_EMPTY; a NodePort on the node."""
    host.program((VIP, 8080, TCP, [A0, B], 0), (VIP, 5353, UDP, [A0, B], 0), (VIP, 9000, TCP, [A0, B], 0),
                 (VIP_EMPTY, 8080, TCP, [], 0),
                 (VIP_EMPTY, 5353, UDP, [], 0), (NODE_ADDR, NODEPORT, TCP, [B], C.NAT_FLG_EXTERNAL),
                 (VIP_LOCAL, 8080, TCP, [], C.NAT_FLG_INTERNAL_LOCAL))
    return host


def test_connect_to_a_cluster_ip_reaches_every_backend_and_reads_as_the_vip(svc):
    answers = [svc.ask("tcp-ask", VIP, 8080)[0] for _ in range(20)]
    assert {a["body"] for a in answers} == {"A0", "B"}, answers
    for a in answers:
        assert a["peer"] == f"{VIP}:8080"                                 # getpeername(): the service
        assert a["kernel_peer"] == f"{ {'A0': A0, 'B': B}[a['body']] }:8080".replace(" ", "")


@pytest.mark.parametrize("mode", ["connected", "unconnected"])
def test_udp_answers_come_from_the_vip(svc, mode):
    answers = svc.ask("udp-ask", VIP, 5353, mode, 5)
    assert all(a["reply"] in ("A0", "B") and a["source"] == f"{VIP}:5353" for a in answers), answers
    assert len({a["reply"] for a in answers}) == 1, answers        # one socket keeps its backend
    if mode == "connected":
        assert all(a["peer"] == f"{VIP}:5353" and a["kernel_peer"] in (f"{A0}:5353", f"{B}:5353")
                   for a in answers), answers


def test_ipv6_sockets_reach_ipv4_services_through_mapped_addresses(svc):
    """Dual-stack programs (Java's sockets, for one) connect to ::ffff:10.96.0.2."""
    mapped = f"::ffff:{VIP}"
    tcp = svc.ask("tcp-ask", mapped, 8080)[0]
    assert tcp["body"] in ("A0", "B") and tcp["peer"] == f"{mapped}:8080", tcp
    assert tcp["kernel_peer"] == f"::ffff:{ {'A0': A0, 'B': B}[tcp['body']] }:8080".replace(" ", ""), tcp
    for mode in ("connected", "unconnected"):
        udp = svc.ask("udp-ask", mapped, 5353, mode)[0]
        assert udp["reply"] in ("A0", "B") and udp["source"] == f"{mapped}:5353", (mode, udp)
    assert svc.ask("tcp-ask", f"::ffff:{VIP_EMPTY}", 8080, 5)[0]["error"] == "ECONNREFUSED"


def test_udp_sockets_spread_over_the_backends(svc):
    assert {svc.ask("udp-ask", VIP, 5353, "unconnected")[0]["reply"] for _ in range(20)} == {"A0", "B"}


def test_no_endpoints_is_refused_at_once(svc):
    tcp = svc.ask("tcp-ask", VIP_EMPTY, 8080, 5)[0]
    assert tcp["error"] == "ECONNREFUSED" and tcp["ms"] < 1000, tcp
    assert svc.ask("tcp-ask", VIP, 9999, 5)[0]["error"] == "ECONNREFUSED"       # a port no service uses
    for mode in ("connected", "unconnected"):
        udp = svc.ask("udp-ask", VIP_EMPTY, 5353, mode, 1, 5)[0]
        assert udp["error"] == "ECONNREFUSED", (mode, udp)


def test_local_policy_without_a_local_endpoint_fails_at_once_and_counts_the_drop(svc):
    before = drops(svc.datapath)
    answer = svc.ask("tcp-ask", VIP_LOCAL, 8080, 5)[0]
    assert answer["error"] == "EHOSTUNREACH" and answer["ms"] < 1000, answer   # as Cilium's socket LB
    assert dropped_since(svc.datapath, before) == {"no-local-endpoint": 1}


def test_nodeport_on_the_nodes_address_and_localhost_only_with_the_flag(svc):
    assert svc.ask("tcp-ask", NODE_ADDR, NODEPORT)[0]["body"] == "B"
    assert svc.ask("tcp-ask", "127.0.0.1", NODEPORT, 1)[0]["error"] == "ECONNREFUSED"   # untouched: nothing listens
    svc.datapath.write_config(node_addr=NODE_ADDR, netns_cookie=svc.datapath.maps.read_config().netns_cookie,
                              flags=C.CFG_FLG_LOCALHOST_NODEPORTS)
    try:
        local = svc.ask("tcp-ask", "127.0.0.1", NODEPORT)[0]
        assert local["body"] == "B" and local["peer"] == f"127.0.0.1:{NODEPORT}", local
        assert svc.ask("tcp-ask", "127.0.0.1", 8080, 1)[0]["error"] == "ECONNREFUSED"   # not a NodePort
    finally:
        svc.datapath.write_config(node_addr=NODE_ADDR, netns_cookie=svc.datapath.maps.read_config().netns_cookie)


def test_other_addresses_other_namespaces_and_other_cgroups_are_untouched(svc):
    direct = svc.ask("tcp-ask", A0, 8080)[0]
    assert direct["body"] == "A0" and direct["peer"] == direct["kernel_peer"] == f"{A0}:8080"
    # A socket of another network namespace in the same cgroup (a pod's): its peer stays the VIP.
    other = svc.ask("udp-ask", VIP, 5353, "connected", 1, 0.2, ns=svc.other)[0]
    assert other["kernel_peer"] == f"{VIP}:5353", other
    # A process of this namespace outside the cgroup: no hook runs for it.
    outside = svc.ask("udp-ask", VIP, 5353, "connected", 1, 0.2, in_cgroup=False)[0]
    assert outside["kernel_peer"] == f"{VIP}:5353", outside
    # ... while the same from inside is translated.
    inside = svc.ask("udp-ask", VIP, 5353, "connected", 1)[0]
    assert inside["kernel_peer"] in (f"{A0}:5353", f"{B}:5353"), inside


def connections(host, svc_id: int) -> int:
    from ebpflb.datapath.structs import ffi
    return sum(c.connections for c in host.datapath.maps.svc_counters.lookup(ffi.new("__u32 *", svc_id)))


def test_each_socket_pointed_at_a_backend_counts_as_a_connection(svc):
    before = connections(svc, 1)
    for _ in range(5):
        svc.ask("tcp-ask", VIP, 8080)
    assert connections(svc, 1) - before == 5


class Client:
    """podserver.py's long-lived udp-client (or tcp-client) in the host namespace and cgroup."""

    def __init__(self, host, kind, ip, port, *args):
        self.proc = host.spawn(sys.executable, PODSERVER, f"{kind}-client", ip, port, *args,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.out = _LineReader(self.proc.stdout.fileno())
        assert self.out.readline(10).startswith("port ")

    def say(self, line: str) -> str:
        self.proc.stdin.write(line.encode() + b"\n")
        return self.out.readline(10)

    def request(self) -> str:
        return self.say("go 1").removeprefix("reply ")


def test_a_connected_udp_socket_on_a_removed_backend_moves_and_tcp_stays(svc):
    reaper = SocketReaper(svc.datapath.maps, svc.datapath.fds[SOCK_REAPER])
    udp = Client(svc, "udp", VIP, 5353, "--reconnect")
    tcp = Client(svc, "tcp", VIP, 9000)
    try:
        on_udp, on_tcp = udp.request(), tcp.request()
        assert on_udp in ("A0", "B") and on_tcp in ("A0", "B")
        # The backend leaves svc-1's UDP port (its server still answers: only the socket's move shows).
        leaving = on_udp
        staying = {"A0": B, "B": A0}[leaving]
        stats = svc.program((VIP, 8080, TCP, [A0, B], 0), (VIP, 5353, UDP, [staying], 0),
                            (VIP, 9000, TCP, [staying], 0))
        gone = {(svc_id, b.addr, b.port) for svc_id, b in stats.removed_udp_backends}   # as the agent does
        assert gone == {(2, {"A0": A0, "B": B}[leaving], 5353)}
        with in_netns(svc.name):                               # the agent's namespace: the reaper's
            assert reaper.abort_udp_sockets_to(gone) == 1
            assert reaper.abort_udp_sockets_to(gone) == 0      # the socket is no longer on it
        assert udp.request() != leaving
        assert udp.say("reconnects") == "reconnects 1"         # it was aborted, and connected again
        assert tcp.request() == on_tcp                         # TCP keeps its backend, as with kube-proxy
        assert svc.datapath.maps.sock_gone.count() == 0
    finally:
        for client in (udp, tcp):
            client.proc.kill()
            client.proc.wait()
        reaper.close()


def ours_and_others(host) -> dict[str, list[str]]:
    return cgroups.attached_programs(str(host.cgroup))


@pytest.fixture
def foreign(host):
    """Another program on the cgroup's connect hook (BPF_F_ALLOW_MULTI), counting the connects it sees."""
    from bcc import BPF
    prog = BPF(text=b"BPF_ARRAY(seen, u64, 1);\nint foreign4(struct bpf_sock_addr *ctx) "
                    b"{ int k = 0; u64 *n = seen.lookup(&k); if (n) (*n)++; return 1; }")
    fn = prog.load_func(b"foreign4", BPF.CGROUP_SOCK_ADDR, attach_type=10)
    fd = os.open(host.cgroup, os.O_RDONLY)
    BPF.attach_func(fn, fd, 10, flags=2)   # BPF_F_ALLOW_MULTI
    try:
        yield lambda: prog[b"seen"][0].value
    finally:
        BPF.detach_func(fn, fd, 10)
        os.close(fd)
        prog.cleanup()


def test_a_restart_replaces_the_programs_in_place_and_others_keep_running(svc, foreign):
    svc.load()                                           # compiled and attached again, as by a new agent
    assert set(svc.attached.values()) == {"replaced"}
    attached = ours_and_others(svc)
    assert attached["sock_connect4"].count("sock_connect4") == 1 and "foreign4" in attached["sock_connect4"]
    assert all(names.count(hook) == 1 for hook, names in attached.items()), attached
    seen = foreign()
    assert svc.ask("tcp-ask", VIP, 8080)[0]["body"] in ("A0", "B")
    assert foreign() == seen + 1


def test_a_link_that_lost_its_pin_is_not_doubled(svc):
    from ebpflb.datapath import libbpf
    cgroup_fd = os.open(svc.cgroup, os.O_RDONLY)
    stray = libbpf.link_create(svc.datapath.fds["sock_connect4"], cgroup_fd, 10)   # held by an fd, not pinned
    os.close(cgroup_fd)
    try:
        assert ours_and_others(svc)["sock_connect4"].count("sock_connect4") == 2
        svc.load()
        assert ours_and_others(svc)["sock_connect4"].count("sock_connect4") == 1
    finally:
        os.close(stray)


def test_cleanup_leaves_no_attachment_and_the_host_untranslated(svc, foreign):
    try:
        assert cgroups.detach(svc.pin_dir, str(svc.cgroup)) == len(cgroups.SOCK_HOOKS)
        assert ours_and_others(svc) == {hook: (["foreign4"] if hook == "sock_connect4" else [])
                                        for hook in cgroups.SOCK_HOOKS}
        assert not Path(svc.pin_dir, cgroups.LINK_DIR).exists()
        assert svc.ask("udp-ask", VIP, 5353, "connected", 1, 0.2)[0]["kernel_peer"] == f"{VIP}:5353"
    finally:
        svc.attached = cgroups.attach(svc.datapath.fds, svc.pin_dir, str(svc.cgroup))


def test_session_affinity_holds_for_the_nodes_own_connections(svc):
    """kube-proxy's rules see the node's own connections from the node's address: with ClientIP
    affinity every host socket gets the backend the last one got (bpf/affinity.h, keyed by it)."""
    spread = {svc.ask("tcp-ask", VIP, 8080)[0]["body"] for _ in range(20)}
    assert spread == {"A0", "B"}
    writer = MapWriter(svc.datapath.maps)   # what the maps hold (an earlier test may have reloaded them)
    desired = DesiredState(frontends=dict(writer.frontends), service_ips=frozenset(writer.service_ips),
                           backends=dict(writer.backends), affinity={1: 60})
    writer.apply(desired)
    try:
        assert len({svc.ask("tcp-ask", VIP, 8080)[0]["body"] for _ in range(20)}) == 1
        entries = {(k.svc_id, k.client_addr): v.backend_addr for k, v in svc.datapath.maps.affinity.items()}
        assert list(entries) == [(1, int.from_bytes(bytes(map(int, NODE_ADDR.split("."))), "little"))]
    finally:
        writer.apply(DesiredState(frontends=desired.frontends, service_ips=desired.service_ips,
                                  backends=desired.backends))
        for key, _ in svc.datapath.maps.affinity.items():
            svc.datapath.maps.affinity.delete(key)
