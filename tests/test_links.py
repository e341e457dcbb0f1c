"""Issue 15.6: the link notifications. An overflow of the notification socket (ENOBUFS: links came
faster than they were read) makes the attacher read every link again; it never stops the agent."""
import os
import select
import socket
import subprocess
import sys
import uuid

import pytest

from ebpflb.datapath.attach import EVENT_GROUPS, LinkAttacher, first_ipv4, link_addresses, our_filters
from tests.lab import in_netns


@pytest.fixture
def netns():
    name = f"elblk-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def attached(attacher) -> set[str]:
    return {ifname for _, ifname, parent, _ in our_filters(attacher.ipr)}


def test_only_link_and_address_notifications_are_subscribed(loaded, netns):
    with in_netns(netns):
        attacher = LinkAttacher(loaded.fds, r"^vethp")
        try:
            groups = socket.socket(fileno=os.dup(attacher.events.fileno())).getsockname()[1]
            assert groups == EVENT_GROUPS == 0x111   # RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        finally:
            attacher.close()


def test_uplink_addresses_are_ipv4_then_the_usable_ipv6_ones(loaded, netns):
    """NodePorts listen on what link_addresses() says: IPv4 first (the SNAT source is the first IPv4
    one), then IPv6 of global scope once duplicate address detection passed; never link-local."""
    def ip(*args):
        subprocess.run(["ip", "-n", netns, *args], check=True)
    ip("link", "add", "up0", "type", "veth", "peer", "name", "far0")   # no dummy module on this kernel
    ip("link", "add", "up1", "type", "veth", "peer", "name", "far1")
    ip("address", "add", "fd00:1::4/64", "dev", "up0", "nodad")
    ip("address", "add", "192.0.2.4/24", "dev", "up0")
    ip("address", "add", "fe80::4/64", "dev", "up0", "nodad")
    ip("address", "add", "198.51.100.4/24", "dev", "up1")
    ip("address", "add", "fd00:2::4/64", "dev", "up1", "nodad")
    for link in ("far0", "up1", "far1"):   # up0 stays down: an address added there stays tentative
        ip("link", "set", link, "up")
    with in_netns(netns):
        attacher = LinkAttacher(loaded.fds, r"^vethp", uplinks=["up1", "up0"])
        try:
            ip("address", "add", "fd00:3::4/64", "dev", "up0")   # duplicate address detection waits for the link
            assert attacher.uplink_addresses() == link_addresses(attacher.ipr, ["up1", "up0"]) == [
                "198.51.100.4", "192.0.2.4", "fd00:2::4", "fd00:1::4"]
            assert first_ipv4(attacher.uplink_addresses()) == "198.51.100.4"
            assert first_ipv4(["fd00:2::4"]) is None
            ip("address", "flush", "dev", "up1")
            assert attacher.uplink_addresses() == ["192.0.2.4", "fd00:1::4"]
        finally:
            attacher.close()


def test_a_notification_overflow_reads_every_link_again(loaded, netns):
    with in_netns(netns):
        attacher = LinkAttacher(loaded.fds, r"^vethp")
        try:
            # The smallest receive buffer the kernel allows: a burst of new links overflows it.
            socket.socket(fileno=os.dup(attacher.events.fileno())).setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            subprocess.run(["ip", "-batch", "-"], check=True, text=True,
                           input="".join(f"link add vethp{i} type veth peer name peer{i}\n" for i in range(30)))
            assert attacher.handle_events()          # no exception: every link read again
            assert attached(attacher) == {f"vethp{i}" for i in range(30)}
            # and it still hears of what comes next
            subprocess.run(["ip", "link", "add", "vethp99", "type", "veth", "peer", "name", "peer99"], check=True)
            assert select.select([attacher], [], [], 5)[0]
            attacher.handle_events()
            assert "vethp99" in attached(attacher)
        finally:
            attacher.close()


def test_overflows_leak_no_file_descriptors(loaded, netns):
    with in_netns(netns):
        attacher = LinkAttacher(loaded.fds, r"^vethp")
        try:
            before = len(os.listdir("/proc/self/fd"))
            for round_ in range(3):
                socket.socket(fileno=os.dup(attacher.events.fileno())).setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
                subprocess.run(["ip", "-batch", "-"], check=True, text=True,
                               input="".join(f"link add vethp{round_}x{i} type veth peer name p{round_}x{i}\n"
                                             for i in range(30)))
                attacher.handle_events()
            assert len(os.listdir("/proc/self/fd")) <= before
        finally:
            attacher.close()


# The agent as a container's pid 1 (the chart's pod): its links process must not take "my parent is
# pid 1" for "my parent died" (the image's agent exited at start until this was fixed).
AGENT_AS_PID_1 = """
import os, sys
sys.path.insert(0, sys.argv[1])
from ebpflb.agent.links import LinkKeeper
assert os.getpid() == 1, os.getpid()
keeper = LinkKeeper({}, {"pattern": r"^vethp", "uplinks": [], "xdp": "auto"}, lambda addresses: None)
keeper.start()
child = keeper.child
keeper.stop()
print("started", child.pid, "exited", child.returncode)
"""


def test_the_links_process_starts_when_the_agent_is_pid_1(netns):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(["ip", "netns", "exec", netns, "unshare", "--pid", "--fork", "--mount-proc",
                          sys.executable, "-c", AGENT_AS_PID_1, root],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("started ") and run.stdout.split()[-1] == "0", run.stdout
