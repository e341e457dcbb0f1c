"""A batch of malformed Services and EndpointSlices (one per named breakage in tests/malformed.py)
through the test API server to the real agent in the lab: it keeps running, logs each skipped object
with its reason, counts them in ebpflb_objects_rejected, programs what is valid (and nothing of what
is not), and traffic to the valid services flows."""
from collections import Counter

import orjson
import pytest

from ebpflb.core.services import desired_state
from ebpflb.datapath.maps import Maps, MapsNotFound
from ebpflb.datapath.structs import C
from ebpflb.sync.writer import read_contents
from tests.apiserver import node
from tests.lab import NODE_IPS, NODE_IPS6, NODES, POD_IPS
from tests.malformed import BREAKAGES, SKIPPED, VALID, base_service, base_slice, cluster_ip, identity
from tests.test_lab_dataplane import wait_for

AGENT_NODE = "node-2"   # client C's node: DNAT happens there, one agent is enough for C's traffic
PODS_A0_B = [POD_IPS["A0"], POD_IPS["B"]]


def good_objects():
    """Services 1 and 2 (2 in a unicode namespace) to A0 and B; service 3 to A0, whose slices the slice
    breakages hit (so the broken slices' odd endpoints never sit behind a service traffic is checked on)."""
    services = [base_service(1), base_service(2, namespace="équipe-ü"), base_service(3)]
    slices = [base_slice(1, addresses=PODS_A0_B, nodes=("node-0", "node-1")),
              base_slice(2, namespace="équipe-ü", addresses=PODS_A0_B, nodes=("node-0", "node-1")),
              base_slice(3, addresses=[POD_IPS["A0"]], nodes=("node-0",))]
    return services, slices


def api_storable(breakage) -> bool:
    """An API server keeps objects under a name and a namespace (ours would default a missing
    namespace, mending the object) and speaks JSON (no integer past 64 bits)."""
    broken = breakage(base_service(0) if breakage.kind == "Service" else base_slice(3))
    try:
        orjson.dumps(broken)
    except orjson.JSONEncodeError:
        return False
    meta = broken.get("metadata")
    return isinstance(meta, dict) and all(isinstance(meta.get(k), str) and meta[k] for k in ("name", "namespace"))


def batch():
    """(objects, {(kind, namespace, name): reason}) for every named breakage an API server can store."""
    objects, rejected = [], {}
    for k, breakage in enumerate(b for b in BREAKAGES if api_storable(b)):
        if breakage.kind == "Service":
            broken = breakage(base_service(10 + k))
        else:
            broken = breakage(base_slice(3, 10 + k, addresses=[POD_IPS["A0"]], nodes=("node-0",)))
        objects.append(broken)
        if breakage.outcome not in (SKIPPED, VALID):
            rejected[(breakage.kind, *identity(broken))] = breakage.outcome
    return objects, rejected


def metrics(lab) -> str:
    agent = lab.agents[AGENT_NODE]
    assert agent.poll() is None, f"the agent exited ({agent.returncode}):\n{lab.agent_log(AGENT_NODE)[-3000:]}"
    return lab.run(AGENT_NODE, "curl", "-sS", "-m", "5", "http://127.0.0.1:10249/metrics").stdout


def cluster_frontends(lab) -> set:
    """(address, port, proto) of every frontend not flagged external in the agent's maps."""
    try:
        maps = Maps.open(str(lab.pin_dir(AGENT_NODE)))
    except MapsNotFound:   # the agent has not pinned them yet
        return set()
    try:
        return {(k.addr, k.port, k.proto) for k, f in read_contents(maps).frontends.items()
                if not f.flags & C.NAT_FLG_EXTERNAL}
    finally:
        maps.close()


@pytest.fixture(scope="module")
def api(lab):
    server, kubeconfig = lab.start_apiserver()
    services, slices = good_objects()
    server.load([*services, *slices, *(node(n, NODE_IPS[n]) for n in NODES)])
    lab.start_agent(AGENT_NODE, None, "--metrics-addr", "127.0.0.1:10249", kubeconfig=kubeconfig)
    wait_for(lambda: (cluster_ip(1), 80, 6) in cluster_frontends(lab), what="the agent's first sync")
    yield server
    lab.stop_agent(AGENT_NODE)


def test_a_batch_of_malformed_objects_is_skipped_named_counted_and_the_rest_served(lab, api):
    objects, rejected = batch()
    assert len(rejected) > 100   # the table, less what no API server can hold
    # With them, this node's Node object lists addresses that are none (NodePorts listen on its addresses;
    # "192.168.64.256" stopped the agent).
    bad_node = node(AGENT_NODE, NODE_IPS[AGENT_NODE])
    bad_node["status"]["addresses"] += [{"type": "ExternalIP", "address": "192.168.64.256"},
                                        {"type": "InternalIP", "address": ["10.0.0.1"]}]
    api.load([*objects, bad_node])   # arrives as watch events, in one burst
    want_counts = Counter((kind, reason) for (kind, _, _), reason in rejected.items())
    lines = [f'ebpflb_objects_rejected{{kind="{kind}",reason="{reason}"}} {n}.0' for (kind, reason), n in
             want_counts.items()] + ['ebpflb_watch_events_total{resource="nodes",type="MODIFIED"} 1.0']
    wait_for(lambda: all(line in metrics(lab) for line in lines), timeout=20, what="every rejection counted")
    text = metrics(lab)
    assert sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("ebpflb_objects_rejected{")) == len(rejected)
    log = lab.agent_log(AGENT_NODE).splitlines()
    for (kind, namespace, name), reason in rejected.items():
        assert any(f"skipped {kind} {namespace}/{name}: " in line and line.endswith(f"({reason})") for line in log), \
            (kind, namespace, name, reason)
    # Programmed: exactly what the core makes of every object there (nothing of a broken one).
    services, slices = good_objects()
    everything = [*services, *slices, *objects]
    want = desired_state([o for o in everything if o["kind"] == "Service"],
                         [o for o in everything if o["kind"] == "EndpointSlice"], node_name=AGENT_NODE, known_ids={})
    programmed = cluster_frontends(lab)
    # IPv6 frontends are computed but not yet programmed (sync/family.py): their count is in the metrics
    assert programmed == {(k.addr, k.port, k.proto) for k, f in want.frontends.items()
                          if not f.flags & C.NAT_FLG_EXTERNAL and k.family == 4}
    # the agent serves NodePorts on its uplink's addresses, the IPv6 one too
    on_node = desired_state([o for o in everything if o["kind"] == "Service"],
                            [o for o in everything if o["kind"] == "EndpointSlice"], node_name=AGENT_NODE, known_ids={},
                            node_addresses=(NODE_IPS[AGENT_NODE], NODE_IPS6[AGENT_NODE]))
    ipv6 = sum(1 for k in on_node.frontends if k.family == 6)
    assert ipv6
    wait_for(lambda: f"ebpflb_ipv6_frontends_unprogrammed {ipv6}.0" in metrics(lab), timeout=20,
             what="the IPv6 frontends counted")
    assert {cluster_ip(1), cluster_ip(2), cluster_ip(3)} <= {addr for addr, _, _ in programmed}
    assert not {addr for addr, _, _ in programmed} & {
        o["spec"]["clusterIP"] for o in objects if ("Service", *identity(o)) in rejected and isinstance(o.get("spec"), dict)
        and isinstance(o["spec"].get("clusterIP"), str)}
    for status in ("/healthz", "/readyz"):
        assert lab.run(AGENT_NODE, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                       f"http://127.0.0.1:10249{status}").stdout == "200"
    for i in (1, 2):
        assert set(lab.http_get_many("C", cluster_ip(i), 20, port=80)) == {"A0", "B"}
