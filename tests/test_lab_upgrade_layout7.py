"""Issue 19's upgrade under load: every node runs the previous version's agent (layout 7, its own
code from `git archive`), clients keep going (pod C to svc-1's ClusterIP, outside client X to a
NodePort on node-2 whose backends are remote, SNATed), then every agent is replaced by this
version's, which finds layout-7 pins and carries them over (ebpflb/datapath/upgrade.py).

Established flows opened before the upgrade must all survive: no long-lived TCP connection broken,
no UDP flow unanswered, no request failed. A connection opened within the milliseconds of a node's
handover may see its SYN-ACK or first reply translated by the other generation's programs and
retransmit its SYN: those are counted and reported (requests over 1 s), not hidden."""
import signal
import subprocess
import time

import pytest

from tests.lab import NODE_IPS, NODES
from tests.reliability import Load, seed_objects, start_agent
from tests.test_lab_api import frontend
from tests.test_lab_dataplane import VIP, wait_for
from tests.test_reliability_restarts import NODEPORTS, nodeport_service
from tests.test_upgrade_layout7 import LAYOUT7_COMMIT, ROOT
from tests.apiserver import node

HANDOVER_RETRANSMITS_MAX = 6   # new connections whose SYN may be retransmitted: at most 2 per node


@pytest.fixture(scope="module")
def layout7_code(tmp_path_factory):
    path = tmp_path_factory.mktemp("layout7")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", LAYOUT7_COMMIT, "bpf", "ebpflb"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
    return path


def first_sync_after(lab, n: str, since: int, timeout: float = 90) -> str:
    wait_for(lambda: "sync:" in lab.agent_log(n)[since:], timeout=timeout, interval=0.2, what=f"agent on {n} to sync")
    return next(line for line in lab.agent_log(n)[since:].splitlines() if "sync:" in line)


def test_established_flows_survive_the_upgrade_from_layout_7(lab, layout7_code, figure):
    server, kubeconfig = lab.start_apiserver(bookmark_interval=0.5)
    server.load([*seed_objects(), *nodeport_service(), *(node(n, NODE_IPS[n]) for n in NODES)])
    try:
        for n in NODES:
            lab.start_agent(n, None, "--metrics-addr", "127.0.0.1:10249", "--uplinks", "eth0",
                            kubeconfig=kubeconfig, code=layout7_code)
        for n in NODES:
            first_sync_after(lab, n, 0)
        inside = Load(lab, "C", VIP, "--long-lived", 4, "--udp-flows", 4)
        outside = Load(lab, "X", NODE_IPS["node-2"], "--http-port", NODEPORTS["http"],
                       "--echo-port", NODEPORTS["echo"], "--udp-port", NODEPORTS["dns"], "--long-lived", 4,
                       "--udp-flows", 4)
        try:
            time.sleep(3)   # flows established through the old programs
            logged = {n: len(lab.agent_log(n)) for n in NODES}
            for n in NODES:
                lab.stop_agent(n, signal.SIGTERM)   # programs and maps stay, as for any restart
                start_agent(lab, n, kubeconfig)
            for n in NODES:
                first_sync_after(lab, n, logged[n])
                log = lab.agent_log(n)[logged[n]:]
                assert "upgrading to this layout" in log and "upgrade from layout 7 done" in log, log[-2000:]
            time.sleep(3)   # and on through the new ones
            for n in NODES:
                assert (frontend(lab, n, VIP, 8080) or (0,))[0] == 2, n   # svc-1's two backends, in layout 8's maps
            assert lab.http_get("C", VIP, 8080).strip() in ("A0", "B")
        finally:
            reports = {"C -> ClusterIP": inside.stop(), "X -> NodePort on node-2": outside.stop()}
        for what, report in reports.items():
            figure(f"upgrade from layout 7 under load (every node's agent replaced), {what}: {report.summary()}")
        for report in reports.values():
            assert report.requests > 0 and all(c["answers"] > 0 for c in report.long_lived), report.summary()
            assert not report.broken, f"established connections broken: {report.broken}"
            assert not report.udp_timeouts, f"UDP flows unanswered: {report.udp_timeouts[:10]}"
            assert not report.http_failures, f"requests failed: {report.http_failures[:10]}"
        retransmits = sum(len(r.http_over_1s) for r in reports.values())
        figure(f"upgrade from layout 7: {retransmits} new connections retransmitted their SYN at the handover")
        assert retransmits <= HANDOVER_RETRANSMITS_MAX, {w: r.http_over_1s for w, r in reports.items()}
    finally:
        for n in NODES:
            lab.stop_agent(n)
