"""Prometheus metrics (ebpflb_ prefix, base units) and the /healthz, /readyz and /proxyMode endpoints
(the last as on kube-proxy's metrics port: tools ask it which mode the proxy runs in)."""
import logging
import time
from http.server import BaseHTTPRequestHandler

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ebpflb.agent.http import Listener, reply
from ebpflb.datapath.structs import ffi
from ebpflb.views.drops import drop_totals

log = logging.getLogger(__name__)

HEARTBEAT_STALE_S = 10
PROXY_MODE = b"ebpf"   # /proxyMode: kube-proxy answers iptables, ipvs, nftables or kernelspace


class AgentMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.sync_duration = Histogram("ebpflb_sync_duration_seconds", "Time to bring the maps in line with the desired state",
                                       buckets=(.001, .0025, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5), registry=r)
        self.last_sync = Gauge("ebpflb_last_successful_sync_timestamp_seconds", "Unix time of the last successful sync", registry=r)
        self.services = Gauge("ebpflb_services_programmed", "Service ports programmed", registry=r)
        self.backends = Gauge("ebpflb_backends_programmed", "Backends programmed over all service ports", registry=r)
        self.map_writes = Counter("ebpflb_map_writes_total", "Map entries written or deleted by syncs", ["op"], registry=r)
        self.watch_events = Counter("ebpflb_watch_events_total", "Watch events received", ["resource", "type"], registry=r)
        self.watch_restarts = Counter("ebpflb_watch_restarts_total", "Watches restarted", ["resource", "reason"], registry=r)
        self.rejected = Gauge("ebpflb_objects_rejected", "Objects skipped as malformed, by reason", ["kind", "reason"], registry=r)
        self.ipv6_unprogrammed = Gauge("ebpflb_ipv6_frontends_unprogrammed",
                                       "IPv6 frontends the core computed that the IPv4-only data plane does not "
                                       "hold yet", registry=r)
        self.sockets_aborted = Counter("ebpflb_host_udp_sockets_aborted_total",
                                       "Connected UDP sockets of the node's namespace aborted because their backend left",
                                       registry=r)

        # Renderers of families too large for prometheus_client's formatting (ServiceCounters)
        self.texts = []

    def text(self) -> bytes:
        """What /metrics serves: the registry, then the families rendered by hand."""
        return generate_latest(self.registry) + b"".join(render() for render in self.texts)

    def watch_event(self, resource: str, kind: str) -> None:
        self.watch_events.labels(resource, kind).inc()

    def watch_restart(self, resource: str, reason: str) -> None:
        self.watch_restarts.labels(resource, reason).inc()

    def record_sync(self, seconds: float, state, rejected, stats) -> None:
        self.sync_duration.observe(seconds)
        self.last_sync.set(time.time())
        self.services.set(len(state.ids))
        self.backends.set(sum(map(len, state.backends.values())))
        self.map_writes.labels("write").inc(stats.written)
        self.map_writes.labels("delete").inc(stats.deleted)
        self.rejected.clear()
        counts: dict[tuple[str, str], int] = {}
        for r in rejected:
            counts[(r.kind, r.reason)] = counts.get((r.kind, r.reason), 0) + 1
        for (kind, reason), n in counts.items():
            self.rejected.labels(kind, reason).set(n)


class MapPressure:
    """Warns once when a map fills past HIGH (and says so again only after it fell below LOW): a
    full conntrack map evicts the least recently used flows, full NAT maps leave services out."""
    HIGH, LOW = 0.9, 0.75

    def __init__(self):
        self.warned: set[str] = set()

    def check(self, name: str, entries: int, capacity: int) -> None:
        fill = entries / capacity if capacity else 0.0
        if fill >= self.HIGH and name not in self.warned:
            self.warned.add(name)
            advice = {"conntrack": "least recently used flows are evicted; raise --ct-map-max",
                      "frontends": "services that do not fit are left out; raise --frontend-map-max",
                      "backends": "services that do not fit are left out; raise --backend-map-max"}.get(name, "")
            log.warning("%s map is %.0f%% full (%d of %d entries): %s", name, 100 * fill, entries, capacity, advice)
        elif fill < self.LOW and name in self.warned:
            self.warned.discard(name)
            log.info("%s map is back to %.0f%% full (%d of %d entries)", name, 100 * fill, entries, capacity)


class DataplaneCollector:
    """Read at scrape time: map fill and capacity, and drops by reason from the per-CPU map (the
    per-service counters: ServiceCounters)."""

    def __init__(self, maps, writer, tracker, lock, ct_entries=None):
        """`writer`: a callable giving the agent's writer now (a failed sync replaces it);
        `ct_entries`: one giving conntrack's entries as the last sweep counted them (None: not
        counted yet), so that a scrape does not walk a map of half a million entries."""
        self.maps, self.writer, self.tracker, self.lock = maps, writer, tracker, lock
        self.ct_entries = ct_entries or (lambda: None)

    def collect(self):
        entries = GaugeMetricFamily("ebpflb_map_entries", "Entries in a BPF map", labels=["map"])
        capacity = GaugeMetricFamily("ebpflb_map_capacity", "Capacity of a BPF map (max entries)", labels=["map"])
        pressure = GaugeMetricFamily("ebpflb_map_pressure", "Fill of a BPF map: entries / capacity (1 = full)", labels=["map"])
        with self.lock:
            writer = self.writer()
            # IPv4's: IPv6 ids are computed, not programmed (sync/family.py), and count nothing yet
            names = {name: i for name, i in self.tracker.state.ids.items() if name.family == 4}
            filled = {"frontends": len(writer.frontends),
                      "backends": sum(len(slots) for gens in writer.slots.values() for slots in gens.values())}
        counted = self.ct_entries()
        filled["conntrack"] = self.maps.ct.count() if counted is None else counted
        for name, bpf_map in (("frontends", self.maps.nat_fe), ("backends", self.maps.nat_be), ("conntrack", self.maps.ct)):
            entries.add_metric([name], filled[name])
            capacity.add_metric([name], bpf_map.max_entries)
            pressure.add_metric([name], filled[name] / bpf_map.max_entries)
        yield entries
        yield capacity
        yield pressure

        dropped = CounterMetricFamily("ebpflb_dropped_packets", "Packets the programs dropped, by reason",
                                      labels=["reason"])
        dropped_bytes = CounterMetricFamily("ebpflb_dropped_bytes", "Bytes of the packets the programs dropped, by reason",
                                            labels=["reason"])
        for reason, (n, octets) in drop_totals(self.maps.drops.items()).items():
            dropped.add_metric([reason], n)
            dropped_bytes.add_metric([reason], octets)
        yield dropped
        yield dropped_bytes


def service_totals(svc_counters, end: int) -> tuple[list[int], list[int], list[int]]:
    """(packets, bytes, connections), each a list indexed by service id below `end`, summed over
    CPUs: the per-CPU array read in batches (a scrape at 10k services made 10k lookups)."""
    fields = ffi.sizeof("struct svc_counters") // 8   # packets, bytes, connections: u64 each
    words, ncpus = svc_counters.u64_words_below(end), svc_counters.ncpus
    columns = []
    for field in range(fields):
        per_key_cpu = words[field::fields]               # key 0 cpu 0, key 0 cpu 1, ...
        columns.append(list(map(sum, zip(*(per_key_cpu[cpu::ncpus] for cpu in range(ncpus))))))
    return tuple(columns)


class ServiceCounters:
    """Read at scrape time: packets, bytes and new connections per service port, summed over CPUs,
    rendered as Prometheus text by hand. prometheus_client's formatting of 30k samples (10k
    service ports) cost 140 ms of CPU a scrape, four times the rest; here each port's label set is
    rendered once and kept."""
    FAMILIES = (("ebpflb_service_packets_total", "Packets through a service port (both directions)"),
                ("ebpflb_service_bytes_total", "Bytes through a service port (both directions)"),
                ("ebpflb_service_connections_total", "New connections to a service port"))

    def __init__(self, maps, tracker, lock):
        self.maps, self.tracker, self.lock = maps, tracker, lock
        self.labels: dict = {}   # ServicePortName -> its rendered label set

    def label_set(self, name) -> str:
        key = (name.namespace, name.name, name.port, name.protocol)   # both families' ids: one set
        text = self.labels.get(key)
        if text is None:
            text = self.labels[key] = "{" + ",".join(
                f'{key}="{escape(value)}"' for key, value in (("name", name.name), ("namespace", name.namespace),
                                                             ("port", name.port), ("protocol", name.protocol))) + "}"
        return text

    def render(self) -> bytes:
        with self.lock:
            names = sorted(self.tracker.state.ids.items())
        if len(self.labels) > 2 * len(names) + 1024:   # ports come and go: forget the gone ones
            self.labels = {}
        totals = service_totals(self.maps.svc_counters, max((i for _, i in names), default=-1) + 1)
        # A dual-stack port has an id per address family; its series is their sum (one label set,
        # as a Service port is one thing to its owner, whichever family its clients use).
        ids_by_label: dict[str, list[int]] = {}
        for name, svc_id in names:
            ids_by_label.setdefault(self.label_set(name), []).append(svc_id)
        out = []
        for (family, help_text), column in zip(self.FAMILIES, totals):
            out.append(f"# HELP {family} {help_text}\n# TYPE {family} counter\n")
            out.extend(f"{family}{label} {sum(column[i] for i in ids)}\n" for label, ids in ids_by_label.items())
        return "".join(out).encode()


def escape(value: str) -> str:
    """A label value in Prometheus text: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class UplinkCollector:
    """Read at scrape time: what each uplink runs (--xdp), and how often XDP fell back to tc."""

    def __init__(self, attacher):
        self.attacher = attacher

    def collect(self):
        mode = GaugeMetricFamily("ebpflb_uplink_xdp", "What an uplink runs: mode xdp (XDP in front of tc) or tc "
                                 "(tc alone); 1 for the current mode", labels=["uplink", "mode"])
        fallbacks = CounterMetricFamily("ebpflb_uplink_xdp_fallbacks", "Times XDP was taken off an uplink because "
                                        "its XDP transmit errors grew (--xdp auto)", labels=["uplink"])
        for name, state in sorted(dict(self.attacher.uplink_xdp).items()):
            for m in ("xdp", "tc"):
                mode.add_metric([name, m], 1 if state.mode == m else 0)
            fallbacks.add_metric([name], state.fallbacks)
        yield mode
        yield fallbacks


class Health:
    """alive: the main loop turns and the last sync did not fail; ready: the first full sync is done."""

    def __init__(self):
        self.heartbeat = time.monotonic()
        self.ready = False
        self.last_sync_failed = False

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.heartbeat < HEARTBEAT_STALE_S and not self.last_sync_failed


def serve(address: str, metrics: AgentMetrics, health: Health) -> Listener:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/metrics":
                reply(self, 200, metrics.text(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = health.alive()
                reply(self, 200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
            elif path == "/readyz":
                reply(self, 200 if health.ready else 503, b"ready\n" if health.ready else b"not ready\n")
            elif path == "/proxyMode":
                reply(self, 200, PROXY_MODE)
            else:
                reply(self, 404, b"not found\n")

        def log_message(self, *args):
            pass

    return Listener(address, Handler, "metrics, /healthz, /readyz and /proxyMode")
