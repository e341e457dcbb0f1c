"""End to end in seed 004's lab (tests/lab.py, network namespaces only), one lab, one run:

  e2e       pod C -> VIP against pod C -> pod B direct, the agents on every node from manifests
            (svc-1 10.96.0.2 with ONE endpoint, B, so both paths reach the same server):
            TCP throughput (iperf3, 4 s, first second omitted), request latency with a new
            connection per request (the lab's pod server on 8080: connect, GET, read to EOF,
            close; sequential), TCP connect latency and new connections per second (2 client
            processes, against bench/netclient.py's accept-and-close server on 8081). Also TCP
            connect latency from node-2's own namespace (a host process in node-2's cgroup):
            host -> VIP (translated at connect() by the cgroup hooks) against host -> B direct.
  iptables  kube-proxy's iptables mode against ebpflb holding the same 1k and 10k services x 10
            endpoints (bench.objects.cluster; the last-listed service's endpoints are the lab's
            A0 and B, on the accept-and-close server). iptables: the nat ruleset as kube-proxy
            writes it (bench/kubeproxy.py) loaded with iptables-restore into node-2's namespace,
            the client's node, each load into an empty table (timed); connect latency and
            connection rate from pod C to the last service. Then the nat table is deleted and
            ebpflb's agent on node-2 is started from JSON manifests with the same services;
            the same measurements. A pod -> pod control is measured in each phase (under
            iptables every new connection walks KUBE-SERVICES, service or not).

The servers (A0, B) keep no TIME_WAIT (tcp_max_tw_buckets=0 in their namespaces): otherwise a
TIME_WAIT left by one path stalls the other path's SYN on the same 4-tuple for 1 s (PAWS: the
client's TCP timestamp offset differs per destination address). Direct connections right after
VIP ones reuse source ports of closed VIP flows: the programs must leave them alone (a bug this
benchmark once found, fixed since), and these rounds show it.

The paths are measured in alternating order, round after round, after a warm-up round that is
dropped. Latency percentiles pool all rounds; min-max is over the rounds' medians.

    .venv/bin/python -m bench.dataplane [--only e2e|iptables] [--rounds N]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.common import Stopwatch, ensure_apt_tool, percentile, save_results, spread
from bench.controlplane import wait_first_sync
from bench.kubeproxy import ruleset
from bench.objects import cluster, service_ip
from tests.lab import Lab, _LineReader

NETCLIENT = str(Path(__file__).resolve().with_name("netclient.py"))
VIP = Lab.SVC_IP                  # 10.96.0.2
POD_B, POD_A0 = Lab.POD_IPS["B"], Lab.POD_IPS["A0"]
HTTP, CLOSE, IPERF = 8080, 8081, 5201
CLIENT_NODE = "node-2"
ROUNDS = 5


def e2e_manifests(directory: Path) -> Path:
    """svc-1 with ports 8080 (pod server), 8081 (accept-close), 5201 (iperf3), endpoint B only."""
    directory.mkdir(parents=True, exist_ok=True)
    ports = [("http", HTTP), ("close", CLOSE), ("iperf", IPERF)]
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc-1", "namespace": "default"},
           "spec": {"type": "ClusterIP", "clusterIP": VIP, "clusterIPs": [VIP],
                    "ports": [{"name": n, "protocol": "TCP", "port": p, "targetPort": p} for n, p in ports]}}
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": "svc-1-bench", "namespace": "default",
                        "labels": {"kubernetes.io/service-name": "svc-1"}},
           "ports": [{"name": n, "protocol": "TCP", "port": p} for n, p in ports],
           "endpoints": [{"addresses": [POD_B], "conditions": {"ready": True}, "nodeName": "node-1"}]}
    (directory / "svc.yaml").write_text(yaml.safe_dump_all([svc, eps], sort_keys=False))
    return directory


def scale_objects(services: int):
    """bench.objects' cluster; the last service's endpoints are A0 and B on the close server."""
    svcs, slices = cluster(services, 10)
    last = slices[-1]
    last["ports"] = [{"name": "http", "port": CLOSE, "protocol": "TCP"}]
    last["endpoints"] = [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": node}
                         for ip, node in ((POD_A0, "node-0"), (POD_B, "node-1"))]
    return svcs, slices


class Bench:
    def __init__(self, lab: Lab, rounds: int):
        self.lab, self.rounds = lab, rounds

    # ------------------------------------------------------------ tools in the pods
    def nc(self, pod: str, *args, timeout: float = 120) -> dict:
        r = self.lab.run(pod, sys.executable, NETCLIENT, *args, timeout=timeout)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def start_close_server(self, pod: str) -> None:
        proc = self.lab.spawn(pod, sys.executable, NETCLIENT, "serve-close", CLOSE, stdout=subprocess.PIPE)
        if _LineReader(proc.stdout.fileno()).readline(10) != "ready":
            raise RuntimeError(f"accept-close server in {pod} did not start")

    def iperf(self, ip: str, seconds: int = 4, omit: int = 1) -> float:
        r = self.lab.run("C", "iperf3", "-c", ip, "-p", IPERF, "-t", seconds, "-O", omit, "-J",
                         timeout=seconds + omit + 30)
        return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9

    def connect(self, ip: str, port: int, count: int, client: str = "C") -> list[float]:
        out = self.nc(client, "connect", ip, port, count)
        if out["errors"]:
            raise RuntimeError(f"{client} -> {ip}:{port}: {out['errors']} of {count} connections failed "
                               f"({out['first_error']})")
        return out["connect_us"]

    def requests(self, ip: str, count: int) -> list[float]:
        out = self.nc("C", "request", ip, HTTP, count)
        if out["errors"]:
            raise RuntimeError(f"C -> {ip}:{HTTP}: {out['errors']} of {count} requests failed "
                               f"({out['first_error']})")
        return out["request_us"]

    def rate(self, ip: str, port: int, seconds: float) -> float:
        out = self.nc("C", "rate", ip, port, seconds, 2, timeout=seconds + 60)
        if out["errors"]:
            raise RuntimeError(f"C -> {ip}:{port}: {out['errors']} failed connections in the rate test")
        return out["per_second"]

    def reachable(self, ip: str, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            out = self.nc("C", "request" if port == HTTP else "connect", ip, port, 5)
            if not out["errors"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ip}:{port} unreachable from C: {out['first_error']}")
            time.sleep(0.3)

    # ------------------------------------------------------------ agents
    def start_agent(self, node: str, manifests: Path) -> float:
        """Start the node's agent; seconds to its first full sync (from its log)."""
        offset = len(self.lab.agent_log(node))
        agent = self.lab.start_agent(node, manifests)
        return wait_first_sync(agent, lambda: self.lab.agent_log(node)[offset:], timeout=180)

    def remove_agent(self, node: str) -> None:
        self.lab.stop_agent(node)
        self.lab.agent_cli(node, "cleanup")

    # ------------------------------------------------------------ item 2
    def e2e(self) -> dict:
        lab = self.lab
        manifests = e2e_manifests(lab.tmpdir / "bench-e2e")
        for node in lab.NODES:
            self.start_agent(node, manifests)
        for port in (HTTP, CLOSE):      # (iperf3's server is not probed: it takes every connection for a test)
            self.reachable(VIP, port)
        if lab.http_get("C", VIP).strip() != "B":
            raise RuntimeError("the VIP does not lead to B")
        paths = {"direct": POD_B, "vip": VIP}
        data = {p: {"gbps": [], "request_us": [], "request_p50_rounds": [], "connect_us": [],
                    "connect_p50_rounds": [], "conn_per_s": [], "host_connect_us": [],
                    "host_connect_p50_rounds": []} for p in paths}
        for round_ in range(self.rounds + 1):        # round 0: warm-up, dropped
            warm = round_ == 0
            order = list(paths) if round_ % 2 else list(paths)[::-1]
            for path in order:
                ip, d = paths[path], data[path]
                gbps = self.iperf(ip, seconds=1 if warm else 4, omit=0 if warm else 1)
                req = self.requests(ip, 200 if warm else 1000)
                con = self.connect(ip, CLOSE, 200 if warm else 1000)
                cps = self.rate(ip, CLOSE, 0.5 if warm else 2)
                host = self.connect(ip, CLOSE, 200 if warm else 1000, client=CLIENT_NODE)   # node-2's own namespace
                if warm:
                    continue
                d["host_connect_us"] += host
                d["host_connect_p50_rounds"].append(percentile(host, 50))
                d["gbps"].append(gbps)
                d["request_us"] += req
                d["request_p50_rounds"].append(percentile(req, 50))
                d["connect_us"] += con
                d["connect_p50_rounds"].append(percentile(con, 50))
                d["conn_per_s"].append(cps)
            if not warm:
                print(f"  e2e round {round_}: " + "; ".join(
                    f"{p} {data[p]['gbps'][-1]:.2f} Gbit/s, request p50 {data[p]['request_p50_rounds'][-1]:.0f} us, "
                    f"{data[p]['conn_per_s'][-1]:.0f} conn/s" for p in paths), flush=True)
        for node in lab.NODES:
            self.remove_agent(node)
        return {p: summarize(d) for p, d in data.items()} | {
            "rounds": self.rounds, "requests_per_round": 1000, "connects_per_round": 1000,
            "rate_seconds": 2, "rate_procs": 2, "iperf_seconds": 4, "iperf_omit": 1,
            "backend": "B (10.200.1.2) on node-1; client C on node-2; agents on every node"}

    # ------------------------------------------------------------ item 3
    def phase(self, vip: str) -> dict:
        d = {"connect_us": [], "connect_p50_rounds": [], "conn_per_s": [], "direct_connect_us": []}
        self.connect(vip, 80, 200)                   # warm-up
        for round_ in range(self.rounds):
            con = self.connect(vip, 80, 1000)
            d["connect_us"] += con
            d["connect_p50_rounds"].append(percentile(con, 50))
            d["conn_per_s"].append(self.rate(vip, 80, 2))
            d["direct_connect_us"] += self.connect(POD_B, CLOSE, 300)
        out = summarize(d)
        out["direct_connect_p50_us"] = percentile(d["direct_connect_us"], 50)
        return out

    def iptables(self, scales=(1000, 10_000)) -> dict:
        lab, node = self.lab, CLIENT_NODE
        out = {"backend": subprocess.run(["iptables", "--version"], capture_output=True, text=True).stdout.strip(),
               "client_node": node, "rounds": self.rounds}
        objects = {n: scale_objects(n) for n in scales}
        for n in scales:
            watch = Stopwatch()
            svcs, slices = objects[n]
            rules = ruleset(svcs, slices)
            started = time.monotonic()
            lab.run(node, "iptables-restore", input=rules, timeout=600)
            restore_s = time.monotonic() - started
            vip = service_ip(n - 1)
            self.reachable(vip, 80)
            res = self.phase(vip)
            started = time.monotonic()
            lab.run(node, "nft", "delete", "table", "ip", "nat", timeout=600)
            delete_s = time.monotonic() - started
            if "nat" in lab.run(node, "nft", "list", "tables").stdout:
                raise RuntimeError("the nat table is still there")
            rule_count = sum(1 for line in rules.splitlines() if line.startswith("-A "))
            out[str(n)] = {"iptables": res | {"restore_s": restore_s, "delete_s": delete_s, "rules": rule_count},
                           "services": n, "endpoints_per_service": 10, "vip": vip}
            print(f"  iptables {n} services: restore {restore_s:.2f} s ({rule_count} rules), connect p50 "
                  f"{res['connect_us']['p50']:.0f} us, {res['conn_per_s']['median']:.0f} conn/s ({watch})", flush=True)
        for n in scales:
            watch = Stopwatch()
            svcs, slices = objects[n]
            directory = lab.tmpdir / f"bench-scale-{n}"
            directory.mkdir()
            (directory / "cluster.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                                                "items": [*svcs, *slices]}))
            cold = self.start_agent(node, directory)
            vip = service_ip(n - 1)
            self.reachable(vip, 80)
            res = self.phase(vip)
            self.remove_agent(node)
            out[str(n)]["ebpflb"] = res | {"cold_start_s": cold}
            print(f"  ebpflb {n} services: first sync {cold:.2f} s, connect p50 {res['connect_us']['p50']:.0f} us, "
                  f"{res['conn_per_s']['median']:.0f} conn/s ({watch})", flush=True)
        return out


def syn_retransmits(lab: Lab, pod: str = "C") -> int:
    """The pod's TcpExt TCPSynRetrans: each one a SYN that waited a retransmission timeout."""
    lines = [l.split() for l in lab.run(pod, "cat", "/proc/net/netstat").stdout.splitlines() if l.startswith("TcpExt:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))["TCPSynRetrans"])


def summarize(d: dict) -> dict:
    out = {}
    for key, values in d.items():
        if key.endswith("_us") and not key.startswith("direct"):
            out[key] = {"p50": percentile(values, 50), "p99": percentile(values, 99),
                        "min": min(values), "max": max(values), "samples": len(values)}
        elif not key.startswith("direct"):
            out[key] = spread(values)
    return out


def run(only=None, rounds: int = None) -> dict:
    rounds = rounds or ROUNDS
    ensure_apt_tool("iperf3", "iperf3")
    if only in (None, "iptables"):   # kube-proxy's ruleset goes in with iptables-restore, out with nft
        ensure_apt_tool("iptables-restore", "iptables")
        ensure_apt_tool("nft", "nftables")
    results = {}
    with Lab() as lab:
        for pod in ("A0", "B"):
            # No TIME_WAIT on the servers: the client's TCP timestamps are offset per destination
            # address, so a server-side TIME_WAIT left by a VIP flow makes PAWS drop a later
            # direct SYN on the same 4-tuple (and the other way round): 1 s stalls, measured as
            # TcpExtPAWSTimewait. Any DNAT does that (kube-proxy's too); it is not the data path.
            lab.run(pod, "sysctl", "-q", "-w", "net.ipv4.tcp_max_tw_buckets=0")
        lab.start_pod_servers()
        bench = Bench(lab, rounds)
        for pod in ("A0", "B"):
            bench.start_close_server(pod)
        lab.spawn("B", "iperf3", "-s", "-p", IPERF)
        if only in (None, "e2e"):
            watch = Stopwatch()
            before = syn_retransmits(lab)
            results["e2e"] = bench.e2e()
            results["e2e"]["client_syn_retransmits"] = syn_retransmits(lab) - before
            print(f"  e2e done ({watch})", flush=True)
        if only in (None, "iptables"):
            before = syn_retransmits(lab)
            results["iptables"] = bench.iptables()
            results["iptables"]["client_syn_retransmits"] = syn_retransmits(lab) - before
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane", description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("e2e", "iptables"))
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    results = run(args.only, args.rounds)
    for key, value in results.items():
        save_results(key, value)
    from bench.report import print_table
    print_table(sections=tuple(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
