"""kube-proxy's health endpoints (its --healthz-bind-address, 0.0.0.0:10256), for what probes kube-proxy:
cloud load balancers of externalTrafficPolicy Cluster services ask every node's /healthz to send traffic
only to nodes whose proxy works and that are not being deleted.

  /healthz  200 {"lastUpdated": ..., "currentTime": ..., "nodeEligible": true}; 503 once a change has
            waited longer than the timeout for a sync (kube-proxy: twice its sync period, 60 s), or
            while the node is being deleted (deletionTimestamp, or the cluster autoscaler's
            ToBeDeletedByClusterAutoscaler taint: nodeEligible false)
  /livez    the same without the node: {"lastUpdated": ..., "currentTime": ...}

Byte for byte kube-proxy's bodies (pkg/proxy/healthcheck/proxy_health.go): the times as Go prints a
time.Time, lastUpdated equal to currentTime while healthy (kube-proxy keeps that for old clients) and
the last sync's time once not. Healthy from the start until a change goes unsynced too long.
"""
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler

from ebpflb.agent.http import Listener, reply

DEFAULT_TIMEOUT_S = 60.0   # kube-proxy's: 2 x its default sync period


def go_time(unix_ns: int | None, monotonic_ns: int | None) -> str:
    """A time as Go's time.Time.String() prints it in UTC, with its monotonic reading (since the process
    started) as Go adds it: "2026-01-02 15:04:05.123456789 +0000 UTC m=+12.000000001". None: Go's zero
    time. Nanoseconds, as integers: a float of seconds since 1970 holds a quarter of a microsecond."""
    if unix_ns is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    seconds, ns = divmod(unix_ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if ns:
        text += "." + f"{ns:09d}".rstrip("0")
    text += " +0000 UTC"
    if monotonic_ns is not None:
        whole, part = divmod(abs(monotonic_ns), 1_000_000_000)
        text += f" m={'+' if monotonic_ns >= 0 else '-'}{whole}.{part:09d}"
    return text


class ProxyHealth:
    """kube-proxy's ProxyHealthServer state: when the maps were last brought in line, since when a change
    waits for it, whether the node is eligible. Thread-safe; the clocks are injectable for tests."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, wall=time.time_ns, monotonic=time.monotonic_ns,
                 process_start: float | None = None):
        """Clocks in nanoseconds; `process_start` on time.monotonic()'s clock, in seconds."""
        self.timeout_ns = int(timeout_s * 1e9)
        self.wall, self.monotonic = wall, monotonic
        self.process_start_ns = monotonic() if process_start is None else int(process_start * 1e9)
        self.lock = threading.Lock()
        self.last_updated: tuple[int, int] | None = None   # (wall, monotonic) of the last good sync
        self.pending_since: int | None = None               # monotonic: the oldest change not yet synced
        self.node_eligible = True

    def queued(self) -> None:
        """A change arrived that the maps do not reflect yet (only the oldest one's time counts)."""
        with self.lock:
            if self.pending_since is None:
                self.pending_since = self.monotonic()

    def updated(self) -> None:
        """A sync brought the maps in line with every change queued before it."""
        with self.lock:
            self.pending_since = None
            self.last_updated = (self.wall(), self.monotonic())

    def set_node_eligible(self, eligible: bool) -> None:
        with self.lock:
            self.node_eligible = eligible

    def _now(self) -> tuple[int, int]:
        return self.wall(), self.monotonic()

    def _since_start(self, monotonic: int) -> int:
        return monotonic - self.process_start_ns

    def _state(self):
        with self.lock:
            wall, mono = self._now()
            healthy = self.pending_since is None or mono - self.pending_since < self.timeout_ns
            return healthy, self.node_eligible, self.last_updated, wall, mono

    def _times(self, healthy: bool, last_updated, wall: int, mono: int) -> tuple[str, str]:
        current = go_time(wall, self._since_start(mono))
        if healthy:
            return current, current
        last = go_time(last_updated[0], self._since_start(last_updated[1])) if last_updated else go_time(None, None)
        return last, current

    def healthz(self) -> tuple[int, bytes]:
        healthy, eligible, last_updated, wall, mono = self._state()
        healthy = healthy and eligible
        last, current = self._times(healthy, last_updated, wall, mono)
        body = f'{{"lastUpdated": "{last}","currentTime": "{current}", "nodeEligible": {str(eligible).lower()}}}'
        return (200 if healthy else 503), body.encode()

    def livez(self) -> tuple[int, bytes]:
        healthy, _, last_updated, wall, mono = self._state()
        last, current = self._times(healthy, last_updated, wall, mono)
        return (200 if healthy else 503), f'{{"lastUpdated": "{last}","currentTime": "{current}"}}'.encode()


def serve(address: str, health: ProxyHealth) -> Listener:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/healthz":
                reply(self, *health.healthz(), "application/json")
            elif path == "/livez":
                reply(self, *health.livez(), "application/json")
            else:
                reply(self, 404, b"404 page not found\n")

        def log_message(self, *args):
            pass

    return Listener(address, Handler, "kube-proxy's /healthz and /livez")
