"""Shared fixtures. The lab tests need root and a real kernel; CI runs as root and must never skip."""
import contextlib
import os
import shutil
import uuid

import pytest

from ebpflb.datapath.loader import Datapath, DatapathOptions
from ebpflb.datapath.structs import ffi
from tests.lab import Lab

NODE_ADDR = "192.168.64.6"   # the loaded programs' node address (SNAT source from the uplink)


FIGURES: list[str] = []


@pytest.fixture(scope="session")
def figure():
    """figure(text): a measured figure, printed in the run's summary (reliability, fuzzing, verifier)."""
    return FIGURES.append


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("ebpflb figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session", autouse=True)
def _require_root():
    if os.geteuid() != 0:
        pytest.fail("ebpflb's tests must run as root (network namespaces, BPF); "
                    "they are never skipped", pytrace=False)


@pytest.fixture(scope="module")
def lab():
    """Seed 004's lab (tests/lab.py) with a pod server in every pod; no agents started."""
    lab = Lab()
    try:
        lab.build()
        lab.start_pod_servers()
        yield lab
    finally:
        lab.teardown()


# How the loaded programs fix L4 checksums: "btf" reads the skb's checksum state through the kernel's
# BTF and fixes most in plain instructions (the default where the kernel allows), "helpers" leaves
# every one to the kernel's helpers. The packet test modules run under both (loaded_both_ways).
CSUM_MODES = ["btf", "helpers"]


@pytest.fixture
def pin_dir():
    """A fresh pin dir under /sys/fs/bpf, removed afterwards."""
    path = f"/sys/fs/bpf/ebpflb-test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def loaded_datapath(csum_mode: str = "btf"):
    """The real programs loaded by bcc, maps pinned in a fresh dir under /sys/fs/bpf."""
    pin_dir = f"/sys/fs/bpf/ebpflb-test-{uuid.uuid4().hex[:8]}"
    datapath = Datapath(pin_dir, DatapathOptions(skb_csum_btf=csum_mode == "btf"))
    try:
        yield datapath.load(node_addr=NODE_ADDR)
    finally:
        datapath.close()
        shutil.rmtree(pin_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def loaded():
    with loaded_datapath() as datapath:
        yield datapath


@pytest.fixture(scope="module", params=CSUM_MODES)
def loaded_both_ways(request):
    """`loaded`, once per checksum mode: a module that says `loaded = loaded_both_ways` runs each test
    under both."""
    with loaded_datapath(request.param) as datapath:
        yield datapath


@pytest.fixture
def dp(loaded):
    """The loaded programs with empty maps (compiling once per module keeps the suite quick)."""
    maps = loaded.maps
    for m in (maps.nat_fe, maps.nat_be, maps.svc_ips, maps.ct, maps.src_ranges, maps.affinity, maps.affinity_be):
        for key, _ in m.items():
            m.delete(key)
    for key, word in maps.svc_addr_bits.items():   # an array: its entries are zeroed, not deleted
        if word[0]:
            maps.svc_addr_bits.update(key, ffi.new("__u64 *", 0))
    for svc_id in maps.affinity_svc.nonzero_u32():
        maps.affinity_svc.update(ffi.new("__u32 *", svc_id), ffi.new("struct affinity_svc *"))
    zeros = ffi.new(f"struct svc_counters[{maps.svc_counters.ncpus}]")
    for svc_id in range(1, 8):
        maps.svc_counters.update(ffi.new("__u32 *", svc_id), zeros)
    return loaded
