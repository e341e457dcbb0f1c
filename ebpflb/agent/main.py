"""The agent: keeps the maps equal to what its source (the Kubernetes API or manifests) says, keeps
the programs on every pod veth, sweeps conntrack. On exit it leaves programs and maps in place: the
data plane keeps forwarding without it.

Syncs are coalesced: a change at rest is written at once; under a burst, at most one sync per
--min-sync-period.
"""
import ctypes
import gc
import logging
import os
import select
import signal
import threading
import time
from dataclasses import dataclass

from pyroute2 import IPRoute

from ebpflb.datapath.attach import DEFAULT_WORKLOAD_IFACES, default_route_links, first_ipv4, link_addresses
from ebpflb.agent.healthcheck import HealthCheckServers
from ebpflb.agent.links import LinkKeeper
from ebpflb.datapath import affinity
from ebpflb.datapath.conntrack import Timeouts, forget_udp_flows_to, sweep_in_kernel
from ebpflb.core.services import Usage
from ebpflb.gc_pause import gc_paused
from ebpflb.datapath.loader import DEFAULT_HAIRPIN_ADDR, SOCK_REAPER, Datapath, DatapathOptions
from ebpflb.datapath.cgroup import attach as attach_cgroup, detach as detach_cgroup, resolve_cgroup_root
from ebpflb.datapath.sockets import SocketReaper, netns_cookie
from ebpflb.datapath.structs import C
from ebpflb.agent import proxy_health
from ebpflb.agent.metrics import (AgentMetrics, DataplaneCollector, Health, MapPressure, ServiceCounters,
                                  UplinkCollector, serve)
from ebpflb.paths import DEFAULT_PIN_DIR
from ebpflb.sync.keepers import ids_named_by_flows
from ebpflb.sync.session import SyncSession

log = logging.getLogger("ebpflb.agent")

LOOP_TICK_S = 0.25
FREEZE_AFTER_IDS = 1000   # manifests are polled this often; the loop's heartbeat


@dataclass
class AgentConfig:
    node_name: str
    manifests: str | None = None       # else the Kubernetes API
    kubeconfig: str | None = None      # None with no manifests: in-cluster config
    pin_dir: str = DEFAULT_PIN_DIR
    workload_ifaces: str = DEFAULT_WORKLOAD_IFACES
    proxy_name: str | None = None
    hairpin_addr: str = DEFAULT_HAIRPIN_ADDR
    icmp_rate: int = C.ICMP_RATE_DEFAULT         # ICMP errors the programs send a second, node-wide
    icmp_burst: int = C.ICMP_BURST_DEFAULT       # and at once
    ct_timeouts: Timeouts = Timeouts()
    sweep_interval: float = 10.0
    min_sync_period: float = 1.0
    metrics_addr: str | None = None              # HOST:PORT[,HOST:PORT]
    healthz_addr: str | None = None              # kube-proxy's /healthz and /livez (its 10256)
    healthz_timeout: float = proxy_health.DEFAULT_TIMEOUT_S
    uplinks: tuple[str, ...] | None = None       # None: the default route's interfaces
    nodeport_addresses: tuple[str, ...] = ()     # CIDRs; empty: every node address
    xdp: str = "auto"                            # XDP on the uplinks: auto | native | off (attach.py)
    socket_lb: bool = True                       # Services for this namespace's own sockets (bpf/sock.c)
    cgroup_root: str | None = None               # where those hooks go; None: the host's cgroup v2 root
    localhost_nodeports: bool = False            # host sockets reach NodePorts on 127.0.0.0/8 too
    datapath: DatapathOptions = DatapathOptions()


def import_source_modules(config: AgentConfig) -> None:
    """Import what the source needs (the Kubernetes client's modules: ≈ 1 s) while bcc compiles the
    programs, in a child process: the main thread only waits for it then."""
    try:
        if config.manifests:
            import ebpflb.sources.manifests  # noqa: F401
        else:
            import ebpflb.sources.kube  # noqa: F401
            import kubernetes.client  # noqa: F401
            import kubernetes.config  # noqa: F401
    except Exception:   # make_source imports them again, and says what is wrong
        pass


def make_source(config: AgentConfig, metrics: AgentMetrics):
    if config.manifests:
        from ebpflb.sources.manifests import ManifestSource
        return ManifestSource(config.manifests)
    from ebpflb.sources.kube import KubeSource
    return KubeSource(config.kubeconfig, counters=metrics, node_name=config.node_name)


class Agent:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.stopping = False
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.metrics = AgentMetrics()
        self.health = Health()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.last_sync = float("-inf")
        self.addresses_moved = False
        self.logged_rejections: set = set()
        self.pressure = MapPressure()
        self.proxy_health = proxy_health.ProxyHealth(config.healthz_timeout, process_start=process_started())

    @property
    def tracker(self):
        return self.session.tracker

    def stop(self, *_) -> None:
        self.stopping = True
        self.wake()

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass   # already awake

    def run(self) -> None:
        cfg = self.config
        with IPRoute() as ipr:
            self.uplinks = list(cfg.uplinks) if cfg.uplinks is not None else default_route_links(ipr)
            self.uplink_addrs = link_addresses(ipr, self.uplinks)
        threading.Thread(target=import_source_modules, args=(cfg,), name="import-source", daemon=True).start()
        self.snat_addr = first_ipv4(self.uplink_addrs)
        # What the config map says besides the node address (the SNAT source follows the uplink).
        self.config_rest = dict(hairpin_addr=cfg.hairpin_addr, netns_cookie=netns_cookie() if cfg.socket_lb else 0,
                                flags=C.CFG_FLG_LOCALHOST_NODEPORTS if cfg.localhost_nodeports else 0,
                                icmp_rate=cfg.icmp_rate, icmp_burst=cfg.icmp_burst)
        self.datapath = Datapath(cfg.pin_dir, cfg.datapath).load(node_addr=self.snat_addr, **self.config_rest)
        self.reaper = None
        self._host_sockets()
        maps = self.datapath.maps
        # What the maps hold already: ids go back to their service ports, and the first sync deletes
        # what the maps hold beyond the desired state (sync/session.py).
        self.session = SyncSession(maps, cfg.node_name, proxy_name=cfg.proxy_name,
                                   node_addresses=self.uplink_addrs, nodeport_cidrs=cfg.nodeport_addresses,
                                   capacity=Usage(*(m.max_entries for m in (maps.nat_fe, maps.nat_be,
                                                                            maps.svc_ips, maps.src_ranges))))
        # Conntrack's entries as the last sweep counted them: a scrape does not walk that map.
        self.ct_entries = None
        # The writer as it is at each scrape: a failed sync makes a new one.
        self.metrics.registry.register(DataplaneCollector(self.datapath.maps, lambda: self.session.writer,
                                                          self.tracker, self.lock, lambda: self.ct_entries))
        self.metrics.texts.append(ServiceCounters(self.datapath.maps, self.tracker, self.lock).render)
        servers = [serve(address, self.metrics, self.health)
                   for address in filter(None, (cfg.metrics_addr or "").split(","))]
        if cfg.healthz_addr:
            servers.append(proxy_health.serve(cfg.healthz_addr, self.proxy_health))
        self.health_checks = HealthCheckServers()
        links = LinkKeeper(self.datapath.fds, {"pattern": cfg.workload_ifaces, "uplinks": self.uplinks, "xdp": cfg.xdp},
                           self._uplink_addresses_changed)
        self.metrics.registry.register(UplinkCollector(links))
        self.source = source = make_source(cfg, self.metrics)
        log.info("node %s: programs loaded, maps pinned in %s; uplinks %s (%s)", cfg.node_name, cfg.pin_dir,
                 ", ".join(self.uplinks) or "none", ", ".join(self.uplink_addrs) or "no address")
        # Sweeping half a million entries takes a while: beside the loop, not in it, so it never
        # holds back a sync (it delayed one by 0.7 s at 50k entries).
        sweeper = threading.Thread(target=self._sweep_loop, name="conntrack-sweep", daemon=True)
        try:
            links.start()
            self.uplink_addrs = links.addresses   # as they are now, after the programs' compile
            self.source_started = time.monotonic()
            source.start(self.tracker, self.lock, self.wake)
            self.wake()   # the first turn polls the source (reads the manifests) at once, not a tick later
            sweeper.start()
            while not self.stopping:
                self.health.beat()
                readable, _, _ = select.select([self.wake_r], [], [], self._wait_time())
                if self.wake_r in readable:
                    self._drain_wake()
                source.poll()
                self._follow_node()
                if self.tracker.needs_sync:
                    self.proxy_health.queued()
                if source.synced and self.tracker.needs_sync and self._sync_due():
                    self.sync()
        finally:
            self.stopped.set()
            source.stop()
            if sweeper.is_alive():
                sweeper.join(timeout=5)
            links.stop()
            if self.reaper:
                self.reaper.close()
            self.health_checks.close()
            for server in servers:
                server.shutdown()
            self.datapath.close()
            log.info("stopped; programs and maps stay in place")

    def _uplink_addresses_changed(self, addresses: list[str]) -> None:
        """From the links process's reader thread: the main loop follows at its next turn."""
        self.uplink_addrs = addresses
        self.wake()

    def _host_sockets(self) -> None:
        """The host-socket programs on the cgroup (pinned links: a restart replaces their programs
        in place), or, with --socket-lb off, off it; the reaper where the kernel has one."""
        cfg, fds = self.config, self.datapath.fds
        if not cfg.socket_lb:
            detached = detach_cgroup(cfg.pin_dir, resolve_cgroup_root(cfg.cgroup_root) if cfg.cgroup_root else None)
            if detached:
                log.info("host sockets: %d hooks detached (--socket-lb off)", detached)
            return
        root = resolve_cgroup_root(cfg.cgroup_root)
        done = attach_cgroup(fds, cfg.pin_dir, root)
        log.info("host sockets: %s on cgroup %s; only this network namespace's sockets are translated",
                 ", ".join(f"{name} {how}" for name, how in done.items()), root)
        if SOCK_REAPER in fds:
            self.reaper = SocketReaper(self.datapath.maps, fds[SOCK_REAPER])

    def _follow_node(self) -> None:
        """What this node's Node object says, as it changes: NodePorts listen on the uplinks' addresses
        and on those it lists; its zone label picks the topology hints; being deleted fails kube-proxy's
        /healthz. Without the API (manifests) there is no Node: no zone, always eligible. The SNAT
        source is the uplinks' first IPv4 address."""
        uplink_addrs = self.uplink_addrs   # replaced whole by the links thread
        snat = first_ipv4(uplink_addrs)
        if snat != self.snat_addr:
            self.datapath.write_config(node_addr=snat, **self.config_rest)
            log.info("SNAT source (node address) now %s", snat or "none")
            self.snat_addr = snat
        node = self.source.node(self.config.node_name) if hasattr(self.source, "node") else None
        wanted = tuple(dict.fromkeys([*uplink_addrs, *(node.addresses if node else ())]))
        zone = node.zone if node else ""
        if wanted != tuple(self.tracker.node_addresses):
            with self.lock:
                self.tracker.set_node_addresses(wanted)
            self.addresses_moved = True   # synced at once: NodePorts and SNAT must not wait a period
        if zone != self.tracker.node_zone:
            with self.lock:
                self.tracker.set_node_zone(zone)
        self.proxy_health.set_node_eligible(node.eligible if node else True)

    def _sync_due(self) -> bool:
        return self.addresses_moved or time.monotonic() - self.last_sync >= self.config.min_sync_period

    def _wait_time(self) -> float:
        wait = LOOP_TICK_S
        if self.addresses_moved and self.source.synced:
            wait = 0.0
        elif self.tracker.needs_sync:
            wait = min(wait, max(0.0, self.last_sync + self.config.min_sync_period - time.monotonic()))
        return wait

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def sync(self) -> None:
        started = time.perf_counter()
        self.last_sync = time.monotonic()
        self.addresses_moved = False
        try:
            with self.lock, gc_paused():
                changes, stats = self.session.sync()
                programmed = time.monotonic()   # the maps hold it all now; what follows is housekeeping
                health_checks = dict(self.tracker.state.health_checks)
                # Counted as programmed: what the writer was given (IPv6 is computed, not yet programmed).
                state, rejected = self.session.programmed, self.tracker.rejected
                unprogrammed = self.session.ipv4_only.unprogrammed_frontends
                n_ports, n_frontends = len(state.ids), len(state.frontends)
                n_backends = sum(map(len, state.backends.values()))
                sticky = self._affinity_snapshot() if stats.affinity_left else None
        except Exception:
            self.health.last_sync_failed = True
            log.exception("sync failed; will compare everything again at the next period")
            return
        self.health.last_sync_failed = False
        self.proxy_health.updated()   # a change that came during the sync is queued again at the next turn
        self.health_checks.update(health_checks)
        if len(changes.ids) > FREEZE_AFTER_IDS:
            # Hundreds of thousands of long-lived objects now: keep them out of the cyclic GC's
            # full scans, which otherwise stall a later sync for tens of milliseconds.
            gc.collect()
            gc.freeze()
            release_freed_memory()
        gone = {(svc_id, b.addr, b.port) for svc_id, b in stats.removed_udp_backends}
        flushed = forget_udp_flows_to(self.datapath.maps, gone)
        aborted = self.reaper.abort_udp_sockets_to(gone) if self.reaper and gone else 0
        if sticky is not None:
            # Clients of a backend that left (or of a port whose affinity went) pick anew; the
            # programs ignore such entries already, this frees their room.
            affinity.prune(self.datapath.maps, *sticky)
        elapsed = time.perf_counter() - started
        self.metrics.record_sync(elapsed, state, rejected, stats)
        self.metrics.ipv6_unprogrammed.set(unprogrammed)
        self.metrics.sockets_aborted.inc(aborted)
        if not self.health.ready:
            # The second figure includes the interpreter, the imports and bcc compiling the programs.
            log.info("first full sync done %.2f s after the source started, %.2f s after the process started",
                     programmed - self.source_started, programmed - process_started())
        self.health.ready = True
        for r in set(rejected) - self.logged_rejections:
            log.warning("skipped %s %s/%s: %s (%s)", r.kind, r.namespace, r.name, r.detail, r.reason)
        self.logged_rejections = set(rejected)
        self.pressure.check("frontends", n_frontends, self.datapath.maps.nat_fe.max_entries)
        self.pressure.check("backends", n_backends, self.datapath.maps.nat_be.max_entries)
        log.info("sync: %d service ports, %d frontends, %d backends, %d rejected; "
                 "%d map writes, %d deletes, %d UDP flows moved off gone backends, %d host UDP sockets "
                 "aborted; %.1f ms", n_ports, n_frontends, n_backends, len(rejected), stats.written, stats.deleted,
                 flushed, aborted, elapsed * 1e3)

    def _affinity_snapshot(self) -> tuple[dict[int, int], dict]:
        """(id -> timeout, id -> backends) of the affinity service ports; call with the lock held."""
        state = self.tracker.state
        return dict(state.affinity), {svc_id: state.backends.get(svc_id, ()) for svc_id in state.affinity}

    def _sweep_loop(self) -> None:
        sweep_fd = self.datapath.fds["ct_sweep_keys"]
        while not self.stopped.wait(self.config.sweep_interval):
            started, seen = time.monotonic(), set()
            try:
                swept = sweep_in_kernel(self.datapath.maps, sweep_fd, self.config.ct_timeouts, ids_seen=seen)
                seen |= ids_named_by_flows(self.datapath.maps, skip=("ct",))
                # entries exist only while some port has affinity; prune() also forgets those of a
                # port whose affinity went, which the sync after that change did already
                if self.tracker.state.affinity and self.datapath.maps.affinity.count():
                    with self.lock:
                        sticky = self._affinity_snapshot()
                    affinity.prune(self.datapath.maps, *sticky)
            except Exception:
                log.exception("conntrack sweep failed; trying again at the next interval")
                continue
            with self.lock:
                released = self.session.release(seen, started)
            if released:
                log.info("service ids %s no longer named anywhere: free again", _ranges(released))
            if swept.deleted or swept.spared:
                log.info("conntrack: %d expired entries removed, %d spared (the flow woke or its keys were "
                         "reused since it was judged)", swept.deleted, swept.spared)
            # counted afresh: the walk does not read the twins it deleted ahead of itself
            self.ct_entries = self.datapath.maps.ct.count()
            self.pressure.check("conntrack", self.ct_entries, self.datapath.maps.ct.max_entries)


def _ranges(ids: set[int]) -> str:
    """1-3,7 for {1, 2, 3, 7}."""
    out, run = [], []
    for i in sorted(ids):
        if run and i != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(i)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def process_started() -> float:
    """When this process started, on time.monotonic()'s clock (the kernel's record, to a clock tick)."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])   # field 22, starttime, after "comm)"
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    return time.monotonic() - age


def release_freed_memory() -> None:
    """Give the heap freed by a bulk sync back to the system. glibc keeps it for reuse, but the
    lists, pages and batches of a cold start are not made again: ≈ 30 MB of RSS at 10k services."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):   # not glibc (musl has no malloc_trim): nothing to do
        pass


def run_agent(config: AgentConfig) -> None:
    agent = Agent(config)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    agent.run()
