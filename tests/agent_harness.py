"""The agent run in-process (a thread in a network namespace of its own), fed by manifests: for tests
that reach into it (its metrics registry, its writer) or inject a fault into a sync."""
import contextlib
import os
import shutil
import subprocess
import threading
import time
import uuid

import yaml

from ebpflb.agent.main import Agent, AgentConfig
from tests.lab import in_netns


@contextlib.contextmanager
def running_agent(manifests, **options):
    """An Agent on manifests in a fresh namespace (no uplink), its pins under /sys/fs/bpf; stopped,
    unpinned and its namespace deleted afterwards."""
    ns = f"elbag-{os.urandom(3).hex()}"
    pin_dir = f"/sys/fs/bpf/ebpflb-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    agent = Agent(AgentConfig(node_name="node-a", manifests=str(manifests), pin_dir=pin_dir, uplinks=(),
                              **{"min_sync_period": 0.05, **options}))
    failed = []

    def main():
        with in_netns(ns):
            try:
                agent.run()
            except BaseException as err:   # noqa: BLE001 (reported by the test)
                failed.append(err)

    thread = threading.Thread(target=main, name="agent-under-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not agent.health.ready:
            assert not failed and thread.is_alive(), f"the agent stopped: {failed}"
            assert time.monotonic() < deadline, "the agent did not sync within 60 s"
            time.sleep(0.05)
        yield agent
        assert not failed, failed
    finally:
        agent.stop()
        thread.join(timeout=30)
        shutil.rmtree(pin_dir, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def wait_until(predicate, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def service_manifest(name: str, vip: str, backends=("10.1.0.1",)) -> str:
    return yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
         "spec": {"clusterIP": vip, "clusterIPs": [vip], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"name": f"{name}-1", "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": [b], "conditions": {"ready": True}, "nodeName": "node-b"} for b in backends]}])
