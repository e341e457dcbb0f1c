"""Issue 18's semantics in seed 004's lab, with the agents fed by the test API server: session affinity
as the upstream conformance tests check it (ClusterIP and NodePort, switched off and on, its
timeout), topology hints per node and zone (the zone followed live), SCTP to another port (its
CRC32c checked by the receivers), and kube-proxy's health endpoints as a cloud load balancer asks
them."""
import json
import re
import time
from collections import Counter

import pytest

from tests.apiserver import endpoint_slice, node, service
from tests.lab import NODE_IPS, NODES
from tests.test_lab_dataplane import wait_for

A0, A1, B = "10.200.0.2", "10.200.0.3", "10.200.1.2"
THREE = [(A0, "node-0", True), (A1, "node-0", True), (B, "node-1", True)]
STICKY_IP, STICKY_NODEPORT = "10.96.6.1", 30600
SHORT_IP, SHORT_TIMEOUT = "10.96.6.2", 2
ZONED_IP, PLAIN_IP = "10.96.5.1", "10.96.5.2"
ZONES = {"node-0": "zone-a", "node-1": "zone-b", "node-2": "zone-b"}
SCTP_IP, SCTP_PORT, SCTP_TARGET, SCTP_NODEPORT = "10.96.8.1", 9100, 9101, 30700   # podserver.SCTP_PORT
HEALTHZ = 10256
HOLD_S = 8
REQUESTS = 15   # the conformance tests' count


def zoned_node(name: str, zone: str, taints=()) -> dict:
    obj = node(name, NODE_IPS[name])
    obj["metadata"]["labels"]["topology.kubernetes.io/zone"] = zone
    if taints:
        obj["spec"]["taints"] = [{"key": key, "effect": "NoSchedule"} for key in taints]
    return obj


def sticky_service(affinity: str | None = "ClientIP") -> dict:
    svc = service("default", "sticky", STICKY_IP, [("http", 8080, "TCP")], type="NodePort")
    svc["spec"]["ports"][0]["nodePort"] = STICKY_NODEPORT
    if affinity:
        svc["spec"]["sessionAffinity"] = affinity
    return svc


def short_service() -> dict:
    svc = service("default", "short", SHORT_IP, [("http", 8080, "TCP")], sessionAffinity="ClientIP",
                  sessionAffinityConfig={"clientIP": {"timeoutSeconds": SHORT_TIMEOUT}})
    return svc


def sctp_service() -> dict:
    svc = service("default", "sctp", SCTP_IP, [("sctp", SCTP_PORT, "SCTP", SCTP_TARGET)], type="NodePort")
    svc["spec"]["ports"][0]["nodePort"] = SCTP_NODEPORT
    return svc


def hinted_slice(name: str, service_name: str, hints: dict[str, str] | None) -> dict:
    """The three pods, each hinted for the zone its node is in (PreferClose's hints), or none."""
    obj = endpoint_slice("default", name, service_name, THREE, ports=[("http", 8080, "TCP")])
    if hints:
        for endpoint in obj["endpoints"]:
            endpoint["hints"] = {"forZones": [{"name": hints[endpoint["nodeName"]]}]}
    return obj


def backends_on(lab, node_name: str, ip: str, port: int = 8080) -> list[str] | None:
    """The backend addresses the node programmed for (ip, port, TCP); None when it has no such frontend."""
    for line in lab.agent_cli(node_name, "nat", "dump", "--json", check=False).splitlines():
        record = json.loads(line)
        if (record["address"], record["port"], record["proto"]) == (ip, port, 6):
            return sorted(b["address"] for b in record["backends"] if "address" in b)
    return None


@pytest.fixture(scope="module")
def api(lab):
    server, kubeconfig = lab.start_apiserver(bookmark_interval=0.5)
    server.load([*(zoned_node(n, ZONES[n]) for n in NODES), sticky_service(), short_service(),
                 service("default", "zoned", ZONED_IP, [("http", 8080, "TCP")], trafficDistribution="PreferClose"),
                 service("default", "plain", PLAIN_IP, [("http", 8080, "TCP")]),
                 endpoint_slice("default", "sticky-a", "sticky", THREE, ports=[("http", 8080, "TCP")]),
                 endpoint_slice("default", "short-a", "short", THREE, ports=[("http", 8080, "TCP")]),
                 hinted_slice("zoned-a", "zoned", ZONES), hinted_slice("plain-a", "plain", None),
                 sctp_service(), endpoint_slice("default", "sctp-a", "sctp", [(A0, "node-0", True), (B, "node-1", True)],
                                                ports=[("sctp", SCTP_TARGET, "SCTP")])])
    for n in NODES:
        # node-1 holds back a change that follows another within HOLD_S, and calls a change unsynced
        # after 2 s a stall: kube-proxy's /healthz then fails (test_healthz_fails_while_a_change_waits)
        extra = ("--min-sync-period", str(HOLD_S), "--healthz-timeout", "2") if n == "node-1" else ()
        lab.start_agent(n, None, "--uplinks", "eth0", "--metrics-addr", "127.0.0.1:10249",
                        "--healthz-addr", f"0.0.0.0:{HEALTHZ}", *extra, kubeconfig=kubeconfig)
    for n in NODES:
        wait_for(lambda: backends_on(lab, n, STICKY_IP) == [A0, A1, B], what=f"agent on {n} programmed")
    yield server
    for n in NODES:
        lab.stop_agent(n)


def answers(lab, client: str, ip: str, port: int = 8080, n: int = REQUESTS) -> list[str]:
    got = lab.http_get_many(client, ip, n, port=port)
    assert all(not a.startswith("error") for a in got), got
    return got


# --- Session affinity, as the conformance tests check it

def test_session_affinity_holds_through_a_cluster_ip(lab, api):
    for client in ("C", "A1"):
        assert len(set(answers(lab, client, STICKY_IP))) == 1, client


def test_session_affinity_holds_through_a_node_port_from_outside(lab, api):
    for node_name in ("node-2", "node-0"):
        assert len(set(answers(lab, "X", NODE_IPS[node_name], STICKY_NODEPORT))) == 1, node_name


def test_switching_session_affinity_off_spreads_and_on_again_sticks(lab, api):
    api.put(sticky_service(affinity="None"))
    wait_for(lambda: len(set(answers(lab, "C", STICKY_IP))) > 1, timeout=15, interval=0.5,
             what="requests to spread once affinity is off")
    assert len(set(answers(lab, "X", NODE_IPS["node-2"], STICKY_NODEPORT))) > 1
    api.put(sticky_service(affinity="ClientIP"))
    wait_for(lambda: len(set(answers(lab, "C", STICKY_IP))) == 1, timeout=15, interval=0.5,
             what="requests to stick once affinity is back")
    assert len(set(answers(lab, "C", STICKY_IP))) == 1
    assert len(set(answers(lab, "X", NODE_IPS["node-2"], STICKY_NODEPORT))) == 1


def test_a_short_timeout_rebalances_an_idle_client(lab, api):
    """Within the timeout the client sticks; idle past it, its next connection picks anew (which may
    be the same backend, a third of the time: so a few idle spells)."""
    first = set(answers(lab, "C", SHORT_IP))
    assert len(first) == 1
    seen = Counter()
    for _ in range(10):
        time.sleep(SHORT_TIMEOUT + 0.5)
        seen[lab.http_get("C", SHORT_IP, 8080)] += 1
        if set(seen) - first:
            break
    assert set(seen) - first, f"always {first} after idle spells: {seen}"


def test_the_affinity_dump_shows_the_clients(lab, api):
    answers(lab, "C", STICKY_IP, n=2)
    records = [json.loads(line) for line in lab.agent_cli("node-2", "affinity", "dump", "--json").splitlines()]
    mine = [r for r in records if r["client"] == "10.200.2.2" and r["service"] == STICKY_IP]
    assert len(mine) == 1 and mine[0]["state"] == "live" and mine[0]["backend"] in (A0, A1, B)


# --- SCTP: no SCTP in this kernel, so raw sockets carry it and the receivers check its CRC32c

def test_sctp_to_a_cluster_ip_and_back_with_its_port_changed(lab, api):
    got = lab.sctp_many("C", SCTP_IP, SCTP_PORT, 20)
    assert set(got) == {"A0", "B"}, got                 # every answer came back, CRC valid both ways


def test_sctp_from_outside_to_a_node_port(lab, api):
    for node_name in ("node-2", "node-0"):              # both backends remote (SNAT); one local, one remote
        got = lab.sctp_many("X", NODE_IPS[node_name], SCTP_NODEPORT, 16)
        assert set(got) == {"A0", "B"}, (node_name, got)


# --- Topology hints

def test_each_node_programs_only_its_zones_hinted_endpoints_and_without_hints_all(lab, api):
    wanted = {"node-0": [A0, A1], "node-1": [B], "node-2": [B]}
    for n in NODES:
        wait_for(lambda: backends_on(lab, n, ZONED_IP) == wanted[n], timeout=10, what=f"{n}'s zoned backends")
        assert backends_on(lab, n, PLAIN_IP) == [A0, A1, B]
    assert set(answers(lab, "C", ZONED_IP, n=20)) == {"B"}          # C is on node-2, zone-b
    assert set(answers(lab, "A1", ZONED_IP, n=20)) <= {"A0", "A1"}   # A1 is on node-0, zone-a


def test_a_nodes_zone_is_followed_live(lab, api):
    api.put(zoned_node("node-2", "zone-a"))
    try:
        wait_for(lambda: backends_on(lab, "node-2", ZONED_IP) == [A0, A1], timeout=10, what="node-2 in zone-a")
        assert set(answers(lab, "C", ZONED_IP, n=20)) <= {"A0", "A1"}
        api.put(zoned_node("node-2", "zone-c"))   # no endpoint hinted for it: every endpoint
        wait_for(lambda: backends_on(lab, "node-2", ZONED_IP) == [A0, A1, B], timeout=10, what="node-2 in zone-c")
    finally:
        api.put(zoned_node("node-2", "zone-b"))
    wait_for(lambda: backends_on(lab, "node-2", ZONED_IP) == [B], timeout=10, what="node-2 back in zone-b")


# --- kube-proxy's health endpoints, asked from outside as a load balancer does

def ask(lab, node_name: str, path: str, port: int = HEALTHZ, where: str = "X") -> tuple[int, str]:
    host = NODE_IPS[node_name] if where == "X" else "127.0.0.1"
    r = lab.run(where if where == "X" else node_name, "curl", "-s", "-m", "2", "-w", "\n%{http_code}",
                f"http://{host}:{port}{path}", check=False)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def test_healthz_and_livez_answer_like_kube_proxy(lab, api):
    for n in NODES:
        wait_for(lambda: ask(lab, n, "/healthz")[0] == 200, timeout=10, what=f"{n}'s /healthz")
        code, body = ask(lab, n, "/healthz")
        health = json.loads(body)
        assert set(health) == {"lastUpdated", "currentTime", "nodeEligible"} and health["nodeEligible"] is True
        assert health["lastUpdated"] == health["currentTime"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,9})? \+0000 UTC m=\+\d+\.\d{9}",
                            health["currentTime"]), health
        code, body = ask(lab, n, "/livez")
        assert code == 200 and set(json.loads(body)) == {"lastUpdated", "currentTime"}
    assert ask(lab, "node-0", "/proxyMode", port=10249, where="node") == (200, "ebpf")


def test_healthz_fails_while_the_node_is_being_deleted(lab, api):
    api.put(zoned_node("node-0", ZONES["node-0"], taints=["ToBeDeletedByClusterAutoscaler"]))
    try:
        wait_for(lambda: ask(lab, "node-0", "/healthz")[0] == 503, timeout=10, what="node-0 ineligible")
        assert json.loads(ask(lab, "node-0", "/healthz")[1])["nodeEligible"] is False
        assert ask(lab, "node-0", "/livez")[0] == 200
        assert ask(lab, "node-1", "/healthz")[0] == 200
    finally:
        api.put(zoned_node("node-0", ZONES["node-0"]))
    wait_for(lambda: ask(lab, "node-0", "/healthz")[0] == 200, timeout=10, what="node-0 eligible again")


def test_healthz_fails_while_a_change_waits_for_a_sync(lab, api):
    """node-1 holds a change that follows another within 8 s back (--min-sync-period 8) and calls 2 s of
    waiting a stall: /healthz and /livez answer 503 naming the last sync, then 200 once it is written."""
    wait_for(lambda: ask(lab, "node-1", "/healthz")[0] == 200, timeout=10, what="node-1 healthy")
    time.sleep(HOLD_S + 0.5)   # at rest: the next change is written at once
    api.put(service("default", "stall-1", "10.96.7.1", [("http", 80, "TCP")]))
    wait_for(lambda: backends_on(lab, "node-1", "10.96.7.1", 80) is not None, timeout=5, what="first change")
    api.put(service("default", "stall-2", "10.96.7.2", [("http", 80, "TCP")]))
    seen = []
    deadline = time.monotonic() + HOLD_S + 5
    while time.monotonic() < deadline and not (seen and seen[-1] == 200 and 503 in seen):
        code, body = ask(lab, "node-1", "/healthz")   # curl alone: a few tens of ms
        if code == 503 and 503 not in seen:
            health = json.loads(body)
            assert health["lastUpdated"] < health["currentTime"] and health["nodeEligible"] is True, health
            assert ask(lab, "node-1", "/livez")[0] == 503
        seen.append(code)
        time.sleep(0.1)
    try:
        assert seen[0] == 200 and 503 in seen and seen[-1] == 200, seen
        assert backends_on(lab, "node-1", "10.96.7.2", 80) is not None     # the sync that ended it
    finally:
        api.delete("Service", "default", "stall-1")
        api.delete("Service", "default", "stall-2")
