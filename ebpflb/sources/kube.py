"""Services, EndpointSlices and Nodes from the Kubernetes API: list, then watch from the list's
resourceVersion, with bookmarks; on 410 Gone list again; on any error retry with backoff. The
tracker only ever hears of objects that exist or were deleted: an unreachable or slow API
changes nothing in the maps.

The client's model deserialization is far too slow at 10k services: responses are taken raw
(`_preload_content=False`) and parsed with orjson.
"""
import logging
import random
import socket
import threading
import time

import orjson

from ..core.tracker import ServiceTracker, object_key

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300        # server-side end of each watch; we then watch again from the last RV
READ_TIMEOUT_S = 330         # a silent connection beyond this is dead
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 1.0


class Gone(Exception):
    """410: our resourceVersion is too old for the server's history."""


def api_client(kubeconfig: str | None):
    from kubernetes import client, config
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    config.load_incluster_config()
    return client.ApiClient()


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
                 counters=None):
        super().__init__(name=f"reflector-{resource}", daemon=True)
        self.resource, self.list_call = resource, list_call
        self.on_list, self.on_event = on_list, on_event
        self.stopping = stopping
        self.counters = counters
        self.resource_version: str | None = None
        self.listed = threading.Event()
        self.response = None

    def run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self.stopping.is_set():
            try:
                if self.resource_version is None:
                    self.relist()
                self.watch()
                backoff = BACKOFF_MIN_S
            except Gone:
                log.info("%s: resourceVersion %s expired (410); listing again", self.resource,
                         self.resource_version)
                self.resource_version = None
                self._count_restart("gone")
            except Exception as err:   # the API being away must never stop the agent
                if self.stopping.is_set():
                    return
                log.warning("%s: %s; retrying in %.1fs", self.resource, _short(err), backoff)
                self._count_restart("error")
                self.stopping.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def relist(self) -> None:
        items, cont = [], None
        while True:
            kwargs = {"_continue": cont} if cont else {}
            response = self.list_call(_preload_content=False, _request_timeout=(10, 120), **kwargs)
            body = orjson.loads(response.data)
            items += body.get("items") or []
            cont = (body.get("metadata") or {}).get("continue")
            if not cont:
                break
        self.on_list(items)
        self.resource_version = body["metadata"]["resourceVersion"]
        self.listed.set()
        log.info("%s: listed %d at resourceVersion %s", self.resource, len(items), self.resource_version)

    def watch(self) -> None:
        self.response = self.list_call(watch=True, resource_version=self.resource_version,
                                       allow_watch_bookmarks=True, timeout_seconds=WATCH_TIMEOUT_S,
                                       _preload_content=False, _request_timeout=(10, READ_TIMEOUT_S))
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
                    self.on_event(kind, obj)
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


def _is_ipv4(text) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, text)
        return True
    except (OSError, TypeError, ValueError):   # not an address; not text; an embedded NUL
        return False


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]


class KubeSource:
    """Feeds the tracker from the API. `synced` once every kind has been listed."""

    def __init__(self, kubeconfig: str | None, counters=None):
        from kubernetes import client
        self.api = api_client(kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.discovery = client.DiscoveryV1Api(self.api)
        self.counters = counters
        self.stopping = threading.Event()
        self.nodes: dict[str, dict] = {}
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

        def on_service(kind, obj):
            if kind == "DELETED":
                tracker.delete_service(object_key(obj))
            else:
                tracker.set_service(obj)

        def on_slice(kind, obj):
            if kind == "DELETED":
                tracker.delete_slice(object_key(obj))
            else:
                tracker.set_slice(obj)

        def on_node(kind, obj):
            key = object_key(obj)
            if key is None:
                return
            if kind == "DELETED":
                self.nodes.pop(key[1], None)
            else:
                self.nodes[key[1]] = obj

        def list_nodes(items):
            self.nodes = {object_key(o)[1]: o for o in items if object_key(o)}

        self.reflectors = [
            Reflector("services", self.core.list_service_for_all_namespaces,
                      locked(tracker.replace_services), locked(on_service), self.stopping, self.counters),
            Reflector("endpointslices", self.discovery.list_endpoint_slice_for_all_namespaces,
                      locked(tracker.replace_slices), locked(on_slice), self.stopping, self.counters),
            Reflector("nodes", self.core.list_node, locked(list_nodes), locked(on_node),
                      self.stopping, self.counters),
        ]
        for reflector in self.reflectors:
            reflector.start()

    def poll(self) -> None:
        pass

    def node_addresses(self, node_name: str) -> list[str]:
        """The IPv4 InternalIP and ExternalIP addresses of this node's Node object; what is no address
        is left out (it was taken on a dot and crashed the agent where NodePorts are planned)."""
        status = (self.nodes.get(node_name) or {}).get("status")
        addresses = status.get("addresses") if isinstance(status, dict) else None
        if not isinstance(addresses, list):
            return []
        return [a["address"] for a in addresses
                if isinstance(a, dict) and a.get("type") in ("InternalIP", "ExternalIP") and _is_ipv4(a.get("address"))]

    def stop(self) -> None:
        self.stopping.set()
        for reflector in self.reflectors:
            reflector.stop()
        for reflector in self.reflectors:
            reflector.join(timeout=2)
