"""tests/chart_pod.py: the chart's DaemonSet as `podman run` arguments for `make image-test`; what it
cannot give the same meaning it refuses, so a change of the chart's privileges or mounts breaks
the image test instead of running the image some other way."""
import copy
import json
from pathlib import Path

import pytest

from tests import chart_pod
from tests.test_helm import helm, render  # noqa: F401  (helm: the fixture)

NETNS = "elbtest-node2"
BPFFS = Path("/sys/fs/bpf/elbtest/node-2")


def args_of(ds, container="agent", tmp=Path("/tmp")):
    (tmp / "cgroup").mkdir(exist_ok=True)     # stands for the lab node's cgroup
    return chart_pod.run_args(ds, container, name="c", netns=NETNS, node_name="node-2", node_bpffs=tmp / "bpffs",
                              node_cgroup=tmp / "cgroup", sa_dir=Path("/sa"))


def options(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


@pytest.fixture(scope="module")
def default_ds(helm, tmp_path_factory):
    (ds,) = [d for d in render(helm, tmp_path_factory.mktemp("pod"), {}) if d["kind"] == "DaemonSet"]
    return ds


def test_agent_gets_the_charts_capabilities_mounts_and_the_nodes_network(default_ds, tmp_path):
    args = args_of(default_ds, tmp=tmp_path)
    assert "--privileged" not in args
    assert [a for a in args if a.startswith("--cap-")] == [
        "--cap-drop=all", "--cap-add=BPF", "--cap-add=NET_ADMIN", "--cap-add=PERFMON", "--cap-add=SYS_ADMIN"]
    assert "--user=0" in args
    assert options(args, "--network") == [f"ns:/run/netns/{NETNS}"]
    assert options(args, "--volume") == [
        f"{tmp_path / 'bpffs'}:/sys/fs/bpf:rw,rslave", f"{tmp_path / 'cgroup'}:/run/ebpflb/cgroupv2:ro,rprivate",
        "/lib/modules:/lib/modules:ro,rprivate", "/usr/src:/usr/src:ro,rprivate", f"/sa:{chart_pod.SA_MOUNT}:ro,rprivate"]
    assert (tmp_path / "bpffs").is_dir()                  # hostPath type DirectoryOrCreate
    assert "NODE_NAME=node-2" in options(args, "--env")
    image = args.index("ebpflb:0.1.0")
    assert "--node-name=node-2" in args[image + 1:]        # $(NODE_NAME) expanded as the kubelet does
    assert not any(a.startswith("--entrypoint") for a in args)   # the image's `ebpflb agent`


def test_init_container_is_privileged_with_bidirectional_bpffs(default_ds, tmp_path):
    args = args_of(default_ds, "mount-bpffs", tmp_path)
    assert "--privileged" in args
    assert options(args, "--volume")[0] == f"{tmp_path / 'bpffs'}:/sys/fs/bpf:rw,rshared"
    (entrypoint,) = [a for a in args if a.startswith("--entrypoint=")]
    assert json.loads(entrypoint.split("=", 1)[1])[:2] == ["/bin/sh", "-c"]


def test_headers_fallback_runs_the_link_script_first(helm, tmp_path):
    (ds,) = [d for d in render(helm, tmp_path, {"kernelHeaders": {"fromHost": False}}) if d["kind"] == "DaemonSet"]
    args = args_of(ds, tmp=tmp_path)
    assert [v.split(":")[1] for v in options(args, "--volume")] == ["/sys/fs/bpf", "/run/ebpflb/cgroupv2",
                                                                     chart_pod.SA_MOUNT]
    (entrypoint,) = [a for a in args if a.startswith("--entrypoint=")]
    assert "install.sh --link-headers" in json.loads(entrypoint.split("=", 1)[1])[2]


@pytest.mark.parametrize("change, refused", [
    (lambda pod, agent: agent["securityContext"].update(procMount="Unmasked"), "procMount"),
    (lambda pod, agent: agent["volumeMounts"].append({"name": "etc", "mountPath": "/host-etc"})
     or pod["volumes"].append({"name": "etc", "hostPath": {"path": "/etc", "type": "Directory"}}),
     "writable host mount /etc"),
    (lambda pod, agent: pod.update(hostNetwork=False), "hostNetwork"),
    (lambda pod, agent: pod.update(hostPID=True), "hostPID"),
    (lambda pod, agent: agent.update(lifecycle={"preStop": {}}), "lifecycle"),
    (lambda pod, agent: agent["env"].append({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
     "env X"),
])
def test_what_it_cannot_translate_it_refuses(default_ds, tmp_path, change, refused):
    ds = copy.deepcopy(default_ds)
    pod = ds["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    change(pod, agent)
    with pytest.raises(chart_pod.Untranslatable, match=refused):
        args_of(ds, tmp=tmp_path)


def test_kubelet_variable_expansion():
    env = {"NODE_NAME": "n1"}
    assert chart_pod.expand("--node-name=$(NODE_NAME)", env) == "--node-name=n1"
    assert chart_pod.expand("$$(NODE_NAME) $(OTHER)", env) == "$(NODE_NAME) $(OTHER)"
