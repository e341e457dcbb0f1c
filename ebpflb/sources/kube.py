"""Services, EndpointSlices and Nodes from the Kubernetes API: list, then watch from the list's
resourceVersion, with bookmarks; on 410 Gone list again; on any error retry with backoff. The
tracker only ever hears of objects that exist or were deleted: an unreachable or slow API
changes nothing in the maps.

At 5,000 nodes the API server's load is what matters, so the lists go as client-go's reflector
makes them: the first with resourceVersion "0" (served from the API server's watch cache, not
etcd), a relist after 410 from the last resourceVersion seen ("NotOlderThan": never back in time,
from the cache too), and only when the server says that resourceVersion is expired or too new (a
lagging cache) a consistent list from etcd (resourceVersion "", in pages). Only this node's Node
object is watched (a field selector on its name), as kube-proxy does. A half-open connection (the
server gone without a word, a NAT that forgot us) is noticed by TCP keepalive within 45 s, and a
server alive but silent by the read timeout, past the minute between the server's bookmarks.

The client's model deserialization is far too slow at 10k services: responses are taken raw and
parsed with orjson. The kubernetes package gives the connection (its configuration: kubeconfig or
in-cluster, TLS, proxy, token refresh); the three GETs are made here (`lister`), not through its
generated CoreV1Api/DiscoveryV1Api, whose import alone loads ≈ 250 model classes (≈ 20 MB of RSS).

Memory: lists come in pages (LIST_PAGE objects each, as client-go's pager does), and each object is
read into what the tracker keeps (prepare_service/prepare_slice, outside the tracker's lock) as its
page arrives, so neither a whole list response nor a whole list of API objects is ever held: at
10k services that is ≈ 100 MB of peak.
"""
import logging
import random
import socket
import threading
import time
from typing import NamedTuple
from urllib.parse import urlencode

import orjson
import urllib3

from ebpflb.core.services import ZONE_LABEL
from ebpflb.core.tracker import ServiceTracker, object_key
from ebpflb.gc_pause import gc_paused

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = (300, 600)  # server-side end of each watch, jittered as client-go's; then watched again from the last RV
READ_TIMEOUT_S = 90           # a silent connection beyond this is dead: the server sends a bookmark a minute
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 1.0
LIST_PAGE = 500               # objects per list request (client-go's pager default)
# TCP keepalive on every connection to the API: idle 15 s, then a probe every 5 s, dead after 6 unanswered
# (45 s); data left unacknowledged as long also ends the connection (TCP_USER_TIMEOUT).
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 15, 5, 6


class Gone(Exception):
    """410: our resourceVersion is too old for the server's history."""


def unavailable_rv(err: "ApiError") -> bool:
    """The server cannot list at the resourceVersion asked: expired (410), or newer than its watch
    cache (504 "Too large resource version"): a consistent list is asked for instead."""
    return err.status == 410 or (err.status == 504 and b"Too large resource version" in err.body)


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: bytes):
        super().__init__(f"HTTP {status} {reason}: {body[:200].decode(errors='replace')}")
        self.status, self.body = status, body


def api_client(kubeconfig: str | None):
    from kubernetes import client, config
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.socket_options = keepalive_socket_options()
    return client.ApiClient(configuration)


def keepalive_socket_options() -> list[tuple[int, int, int]]:
    """urllib3's own defaults (no Nagle) and TCP keepalive: a half-open connection is noticed in 45 s."""
    return [*urllib3.connection.HTTPConnection.default_socket_options,
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES),
            (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
             1000 * (KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_PROBES))]


PATHS = {"services": "/api/v1/services", "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices",
         "nodes": "/api/v1/nodes"}


def lister(api, path: str):
    """list_call(timeout=(connect, read), **query) -> the raw urllib3 response of GET path?query, through
    the client's connection pool and with its auth headers (asked for each request: a token refresh
    hook, in-cluster or exec, runs there). Raises ApiError for an error status."""
    def call(timeout: tuple[float, float], **query):
        config = api.configuration
        headers = {**api.default_headers, "Accept": "application/json"}
        for auth in config.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        params = {name: str(value).lower() if isinstance(value, bool) else value
                  for name, value in query.items() if value is not None}
        response = api.rest_client.pool_manager.request(
            "GET", f"{config.host}{path}?{urlencode(params)}", headers=headers, preload_content=False,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]))
        if not 200 <= response.status <= 299:
            body = response.data
            response.release_conn()
            raise ApiError(response.status, response.reason, body)
        return response
    return call


def lines(response):
    """JSON lines of a streamed watch response, as they arrive."""
    pending = b""
    for chunk in response.stream(65536, decode_content=True):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield line


class Reflector(threading.Thread):
    """Keeps one resource kind current: list, then watch; calls back with what changed."""

    def __init__(self, resource: str, list_call, on_list, on_event, stopping: threading.Event,
                 counters=None, prepare=lambda obj: obj, selector: dict | None = None):
        super().__init__(name=f"reflector-{resource}", daemon=True)
        self.resource, self.list_call = resource, list_call
        self.on_list, self.on_event = on_list, on_event
        self.prepare = prepare   # what on_list and on_event get of each object, made outside their lock
        self.selector = selector or {}   # e.g. {"fieldSelector": "metadata.name=node-0"}, on lists and watches
        self.stopping = stopping
        self.counters = counters
        self.resource_version: str | None = None   # the last one seen
        self.must_list = True
        self.rv_unavailable = False   # the server cannot list at our resourceVersion: a consistent list
        self.listed = threading.Event()
        self.response = None

    def run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self.stopping.is_set():
            try:
                if self.must_list:
                    self.relist()
                self.watch()
                backoff = BACKOFF_MIN_S
            except Gone:
                log.info("%s: resourceVersion %s expired (410); listing again", self.resource,
                         self.resource_version)
                self.must_list = True
                self._count_restart("gone")
            except Exception as err:   # the API being away must never stop the agent
                if self.stopping.is_set():
                    return
                log.warning("%s: %s; retrying in %.1fs", self.resource, _short(err), backoff)
                self._count_restart("error")
                self.stopping.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def list_resource_version(self) -> str:
        """What to list at (client-go's reflector): "0" at first (any state the watch cache has, the
        watch brings it up to date), then the last one seen (never older than what we had), "" once
        the server could not serve that (a consistent read)."""
        if self.rv_unavailable:
            return ""
        return "0" if self.resource_version is None else self.resource_version

    def relist(self) -> None:
        rv = self.list_resource_version()
        try:
            self._list(rv)
        except ApiError as err:
            if rv == "" or not unavailable_rv(err):
                raise
            log.info("%s: the server cannot list at resourceVersion %s (HTTP %d); a consistent list",
                     self.resource, rv, err.status)
            self._count_restart("expired")
            self.rv_unavailable = True
            self._list("")
        self.rv_unavailable = False
        self.must_list = False

    def _list(self, rv: str) -> None:
        """The whole list, page by page; the tracker hears of it only once it is complete. At a given
        resourceVersion the watch cache serves it, whole (client-go asks no pages then); at "0" the
        server may cut pages or not; at "" it is read from etcd, in pages."""
        match = {"resourceVersionMatch": "NotOlderThan"} if rv not in ("", "0") else {}
        limit = None if match else LIST_PAGE
        with gc_paused():
            items, cont = [], None
            while True:
                response = self.list_call(timeout=(10, 120), limit=limit, resourceVersion=None if cont else rv,
                                          **(match if not cont else {}), **self.selector, **{"continue": cont})
                body = orjson.loads(response.data)
                del response   # the page's bytes
                items += map(self.prepare, body.get("items") or [])
                metadata = body["metadata"]
                del body       # the page's API objects
                cont = metadata.get("continue")
                if not cont:
                    break
            self.on_list(items)
        self.resource_version = metadata["resourceVersion"]
        self.listed.set()
        log.info("%s: listed %d at resourceVersion %s", self.resource, len(items), self.resource_version)

    def watch(self) -> None:
        self.response = self.list_call(timeout=(10, READ_TIMEOUT_S), watch=True,
                                       resourceVersion=self.resource_version, allowWatchBookmarks=True,
                                       timeoutSeconds=random.randint(*WATCH_TIMEOUT_S), **self.selector)
        try:
            for line in lines(self.response):
                event = orjson.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error: {obj.get('message') or obj}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                if self.counters:
                    self.counters.watch_event(self.resource, kind)
                if kind != "BOOKMARK":
                    self.on_event(kind, self.prepare(obj))
        finally:
            self.response.release_conn()

    def stop(self) -> None:
        response = self.response
        if response is not None:
            try:
                response.shutdown() if hasattr(response, "shutdown") else response.close()
            except Exception:
                pass

    def _count_restart(self, reason: str) -> None:
        if self.counters:
            self.counters.watch_restart(self.resource, reason)


# A node the cluster autoscaler is about to delete: kube-proxy's /healthz fails for it (nodeEligible).
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"


class NodeInfo(NamedTuple):
    """All the agent reads of a Node object."""
    addresses: tuple[str, ...] = ()   # node_addresses_of()
    zone: str = ""                    # its topology.kubernetes.io/zone label ("" without)
    eligible: bool = True             # False once it is being deleted (kube-proxy's nodeEligible)


def node_info_of(node) -> NodeInfo:
    """What a Node object says; anything malformed reads as absent (a Node is never rejected)."""
    metadata = node.get("metadata") if isinstance(node, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    labels = metadata.get("labels")
    zone = labels.get(ZONE_LABEL) if isinstance(labels, dict) else None
    spec = node.get("spec") if isinstance(node, dict) else None
    taints = spec.get("taints") if isinstance(spec, dict) else None
    deleting = metadata.get("deletionTimestamp") is not None or (
        isinstance(taints, list) and any(isinstance(t, dict) and t.get("key") == TO_BE_DELETED_TAINT for t in taints))
    return NodeInfo(node_addresses_of(node), zone if isinstance(zone, str) else "", not deleting)


def node_addresses_of(node) -> tuple[str, ...]:
    """The InternalIP and ExternalIP addresses of a Node object, of both families; what is no address is
    left out (it was taken on a dot and crashed the agent where NodePorts are planned)."""
    status = node.get("status") if isinstance(node, dict) else None
    addresses = status.get("addresses") if isinstance(status, dict) else None
    if not isinstance(addresses, list):
        return ()
    return tuple(a["address"] for a in addresses
                 if isinstance(a, dict) and a.get("type") in ("InternalIP", "ExternalIP") and _is_address(a.get("address")))


def _is_address(text) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except (OSError, TypeError, ValueError):   # not an address; not text; an embedded NUL
            pass
    return False


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]


class KubeSource:
    """Feeds the tracker from the API. `synced` once every kind has been listed."""

    def __init__(self, kubeconfig: str | None, counters=None, node_name: str | None = None):
        """`node_name`: the only Node watched (None: every Node, as tools that look at all want)."""
        self.api = api_client(kubeconfig)
        self.node_name = node_name
        self.counters = counters
        self.stopping = threading.Event()
        self.nodes: dict[str, NodeInfo] = {}   # name -> what we read of it
        self.reflectors: list[Reflector] = []

    @property
    def synced(self) -> bool:
        return bool(self.reflectors) and all(r.listed.is_set() for r in self.reflectors)

    def start(self, tracker: ServiceTracker, lock, wake) -> None:
        def locked(fn):
            def call(*args):
                with lock:
                    fn(*args)
                wake()
            return call

        def on_service(kind, item):
            if kind == "DELETED":
                tracker.delete_service(item.key)
            else:
                tracker.set_service(item)

        def on_slice(kind, item):
            if kind == "DELETED":
                tracker.delete_slice(item.key)
            else:
                tracker.set_slice(item)

        def prepare_node(obj):
            key = object_key(obj)
            return (key[1] if key else None), node_info_of(obj)

        def on_node(kind, item):
            name, info = item
            if name is None:
                return
            if kind == "DELETED":
                self.nodes.pop(name, None)
            else:
                self.nodes[name] = info

        def list_nodes(items):
            self.nodes = {name: info for name, info in items if name is not None}

        self.reflectors = [
            Reflector("services", lister(self.api, PATHS["services"]),
                      locked(tracker.replace_services), locked(on_service), self.stopping, self.counters,
                      prepare=tracker.prepare_service),
            Reflector("endpointslices", lister(self.api, PATHS["endpointslices"]),
                      locked(tracker.replace_slices), locked(on_slice), self.stopping, self.counters,
                      prepare=tracker.prepare_slice),
            Reflector("nodes", lister(self.api, PATHS["nodes"]), locked(list_nodes), locked(on_node),
                      self.stopping, self.counters, prepare=prepare_node,
                      selector={"fieldSelector": f"metadata.name={self.node_name}"} if self.node_name else None),
        ]
        for reflector in self.reflectors:
            reflector.start()

    def poll(self) -> None:
        pass

    def node_addresses(self, node_name: str) -> list[str]:
        """The InternalIP and ExternalIP addresses of this node's Node object (node_addresses_of)."""
        return list(self.node(node_name).addresses)

    def node(self, node_name: str) -> NodeInfo:
        """What the Node object of that name says; defaults while there is none (yet)."""
        return self.nodes.get(node_name, NodeInfo())

    def stop(self) -> None:
        self.stopping.set()
        for reflector in self.reflectors:
            reflector.stop()
        for reflector in self.reflectors:
            reflector.join(timeout=2)
