"""Issue 8: the conntrack sweep racing new connections. Pod C opens short HTTP connections from a
narrow port range, so each port carries a new connection every ~70 ms, while node-2's agent sweeps
every 20 ms with closed flows expiring after 50 ms. A sweep that judged a closed flow expired must
not delete the new connection that took its keys before the delete: its SYN-ACK would go back
untranslated, the client would reset it and wait a second to retry.

The race needs each port reused just after its closed flow expires: sooner, the new connection
reopens the flow before any sweep judges it (nothing is swept, nothing races); much later, the
sweep is long done. How often a port comes round depends on the request rate, which differs from
machine to machine by more than 2x (25.6k and 42.6k requests in 20 s from 64 ports), so the range
is sized from the rate measured first."""
import re
import time

import pytest

from tests.lab import NODES
from tests.reliability import Load, agents_on_api, seed_objects
from tests.test_lab_api import frontend
from tests.test_lab_dataplane import VIP, wait_for

FIRST_PORT = 40000
REUSE_S = 0.07          # each port's next connection: after the 50 ms timeout, within a few sweeps
LOAD_S = 20


def port_range(ports: int) -> str:
    """ports usable by connect(), which takes those of one parity: a range twice as wide."""
    return f"{FIRST_PORT} {FIRST_PORT + 2 * ports - 1}"


@pytest.fixture(scope="module")
def racing_sweep(lab):
    default_range = lab.run("C", "sysctl", "-n", "net.ipv4.ip_local_port_range").stdout.split()
    lab.run("C", "sysctl", "-qw", f"net.ipv4.ip_local_port_range={port_range(64)}")
    agents_on_api(lab, seed_objects(), "--ct-timeouts", "tcp-fin=0.05,tcp-rst=0.05", "--ct-sweep-interval", "0.02")
    try:
        for n in NODES:
            wait_for(lambda: (frontend(lab, n, VIP, 8080) or (0,))[0] == 2, timeout=90, what=f"agent on {n}")
        yield
    finally:
        for n in NODES:
            lab.stop_agent(n)
        lab.run("C", "sysctl", "-qw", f"net.ipv4.ip_local_port_range={' '.join(default_range)}")


def swept_entries(lab, node: str) -> tuple[int, int]:
    """(removed, spared) entries, summed over the sweeps node's agent logged."""
    counts = re.findall(r"conntrack: (\d+) expired entries removed, (\d+) spared", lab.agent_log(node))
    return sum(int(r) for r, _ in counts), sum(int(s) for _, s in counts)


def test_sweep_never_deletes_a_connection_that_reused_a_swept_port(lab, racing_sweep, figure):
    warm_up = Load(lab, "C", VIP, "--long-lived", 0, "--udp-flows", 0)
    time.sleep(2)
    rate = warm_up.stop().requests / 2
    ports = max(16, round(rate * REUSE_S))
    lab.run("C", "sysctl", "-qw", f"net.ipv4.ip_local_port_range={port_range(ports)}")

    swept_before, spared_before = swept_entries(lab, "node-2")
    load = Load(lab, "C", VIP, "--long-lived", 2, "--udp-flows", 2)
    try:
        time.sleep(LOAD_S)
    finally:
        report = load.stop()
    swept, spared = (n - before for n, before in zip(swept_entries(lab, "node-2"), (swept_before, spared_before)))
    figure(f"sweep racing port reuse ({ports} ports for {rate:.0f} requests/s: each reused every ~{1e3 * ports / rate:.0f} "
           f"ms; sweep every 20 ms, closed flows expire after 50 ms): {report.summary()}; on node-2 {swept} entries "
           f"swept, {spared} judged expired and spared (woken or reused before their delete)")
    # The race was run: the sweep deleted closed flows (a third to a half of them, two entries each:
    # a flow whose port came round within the timeout is reopened, never swept), and every port
    # comes round again within ~70 ms, so each swept flow's keys were taken by a new connection
    # right after (or while) the sweep deleted them. How many the sweep judged and then spared
    # is no evidence either way: the kernel sweep (sweep_in_kernel()) judges and claims a few
    # instructions apart, so a reuse between the two is rare; tests/test_sweep_in_kernel.py runs
    # that race on two CPUs.
    assert swept > report.requests // 4, (swept, spared, report.requests)
    report.assert_nothing_lost()
