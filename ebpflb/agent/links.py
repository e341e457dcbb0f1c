"""The links of the agent's network namespace, kept on a thread of their own: a new pod veth gets the
programs as its notification arrives (a new pod's first DNS query depends on it), never behind a
sync of 10k services or a manifest reread on the main loop; and the uplinks' addresses are followed
(NodePorts and the SNAT source move with them).

Nothing here stops the agent: a netlink error (ENOBUFS when notifications came faster than they were
read) makes it read every link again; anything else is logged and tried again.
"""
import logging
import os
import select
import sys
import threading
from collections.abc import Callable

from ebpflb.datapath.attach import LinkAttacher

log = logging.getLogger(__name__)

# The main thread is busy in Python for seconds at a time during bulk work; this thread then waits
# for the GIL up to the switch interval after each of its syscalls (an attach makes about ten).
SWITCH_INTERVAL_S = 0.001
RETRY_S = 1.0


class LinkKeeper:
    def __init__(self, make_attacher: Callable[[], LinkAttacher], on_addresses: Callable[[list[str]], None]):
        """`make_attacher()` is called on the thread (pyroute2's sockets belong to the thread that made
        them); `on_addresses(addresses)`: the uplinks' IPv4 addresses changed (called from the thread)."""
        self.make_attacher = make_attacher
        self.on_addresses = on_addresses
        self.attacher: LinkAttacher | None = None
        self.addresses: list[str] = []
        self.wake_r, self.wake_w = os.pipe()
        self.stopping = False
        self.started = threading.Event()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="links", daemon=True)

    def start(self) -> None:
        """Attach to what is there now (returns once done), then follow on the thread."""
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self.thread.start()
        self.started.wait()
        if self.failed is not None:
            raise self.failed

    def stop(self) -> None:
        self.stopping = True
        os.write(self.wake_w, b"x")
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _run(self) -> None:
        try:
            self.attacher = self.make_attacher()
            self.attacher.reconcile()
            self.addresses = self.attacher.uplink_addresses()
        except BaseException as err:   # start() raises it
            self.failed = err
            return
        finally:
            self.started.set()
        try:
            self._follow()
        finally:
            self.attacher.close()

    def _follow(self) -> None:
        while not self.stopping:
            try:
                readable, _, _ = select.select([self.attacher, self.wake_r], [], [])
                if self.attacher in readable and self.attacher.handle_events():
                    self._check_addresses()
            except Exception:   # the links keep being looked after whatever happened
                log.exception("following the links failed; reading them again in %.0f s", RETRY_S)
                select.select([self.wake_r], [], [], RETRY_S)
                try:
                    self.attacher.reconcile()
                    self._check_addresses()
                except Exception:
                    log.exception("reading the links failed")

    def _check_addresses(self) -> None:
        addresses = self.attacher.uplink_addresses()
        if addresses != self.addresses:
            log.info("uplink addresses now %s (were %s)", ", ".join(addresses) or "none",
                     ", ".join(self.addresses) or "none")
            self.addresses = addresses
            self.on_addresses(addresses)
