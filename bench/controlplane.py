"""Control-plane figures: 10k services x 10 endpoints to fully programmed maps, from the API test
server and from manifests; one EndpointSlice change to the maps; the agent's memory.

The agent runs for real (subprocess) in a network namespace of its own, the fake API server's
socket lives in that namespace too; nothing touches the root namespace's interfaces.
"""
import gc
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from bench.objects import cluster, endpoint_slice, service_ip
from ebpflb.core.model import FrontendKey
from ebpflb.datapath.cgroup import default_cgroup_root
from ebpflb.datapath.maps import Maps
from ebpflb.sync.writer import fe_key
from tests.apiserver import FakeApiServer
from tests.lab import in_netns

REPO = Path(__file__).resolve().parent.parent
EBPFLB = str(Path(sys.executable).parent / "ebpflb")
SERVICES, ENDPOINTS, RUNS, CHANGES = 10_000, 10, 3, 200
# Source start -> maps programmed; then process start -> maps programmed (bcc's compile included).
FIRST_SYNC = re.compile(r"first full sync done ([0-9.]+) s after the source started"
                        r"(?:, ([0-9.]+) s after the process started)?")


class BenchNamespace:
    """A network namespace and a cgroup of its own (the agents' host-socket hooks go there, never
    on the machine's root cgroup)."""

    def __init__(self):
        self.name = f"elbbench-{uuid.uuid4().hex[:6]}"
        self.pin_root = Path("/sys/fs/bpf") / self.name
        self.tmp = Path(tempfile.mkdtemp(prefix=self.name))
        self.cgroup = Path(default_cgroup_root()) / self.name
        self.agents: list[subprocess.Popen] = []

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        self.cgroup.mkdir()
        return self

    def __exit__(self, *exc):
        for agent in self.agents:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(10)
                except subprocess.TimeoutExpired:
                    agent.kill()
        subprocess.run(["ip", "netns", "del", self.name], check=False)
        if self.cgroup.is_dir():
            self.cgroup.rmdir()   # its programs go with it
        shutil.rmtree(self.pin_root, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_agent(self, run: str, *source) -> tuple[subprocess.Popen, Path]:
        log = self.tmp / f"agent-{run}.log"
        cmd = ["nsenter", f"--net=/run/netns/{self.name}", EBPFLB, "agent", *source, "--node-name", "node-0",
               "--pin-dir", str(self.pin_root / run), "--cgroup-root", str(self.cgroup), "--metrics-addr", "",
               "--min-sync-period", "0"]
        agent = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.agents.append(agent)
        return agent, log


def wait_first_sync(agent, read_log, timeout: float = 120) -> float:
    """Seconds from the agent's source start to its first full sync, as its log says.
    read_log() returns the log text written since the agent started."""
    return wait_programmed(agent, read_log, timeout)[0]


def wait_programmed(agent, read_log, timeout: float = 120) -> tuple[float, float]:
    """Seconds from the agent's source start, and from its process start, to fully programmed maps
    (its first full sync), as its log says."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = FIRST_SYNC.search(read_log())
        if found and found.group(2):
            return float(found.group(1)), float(found.group(2))
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited: {read_log()[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"no first sync: {read_log()[-2000:]}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(agent) -> None:
    agent.send_signal(signal.SIGTERM)
    agent.wait(15)


def change_latencies(api: FakeApiServer, pin_dir: str) -> list[float]:
    """Mark one endpoint of a service not ready; time until its frontend count says so."""
    maps = Maps.open(pin_dir)
    try:
        out = []
        for n in range(CHANGES):
            i = (n * 7919) % SERVICES
            key = fe_key(FrontendKey(service_ip(i), 80, 6))
            want = ENDPOINTS - 1 if maps.nat_fe.lookup(key).count == ENDPOINTS else ENDPOINTS
            started = time.perf_counter()
            api.put(endpoint_slice(i, ENDPOINTS, not_ready=0 if want < ENDPOINTS else -1))
            while maps.nat_fe.lookup(key).count != want:
                if time.perf_counter() - started > 5:
                    raise TimeoutError(f"change {n} not programmed in 5 s")
                time.sleep(0.0002)   # let the API server's thread (same process) have the GIL
            out.append(time.perf_counter() - started)
            time.sleep(0.02)
        return out
    finally:
        maps.close()


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run() -> dict:
    svcs, slices = cluster(SERVICES, ENDPOINTS)
    with BenchNamespace() as ns:
        with in_netns(ns.name):
            api = FakeApiServer(bookmark_interval=5).start()
        try:
            api.load([*svcs, *slices])
            # The test server lives in this process beside a million objects of test data: without
            # this, its first list stalls ≈ 0.6 s in a full collection of them, not the agent's time.
            gc.collect()
            gc.freeze()
            kubeconfig = api.write_kubeconfig(ns.tmp / "kubeconfig")
            api_cold, api_process, rss = [], [], 0.0
            for r in range(RUNS):
                agent, log = ns.start_agent(f"api-{r}", "--kubeconfig", kubeconfig)
                from_source, from_process = wait_programmed(agent, lambda: log.read_text(errors="replace"))
                api_cold.append(from_source)
                api_process.append(from_process)
                if r < RUNS - 1:
                    stop(agent)
            rss = rss_mb(agent.pid)
            latencies = change_latencies(api, str(ns.pin_root / f"api-{RUNS - 1}"))
            stop(agent)
        finally:
            api.stop()

        manifest_cold, manifest_process = {}, {}
        for kind in ("yaml", "json"):
            path = ns.tmp / f"cluster.{kind}"
            with open(path, "w") as f:
                if kind == "yaml":
                    yaml.dump_all([*svcs, *slices], f, Dumper=yaml.CSafeDumper)
                else:
                    json.dump({"apiVersion": "v1", "kind": "List", "items": [*svcs, *slices]}, f)
            manifest_cold[kind], manifest_process[kind] = [], []
            for r in range(RUNS):
                agent, log = ns.start_agent(f"manifests-{kind}-{r}", "--manifests", str(path))
                from_source, from_process = wait_programmed(agent, lambda: log.read_text(errors="replace"))
                manifest_cold[kind].append(from_source)
                manifest_process[kind].append(from_process)
                stop(agent)

    return {
        "scale": {"services": SERVICES, "endpoints_per_service": ENDPOINTS},
        "cold_start_api_s": spread(api_cold),
        "cold_start_manifests_yaml_s": spread(manifest_cold["yaml"]),
        "cold_start_manifests_json_s": spread(manifest_cold["json"]),
        # From the agent process's start: interpreter, imports and bcc's compile (≈ 4-5 s) included.
        "process_start_api_s": spread(api_process),
        "process_start_manifests_yaml_s": spread(manifest_process["yaml"]),
        "process_start_manifests_json_s": spread(manifest_process["json"]),
        "endpointslice_change_ms": {"p50": percentile(latencies, 50) * 1e3, "p99": percentile(latencies, 99) * 1e3,
                                    "min": min(latencies) * 1e3, "max": max(latencies) * 1e3, "changes": len(latencies)},
        "agent_rss_mb": rss,
    }


GOALS = [
    ("cold start from the API, 10k x 10", lambda r: r["cold_start_api_s"]["median"], "s", "<= 3 s", lambda v: v <= 3),
    ("cold start from JSON manifests, 10k x 10", lambda r: r["cold_start_manifests_json_s"]["median"], "s", "<= 3 s", lambda v: v <= 3),
    ("cold start from YAML manifests, 10k x 10", lambda r: r["cold_start_manifests_yaml_s"]["median"], "s", "<= 3 s", lambda v: v <= 3),
    ("process start -> programmed, API (bcc compile included)", lambda r: r["process_start_api_s"]["median"], "s", "", None),
    ("process start -> programmed, JSON manifests (bcc compile included)",
     lambda r: r["process_start_manifests_json_s"]["median"], "s", "", None),
    ("process start -> programmed, YAML manifests (bcc compile included)",
     lambda r: r["process_start_manifests_yaml_s"]["median"], "s", "", None),
    ("one EndpointSlice change -> maps, p50", lambda r: r["endpointslice_change_ms"]["p50"], "ms", "", None),
    ("one EndpointSlice change -> maps, p99", lambda r: r["endpointslice_change_ms"]["p99"], "ms", "<= 20 ms", lambda v: v <= 20),
    ("agent RSS at 10k services", lambda r: r["agent_rss_mb"], "MB", "<= 150 MB", lambda v: v <= 150),
]


def table(results: dict) -> str:
    rows = ["| figure | value | goal | met |", "|---|---|---|---|"]
    for name, get, unit, goal, ok in GOALS:
        value = get(results)
        rows.append(f"| {name} | {value:.2f} {unit} | {goal or '-'} | {('met' if ok(value) else 'NOT met') if ok else '-'} |")
    cold = results["cold_start_api_s"]
    rows.append(f"\n(cold start runs: {cold['runs']}, min-max {cold['min']:.2f}-{cold['max']:.2f} s; "
                f"change latency over {results['endpointslice_change_ms']['changes']} changes, "
                f"min-max {results['endpointslice_change_ms']['min']:.2f}-{results['endpointslice_change_ms']['max']:.2f} ms)")
    return "\n".join(rows)


if __name__ == "__main__":
    results = run()
    print(table(results))
    out = REPO / "bench" / "results.json"
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged["controlplane"] = results
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"\nwritten to {out}; rerun: make bench (or .venv/bin/python -m bench.controlplane)")
