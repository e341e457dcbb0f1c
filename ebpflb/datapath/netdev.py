"""What a network device says about XDP: its XDP features (the kernel's `netdev` generic-netlink
family, kernel >= 6.3) and the XDP transmit errors its driver counts (ethtool statistics). The
agent decides from them whether an uplink gets the XDP program (attach.py)."""
import re
from dataclasses import dataclass

from pyroute2.netlink import NLM_F_REQUEST, genlmsg
from pyroute2.netlink.generic import GenericNetlinkSocket

# include/uapi/linux/netdev.h: enum netdev_xdp_act
XDP_ACT_BASIC = 1 << 0          # XDP_ABORTED, DROP, PASS and TX
XDP_ACT_REDIRECT = 1 << 1
XDP_ACT_NDO_XMIT = 1 << 2       # takes frames by ndo_xdp_xmit (a veth: its peer can receive them)
NETDEV_CMD_DEV_GET = 1


class _netdev_msg(genlmsg):
    nla_map = (("NETDEV_A_DEV_UNSPEC", "none"),
               ("NETDEV_A_DEV_IFINDEX", "uint32"),
               ("NETDEV_A_DEV_PAD", "none"),
               ("NETDEV_A_DEV_XDP_FEATURES", "uint64"),
               ("NETDEV_A_DEV_XDP_ZC_MAX_SEGS", "uint32"),
               ("NETDEV_A_DEV_XDP_RX_METADATA_FEATURES", "uint64"),
               ("NETDEV_A_DEV_XSK_FEATURES", "uint64"))


def xdp_features(ifindex: int) -> int | None:
    """The device's XDP features (XDP_ACT_* bits) in this network namespace; None when the kernel
    has no netdev family (before 6.3) or says nothing of the device."""
    sock = GenericNetlinkSocket()
    try:
        try:
            sock.bind("netdev", _netdev_msg)
        except Exception:   # no such family: an older kernel
            return None
        msg = _netdev_msg()
        msg["cmd"] = NETDEV_CMD_DEV_GET
        msg["version"] = 1
        msg["attrs"] = [("NETDEV_A_DEV_IFINDEX", ifindex)]
        try:
            answers = list(sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST))
        except Exception:
            return None
        for answer in answers:
            features = answer.get_attr("NETDEV_A_DEV_XDP_FEATURES")
            if features is not None:
                return features
        return None
    finally:
        sock.close()


# A driver's count of frames XDP sent (XDP_TX, or redirected into it) that it could not: veth's
# rx_queue_N_xdp_tx_errors and tx_queue_N_xdp_xmit_errors, mlx5's rx_xdp_tx_err and txN_xdp_err,
# most others' rx_xdp_tx_errors and tx_xdp_xmit_errors.
XDP_TX_ERRORS = re.compile(r"xdp.*(tx|xmit).*err|xdp_err")


def xdp_tx_errors(ifname: str) -> int | None:
    """The sum of the device's XDP transmit error counters (ethtool -S); None when it has none."""
    from pyroute2.ethtool.ioctl import IoctlEthtool
    try:
        ethtool = IoctlEthtool(ifname)
    except Exception:
        return None
    try:
        counters = [value for name, value in ethtool.get_statistics() if XDP_TX_ERRORS.search(name)]
    except Exception:   # no statistics at all
        return None
    finally:
        ethtool.close()
    return sum(counters) if counters else None


def veth_peer_runs_xdp(ipr, ifindex: int) -> bool | None:
    """Does the peer of veth ifindex run a native XDP program? Asked in the peer's namespace through
    the netns id the kernel gives it (rtnetlink's target netns id); None when it cannot be asked."""
    try:
        link = ipr.get_links(ifindex)[0]
        peer, nsid = link.get_attr("IFLA_LINK"), link.get_attr("IFLA_LINK_NETNSID")
        if not peer:
            return None
        peers = ipr.get_links(peer, IFLA_IF_NETNSID=nsid) if nsid is not None else ipr.get_links(peer)
        xdp = peers[0].get_attr("IFLA_XDP")
    except Exception:
        return None
    return bool(xdp and xdp.get_attr("IFLA_XDP_DRV_PROG_ID"))


@dataclass(frozen=True)
class XdpChoice:
    native: bool
    reason: str


def auto_choice(kind: str, features: int | None, peer_runs_xdp: bool | None = None) -> XdpChoice:
    """--xdp auto: native XDP only where what XDP sends back out (XDP_TX) is known to be delivered.

    A veth sends XDP_TX frames into its peer's XDP receive ring, which exists only while the peer
    runs an XDP program or GRO (kind, k3d and many VMs have veth uplinks whose peers run neither:
    the frames are dropped, silently). The kernel says so in the veth's own features (NDO_XMIT).
    A peer with GRO alone is not enough either: the kernel wakes the peer for XDP_TX frames only
    when it runs an XDP program, so they stop after its ring's 256 (measured on 6.18; redirected
    frames are woken for). peer_runs_xdp: what the peer runs, when that could be asked (None: not)."""
    if features is None:
        if kind == "veth":
            return XdpChoice(False, "veth, and the kernel does not say whether its peer takes XDP frames")
        return XdpChoice(True, "the kernel does not report XDP features: native XDP tried")
    if not features & XDP_ACT_BASIC:
        return XdpChoice(False, "the driver has no native XDP")
    if kind != "veth":
        return XdpChoice(True, "the driver sends XDP frames itself")
    if not features & XDP_ACT_NDO_XMIT:
        return XdpChoice(False, "veth whose peer takes no XDP frames (no XDP program, no GRO on the peer)")
    if peer_runs_xdp is False:
        return XdpChoice(False, "veth whose peer has GRO but no XDP program: its XDP_TX frames are not delivered")
    return XdpChoice(True, "veth whose peer runs XDP" if peer_runs_xdp else
                     "veth whose peer takes XDP frames (its program could not be asked: XDP transmit errors watched)")
