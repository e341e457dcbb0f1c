"""Services from a node's own network namespace (host processes, hostNetwork pods) in seed 004's
lab: the agents' cgroup hooks (bpf/sock.c) on each node's own cgroup, where the lab runs that
node's host processes. Clients here run in node-2's namespace unless said otherwise; A0 is on
node-0, B on node-1, so every backend is another node's."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from ebpflb.datapath import cgroup as cgroups
from tests.apiserver import endpoint_slice, service
from tests.lab import NODE_IPS, NODES, PODSERVER
from tests.test_lab_dataplane import wait_for

VIP, VIP_EMPTY, VIP_LOCAL = "10.96.0.2", "10.96.0.3", "10.96.0.5"
A0, B = "10.200.0.2", "10.200.1.2"
BACKEND = {"A0": A0, "B": B}
NODEPORT = 30180
HOST = "node-2"
PORTS = [("http", 8080, "TCP"), ("dns", 5353, "UDP"), ("echo", 9000, "TCP")]


def cluster(endpoints=((A0, "node-0", True), (B, "node-1", True))) -> list[dict]:
    np = service("default", "svc-1", VIP, PORTS, type="NodePort")
    np["spec"]["ports"][0]["nodePort"] = NODEPORT
    return [np, endpoint_slice("default", "svc-1-a", "svc-1", list(endpoints), ports=PORTS),
            service("default", "svc-empty", VIP_EMPTY, [("http", 8080, "TCP"), ("dns", 5353, "UDP")]),
            service("default", "svc-local", VIP_LOCAL, [("http", 8080, "TCP")], internalTrafficPolicy="Local"),
            endpoint_slice("default", "svc-local-a", "svc-local", [(A0, "node-0", True)])]


def write(lab, objects) -> None:
    path = lab.tmpdir / "host-manifests"
    path.mkdir(exist_ok=True)
    tmp = path / ".cluster.yaml.tmp"
    tmp.write_text(yaml.safe_dump_all(objects))
    tmp.replace(path / "cluster.yaml")


def count_of(lab, node, frontend: str) -> int:
    for line in lab.agent_cli(node, "nat", "dump", check=False).splitlines():
        if line.startswith(frontend + " "):
            return int(line.split(" count ")[1].split()[0])
    return -1


def wait_programmed(lab, node, count=2):
    wait_for(lambda: count_of(lab, node, f"{VIP} port 5353 proto 17") == count, what=f"svc-1 on {node}")


# The default --xdp auto: what the lab's veth uplinks can take (issue 14: XDP leaves the host
# stack's CHECKSUM_PARTIAL frames to tc, so a host's NodePort request through another node's XDP
# is finished right).
AGENT_ARGS = ("--uplinks", "eth0")


@pytest.fixture(scope="module")
def agents(lab):
    write(lab, cluster())
    for node in NODES:
        lab.start_agent(node, lab.tmpdir / "host-manifests", *AGENT_ARGS)
    for node in NODES:
        wait_programmed(lab, node)
    yield
    for node in NODES:
        lab.stop_agent(node)
        lab.agent_cli(node, "cleanup")


def ask(lab, node, *args) -> list[dict]:
    """podserver.py udp-ask / tcp-ask in a node's host namespace (and cgroup); its JSON lines."""
    return [json.loads(line) for line in lab.run(node, sys.executable, PODSERVER, *args, timeout=60).stdout.splitlines()]


def ours(lab, node) -> dict[str, int]:
    """How many of each of our programs are attached to the node's cgroup."""
    return {hook: names.count(hook) for hook, names in cgroups.attached_programs(str(lab.cgroup(node))).items()}


def test_cluster_ip_across_nodes(lab, agents):
    for node in (HOST, "node-0"):
        answers = lab.http_get_many(node, VIP, 30)
        assert set(answers) == {"A0", "B"}, (node, answers)
    answer = ask(lab, HOST, "tcp-ask", VIP, 8080)[0]
    assert answer["peer"] == f"{VIP}:8080" and answer["kernel_peer"] == f"{BACKEND[answer['body']]}:8080", answer


@pytest.mark.parametrize("mode", ["connected", "unconnected"])
def test_udp_with_both_socket_kinds_answers_come_from_the_vip(lab, agents, mode):
    answers = ask(lab, HOST, "udp-ask", VIP, 5353, mode, 10)
    assert all(a["reply"] in BACKEND and a["source"] == f"{VIP}:5353" for a in answers), answers
    if mode == "connected":
        assert all(a["peer"] == f"{VIP}:5353" and a["kernel_peer"] == f"{BACKEND[a['reply']]}:5353"
                   for a in answers), answers


def test_nodeport_on_its_own_and_another_nodes_address(lab, agents):
    own = lab.http_get_many(HOST, NODE_IPS[HOST], 20, port=NODEPORT)
    assert set(own) == {"A0", "B"}, own                      # translated here, at connect()
    other = lab.http_get_many(HOST, NODE_IPS["node-0"], 20, port=NODEPORT)
    assert set(other) == {"A0", "B"}, other                  # node-0's uplink serves it, as from outside


def test_no_endpoints_is_refused_in_under_a_second(lab, agents):
    tcp = ask(lab, HOST, "tcp-ask", VIP_EMPTY, 8080, 5)[0]
    assert tcp["error"] == "ECONNREFUSED" and tcp["ms"] < 1000, tcp
    for mode in ("connected", "unconnected"):
        udp = ask(lab, HOST, "udp-ask", VIP_EMPTY, 5353, mode, 1, 5)[0]
        assert udp["error"] == "ECONNREFUSED", (mode, udp)


def test_internal_traffic_policy_local_uses_only_local_endpoints(lab, agents):
    assert set(lab.http_get_many("node-0", VIP_LOCAL, 10)) == {"A0"}
    assert ask(lab, HOST, "tcp-ask", VIP_LOCAL, 8080, 5)[0]["error"] == "EHOSTUNREACH"   # none on node-2


def test_non_service_traffic_is_untouched_and_pods_keep_the_tc_path(lab, agents):
    translated = ask(lab, HOST, "udp-ask", VIP, 5353, "connected")[0]
    assert translated["kernel_peer"] in (f"{A0}:5353", f"{B}:5353"), translated   # the hooks are on
    direct = ask(lab, HOST, "tcp-ask", A0, 8080)[0]
    assert direct["body"] == "A0" and direct["peer"] == direct["kernel_peer"] == f"{A0}:8080", direct
    closed = ask(lab, HOST, "tcp-ask", NODE_IPS["node-0"], 8080, 2)[0]     # no NodePort there
    assert closed["error"] == "ECONNREFUSED", closed
    loopback = ask(lab, HOST, "tcp-ask", "127.0.0.1", NODEPORT, 2)[0]       # no --localhost-nodeports
    assert loopback["error"] == "ECONNREFUSED", loopback
    # Pod C's process in node-2's cgroup (as pods are in kubepods cgroups under a real root): its
    # socket is not the node's namespace's, so the hooks leave it to the tc path on its veth.
    argv = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(lab.cgroup(HOST)), "ip", "netns", "exec",
            lab.ns("C"), sys.executable, PODSERVER, "udp-ask", VIP, "5353", "connected"]
    pod = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout)
    assert pod["kernel_peer"] == f"{VIP}:5353" and pod["reply"] in BACKEND and pod["source"] == f"{VIP}:5353", pod


def on_tcp(sessions) -> list[str]:
    return [session.request() for session in sessions]


def test_a_backend_removed_under_a_connected_udp_socket(lab, agents):
    udp = lab.udp_session(HOST, VIP, reconnect=True)
    tcps = []
    try:
        leaving = udp.request()
        assert leaving in BACKEND
        while len(tcps) < 30 and not any(answer == leaving for answer in on_tcp(tcps)):
            tcps.append(lab.tcp_session(HOST, VIP))     # until one is on the backend that will leave
        before = on_tcp(tcps)
        assert leaving in before
        staying = next(name for name in BACKEND if name != leaving)
        write(lab, cluster([(BACKEND[staying], {"A0": "node-0", "B": "node-1"}[staying], True)]))
        wait_programmed(lab, HOST, count=1)
        wait_for(lambda: re.search(r"[1-9]\d* host UDP sockets aborted", lab.agent_log(HOST)), timeout=5,
                 what="the socket aborted")
        assert [udp.request() for _ in range(3)] == [staying] * 3     # its server still answers: only a move shows
        assert udp.reconnects() == 1
        from tests.test_lab_api import metrics
        assert re.search(r"^ebpflb_host_udp_sockets_aborted_total [1-9]", metrics(lab, HOST), re.M)
        assert on_tcp(tcps) == before                                  # TCP keeps its backend
    finally:
        for session in (udp, *tcps):
            session.close()
        write(lab, cluster())
        for node in NODES:
            wait_programmed(lab, node)


def test_kill_9_and_restart_keep_host_clients_working_and_double_nothing(lab, agents):
    assert ours(lab, HOST) == {hook: 1 for hook in cgroups.SOCK_HOOKS}
    lab.stop_agent(HOST, signal.SIGKILL)
    assert set(lab.http_get_many(HOST, VIP, 20)) == {"A0", "B"}         # no agent: the links stay
    assert ask(lab, HOST, "udp-ask", VIP, 5353, "unconnected")[0]["source"] == f"{VIP}:5353"
    log_before = len(lab.agent_log(HOST))
    lab.start_agent(HOST, lab.tmpdir / "host-manifests", *AGENT_ARGS)
    wait_for(lambda: "sync:" in lab.agent_log(HOST)[log_before:], what="restarted agent's first sync")
    assert "sock_connect4 replaced" in lab.agent_log(HOST)[log_before:]
    assert ours(lab, HOST) == {hook: 1 for hook in cgroups.SOCK_HOOKS}
    assert set(lab.http_get_many(HOST, VIP, 20)) == {"A0", "B"}


def test_after_cleanup_no_attachment_is_left(lab, agents):
    """Runs last in this module: it takes the data plane off node-2."""
    lab.stop_agent(HOST)
    out = lab.agent_cli(HOST, "cleanup")
    assert f"detached {len(cgroups.SOCK_HOOKS)} host-socket hooks from cgroup {lab.cgroup(HOST)}" in out, out
    assert ours(lab, HOST) == {hook: 0 for hook in cgroups.SOCK_HOOKS}
    assert cgroups.attached_programs(str(lab.cgroup(HOST))) == {hook: [] for hook in cgroups.SOCK_HOOKS}
    assert not lab.pin_dir(HOST).exists()
    untranslated = ask(lab, HOST, "tcp-ask", VIP, 8080, 1)[0]
    assert untranslated["error"] in ("ENETUNREACH", "timeout"), untranslated   # node-2 has no route there
    assert ours(lab, "node-0") == {hook: 1 for hook in cgroups.SOCK_HOOKS}    # other nodes keep theirs
