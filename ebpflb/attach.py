"""Attach the workload programs at tc (clsact, direct-action) on pod veths, with pyroute2."""
import logging
import re

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

FILTER_PREFIX = "ebpflb:"     # TCA_BPF_NAME of our filters: how cleanup recognises them
FILTER_PRIO = 0xEB            # our fixed slot: re-attaching replaces in place, atomically
INGRESS = "ffff:fff2"
EGRESS = "ffff:fff3"
# The host side of pod veths as the usual CNIs name them (Calico, Cilium, flannel/bridge, kindnet...).
DEFAULT_WORKLOAD_IFACES = r"^(cali|veth|lxc|tap|vnet|azv|eni|gke|enp0s\d+f\d+v)"
EEXIST = 17


def _link_name(msg) -> str:
    return msg.get_attr("IFLA_IFNAME") or ""


def ensure_clsact(ipr: IPRoute, ifindex: int) -> None:
    try:
        ipr.tc("add", "clsact", ifindex)
    except NetlinkError as err:
        if err.code != EEXIST:
            raise


def attach_workload(ipr: IPRoute, ifindex: int, fds: dict[str, int]) -> None:
    """from_workload at ingress (the pod sends), to_workload at egress (the pod receives)."""
    ensure_clsact(ipr, ifindex)
    for parent, prog in ((INGRESS, "from_workload"), (EGRESS, "to_workload")):
        ipr.tc("replace-filter", "bpf", ifindex, ":1", fd=fds[prog], name=FILTER_PREFIX + prog,
               parent=parent, classid=1, direct_action=True, prio=FILTER_PRIO)


def our_filters(ipr: IPRoute):
    """(ifindex, ifname, parent, prio) of every filter ebpflb attached in this namespace."""
    for link in ipr.get_links():
        ifindex = link["index"]
        for parent in (INGRESS, EGRESS):
            try:
                filters = ipr.get_filters(ifindex, parent=parent)
            except NetlinkError:
                continue   # no clsact on this link
            for f in filters:
                name = f.get_nested("TCA_OPTIONS", "TCA_BPF_NAME") or ""
                if name.startswith(FILTER_PREFIX):
                    yield ifindex, _link_name(link), parent, f["info"] >> 16


def detach_all(ipr: IPRoute) -> list[str]:
    """Remove every ebpflb filter in this namespace; returns the interfaces touched."""
    touched = []
    for ifindex, ifname, parent, prio in list(our_filters(ipr)):
        ipr.tc("del-filter", "bpf", ifindex, parent=parent, prio=prio)
        touched.append(ifname)
    return sorted(set(touched))


class WorkloadAttacher:
    """Keeps the programs on every link whose name matches, existing and future ones."""

    def __init__(self, fds: dict[str, int], pattern: str = DEFAULT_WORKLOAD_IFACES):
        self.fds = fds
        self.pattern = re.compile(pattern)
        self.ipr = IPRoute()
        self.events = IPRoute()
        self.events.bind()
        self.attached: dict[int, str] = {}

    def fileno(self) -> int:
        return self.events.fileno()

    def _consider(self, ifindex: int, name: str) -> None:
        if not self.pattern.search(name) or self.attached.get(ifindex) == name:
            return
        try:
            attach_workload(self.ipr, ifindex, self.fds)
        except NetlinkError as err:
            if err.code == 19:   # ENODEV: gone again before we got to it
                return
            log.error("attaching to %s (ifindex %d) failed: %s", name, ifindex, err)
            return
        self.attached[ifindex] = name
        log.info("attached to %s (ifindex %d)", name, ifindex)

    def reconcile(self) -> None:
        """Attach to every matching link not yet attached; forget links that are gone."""
        present = {}
        for link in self.ipr.get_links():
            present[link["index"]] = _link_name(link)
            self._consider(link["index"], present[link["index"]])
        for ifindex in self.attached.keys() - present.keys():
            del self.attached[ifindex]

    def handle_events(self) -> None:
        """Call when fileno() is readable. pyroute2 may read several notifications at once and
        return only some, so a notification only says "links changed": reconcile with a dump."""
        self.events.get()
        self.reconcile()

    def close(self) -> None:
        self.events.close()
        self.ipr.close()
