"""KubeSource's reading of what the API gives beyond Services and EndpointSlices (the Node's addresses),
and how it lists (in pages)."""
import threading
import time

import orjson
import pytest

from ebpflb.core.tracker import ServiceTracker
from ebpflb.sources import kube
from ebpflb.sources.kube import KubeSource, NodeInfo, node_info_of
from tests.apiserver import FakeApiServer, endpoint_slice, node, service


def test_node_addresses_are_the_ipv4_internal_and_external_ones(tmp_path):
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
    assert source.node_addresses("node-2") == ["192.168.64.6", "203.0.113.6"]
    assert source.node_addresses("no-status") == source.node_addresses("no-addresses") == []
    assert source.node_addresses("elsewhere") == []


def test_lists_come_in_pages_and_the_tracker_hears_of_each_list_whole(tmp_path, monkeypatch):
    """Pages keep a whole list response (≈ 100 MB at 10k services) from ever being in memory; the tracker
    still gets one complete list (a list cut short must never delete what it did not reach)."""
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
        source = KubeSource(api.write_kubeconfig(tmp_path / "kubeconfig"))
        source.start(tracker, threading.Lock(), lambda: None)
        deadline = time.monotonic() + 10
        while not source.synced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert source.synced and lists == [20, 20]
        assert len(tracker.services) == len(tracker.slices) == 20
        assert source.node_addresses("node-0") == ["192.168.64.6"]
        pages = [path for _, path in api.requests if "/services?" in path and "watch=" not in path]
        assert len(pages) == 3 and all("limit=7" in p for p in pages)
        assert [("continue=" in p) for p in pages] == [False, True, True]
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
