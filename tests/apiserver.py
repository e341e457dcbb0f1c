"""A fake kube-apiserver for tests: list + watch of Services, EndpointSlices and Nodes.

No real apiserver can run here, so the tests point the REAL `kubernetes` client at this
in-process HTTP/1.1 server. It mimics the parts of the real server's behaviour that an
informer-style client depends on:

* one global resourceVersion counter (like etcd's revision), stamped on every write;
* paginated lists (`limit` + opaque `continue`) served from a consistent snapshot;
* chunked watch streams: replay of the event log after the requested RV, then live events,
  optional BOOKMARKs, a clean end after `timeoutSeconds`;
* `410 Gone` delivered the way the real server does it on a watch: HTTP 200, one ERROR
  event carrying a Status with code 410, then end of stream.

With tls=(certfile, keyfile) it serves HTTPS, as a real API server does: what the client's in-cluster
config (service-account token and CA) needs.

Plus knobs for failure injection: stop/restart, compact, cut watches (optionally mid-line),
answer every watch with 410, add latency.

    srv = FakeApiServer().start()
    srv.write_kubeconfig(tmp_path / "kubeconfig")
    srv.put(service("default", "web", "10.96.0.10"))
    ...
    srv.stop()
"""
from __future__ import annotations

import base64
import bisect
import collections
import datetime
import gc
import itertools
import json
import socket
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

try:  # orjson is ~10x faster; it matters when a test loads 20k objects
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)

    _loads = orjson.loads
except ImportError:  # pragma: no cover - the venv has orjson
    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads


# kind -> (apiVersion, list kind, namespaced, URL prefix, plural)
KINDS = {
    "Service": ("v1", "ServiceList", True, "/api/v1", "services"),
    "EndpointSlice": ("discovery.k8s.io/v1", "EndpointSliceList", True,
                      "/apis/discovery.k8s.io/v1", "endpointslices"),
    "Node": ("v1", "NodeList", False, "/api/v1", "nodes"),
}

# Routes: (prefix, plural) -> kind. Namespaced kinds answer both the all-namespaces
# path and /namespaces/{ns}/{plural}.
_ROUTES = {(prefix, plural): kind for kind, (_, _, _, prefix, plural) in KINDS.items()}

_SNAPSHOTS_KEPT = 64  # continue tokens for this many paginated lists stay valid


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Watch:
    """One open watch stream. Events are queued under the server lock by writers."""

    def __init__(self, server: "FakeApiServer", kind: str, namespace: str | None, sock):
        self.kind = kind
        self.namespace = namespace
        self.sock = sock
        self.queue: collections.deque = collections.deque()
        self.cond = threading.Condition(server._lock)  # shares the store lock: no lost wakeups
        self.wlock = threading.Lock()  # serialises writes to the socket (handler vs. cut)
        self.closed = False
        self.cut_done = threading.Event()  # set once cut_watches() has finished with the socket

    def wants(self, kind: str, namespace: str | None) -> bool:
        return kind == self.kind and (self.namespace is None or self.namespace == namespace)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for handler threads
    allow_reuse_address = True  # restart() rebinds the same port despite TIME_WAIT

    def __init__(self, addr, handler, fake: "FakeApiServer"):
        self.fake = fake
        self.conns: set = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, handler)
        self.tls: ssl.SSLContext | None = None
        if fake.tls:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*fake.tls)

    def get_request(self):
        sock, addr = super().get_request()
        if self.tls is not None:    # the handshake runs in the handler's thread (_Handler.setup)
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    # Track every accepted connection, so stop() can also kill idle keep-alive ones
    # (otherwise a "stopped" server would keep answering on pooled connections).
    def process_request(self, request, client_address):
        with self.conns_lock:
            self.conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.conns_lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def kill_connections(self):
        with self.conns_lock:
            conns, self.conns = list(self.conns), set()
        for sock in conns:
            _abort(sock)


def _abort(sock) -> None:
    """Close a socket from another thread; shutdown() also wakes a thread blocked on it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class FakeApiServer:
    def __init__(self, token: str | None = None, bookmark_interval: float = 1.0,
                 host: str = "127.0.0.1", port: int = 0, tls: tuple[str, str] | None = None):
        self.token = token
        self.tls = tls
        self.bookmark_interval = bookmark_interval
        self.host = host
        self.port = port
        self.delay = 0.0  # seconds every request waits before its answer (while it stays set)
        self.gone_on_every_watch = False  # every watch gets the 410 ERROR event at once
        self.requests: list[tuple[str, str]] = []  # (method, path+query) of every request

        self._lock = threading.RLock()
        self._rv = 0
        self._objects: dict[str, dict[tuple, dict]] = {kind: {} for kind in KINDS}
        # Event log: parallel lists so bisect can find "events after RV" quickly.
        self._log_rvs: list[int] = []
        self._log: list[tuple[str, str | None, str, dict]] = []  # (kind, ns, type, object)
        self._oldest_rv = 0  # watching from an RV below this gets 410 (after compact())
        self._watches: list[_Watch] = []
        self._snapshots: collections.OrderedDict = collections.OrderedDict()
        self._snapshot_ids = itertools.count(1)
        # uids: a random UUID-shaped prefix + a counter (uuid4() per object is too slow for load())
        self._uid_prefix = str(uuid.uuid4())[:24]
        self._uid_seq = itertools.count(1)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> "FakeApiServer":
        httpd = _HTTPServer((self.host, self.port), _Handler, self)
        self.port = httpd.server_address[1]  # port 0 -> the one the kernel picked; kept for restart()
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-apiserver:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every open connection (watches included), abruptly."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        self.cut_watches()
        httpd.kill_connections()
        if self._thread:
            self._thread.join(timeout=5)

    def restart(self) -> None:
        """stop() then listen again on the same port; objects and RV history survive."""
        self.stop()
        deadline = time.monotonic() + 5
        while True:
            try:
                self.start()
                return
            except OSError:  # the old socket can linger a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def write_kubeconfig(self, path, token: str = "test") -> str:
        cfg = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        # JSON is valid YAML, so the client's YAML loader reads it as is.
        with open(path, "w") as f:
            json.dump(cfg, f, indent=1)
        return str(path)

    # ---- store -------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def put(self, obj: dict) -> dict:
        """Create or replace an object (kind from obj["kind"]); returns a copy of what is stored."""
        with self._lock:
            stored = self._put_locked(_loads(_dumps(obj)), _now())
            self._notify()
        return _loads(_dumps(stored))

    def load(self, objects) -> int:
        """Bulk put (one deep copy, one wake-up); returns the resulting resourceVersion."""
        # Allocating ~1M dicts/strings triggers the cyclic GC over and over; pausing it
        # halves the time of a 20k-object load. Nothing here creates cycles.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            objects = _loads(_dumps(list(objects)))
            now = _now()
            with self._lock:
                for obj in objects:
                    self._put_locked(obj, now)
                self._notify()
                return self._rv
        finally:
            if gc_was_enabled:
                gc.enable()

    def delete(self, kind: str, namespace: str | None, name: str) -> dict | None:
        """Delete; returns the deleted object (carrying the deletion RV) or None if absent."""
        with self._lock:
            key = self._key(kind, namespace, name)
            old = self._objects[kind].pop(key, None)
            if old is None:
                return None
            self._rv += 1
            # Like the real server, the DELETED event's object carries the deletion RV.
            gone = dict(old, metadata=dict(old["metadata"], resourceVersion=str(self._rv)))
            self._record(kind, key[0], "DELETED", gone)
            self._notify()
            return gone

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        with self._lock:
            obj = self._objects[kind].get(self._key(kind, namespace, name))
            return None if obj is None else _loads(_dumps(obj))

    def compact(self) -> None:
        """Forget the event history: any RV older than now gets 410 (as after etcd compaction)."""
        with self._lock:
            self._log_rvs.clear()
            self._log.clear()
            self._oldest_rv = self._rv
            self._snapshots.clear()  # continue tokens expire with compaction too

    def _key(self, kind: str, namespace: str | None, name: str) -> tuple:
        if kind not in KINDS:
            raise ValueError(f"unsupported kind {kind!r}")
        namespaced = KINDS[kind][2]
        return ((namespace or "default") if namespaced else None, name)

    def _put_locked(self, obj: dict, now: str) -> dict:
        kind = obj.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unsupported kind {kind!r}")
        obj["apiVersion"] = KINDS[kind][0]
        meta = obj.setdefault("metadata", {})
        key = self._key(kind, meta.get("namespace"), meta["name"])
        if key[0] is not None:
            meta["namespace"] = key[0]
        else:
            meta.pop("namespace", None)
        old = self._objects[kind].get(key)
        if old is not None:  # replace keeps identity, like an update
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        else:
            if "uid" not in meta:
                meta["uid"] = f"{self._uid_prefix}{next(self._uid_seq):012x}"
            meta.setdefault("creationTimestamp", now)
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._objects[kind][key] = obj  # stored dicts are never mutated afterwards
        self._record(kind, key[0], "ADDED" if old is None else "MODIFIED", obj)
        return obj

    def _record(self, kind, namespace, etype, obj) -> None:
        self._log_rvs.append(self._rv)
        self._log.append((kind, namespace, etype, obj))
        for w in self._watches:
            if w.wants(kind, namespace):
                w.queue.append((etype, obj))

    def _notify(self) -> None:
        for w in self._watches:
            if w.queue:
                w.cond.notify()

    # ---- watch control -------------------------------------------------------------------

    def watchers(self) -> int:
        with self._lock:
            return len(self._watches)

    def cut_watches(self, mid_event: bool = False) -> int:
        """Abruptly close every open watch connection; returns how many were cut.

        With mid_event=True, first write half of a JSON event line (a complete HTTP chunk),
        so the client's line buffer holds a torn line when the connection dies.
        """
        with self._lock:
            watches, self._watches = self._watches, []
            for w in watches:
                w.closed = True
                w.cond.notify()
        for w in watches:
            # Don't wait forever on a handler stuck writing to a client that doesn't read.
            got = w.wlock.acquire(timeout=2)
            try:
                if mid_event and got:
                    line = _dumps({"type": "MODIFIED", "object": {
                        "kind": w.kind, "apiVersion": KINDS[w.kind][0],
                        "metadata": {"name": "torn", "resourceVersion": str(self._rv)}}})
                    try:
                        w.sock.sendall(_chunk(line[: len(line) // 2]))
                    except OSError:
                        pass
                _abort(w.sock)
            finally:
                if got:
                    w.wlock.release()
                w.cut_done.set()
        return len(watches)

    def _open_watch(self, kind, namespace, since: int | None, sock):
        """Register a watch and collect its replay atomically (no event lost or duplicated).

        The replay is queued on the watch; returns None when `since` is compacted away.
        """
        with self._lock:
            if since is not None and since < self._oldest_rv:
                return None
            w = _Watch(self, kind, namespace, sock)
            if since is not None:
                start = bisect.bisect_right(self._log_rvs, since)
                w.queue.extend((etype, obj) for (k, ns, etype, obj) in self._log[start:]
                               if w.wants(k, ns))
            self._watches.append(w)
            return w

    def _close_watch(self, w: _Watch) -> None:
        with self._lock:
            if w in self._watches:
                self._watches.remove(w)

    # ---- list --------------------------------------------------------------------------

    def _list(self, kind: str, namespace: str | None, limit: int, cont: str | None):
        """Returns (HTTP code, body dict). Pages come from a snapshot taken at the first page."""
        api_version, list_kind, _, _, _ = KINDS[kind]
        with self._lock:
            if cont:
                try:
                    tok = _loads(base64.urlsafe_b64decode(cont.encode()))
                    rv, items = self._snapshots[tok["id"]]
                    offset = int(tok["offset"])
                except Exception:
                    return 410, _status(410, "Expired",
                                        "The provided continue parameter is too old to display "
                                        "a consistent list result. You can start a new list "
                                        "without the continue parameter.")
            else:
                rv = self._rv
                items = [o for k, o in sorted(self._objects[kind].items(),
                                              key=lambda kv: (kv[0][0] or "", kv[0][1]))
                         if namespace is None or k[0] == namespace]
                offset = 0
                tok = None
            meta = {"resourceVersion": str(rv)}
            end = offset + limit if limit > 0 else len(items)
            page = items[offset:end]
            if end < len(items):
                if tok is None:
                    tok = {"id": next(self._snapshot_ids)}
                    self._snapshots[tok["id"]] = (rv, items)
                    while len(self._snapshots) > _SNAPSHOTS_KEPT:
                        self._snapshots.popitem(last=False)
                meta["continue"] = base64.urlsafe_b64encode(
                    _dumps({"id": tok["id"], "offset": end})).decode()
                meta["remainingItemCount"] = len(items) - end
        # The real server omits kind/apiVersion on the items of a typed list.
        page = [{k: v for k, v in o.items() if k != "kind" and k != "apiVersion"} for o in page]
        return 200, {"kind": list_kind, "apiVersion": api_version, "metadata": meta,
                     "items": page}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, *args):  # keep pytest output clean
        pass

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)          # a client that never completes its handshake
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()
        # As Go's net/http (kube-apiserver) does: without it a watch event written in pieces
        # waits for the client's delayed ACK (tens of milliseconds).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send_json(self, code: int, body: dict) -> None:
        data = _dumps(body)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        fake = self.server.fake
        fake.requests.append(("GET", self.path))
        held_until = time.monotonic() + fake.delay
        while fake.delay and time.monotonic() < held_until:   # a server that recovers answers at once
            time.sleep(0.01)
        if fake.token is not None and not self._authorized(fake.token):
            return self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))

        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        route = self._route(url.path)
        if route is None:
            return self._send_json(404, _status(404, "NotFound",
                                                f"the server could not find the requested resource ({url.path})"))
        kind, namespace = route

        if q.get("watch", "").lower() in ("true", "1"):
            return self._watch(fake, kind, namespace, q)
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            return self._send_json(400, _status(400, "BadRequest", "invalid limit"))
        code, body = fake._list(kind, namespace, limit, q.get("continue") or None)
        self._send_json(code, body)

    def _authorized(self, token: str) -> bool:
        """The bearer-token check: the scheme case-insensitively, as the real server's (the client's
        in-cluster config sends "bearer <token>")."""
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and given == token

    def _other(self):
        fake = self.server.fake
        fake.requests.append((self.command, self.path))
        self.close_connection = True  # we don't read the body; don't reuse the connection
        self._send_json(405, _status(405, "MethodNotAllowed", "the fake apiserver is read-only"))

    do_POST = do_PUT = do_PATCH = do_DELETE = _other

    @staticmethod
    def _route(path: str):
        """URL path -> (kind, namespace or None), or None for a 404."""
        parts = path.rstrip("/").split("/")
        # /api/v1/<plural>  |  /api/v1/namespaces/<ns>/<plural>  (same with /apis/<group>/<v>)
        for prefix, plural in _ROUTES:
            p = prefix.split("/")
            if parts[: len(p)] != p:
                continue
            rest = parts[len(p):]
            kind = _ROUTES[(prefix, plural)]
            if rest == [plural]:
                return kind, None
            if len(rest) == 3 and rest[0] == "namespaces" and rest[2] == plural and KINDS[kind][2]:
                return kind, rest[1]
        return None

    def _watch(self, fake: FakeApiServer, kind: str, namespace, q: dict) -> None:
        rv_arg = q.get("resourceVersion", "")
        if rv_arg in ("", "0"):
            since = None  # "start from now": the client has (or will) list first
        else:
            try:
                since = int(rv_arg)
            except ValueError:
                return self._send_json(400, _status(400, "BadRequest", f"invalid resourceVersion {rv_arg!r}"))
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")

        # Like the real server: a watch always gets 200 + chunked body, even to say 410.
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True  # we may end the stream abruptly; never reuse

        w = None if fake.gone_on_every_watch else fake._open_watch(kind, namespace, since, self.connection)
        if w is None:
            msg = f"too old resource version: {rv_arg} ({fake._oldest_rv})"
            self._write_events([("ERROR", _status(410, "Expired", msg))], None)
            self._end_stream(None)
            return
        try:
            self._pump(fake, w, timeout, bookmarks)
        finally:
            fake._close_watch(w)

    def _pump(self, fake: FakeApiServer, w: _Watch, timeout, bookmarks) -> None:
        now = time.monotonic()
        deadline = now + timeout if timeout else None
        next_bookmark = now + fake.bookmark_interval if bookmarks else None
        while True:
            bookmark_rv = None
            with w.cond:  # == the server lock
                if not w.queue and not w.closed:
                    wake = min(t for t in (deadline, next_bookmark, float("inf")) if t is not None)
                    wait = wake - time.monotonic()
                    if wait > 0:  # short steps: we also poll for the client hanging up
                        w.cond.wait(min(wait, 0.1))
                closed = w.closed
                events = list(w.queue)
                w.queue.clear()
                now = time.monotonic()
                # A bookmark is only truthful if nothing is pending for us: events are
                # queued under this same lock, so everything up to the current RV is sent.
                if next_bookmark is not None and now >= next_bookmark and not events:
                    bookmark_rv = fake._rv
                    next_bookmark = now + fake.bookmark_interval
            if closed:
                # cut_watches()/stop() owns the socket now; returning would let the server
                # close it under their feet (before the torn half line is written).
                w.cut_done.wait(5)
                return
            if not events and bookmark_rv is None and self._client_gone():
                return  # like the real server, notice a client that went away while idle
            if bookmark_rv is not None:
                events = [("BOOKMARK", {"kind": w.kind, "apiVersion": KINDS[w.kind][0],
                                        "metadata": {"resourceVersion": str(bookmark_rv)}})]
            if events and not self._write_events(events, w):
                return
            if deadline is not None and time.monotonic() >= deadline:
                self._end_stream(w)
                return

    def _client_gone(self) -> bool:
        """A watch client never sends more bytes, so readable means EOF or reset."""
        try:
            # the socket's own recv: TLS's refuses flags (any byte there is the client's, TLS or not)
            return socket.socket.recv(self.connection, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _write_events(self, events, w: _Watch | None) -> bool:
        data = b"".join(_chunk(_dumps({"type": t, "object": o}) + b"\n") for t, o in events)
        lock = w.wlock if w else threading.Lock()
        with lock:
            if w is not None and w.closed:
                return False
            try:
                self.wfile.write(data)
                return True
            except OSError:
                return False

    def _end_stream(self, w: _Watch | None) -> None:
        lock = w.wlock if w else threading.Lock()
        with lock:
            if w is not None and w.closed:
                return
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass


# ---- object builders ---------------------------------------------------------------------

def service(ns: str, name: str, cluster_ip: str, ports=(("http", 80, "TCP"),), **spec_extra) -> dict:
    """A Service dict. ports: (name, port, protocol) or (name, port, protocol, targetPort)."""
    spec = {
        "type": "ClusterIP",
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip] if cluster_ip and cluster_ip != "None" else [],
        "ports": [{"name": p[0], "port": p[1], "protocol": p[2],
                   "targetPort": p[3] if len(p) > 3 else p[1]} for p in ports],
    }
    if cluster_ip == "None":
        spec["clusterIPs"] = ["None"]
    spec.update(spec_extra)
    return {"kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def endpoint_slice(ns: str, name: str, service_name: str,
                   endpoints=(("10.1.0.1", "node-0", True),),
                   ports=(("http", 8080, "TCP"),)) -> dict:
    """An EndpointSlice dict. endpoints: (address, nodeName, ready)."""
    return {
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service_name,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv6" if ":" in (endpoints[0][0] if endpoints else "") else "IPv4",
        "endpoints": [{"addresses": [addr], "nodeName": node_name,
                       "conditions": {"ready": ready, "serving": ready, "terminating": False}}
                      for addr, node_name, ready in endpoints],
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }


def node(name: str, address: str) -> dict:
    """A Node dict with one InternalIP and the hostname."""
    return {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": address},
                                     {"type": "Hostname", "address": name}]}}
