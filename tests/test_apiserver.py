"""The fake apiserver (tests/apiserver.py) against the REAL kubernetes client.

Every blocking call is bounded: client calls carry _request_timeout, watches carry
timeout_seconds, and anything that could block runs through `bounded()` (a daemon thread
with a deadline), so a bug in the fake fails a test instead of hanging the suite.
"""
import threading
import time

import orjson
import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.apiserver import FakeApiServer, endpoint_slice, node, service

RT = (2, 5)  # (connect, read) timeout for every client call


def bounded(fn, timeout=10.0):
    """Run fn in a daemon thread; fail (don't hang) if it takes longer than timeout.

    Returns fn's result, or re-raises its exception in the caller.
    """
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"did not finish within {timeout}s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def srv():
    s = FakeApiServer(bookmark_interval=0.2).start()
    try:
        yield s
    finally:
        s.stop()


def make_client(srv, tmp_path, token="test"):
    path = srv.write_kubeconfig(tmp_path / f"kubeconfig-{token}", token=token)
    return config.new_client_from_config(config_file=str(path))


@pytest.fixture
def api(srv, tmp_path):
    c = make_client(srv, tmp_path)
    try:
        yield client.CoreV1Api(c), client.DiscoveryV1Api(c)
    finally:
        c.close()


def raw(resp):
    return orjson.loads(resp.data)


def read_lines(resp, out):
    """Append every complete line of a raw watch response to out; return the torn tail."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out.append(orjson.loads(line))
    return buf


# ---- store + list ----------------------------------------------------------------------

def test_put_stamps_rv_and_uid_and_replace_keeps_uid(srv):
    a = srv.put(service("default", "web", "10.96.0.10"))
    assert a["metadata"]["resourceVersion"] == "1" and a["metadata"]["uid"]
    b = srv.put(service("default", "web", "10.96.0.11"))
    assert b["metadata"]["resourceVersion"] == "2"
    assert b["metadata"]["uid"] == a["metadata"]["uid"]
    a["spec"]["clusterIP"] = "mutated"  # the returned copy is not the stored object
    assert srv.get("Service", "default", "web")["spec"]["clusterIP"] == "10.96.0.11"
    assert srv.delete("Service", "default", "web")["metadata"]["resourceVersion"] == "3"
    assert srv.delete("Service", "default", "web") is None


def test_list_raw_json(srv, api):
    core, disc = api
    srv.put(service("b", "z", "10.96.0.3"))
    srv.put(service("a", "y", "10.96.0.2"))
    srv.put(service("a", "x", "10.96.0.1"))
    resp = bounded(lambda: core.list_service_for_all_namespaces(_preload_content=False, _request_timeout=RT))
    body = raw(resp)
    assert body["kind"] == "ServiceList" and body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == "3"
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in body["items"]] == \
        [("a", "x"), ("a", "y"), ("b", "z")]
    assert "kind" not in body["items"][0]  # like the real server's typed lists

    ns = raw(core.list_namespaced_service("a", _preload_content=False, _request_timeout=RT))
    assert [i["metadata"]["name"] for i in ns["items"]] == ["x", "y"]

    srv.put(endpoint_slice("a", "x-abc", "x"))
    es = raw(disc.list_endpoint_slice_for_all_namespaces(_preload_content=False, _request_timeout=RT))
    assert es["kind"] == "EndpointSliceList" and es["apiVersion"] == "discovery.k8s.io/v1"
    assert es["items"][0]["endpoints"][0]["addresses"] == ["10.1.0.1"]
    assert ("GET", "/api/v1/namespaces/a/services") in srv.requests


def test_list_models(srv, api):
    core, disc = api
    srv.put(service("default", "web", "10.96.0.10", ports=[("http", 80, "TCP", 8080)],
                    sessionAffinity="ClientIP"))
    srv.put(endpoint_slice("default", "web-1", "web",
                           endpoints=[("10.1.0.1", "n0", True), ("10.1.0.2", "n1", False)]))
    srv.put(node("n0", "192.168.0.10"))

    svcs = core.list_namespaced_service("default", _request_timeout=RT)
    assert isinstance(svcs, client.V1ServiceList)
    s = svcs.items[0]
    assert s.metadata.name == "web" and s.spec.cluster_ip == "10.96.0.10"
    assert s.spec.ports[0].target_port == 8080 and s.spec.session_affinity == "ClientIP"
    assert svcs.metadata.resource_version == "3"

    slices = disc.list_namespaced_endpoint_slice("default", _request_timeout=RT)
    ep = slices.items[0]
    assert ep.address_type == "IPv4" and ep.metadata.labels["kubernetes.io/service-name"] == "web"
    assert [(e.addresses[0], e.conditions.ready) for e in ep.endpoints] == \
        [("10.1.0.1", True), ("10.1.0.2", False)]
    assert ep.ports[0].port == 8080

    nodes = core.list_node(_request_timeout=RT)
    assert nodes.items[0].status.addresses[0].address == "192.168.0.10"
    assert nodes.items[0].metadata.namespace is None


def test_pagination_is_a_consistent_snapshot(srv, api):
    core, _ = api
    srv.load(service("default", f"s{i:03d}", f"10.96.1.{i}") for i in range(25))
    names, rvs, cont, pages = [], set(), None, 0
    while True:
        kw = {"_continue": cont} if cont else {}
        body = raw(core.list_service_for_all_namespaces(limit=10, _preload_content=False,
                                                        _request_timeout=RT, **kw))
        pages += 1
        names += [i["metadata"]["name"] for i in body["items"]]
        rvs.add(body["metadata"]["resourceVersion"])
        if pages == 1:  # writes between pages don't leak into the snapshot
            srv.put(service("default", "s000a", "10.96.2.1"))
        cont = body["metadata"].get("continue")
        if not cont:
            break
    assert pages == 3
    assert names == [f"s{i:03d}" for i in range(25)]
    assert rvs == {"25"}
    assert any("limit=10" in p for _, p in srv.requests)

    # model deserialization with pagination too; a compacted continue token -> 410
    first = core.list_service_for_all_namespaces(limit=5, _request_timeout=RT)
    assert len(first.items) == 5 and first.metadata._continue
    srv.compact()
    with pytest.raises(ApiException) as ei:
        core.list_service_for_all_namespaces(limit=5, _continue=first.metadata._continue,
                                             _request_timeout=RT)
    assert ei.value.status == 410


def test_load_20k_is_fast_and_lists(srv, api):
    core, disc = api
    objs = [service(f"ns{i % 50}", f"svc-{i}", f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}")
            for i in range(10_000)]
    objs += [endpoint_slice(f"ns{i % 50}", f"svc-{i}-x", f"svc-{i}") for i in range(10_000)]
    t = time.monotonic()
    rv = srv.load(objs)
    assert time.monotonic() - t < 1.0
    assert rv == 20_000
    body = raw(bounded(lambda: core.list_service_for_all_namespaces(_preload_content=False,
                                                                     _request_timeout=RT)))
    assert len(body["items"]) == 10_000 and body["metadata"]["resourceVersion"] == "20000"
    es = raw(disc.list_namespaced_endpoint_slice("ns7", _preload_content=False, _request_timeout=RT))
    assert len(es["items"]) == 200


def test_unknown_path_is_404_status(srv, api):
    core, _ = api
    with pytest.raises(ApiException) as ei:
        core.list_namespace(_request_timeout=RT)
    assert ei.value.status == 404
    assert orjson.loads(ei.value.body)["kind"] == "Status"


def test_bearer_token_checked_when_configured(tmp_path):
    with FakeApiServer(token="s3cret") as s:
        good, bad = make_client(s, tmp_path, "s3cret"), make_client(s, tmp_path, "wrong")
        assert client.CoreV1Api(good).list_node(_request_timeout=RT).items == []
        with pytest.raises(ApiException) as ei:
            client.CoreV1Api(bad).list_node(_request_timeout=RT)
        assert ei.value.status == 401
        good.close()
        bad.close()


# ---- watch -----------------------------------------------------------------------------

def _put_when_watching(srv, actions, watchers=1):
    """In a thread: once a watch is open, run actions (callables) in order."""
    def run():
        wait_for(lambda: srv.watchers() >= watchers)
        for a in actions:
            a()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_watch_stream_live_added_modified_deleted(srv, api):
    core, _ = api
    srv.put(service("other", "noise", "10.96.9.9"))
    rv = core.list_namespaced_service("default", _request_timeout=RT).metadata.resource_version
    _put_when_watching(srv, [
        lambda: srv.put(service("default", "web", "10.96.0.10")),
        lambda: srv.put(service("other", "ignored", "10.96.0.99")),  # other namespace
        lambda: srv.put(service("default", "web", "10.96.0.11")),
        lambda: srv.delete("Service", "default", "web"),
    ])

    def collect():
        w, seen = watch.Watch(), []
        for ev in w.stream(core.list_namespaced_service, "default", resource_version=rv,
                           timeout_seconds=5, _request_timeout=RT):
            seen.append((ev["type"], ev["object"].spec.cluster_ip,
                         int(ev["object"].metadata.resource_version)))
            if len(seen) == 3:
                w.stop()
        return seen

    seen = bounded(collect)
    assert [(t, ip) for t, ip, _ in seen] == \
        [("ADDED", "10.96.0.10"), ("MODIFIED", "10.96.0.11"), ("DELETED", "10.96.0.11")]
    assert seen[0][2] < seen[1][2] < seen[2][2]
    wait_for(lambda: srv.watchers() == 0, timeout=1)  # the server noticed the client going away


def test_watch_replays_history_after_rv(srv, api):
    _, disc = api
    base = srv.put(endpoint_slice("default", "a", "svc"))["metadata"]["resourceVersion"]
    srv.put(endpoint_slice("default", "a", "svc", endpoints=[("10.1.0.9", "n1", True)]))
    srv.put(endpoint_slice("default", "b", "svc"))
    srv.delete("EndpointSlice", "default", "a")

    def collect():
        return [(e["type"], e["object"].metadata.name)
                for e in watch.Watch().stream(disc.list_endpoint_slice_for_all_namespaces,
                                              resource_version=base, timeout_seconds=1,
                                              _request_timeout=RT)]
    assert bounded(collect) == [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_raw_watch_lines_and_clean_end_after_timeout(srv, api):
    core, _ = api
    srv.put(node("n0", "192.168.0.1"))
    _put_when_watching(srv, [lambda: srv.put(node("n1", "192.168.0.2"))])
    events = []

    def run():
        resp = core.list_node(watch=True, resource_version="1", timeout_seconds=1,
                              _preload_content=False, _request_timeout=RT)
        try:
            return read_lines(resp, events)
        finally:
            resp.release_conn()

    t = time.monotonic()
    tail = bounded(run)
    assert tail == b""  # ended cleanly (terminating chunk), no exception
    assert 0.9 < time.monotonic() - t < 3
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "n1")]
    assert events[0]["object"]["kind"] == "Node"  # watch objects carry kind
    wait_for(lambda: srv.watchers() == 0, timeout=1)


def test_watch_from_zero_or_empty_starts_now(srv, api):
    core, _ = api
    srv.put(service("default", "old", "10.96.0.1"))
    for rv in ("0", None):
        kw = {"resource_version": rv} if rv else {}
        got = bounded(lambda: [e["type"] for e in watch.Watch().stream(
            core.list_service_for_all_namespaces, timeout_seconds=1, _request_timeout=RT, **kw)])
        assert got == []


def test_bookmarks_arrive(srv, api):
    core, _ = api
    srv.put(service("default", "web", "10.96.0.10"))

    def collect():
        w = watch.Watch()
        evs = list(w.stream(core.list_service_for_all_namespaces, resource_version="1",
                            allow_watch_bookmarks=True, timeout_seconds=1, _request_timeout=RT))
        return w, evs

    w, evs = bounded(collect)
    marks = [e for e in evs if e["type"] == "BOOKMARK"]
    assert len(marks) >= 3  # interval 0.2s over 1s
    assert marks[0]["raw_object"] == {"kind": "Service", "apiVersion": "v1",
                                      "metadata": {"resourceVersion": "1"}}
    assert w.resource_version == "1"

    # without allowWatchBookmarks: none
    evs = bounded(lambda: list(watch.Watch().stream(
        core.list_service_for_all_namespaces, resource_version="1", timeout_seconds=1,
        _request_timeout=RT)))
    assert evs == []


def test_410_after_compact(srv, api):
    core, _ = api
    srv.put(service("default", "a", "10.96.0.1"))
    srv.put(service("default", "a", "10.96.0.2"))
    srv.compact()
    srv.put(service("default", "b", "10.96.0.3"))

    # Watch().stream raises ApiException(410) when retries are off (timeout_seconds given)
    with pytest.raises(ApiException) as ei:
        bounded(lambda: list(watch.Watch().stream(core.list_service_for_all_namespaces,
                                                  resource_version="1", timeout_seconds=2,
                                                  _request_timeout=RT)))
    assert ei.value.status == 410 and "Expired" in ei.value.reason

    # raw: HTTP 200, one ERROR line with a Status, then the stream ends
    events = []
    resp = core.list_service_for_all_namespaces(watch=True, resource_version="1", timeout_seconds=5,
                                                _preload_content=False, _request_timeout=RT)
    assert resp.status == 200
    t = time.monotonic()
    assert bounded(lambda: read_lines(resp, events)) == b""
    assert time.monotonic() - t < 1
    assert events == [{"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 1 (2)", "reason": "Expired", "code": 410}}]

    # the compaction point itself is still watchable
    got = bounded(lambda: [e["object"].metadata.name for e in watch.Watch().stream(
        core.list_service_for_all_namespaces, resource_version="2", timeout_seconds=1,
        _request_timeout=RT)])
    assert got == ["b"]


def test_gone_on_every_watch(srv, api):
    core, _ = api
    srv.put(service("default", "a", "10.96.0.1"))
    srv.gone_on_every_watch = True
    for rv in ("1", "0"):
        with pytest.raises(ApiException) as ei:
            bounded(lambda: list(watch.Watch().stream(core.list_service_for_all_namespaces,
                                                      resource_version=rv, timeout_seconds=5,
                                                      _request_timeout=RT)))
        assert ei.value.status == 410
    srv.gone_on_every_watch = False
    core.list_service_for_all_namespaces(_request_timeout=RT)  # lists still work


@pytest.mark.parametrize("mid_event", [False, True])
def test_cut_watches_ends_raw_stream(srv, api, mid_event):
    core, _ = api
    srv.put(service("default", "a", "10.96.0.1"))
    events, outcome = [], {}

    def run():
        resp = core.list_service_for_all_namespaces(watch=True, resource_version="0",
                                                    _preload_content=False, _request_timeout=RT)
        try:
            outcome["tail"] = read_lines(resp, events)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            outcome["error"] = e
        finally:
            resp.release_conn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: srv.watchers() == 1)
    srv.put(service("default", "b", "10.96.0.2"))
    wait_for(lambda: len(events) == 1)
    assert srv.cut_watches(mid_event=mid_event) == 1
    t.join(5)
    assert not t.is_alive(), "client hung after cut_watches"
    assert outcome, "reader neither ended nor raised"
    assert "tail" not in outcome or outcome["tail"] == b""  # never a silent torn line
    assert [e["object"]["metadata"]["name"] for e in events] == ["b"]
    assert srv.watchers() == 0


def test_cut_watches_mid_event_leaves_a_torn_line(srv, api):
    """The half line reaches the client before the connection dies."""
    core, _ = api
    got = {}

    def run():
        resp = core.list_service_for_all_namespaces(watch=True, _preload_content=False,
                                                    _request_timeout=RT)
        buf = b""
        try:
            for chunk in resp.stream(amt=None, decode_content=False):
                buf += chunk
        except (urllib3.exceptions.HTTPError, OSError) as e:
            got["error"] = e
        got["buf"] = buf

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: srv.watchers() == 1)
    srv.cut_watches(mid_event=True)
    t.join(5)
    assert not t.is_alive()
    assert got["buf"].startswith(b'{"type":"MODIFIED"'), got
    assert not got["buf"].endswith(b"\n")
    assert "error" in got  # no terminating chunk: the client knows the body was cut


def test_cut_watches_ends_watch_stream_with_error(srv, api):
    core, _ = api

    def consume():
        list(watch.Watch().stream(core.list_service_for_all_namespaces, resource_version="0",
                                  timeout_seconds=60, _request_timeout=RT))

    _put_when_watching(srv, [lambda: srv.cut_watches(mid_event=True)])
    with pytest.raises((urllib3.exceptions.HTTPError, OSError)):
        bounded(consume)


def test_restart_keeps_objects_history_and_port(srv, api):
    core, _ = api
    srv.put(service("default", "a", "10.96.0.1"))
    srv.put(service("default", "b", "10.96.0.2"))
    port = srv.port
    before = raw(core.list_service_for_all_namespaces(_preload_content=False, _request_timeout=RT))

    # an open watch is cut by the restart
    outcome = {}

    def watcher():
        try:
            list(watch.Watch().stream(core.list_service_for_all_namespaces, resource_version="2",
                                      timeout_seconds=60, _request_timeout=RT))
            outcome["ended"] = True
        except Exception as e:  # noqa: BLE001
            outcome["error"] = e
    t = threading.Thread(target=watcher, daemon=True)
    t.start()
    wait_for(lambda: srv.watchers() == 1)

    srv.restart()
    t.join(5)
    assert not t.is_alive() and outcome
    assert srv.port == port

    # the same client (with pooled connections to the old server) keeps working
    after = raw(core.list_service_for_all_namespaces(_preload_content=False, _request_timeout=RT))
    assert after == before
    replay = bounded(lambda: [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_service_for_all_namespaces, resource_version="1",
        timeout_seconds=1, _request_timeout=RT)])
    assert replay == [("ADDED", "b")]
    assert srv.put(service("default", "c", "10.96.0.3"))["metadata"]["resourceVersion"] == "3"


def test_stop_refuses_connections(srv, api, tmp_path):
    core, _ = api
    core.list_node(_request_timeout=RT)
    srv.stop()
    c = make_client(srv, tmp_path, "x")
    c.configuration.retries = 0
    with pytest.raises(urllib3.exceptions.HTTPError):
        bounded(lambda: client.CoreV1Api(c).list_node(_request_timeout=RT))
    c.close()


def test_delay_delays(srv, api):
    core, _ = api
    srv.delay = 0.4
    t = time.monotonic()
    core.list_node(_request_timeout=RT)
    assert time.monotonic() - t >= 0.4
    srv.delay = 0
    t = time.monotonic()
    core.list_node(_request_timeout=RT)
    assert time.monotonic() - t < 0.3
