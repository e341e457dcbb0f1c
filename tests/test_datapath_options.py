"""Compile-time options change what the programs do, as the agent's flags say: --no-endpoints=drop
answers nothing where kube-proxy would reject, --bpf-trace writes each new flow's decision to the
kernel's trace buffer."""
import os
import random
import shutil
import subprocess
import uuid

import pytest
from scapy.layers.inet import IP, TCP

from ebpflb.datapath.loader import Datapath, DatapathOptions
from tests.test_datapath_packets import (B, C_POD, SYN, TC_ACT_NEXT, TC_ACT_REDIRECT, TC_ACT_SHOT, VIP, VIP_EMPTY,
                                         from_pod, program, run)

TRACEFS = "/sys/kernel/tracing"


@pytest.fixture(scope="module")
def load():
    loaded = []

    def load(**options):
        pin_dir = f"/sys/fs/bpf/ebpflb-test-{uuid.uuid4().hex[:8]}"
        datapath = Datapath(pin_dir, DatapathOptions(**options)).load()
        loaded.append((datapath, pin_dir))
        return datapath
    yield load
    for datapath, pin_dir in loaded:
        datapath.close()
        shutil.rmtree(pin_dir, ignore_errors=True)


@pytest.mark.parametrize("reject, verdict", [(True, TC_ACT_REDIRECT), (False, TC_ACT_SHOT)], ids=["reject", "drop"])
def test_a_service_without_endpoints_is_rejected_or_dropped_as_chosen(load, reject, verdict):
    dp = load(reject_no_endpoints=reject)
    program(dp, (VIP_EMPTY, 8080, 6, [], 0))
    got, out = run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP_EMPTY) / TCP(**SYN)))
    assert got == verdict
    if reject:
        assert IP(out[14:]).proto == 1   # the ICMP port unreachable, sent back to the pod


def test_bpf_trace_writes_each_new_flows_decision(load):
    if not os.path.exists(f"{TRACEFS}/trace"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)
    dp = load(trace=True)
    program(dp, (VIP, 8080, 6, [B], 0))
    client = f"10.244.{random.randrange(1, 250)}.{random.randrange(1, 250)}"   # this run's own line
    assert run(dp, "from_workload", from_pod(IP(src=client, dst=VIP) / TCP(**SYN)))[0] == TC_ACT_NEXT
    with open(f"{TRACEFS}/trace") as trace:
        lines = [line for line in trace if f"ebpflb: service 1: {client} -> backend {B}" in line]
    assert lines, "no trace line for the new flow"
