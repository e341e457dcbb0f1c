"""KubeSource's reading of what the API gives beyond Services and EndpointSlices (the Node's addresses),
and how it lists (in pages)."""
import subprocess
import threading
import time
import uuid

import orjson
import pytest

from ebpflb.core.tracker import ServiceTracker
from ebpflb.sources import kube
from ebpflb.sources.kube import KubeSource, NodeInfo, node_info_of
from tests.apiserver import FakeApiServer, endpoint_slice, node, service
from tests.lab import in_netns


def test_node_addresses_are_the_internal_and_external_ones_of_both_families(tmp_path):
    """An address with a dot was taken as IPv4: "192.168.64.256" then stopped the agent (ValueError where
    NodePorts are planned). The client is only configured here: nothing connects."""
    source = KubeSource(FakeApiServer().write_kubeconfig(tmp_path / "kubeconfig"))
    odd = node("node-2", "192.168.64.6")
    odd["status"]["addresses"] += [{"type": "ExternalIP", "address": "203.0.113.6"},
                                   {"type": "ExternalIP", "address": "192.168.64.256"},
                                   {"type": "InternalIP", "address": "fd00::6"},
                                   {"type": "InternalIP", "address": ["10.0.0.6"]},
                                   {"type": "InternalIP", "address": "10.0.0.6\x00"},
                                   {"type": "InternalDNS", "address": "10.0.0.7"}, "10.0.0.8"]
    objects = {"node-2": odd, "no-status": {"status": ["Ready"]}, "no-addresses": {"status": {"addresses": {}}}}
    source.nodes = {name: node_info_of(obj) for name, obj in objects.items()}   # what the reflector keeps
    assert source.node_addresses("node-2") == ["192.168.64.6", "203.0.113.6", "fd00::6"]
    assert source.node_addresses("no-status") == source.node_addresses("no-addresses") == []
    assert source.node_addresses("elsewhere") == []


def started(api, tmp_path, tracker, node_name="node-0") -> KubeSource:
    source = KubeSource(api.write_kubeconfig(tmp_path / "kubeconfig"), node_name=node_name)
    source.start(tracker, threading.Lock(), lambda: None)
    wait(lambda: source.synced, "the first lists")
    return source


def wait(predicate, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def lists_of(api, resource: str) -> list[str]:
    return [path for _, path in api.requests if f"/{resource}?" in path and "watch=" not in path]


def test_lists_come_from_the_watch_cache_and_consistent_ones_in_pages(tmp_path, monkeypatch):
    """The first list asks for resourceVersion 0 (the API server's watch cache answers, whole); a list
    from etcd (resourceVersion "") comes in pages, which keep a whole list response (≈ 100 MB at 10k
    services) out of memory; either way the tracker hears of a list only whole (a list cut short must
    never delete what it did not reach)."""
    monkeypatch.setattr(kube, "LIST_PAGE", 7)
    api = FakeApiServer().start()
    source = None
    try:
        api.load([*(service("default", f"s{i}", f"10.96.0.{i + 1}") for i in range(20)),
                  *(endpoint_slice("default", f"s{i}-x", f"s{i}", endpoints=((f"10.1.0.{i + 1}", "node-0", True),))
                    for i in range(20)), node("node-0", "192.168.64.6")])
        tracker = ServiceTracker("node-0")
        lists = []
        for name in ("replace_services", "replace_slices"):
            monkeypatch.setattr(tracker, name, lambda items, real=getattr(tracker, name): (lists.append(len(items)),
                                                                                            real(items)))
        source = started(api, tmp_path, tracker)
        assert lists == [20, 20] and len(tracker.services) == len(tracker.slices) == 20
        assert source.node_addresses("node-0") == ["192.168.64.6"]
        assert lists_of(api, "services") == ["/api/v1/services?limit=7&resourceVersion=0"]
        # The watch's resourceVersion expires and the cache lags: a consistent list, in pages.
        api.cache_behind = True
        api.put(service("default", "s20", "10.96.0.21"))
        api.compact()
        api.gone_on_every_watch = True
        api.cut_watches()
        # The API server logs a page when it is asked for; the tracker hears of the list only after
        # the last page's answer is read: wait for that, not for the requests.
        wait(lambda: 21 in lists[2:] and len(tracker.services) == 21, "the services' relist, whole")
        api.gone_on_every_watch = False
        pages = lists_of(api, "services")[1:5]
        assert "resourceVersionMatch=NotOlderThan" in pages[0] and "limit" not in pages[0]   # from the cache
        assert len(pages[1:]) == 3 and all("limit=7" in p for p in pages[1:])              # from etcd
        assert [("continue=" in p) for p in pages[1:]] == [False, True, True]
        assert "resourceVersion=&" in pages[1] or pages[1].endswith("resourceVersion=")
    finally:
        if source:
            source.stop()
        api.stop()


def test_a_relist_after_410_is_served_by_the_cache_never_older_than_what_was_seen(tmp_path):
    api = FakeApiServer().start()
    source = None
    try:
        api.load([service("default", "a", "10.96.0.1"), node("node-0", "192.168.64.6")])
        tracker = ServiceTracker("node-0")
        source = started(api, tmp_path, tracker)
        api.put(service("default", "b", "10.96.0.2"))
        wait(lambda: len(tracker.services) == 2, "b")
        seen = api.resource_version
        api.compact()
        api.gone_on_every_watch = True
        api.cut_watches()
        wait(lambda: len(lists_of(api, "services")) >= 2, "the relist")
        api.gone_on_every_watch = False
        relist = lists_of(api, "services")[1]
        assert f"resourceVersion={seen}" in relist and "resourceVersionMatch=NotOlderThan" in relist
        assert "limit=" not in relist   # client-go's reflector asks no pages of the cache
    finally:
        if source:
            source.stop()
        api.stop()


def test_only_this_nodes_node_object_is_listed_and_watched(tmp_path):
    api = FakeApiServer().start()
    source = None
    try:
        api.load([node(f"node-{i}", f"192.168.64.{10 + i}") for i in range(5)])
        source = started(api, tmp_path, ServiceTracker("node-3"), node_name="node-3")
        api.put(node("node-1", "192.168.64.99"))
        api.put(node("node-3", "192.168.64.33"))
        wait(lambda: source.node_addresses("node-3") == ["192.168.64.33"], "node-3's new address")
        assert set(source.nodes) == {"node-3"}   # the others never came
        node_requests = [path for _, path in api.requests if "/nodes?" in path]
        assert node_requests and all("fieldSelector=metadata.name%3Dnode-3" in p for p in node_requests)
    finally:
        if source:
            source.stop()
        api.stop()


def test_requests_carry_the_kubeconfig_token_and_an_error_status_is_an_api_error(tmp_path):
    """The GETs are made on the client's connection with its auth headers (not through its generated API
    classes): the right token lists, a wrong one is refused with the status named."""
    api = FakeApiServer(token="s3cret").start()
    try:
        api.load([service("default", "a", "10.96.0.1")])
        good = KubeSource(api.write_kubeconfig(tmp_path / "good", token="s3cret"))
        body = orjson.loads(kube.lister(good.api, kube.PATHS["services"])(timeout=(5, 5), limit=10).data)
        assert [o["metadata"]["name"] for o in body["items"]] == ["a"]
        bad = KubeSource(api.write_kubeconfig(tmp_path / "bad", token="wrong"))
        with pytest.raises(kube.ApiError, match="HTTP 401"):
            kube.lister(bad.api, kube.PATHS["services"])(timeout=(5, 5))
    finally:
        api.stop()


def test_a_half_open_watch_is_noticed_within_60_s(tmp_path):
    """The API server's side of every watch vanishes without a word reaching the agent (its host
    restarted while the path was down): only TCP keepalive can tell. A change made meanwhile arrives
    within a minute (the read timeout alone would wait past the server's minute between bookmarks)."""
    names = [f"elbho-{uuid.uuid4().hex[:5]}{side}" for side in ("a", "c")]
    api_ns, client_ns = names
    for ns in names:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    api = source = None
    try:
        subprocess.run(["ip", "-n", api_ns, "-batch", "-"], check=True, text=True, input=(
            f"link add api0 type veth peer name cli0 netns {client_ns}\naddr add 10.77.0.1/24 dev api0\n"
            "link set api0 up\nlink set lo up\n"))
        subprocess.run(["ip", "-n", client_ns, "-batch", "-"], check=True, text=True,
                       input="addr add 10.77.0.2/24 dev cli0\nlink set cli0 up\nlink set lo up\n")
        with in_netns(api_ns):
            api = FakeApiServer(host="10.77.0.1").start()
        api.load([service("default", "a", "10.96.0.1"), node("node-0", "192.168.64.6")])
        tracker = ServiceTracker("node-0")
        with in_netns(client_ns):   # the reflectors' threads stay in it
            source = started(api, tmp_path, tracker)
        subprocess.run(["ip", "-n", api_ns, "link", "set", "api0", "down"], check=True)
        cut = time.monotonic()
        api.stop(forget=True)       # its resets are lost on the way
        api.put(service("default", "b", "10.96.0.2"))
        with in_netns(api_ns):
            api.restart()
        time.sleep(2)
        subprocess.run(["ip", "-n", api_ns, "link", "set", "api0", "up"], check=True)
        wait(lambda: len(tracker.services) == 2, "the change made while the watch was half-open", timeout=75)
        assert time.monotonic() - cut < 60
    finally:
        if source:
            source.stop()
        if api:
            api.stop()
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], check=False)

def test_a_nodes_zone_and_whether_it_is_being_deleted():
    """The zone label for the topology hints; deletion (the autoscaler's taint, a deletionTimestamp) for
    kube-proxy's /healthz. Malformed parts read as absent: a Node is never rejected."""
    plain = node("node-0", "192.168.64.4")
    assert node_info_of(plain) == NodeInfo(("192.168.64.4",), "", True)
    zoned = {**plain, "metadata": {"name": "node-0", "labels": {"topology.kubernetes.io/zone": "zone-a"}}}
    assert node_info_of(zoned).zone == "zone-a"
    tainted = {**plain, "spec": {"taints": [{"key": "other", "effect": "NoSchedule"},
                                            {"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}}
    assert node_info_of(tainted).eligible is False
    deleted = {**plain, "metadata": {"name": "node-0", "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert node_info_of(deleted).eligible is False
    odd = {"metadata": {"name": "n", "labels": {"topology.kubernetes.io/zone": 7}}, "spec": {"taints": "x"},
           "status": None}
    assert node_info_of(odd) == NodeInfo((), "", True)
    assert node_info_of("garbage") == NodeInfo()
