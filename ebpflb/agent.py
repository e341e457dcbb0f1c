"""The agent: keeps the maps equal to what the manifests say, keeps the programs on every pod
veth, sweeps conntrack. On exit it leaves programs and maps in place: the data plane keeps
forwarding without it."""
import logging
import select
import signal
import time
from dataclasses import dataclass

from .attach import DEFAULT_WORKLOAD_IFACES, WorkloadAttacher
from .conntrack import Timeouts, forget_udp_flows_to, sweep
from .core.ids import recover_ids
from .core.services import desired_state
from .loader import DEFAULT_HAIRPIN_ADDR, Datapath
from .manifests import ManifestError, fingerprint, load_manifests
from .paths import DEFAULT_PIN_DIR
from .writer import MapWriter

log = logging.getLogger("ebpflb.agent")


@dataclass
class AgentConfig:
    manifests: str
    node_name: str
    pin_dir: str = DEFAULT_PIN_DIR
    workload_ifaces: str = DEFAULT_WORKLOAD_IFACES
    proxy_name: str | None = None
    hairpin_addr: str = DEFAULT_HAIRPIN_ADDR
    ct_timeouts: Timeouts = Timeouts()
    sweep_interval: float = 10.0
    poll_interval: float = 0.25    # how often the manifests are checked for changes


class Agent:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.stopping = False
        self.datapath: Datapath | None = None
        self.writer: MapWriter | None = None
        self.ids = {}
        self.seen_fingerprint = None

    def stop(self, *_) -> None:
        self.stopping = True

    def run(self) -> None:
        cfg = self.config
        self.datapath = Datapath(cfg.pin_dir).load(hairpin_addr=cfg.hairpin_addr)
        self.writer = MapWriter(self.datapath.maps)
        attacher = WorkloadAttacher(self.datapath.fds, cfg.workload_ifaces)
        log.info("node %s: programs loaded, maps pinned in %s", cfg.node_name, cfg.pin_dir)
        try:
            attacher.reconcile()
            self.sync_if_changed()
            next_sweep = time.monotonic() + cfg.sweep_interval
            while not self.stopping:
                readable, _, _ = select.select([attacher], [], [], cfg.poll_interval)
                if readable:
                    attacher.handle_events()
                self.sync_if_changed()
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + cfg.sweep_interval
        finally:
            attacher.close()
            self.datapath.close()
            log.info("stopped; programs and maps stay in place")

    def sync_if_changed(self) -> None:
        try:
            current = fingerprint(self.config.manifests)
        except (OSError, ManifestError) as err:
            log.error("cannot read manifests: %s; keeping what is programmed", err)
            return
        if current != self.seen_fingerprint:
            self.seen_fingerprint = current
            self.sync()

    def sync(self) -> None:
        started = time.perf_counter()
        try:
            services, slices = load_manifests(self.config.manifests)
        except ManifestError as err:
            log.error("%s; keeping what is programmed", err)
            return
        desired = self._desired(services, slices)
        for rejected in desired.rejected:
            log.warning("skipped %s %s/%s: %s (%s)", rejected.kind, rejected.namespace, rejected.name,
                        rejected.detail, rejected.reason)
        stats = self.writer.apply(desired)
        self.ids = desired.ids
        gone = {(svc_id, b.addr, b.port) for svc_id, b in stats.removed_backends}
        flushed = forget_udp_flows_to(self.datapath.maps, gone)
        log.info("sync: %d service ports, %d frontends, %d backends, %d rejected; "
                 "%d map writes, %d deletes, %d UDP flows moved off gone backends; %.1f ms",
                 len(desired.ids), len(desired.frontends), sum(map(len, desired.backends.values())),
                 len(desired.rejected), stats.written, stats.deleted, flushed,
                 (time.perf_counter() - started) * 1e3)

    def _desired(self, services, slices):
        def compute(known):
            return desired_state(services, slices, node_name=self.config.node_name,
                                 known_ids=known, proxy_name=self.config.proxy_name)

        if self.ids:
            return compute(self.ids)
        # First sync of this process: take back the ids the maps already use.
        programmed = {key: fe.svc_id for key, fe in self.writer.mirror.frontends.items()}
        return compute(recover_ids(compute({}), programmed))

    def sweep(self) -> None:
        deleted = sweep(self.datapath.maps, self.config.ct_timeouts)
        if deleted:
            log.info("conntrack: %d expired entries removed", deleted)


def run_agent(config: AgentConfig) -> None:
    agent = Agent(config)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    agent.run()
