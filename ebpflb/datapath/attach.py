"""Attach the workload programs at tc (clsact, direct-action) on pod veths, with pyroute2."""
import errno
import logging
import re
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

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


# (ingress program, egress program) for each kind of link.
WORKLOAD = ("from_workload", "to_workload")   # a pod veth's host side: ingress = the pod sends
UPLINK = ("from_uplink", "to_uplink")         # the node's uplink: ingress = from outside


def attach_tc(ipr: IPRoute, ifindex: int, fds: dict[str, int], programs: tuple[str, str]) -> None:
    ensure_clsact(ipr, ifindex)
    for parent, prog in zip((INGRESS, EGRESS), programs):
        ipr.tc("replace-filter", "bpf", ifindex, ":1", fd=fds[prog], name=FILTER_PREFIX + prog,
               parent=parent, classid=1, direct_action=True, prio=FILTER_PRIO)


def default_route_links(ipr: IPRoute) -> list[str]:
    """The interfaces of this namespace's IPv4 default routes: the usual uplink."""
    names = []
    for route in ipr.get_default_routes(family=2):
        oif = route.get_attr("RTA_OIF")
        if oif:
            names += [_link_name(link) for link in ipr.get_links(oif)]
    return sorted(set(names))


def link_addresses(ipr: IPRoute, names: list[str]) -> list[str]:
    """IPv4 addresses of the named links, in order."""
    addrs = []
    for name in names:
        for index in ipr.link_lookup(ifname=name):
            addrs += [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)]
    return addrs


XDP_FLAGS_DRV_MODE = 1 << 2   # native: in the driver, before an skb exists
XDP_PROGRAM = "xdp_uplink"


def attach_xdp(ipr: IPRoute, ifindex: int, fd: int) -> None:
    ipr.link("set", index=ifindex, xdp_fd=fd, xdp_flags=XDP_FLAGS_DRV_MODE)


def detach_xdp(ipr: IPRoute, ifindex: int) -> None:
    ipr.link("set", index=ifindex, xdp_fd=-1, xdp_flags=XDP_FLAGS_DRV_MODE)


def our_xdp_links(ipr: IPRoute):
    """(ifindex, ifname) of links carrying ebpflb's XDP program."""
    from ebpflb.datapath.libbpf import BPFError, prog_name
    for link in ipr.get_links():
        xdp = link.get_attr("IFLA_XDP")
        prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
        try:
            if prog_id and prog_name(prog_id) == XDP_PROGRAM:
                yield link["index"], _link_name(link)
        except BPFError:
            continue   # detached meanwhile


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
    """Remove every ebpflb filter and XDP program in this namespace; the interfaces touched."""
    touched = []
    for ifindex, ifname, parent, prio in list(our_filters(ipr)):
        ipr.tc("del-filter", "bpf", ifindex, parent=parent, prio=prio)
        touched.append(ifname)
    for ifindex, ifname in list(our_xdp_links(ipr)):
        detach_xdp(ipr, ifindex)
        touched.append(ifname)
    return sorted(set(touched))


# Notifications the attacher listens to: links (new pod veths) and IPv4 addresses (the uplinks'); not
# routes or neighbours, which change all the time on a busy node and would each mean a dump.
EVENT_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR
NOTIFICATION_BUFFER = 1 << 20   # bytes: a few thousand link notifications between two reads
SO_RCVBUFFORCE = 33             # linux/asm-generic/socket.h: past rmem_max (CAP_NET_ADMIN)


class LinkAttacher:
    """Keeps the uplink programs on the uplinks and the workload programs on every link whose
    name matches the pattern, existing and future ones; knows the uplinks' addresses."""

    def __init__(self, fds: dict[str, int], pattern: str = DEFAULT_WORKLOAD_IFACES,
                 uplinks: list[str] = (), xdp: bool = True):
        self.fds = fds
        self.pattern = re.compile(pattern)
        self.uplinks = set(uplinks)
        self.uplink_order = list(uplinks)
        self.xdp = xdp
        self.ipr = IPRoute()
        self.events = self._subscribe()
        self.marshal = MarshalRtnl()
        self.attached: dict[int, str] = {}

    @staticmethod
    def _subscribe() -> socket.socket:
        """A plain netlink socket, its messages parsed by pyroute2: pyroute2's own socket fails for good
        at the first ENOBUFS (every later read and even its close raise it again), where the kernel's
        socket goes on."""
        events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
        try:
            events.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, NOTIFICATION_BUFFER)
        except OSError:   # without CAP_NET_ADMIN: what rmem_max allows
            events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NOTIFICATION_BUFFER)
        events.bind((0, EVENT_GROUPS))
        return events

    def fileno(self) -> int:
        return self.events.fileno()

    def uplink_addresses(self) -> list[str]:
        """The uplinks' IPv4 addresses now, in the order the uplinks were given."""
        return link_addresses(self.ipr, self.uplink_order)

    def _consider(self, ifindex: int, name: str) -> None:
        programs = UPLINK if name in self.uplinks else WORKLOAD if self.pattern.search(name) else None
        if programs is None or self.attached.get(ifindex) == name:
            return
        try:
            attach_tc(self.ipr, ifindex, self.fds, programs)
        except NetlinkError as err:
            if err.code == 19:   # ENODEV: gone again before we got to it
                return
            log.error("attaching to %s (ifindex %d) failed: %s", name, ifindex, err)
            return
        self.attached[ifindex] = name
        log.info("attached %s/%s to %s (ifindex %d)", *programs, name, ifindex)
        if programs == UPLINK:
            self._xdp(ifindex, name)

    def _xdp(self, ifindex: int, name: str) -> None:
        """XDP in front of the uplink's tc programs, where the driver can run it natively."""
        try:
            if self.xdp:
                attach_xdp(self.ipr, ifindex, self.fds[XDP_PROGRAM])
                log.info("attached %s (native) to %s", XDP_PROGRAM, name)
            elif any(i == ifindex for i, _ in our_xdp_links(self.ipr)):
                detach_xdp(self.ipr, ifindex)
                log.info("detached %s from %s (--xdp off)", XDP_PROGRAM, name)
        except NetlinkError as err:
            log.warning("no native XDP on %s (%s): tc alone serves it", name, err)

    def reconcile(self) -> None:
        """Attach to every matching link not yet attached; forget links that are gone."""
        present = {}
        for link in self.ipr.get_links():
            present[link["index"]] = _link_name(link)
            self._consider(link["index"], present[link["index"]])
        for ifindex in self.attached.keys() - present.keys():
            del self.attached[ifindex]

    def handle_events(self) -> bool:
        """Call when fileno() is readable. A new link is attached from its notification at once; then,
        as pyroute2 may read several notifications and return only some, a dump catches what was
        missed. A netlink error (ENOBUFS: the kernel dropped notifications we were too slow for) is
        not fatal: every link is read again. Returns whether an address may have changed."""
        try:
            messages = [msg for data in self._pending() for msg in self.marshal.parse(data)]
        except OSError as err:
            why = "notifications came faster than read" if err.errno == errno.ENOBUFS else err
            log.warning("link notifications lost (%s): reading every link and address again", why)
            if err.errno != errno.ENOBUFS:   # the socket itself may be the trouble
                self.events.close()
                self.events = self._subscribe()
            self.reconcile()
            return True
        addresses = False
        for msg in messages:
            event = msg.get("event")
            if event == "RTM_NEWLINK":
                self._consider(msg["index"], _link_name(msg))
            elif event == "RTM_DELLINK":
                self.attached.pop(msg["index"], None)
            elif event in ("RTM_NEWADDR", "RTM_DELADDR"):
                addresses = True
        self.reconcile()
        return addresses

    def _pending(self):
        """Every datagram waiting on the notification socket."""
        while True:
            try:
                yield self.events.recv(NOTIFICATION_BUFFER)
            except BlockingIOError:
                return

    def close(self) -> None:
        self.events.close()
        self.ipr.close()
