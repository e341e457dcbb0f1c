"""Attach the programs with pyroute2: tc (clsact, direct-action) on pod veths and uplinks, and XDP
on the uplinks where what it sends is delivered (--xdp auto, netdev.py)."""
import errno
import logging
import re
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK
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


IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x08, 0x40   # linux/if_addr.h: not (yet) usable as an address
RT_SCOPE_UNIVERSE = 0


def link_addresses(ipr: IPRoute, names: list[str]) -> list[str]:
    """The named links' addresses, in the links' order: the IPv4 ones, then the IPv6 ones a NodePort
    can be reached on (global scope, duplicate address detection passed; not link-local)."""
    v4, v6 = [], []
    for name in names:
        for index in ipr.link_lookup(ifname=name):
            v4 += [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=socket.AF_INET)]
            v6 += [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=socket.AF_INET6)
                   if a["scope"] == RT_SCOPE_UNIVERSE and
                   not (a.get_attr("IFA_FLAGS") or a["flags"]) & (IFA_F_TENTATIVE | IFA_F_DADFAILED)]
    return v4 + v6


def first_ipv4(addresses: list[str]) -> str | None:
    """The SNAT source among the uplinks' addresses: the first IPv4 one."""
    return next((a for a in addresses if ":" not in a), None)


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


XDP_MODES = ("auto", "native", "off")


@dataclass
class UplinkXdp:
    """What an uplink runs: "xdp" (xdp_uplink in front of tc) or "tc" (tc alone), and why."""
    mode: str
    reason: str
    errors: int | None = None      # the driver's XDP transmit errors when last read
    fallbacks: int = 0


# Notifications the attacher listens to: links (new pod veths) and IPv4 addresses (the uplinks'); not
# routes or neighbours, which change all the time on a busy node and would each mean a dump.
EVENT_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
NOTIFICATION_BUFFER = 1 << 20   # bytes: a few thousand link notifications between two reads
SO_RCVBUFFORCE = 33             # linux/asm-generic/socket.h: past rmem_max (CAP_NET_ADMIN)


class LinkAttacher:
    """Keeps the uplink programs on the uplinks and the workload programs on every link whose
    name matches the pattern, existing and future ones; knows the uplinks' addresses.

    xdp: "auto" (native XDP only on uplinks that deliver what it sends, netdev.auto_choice(); back
    to tc when their XDP transmit errors grow), "native" (forced), or "off"."""

    def __init__(self, fds: dict[str, int], pattern: str = DEFAULT_WORKLOAD_IFACES,
                 uplinks: list[str] = (), xdp: str = "auto"):
        if xdp not in XDP_MODES:
            raise ValueError(f"--xdp {xdp!r}: one of {', '.join(XDP_MODES)}")
        self.fds = fds
        self.pattern = re.compile(pattern)
        self.uplinks = set(uplinks)
        self.uplink_order = list(uplinks)
        self.xdp = xdp
        self.ipr = IPRoute()
        self.events = self._subscribe()
        self.marshal = MarshalRtnl()
        self.attached: dict[int, str] = {}
        self.uplink_xdp: dict[str, UplinkXdp] = {}   # by uplink name: read by the metrics

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
        """The uplinks' addresses now (link_addresses())."""
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

    def _link_kind(self, ifindex: int) -> str:
        for link in self.ipr.get_links(ifindex):
            return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""
        return ""

    def _xdp(self, ifindex: int, name: str) -> None:
        """XDP in front of the uplink's tc programs, as --xdp says."""
        from ebpflb.datapath.netdev import auto_choice, veth_peer_runs_xdp, xdp_features, xdp_tx_errors
        ours = any(i == ifindex for i, _ in our_xdp_links(self.ipr))
        if self.xdp == "off":
            if ours:
                detach_xdp(self.ipr, ifindex)
            self._set_mode(name, "tc", "--xdp off")
            return
        if self.xdp == "auto":
            kind = self._link_kind(ifindex)
            choice = auto_choice(kind, xdp_features(ifindex),
                                 veth_peer_runs_xdp(self.ipr, ifindex) if kind == "veth" else None)
            if not choice.native:
                if ours:
                    detach_xdp(self.ipr, ifindex)
                self._set_mode(name, "tc", choice.reason)
                return
            reason = choice.reason
        else:
            reason = "--xdp native"
        try:
            attach_xdp(self.ipr, ifindex, self.fds[XDP_PROGRAM])
        except NetlinkError as err:
            self._set_mode(name, "tc", f"no native XDP ({err})")
            return
        log.info("attached %s (native) to %s", XDP_PROGRAM, name)
        self._set_mode(name, "xdp", reason, errors=xdp_tx_errors(name))

    def _set_mode(self, name: str, mode: str, reason: str, errors: int | None = None) -> None:
        state = self.uplink_xdp.setdefault(name, UplinkXdp(mode, reason))
        state.mode, state.reason, state.errors = mode, reason, errors
        log.info("uplink %s: %s (%s)", name, "XDP in front of tc" if mode == "xdp" else "tc alone", reason)

    def watch_xdp(self) -> None:
        """Call now and then: an uplink whose driver counts more XDP transmit errors than when
        last asked drops what XDP sends (a veth whose peer lost its XDP program or GRO, a NIC's
        full or missing XDP queues). Under --xdp auto it goes back to tc alone; under native it
        is said, and kept."""
        from ebpflb.datapath.netdev import xdp_tx_errors
        for ifindex, name in list(self.attached.items()):
            state = self.uplink_xdp.get(name)
            if state is None or state.mode != "xdp":
                continue
            errors = xdp_tx_errors(name)
            if errors is None or state.errors is None or errors <= state.errors:
                state.errors = errors if errors is not None else state.errors
                continue
            grown, state.errors = errors - state.errors, errors
            if self.xdp != "auto":
                log.warning("uplink %s: %d more XDP transmit errors: what XDP sends is dropped (--xdp native "
                            "keeps it; --xdp auto would fall back to tc)", name, grown)
                continue
            try:
                detach_xdp(self.ipr, ifindex)
            except NetlinkError as err:
                log.error("uplink %s: XDP transmit errors grow, but detaching XDP failed: %s", name, err)
                continue
            state.fallbacks += 1
            log.warning("uplink %s: %d more XDP transmit errors: falling back to tc", name, grown)
            self._set_mode(name, "tc", "fell back: its XDP transmit errors grew")

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
