"""The links of the agent's network namespace, kept by a process of their own: a new pod veth gets the
programs as its notification arrives (a new pod's first DNS query depends on it), never behind a
sync of 10k services or a manifest reread. A thread was not enough: the agent's bulk work holds
Python's GIL for hundreds of milliseconds at a time (a 10 MB JSON parse, the collection after a
cold start), and an attach waited behind it.

The child gets the program fds, attaches to what is there, then follows link and address
notifications (datapath/attach.py: LinkAttacher), and watches the uplinks' XDP transmit errors
(--xdp auto falls back to tc when they grow). It tells the agent the uplinks' addresses and what
each uplink runs whenever they change, one JSON line each, so NodePorts and the SNAT source follow
and the metrics say what runs. It exits when
the agent does (its end of a pipe closes; the kernel's parent-death signal besides), and the agent
starts it again should it die.

Nothing here stops the agent: netlink errors make the child read every link again (attach.py).
"""
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ebpflb.datapath.attach import UplinkXdp

log = logging.getLogger(__name__)

RESTART_S = 1.0
XDP_WATCH_S = 1.0   # how often the child reads the uplinks' XDP transmit errors
_CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); from ebpflb.agent.links import child_main; "
          "sys.exit(child_main(sys.argv[2]))")


class LinkKeeper:
    def __init__(self, fds: dict[str, int], options: dict, on_addresses: Callable[[list[str]], None]):
        """`options`: LinkAttacher's pattern, uplinks, xdp; `on_addresses(addresses)`: the uplinks' IPv4
        addresses changed (called from a thread of the agent)."""
        self.fds, self.options, self.on_addresses = fds, options, on_addresses
        self.addresses: list[str] = []
        # What each uplink runs, as the child last said: read by the metrics (UplinkCollector).
        self.uplink_xdp: dict[str, UplinkXdp] = {}
        self._fallbacks_before: dict[str, int] = {}   # counted by children that exited
        self.stopping = False
        self.child: subprocess.Popen | None = None
        self.reader = threading.Thread(target=self._read, name="links", daemon=True)

    def start(self) -> None:
        """Start the child; returns once it attached to the links there are now."""
        self._spawn()
        self.reader.start()

    def stop(self) -> None:
        self.stopping = True
        child = self.child
        if child is not None and child.poll() is None:
            os.close(self.life_w)   # the child exits at EOF
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()

    def _spawn(self) -> None:
        names = list(self.fds)
        life_r, self.life_w = os.pipe()
        report_r, report_w = os.pipe()
        request = json.dumps({"fds": {n: self.fds[n] for n in names}, "life": life_r, "report": report_w,
                              "parent": os.getpid(), **self.options})
        root = str(Path(__file__).resolve().parents[2])
        self.child = subprocess.Popen([sys.executable, "-c", _CHILD, root, request],
                                      pass_fds=(*self.fds.values(), life_r, report_w))
        os.close(life_r)
        os.close(report_w)
        self.report = os.fdopen(report_r, "rb", buffering=0)
        for name, state in self.uplink_xdp.items():
            self._fallbacks_before[name] = state.fallbacks
        first = self._next_report()
        if first is None:
            raise RuntimeError(f"the links process exited with {self.child.wait()} before it attached")
        self.addresses = first

    def _next_report(self) -> list[str] | None:
        line = self.report.readline()
        if not line:
            return None
        report = json.loads(line)
        self.uplink_xdp = {name: UplinkXdp(state["mode"], state["reason"],
                                           fallbacks=self._fallbacks_before.get(name, 0) + state["fallbacks"])
                           for name, state in report["xdp"].items()}
        return report["addresses"]

    def _read(self) -> None:
        while True:
            addresses = self._next_report()
            if addresses is not None:
                if addresses != self.addresses:
                    self.addresses = addresses
                    self.on_addresses(addresses)
                continue
            if self.stopping:
                return
            log.error("the links process exited with %s; starting it again in %.0f s", self.child.wait(), RESTART_S)
            while not self.stopping:
                time.sleep(RESTART_S)
                try:
                    os.close(self.life_w)
                    self._spawn()
                    self.on_addresses(self.addresses)
                    break
                except Exception:
                    log.exception("starting the links process failed")


def child_main(request_json: str) -> int:
    """In the child: attach, then follow until the agent goes."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C: the agent decides, and then closes the pipe
    request = json.loads(request_json)
    _die_with_parent(request.pop("parent"))
    from ebpflb.datapath.attach import LinkAttacher
    life, report = request.pop("life"), os.fdopen(request.pop("report"), "wb", buffering=0)
    attacher = LinkAttacher(request.pop("fds"), **request)

    def xdp_state() -> dict:
        return {name: {"mode": s.mode, "reason": s.reason, "fallbacks": s.fallbacks}
                for name, s in attacher.uplink_xdp.items()}

    def tell(addresses: list[str], xdp: dict) -> None:
        report.write(json.dumps({"addresses": addresses, "xdp": xdp}).encode() + b"\n")

    attacher.reconcile()
    addresses, xdp = attacher.uplink_addresses(), xdp_state()
    tell(addresses, xdp)
    xdp_watched = time.monotonic()
    while True:
        try:
            wait = max(0.0, xdp_watched + XDP_WATCH_S - time.monotonic())
            readable, _, _ = select.select([attacher, life], [], [], wait)
            if life in readable:
                return 0   # the agent is gone (or stopping)
            now = addresses
            if attacher in readable and attacher.handle_events():
                now = attacher.uplink_addresses()
            if time.monotonic() - xdp_watched >= XDP_WATCH_S:
                xdp_watched = time.monotonic()
                attacher.watch_xdp()
            if now != addresses or xdp_state() != xdp:
                if now != addresses:
                    log.info("uplink addresses now %s (were %s)", ", ".join(now) or "none",
                             ", ".join(addresses) or "none")
                addresses, xdp = now, xdp_state()
                tell(addresses, xdp)
        except BrokenPipeError:
            return 0
        except Exception:   # the links keep being looked after whatever happened
            log.exception("following the links failed; reading them again in %.0f s", RESTART_S)
            time.sleep(RESTART_S)
            try:
                attacher.reconcile()
            except Exception:
                log.exception("reading the links failed")


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the agent dies, kill -9 included (prctl PR_SET_PDEATHSIG). If it died before the
    prctl, this process was already handed to another parent: exit. (Not "the parent is pid 1": in a
    container the agent is pid 1.)"""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(0)
