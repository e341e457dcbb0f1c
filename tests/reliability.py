"""What the reliability tests share: traffic running in a pod while they break things
(tests/loadgen.py, driven from here), and the report that says what the clients noticed."""
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ebpflb.sources.manifest_files import load_manifests
from tests.apiserver import node
from tests.lab import EXAMPLES, NODE_IPS, NODES, PODS, LabError, _LineReader, _kill

LOADGEN = Path(__file__).with_name("loadgen.py")


@dataclass
class LoadReport:
    seconds: float
    http_ok: int
    http_failures: list            # [(time, error)]
    http_backends: dict            # backend -> answered requests
    http_latency_p50: float | None
    http_latency_max: float | None
    http_over_1s: list             # [(time, seconds)] of requests that took a SYN retransmission
    long_lived: list               # [{"backend", "answers", "broken": None | (time, error)}]
    udp: list                      # [{"answers", "changes": [(time, generation, backend)], "timeouts"}]
    kernel: dict                   # namespace -> {counter: increase during the run}, nonzero only

    @property
    def requests(self) -> int:
        return self.http_ok + len(self.http_failures)

    @property
    def broken(self) -> list:
        return [c for c in self.long_lived if c["broken"]]

    @property
    def udp_answers(self) -> int:
        return sum(f["answers"] for f in self.udp)

    @property
    def udp_timeouts(self) -> list:
        return [t for f in self.udp for t in f["timeouts"]]

    def udp_moves(self, at: float, gone: set[str]) -> list[float | None]:
        """For each UDP flow answered by a backend in gone at time `at`: seconds until a live backend
        answered it (same socket), None if none did."""
        delays = []
        for flow in self.udp:
            before = [c for c in flow["changes"] if c[0] <= at]
            if not before or before[-1][2] not in gone:
                continue
            generation = before[-1][1]
            after = [c for c in flow["changes"] if c[0] > at and c[1] == generation]
            delays.append(after[0][0] - at if after and after[0][2] not in gone else None)
        return delays

    def summary(self) -> str:
        return (f"{self.requests} HTTP requests in {self.seconds:.0f} s, {len(self.http_failures)} failed "
                f"(p50 {1e3 * (self.http_latency_p50 or 0):.1f} ms, max {1e3 * (self.http_latency_max or 0):.0f} ms, "
                f"{len(self.http_over_1s)} over 1 s); "
                f"{len(self.long_lived)} long-lived TCP connections, {len(self.broken)} broken, "
                f"{sum(c['answers'] for c in self.long_lived)} answers; "
                f"{len(self.udp)} UDP flows, {self.udp_answers} answers, {len(self.udp_timeouts)} unanswered")

    def assert_nothing_lost(self, events: tuple = ()) -> None:
        """events: (time, what) the test did, printed beside a loss so it can be placed."""
        context = f"\nkernel counters that moved: {self.kernel}\nevents: {list(events)}"
        assert self.requests > 0 and all(c["answers"] > 0 for c in self.long_lived), self.summary() + context
        assert not self.http_failures, f"{self.summary()}\nfailed: {self.http_failures[:10]}{context}"
        assert not self.broken, f"{self.summary()}\nbroken: {self.broken}{context}"
        assert not self.udp_timeouts, f"{self.summary()}\nunanswered: {self.udp_timeouts[:10]}{context}"
        # Nothing in the lab loses packets: a request that waited for a SYN retransmission means
        # the data plane dropped one.
        assert not self.http_over_1s, f"{self.summary()}\nstalled: {self.http_over_1s[:10]}{context}"


# The kernel's own account of a packet that went unanswered: accept queue full, TIME_WAIT or PAWS
# refusals, challenge ACKs, resets, UDP receive errors, IP-level drops on the way.
WATCHED_COUNTERS = {
    "TcpExt": ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "SyncookiesSent", "PAWSActive",
               "PAWSEstab", "TWRecycled", "TCPTimeWaitOverflow", "TCPChallengeACK", "TCPSYNChallenge",
               "TCPSynRetrans", "TCPBacklogDrop", "TCPMinTTLDrop", "TCPAbortOnData", "TCPRcvQDrop"),
    "Tcp": ("AttemptFails", "EstabResets", "InErrs", "OutRsts", "RetransSegs", "InCsumErrors"),
    "Ip": ("InHdrErrors", "InAddrErrors", "InDiscards", "OutDiscards", "OutNoRoutes", "InNoRoutes"),
    "IpExt": ("InNoRoutes", "InCsumErrors"),
    "Udp": ("NoPorts", "InErrors", "RcvbufErrors", "SndbufErrors", "InCsumErrors"),
}


def kernel_counters(lab, namespaces) -> dict[str, dict[str, int]]:
    """namespace -> {"TcpExt.ListenOverflows": n, ...} from its /proc/net/netstat and snmp."""
    out = {}
    for ns in namespaces:
        text = lab.run(ns, "cat", "/proc/net/netstat", "/proc/net/snmp").stdout.splitlines()
        counters = {}
        for names, values in zip(text[::2], text[1::2]):
            group, _, names = names.partition(":")
            for name, value in zip(names.split(), values.partition(":")[2].split()):
                if name in WATCHED_COUNTERS.get(group, ()):
                    counters[f"{group}.{name}"] = int(value)
        out[ns] = counters
    return out


def counters_moved(before: dict, after: dict) -> dict:
    return {ns: moved for ns in after
            if (moved := {k: v - before[ns].get(k, 0) for k, v in after[ns].items() if v != before[ns].get(k, 0)})}


class Load:
    """tests/loadgen.py in a lab pod, towards ip; stop() ends it and returns its LoadReport."""

    def __init__(self, lab, pod: str, ip: str, *options):
        self.pod, self.lab = pod, lab
        self._namespaces = [*PODS, *NODES]
        self._counters = kernel_counters(lab, self._namespaces)
        self.proc = lab.spawn(pod, sys.executable, str(LOADGEN), ip, *map(str, options),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._out = _LineReader(self.proc.stdout.fileno())
        line = self._out.readline(20)
        if line != "started":
            self._kill()
            raise LabError(f"load generator in {pod} did not start (got {line!r})")

    def _command(self, text: str, timeout: float) -> str:
        self.proc.stdin.write(f"{text}\n".encode())
        self.proc.stdin.flush()
        line = self._out.readline(timeout)
        if line is None:
            raise LabError(f"load generator in {self.pod} did not answer {text!r}")
        return line

    def reopen_udp(self) -> list[str]:
        """New sockets for every UDP flow; the backend each landed on."""
        return self._command("reopen-udp", 10).split()[1:]

    def stop(self) -> LoadReport:
        try:
            raw = json.loads(self._command("stop", 20))
        finally:
            self._kill()
        http = raw["http"]
        moved = counters_moved(self._counters, kernel_counters(self.lab, self._namespaces))
        return LoadReport(raw["seconds"], http["ok"], http["failures"], http["backends"], http["latency_p50"],
                          http["latency_max"], http["over_1s"], raw["long_lived"], raw["udp"], moved)

    def _kill(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        _kill(self.proc)
        self.proc.stdout.close()



def agents_on_api(lab, objects, *agent_args):
    """The FakeApiServer holding objects (and the lab's Nodes), an agent on every node fed by it,
    each with its metrics on 127.0.0.1:10249. Returns (server, kubeconfig)."""
    server, kubeconfig = lab.start_apiserver(bookmark_interval=0.5)
    server.load([*objects, *(node(n, NODE_IPS[n]) for n in NODES)])
    for n in NODES:
        start_agent(lab, n, kubeconfig, *agent_args)
    return server, kubeconfig


def start_agent(lab, node_name, kubeconfig, *agent_args):
    lab.start_agent(node_name, None, "--metrics-addr", "127.0.0.1:10249", "--uplinks", "eth0", *agent_args,
                    kubeconfig=kubeconfig)


def seed_objects() -> list[dict]:
    services, slices = load_manifests(EXAMPLES)
    return [*services, *slices]
