"""Shared fixtures. The lab tests need root and a real kernel; CI runs as root and must never skip."""
import os

import pytest

from tests.lab import Lab


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
