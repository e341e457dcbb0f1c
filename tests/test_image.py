"""The agent's image, run as the chart runs it (`make image-test`, after `make image`).

The DaemonSet comes from `helm template` and tests/chart_pod.py turns it into `podman run`: the
chart's privileges (not privileged: its capabilities, root), its host mounts (bpffs, the kernel
headers read-only), its command and arguments, and the service-account token the kubelet mounts.
The pod's network is the node's: the container joins node-2's network namespace of the lab
(tests/lab.py), never the machine's. The agent gets its Services from the lab's API server over
TLS, through the client's in-cluster config, as in a cluster: KUBERNETES_SERVICE_HOST from the
chart's k8sServiceHost, the token and CA from the mounted service account.

Each variant shows the agent ready (the chart's readiness probe), the maps programmed, pod C's
requests to the ClusterIP answered by both backends, `ebpflb nat dump` and `conntrack dump`
working inside the container (what `kubectl exec ds/ebpflb -- ebpflb nat dump` runs) and the
container holding exactly the chart's capabilities; with kernel headers from the host (the
default) and from the image (kernelHeaders.fromHost=false).

Not part of `make test` (marker `image`): it needs the image. IMAGE names it (EBPFLB_IMAGE here)."""
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ebpflb.sources.manifest_files import load_manifests
from tests import chart_pod
from tests.apiserver import node
from tests.lab import CONTROL_PLANE_IP, EXAMPLES, HTTP_PORT, NODE_IPS, NODES, POD_IPS, SVC_IP, Lab

pytestmark = [pytest.mark.image, pytest.mark.lab]

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "ebpflb"
HELM = ROOT / ".tools" / "bin" / "helm"
IMAGE = os.environ.get("EBPFLB_IMAGE") or \
    "ebpflb:" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
NODE = "node-2"               # pod C's node: C's requests to the ClusterIP are translated here
TOKEN = "image-test-token"
# Linux capability numbers (linux/capability.h) of the ones a chart may name.
CAP_NUMBERS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "KILL": 5, "SETGID": 6, "SETUID": 7,
               "NET_BIND_SERVICE": 10, "NET_RAW": 13, "NET_ADMIN": 12, "IPC_LOCK": 14, "SYS_CHROOT": 18,
               "SYS_PTRACE": 19, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}

VARIANTS = {"host-headers": {}, "image-headers": {"kernelHeaders": {"fromHost": False}}}


def podman(*args, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*chart_pod.PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args[:3])}…: {proc.stderr.strip()}"
    return proc


def render(tmp: Path, values: dict) -> dict:
    """The chart's DaemonSet for this lab: the image under test, the API server's address."""
    repository, tag = IMAGE.rsplit(":", 1)
    values = {**values, "image": {"repository": repository, "tag": tag},
              "k8sServiceHost": CONTROL_PLANE_IP, "k8sServicePort": str(API_PORT)}
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = subprocess.run([str(HELM), "template", "ebpflb", str(CHART), "-n", "kube-system", "-f", str(path)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    (ds,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "DaemonSet"]
    return ds


API_PORT = 6443


@pytest.fixture(scope="module")
def image():
    assert HELM.is_file(), f"{HELM} is missing: `make tools`"
    found = podman("image", "inspect", "--format", "{{.Id}}", IMAGE, check=False)
    assert found.returncode == 0, f"no image {IMAGE}: run `make image` (make image-test does)"
    return IMAGE


@pytest.fixture(scope="module")
def cluster(image, tmp_path_factory):
    """The lab, its API server on HTTPS with the example Services, and a service account for it."""
    tmp = tmp_path_factory.mktemp("image")
    sa = tmp / "serviceaccount"
    sa.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=kube-apiserver", "-keyout", str(tmp / "key.pem"),
                    "-out", str(sa / "ca.crt"), "-addext", f"subjectAltName=IP:{CONTROL_PLANE_IP}",
                    "-addext", "basicConstraints=critical,CA:TRUE"], check=True, capture_output=True)
    (sa / "token").write_text(TOKEN)
    (sa / "namespace").write_text("kube-system")
    lab = Lab()
    try:
        lab.build()
        lab.start_pod_servers()
        server, _ = lab.start_apiserver(token=TOKEN, port=API_PORT, tls=(str(sa / "ca.crt"), str(tmp / "key.pem")))
        services, slices = load_manifests(EXAMPLES)
        server.load([*services, *slices, *(node(n, NODE_IPS[n]) for n in NODES)])
        lab._ensure_bpffs()
        yield lab, sa, tmp
    finally:
        lab.teardown()


class Agent:
    """The chart's pod on the lab's node-2: its init container run to completion, then the agent."""

    def __init__(self, lab: Lab, ds: dict, sa: Path):
        self.lab, self.ds, self.sa = lab, ds, sa
        self.name = f"{lab.name}-agent"
        self.bpffs = lab.pin_dir(NODE)             # the node's /sys/fs/bpf: its own dir in bpffs
        self.pod = ds["spec"]["template"]["spec"]

    def args(self, container: str, name: str) -> list[str]:
        return chart_pod.run_args(self.ds, container, name=name, netns=self.lab.node_ns[NODE], node_name=NODE,
                                  node_bpffs=self.bpffs, node_cgroup=self.lab.cgroup(NODE), sa_dir=self.sa)

    def start(self) -> None:
        for init in self.pod.get("initContainers", []):
            podman("run", "--rm", *self.args(init["name"], f"{self.name}-{init['name']}"))
        podman("run", "--detach", *self.args("agent", self.name))

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def exec(self, *argv, timeout: float = 60) -> str:
        proc = podman("exec", self.name, *argv, timeout=timeout, check=False)
        assert proc.returncode == 0, f"{' '.join(argv)} in the container: {proc.stderr}\n{self.logs()[-3000:]}"
        return proc.stdout

    def probe(self, probe: str) -> int | None:
        """HTTP status of the chart's probe, asked as the kubelet asks it (the pod IP: the node's)."""
        get = self.agent_spec()[probe]["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            (port,) = [p["containerPort"] for p in self.agent_spec()["ports"] if p["name"] == port]
        host = get.get("host", NODE_IPS[NODE])
        out = self.lab.run(NODE, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2",
                           f"http://{host}:{port}{get['path']}", check=False).stdout
        return int(out) if out.isdigit() and out != "000" else None

    def agent_spec(self) -> dict:
        (found,) = [c for c in self.pod["containers"] if c["name"] == "agent"]
        return found

    def wait_ready(self, timeout: float = 90) -> float:
        started = time.monotonic()
        while self.probe("readinessProbe") != 200:
            state = podman("inspect", "--format", "{{.State.Status}}", self.name, check=False).stdout.strip()
            assert state == "running", f"agent container {state}:\n{self.logs()[-4000:]}"
            assert time.monotonic() - started < timeout, f"not ready after {timeout} s:\n{self.logs()[-4000:]}"
            time.sleep(0.5)
        return time.monotonic() - started

    def stop(self) -> None:
        podman("rm", "--force", "--time", "15", self.name, check=False, timeout=60)
        # what the chart's cleanup mode runs, here from the host on the node's namespace
        subprocess.run(["nsenter", f"--net=/run/netns/{self.lab.node_ns[NODE]}", self.lab.ebpflb_bin(), "cleanup",
                        "--pin-dir", str(self.bpffs / "ebpflb")], capture_output=True, timeout=60)


@pytest.fixture(scope="module", params=list(VARIANTS))
def agent(request, cluster):
    lab, sa, tmp = cluster
    ds = render(tmp, VARIANTS[request.param])
    running = Agent(lab, ds, sa)
    try:
        running.start()
        ready_after = running.wait_ready()
        print(f"\n{request.param}: agent ready {ready_after:.1f} s after the container started")
        yield request.param, running
    finally:
        running.stop()


def frontend_backends(dump: str, addr: str, port: int, proto: int = 6) -> list[str] | None:
    """Backends ("ip:port") under a frontend of `ebpflb nat dump`'s text; None if it is absent."""
    lines = dump.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{addr} port {port} proto {proto} "):
            count = int(line.split(" count ")[1].split()[0])
            return [lines[i + 1 + n].split()[-1] for n in range(count)]
    return None


def test_the_container_has_exactly_the_charts_privileges(agent):
    variant, running = agent
    sc = running.agent_spec()["securityContext"]
    assert sc["privileged"] is False
    status = dict(line.split(":\t", 1) for line in running.exec("cat", "/proc/1/status").splitlines() if ":\t" in line)
    wanted = sum(1 << CAP_NUMBERS[c] for c in sc["capabilities"]["add"])
    assert int(status["CapEff"], 16) == wanted and int(status["CapBnd"], 16) == wanted
    assert running.exec("id", "-u").strip() == str(sc["runAsUser"])
    # the node's network, not the machine's: the lab node's addresses are the container's
    assert NODE_IPS[NODE] in running.exec("cat", "/proc/net/fib_trie")


def test_agent_programs_the_maps_and_nat_dump_works_in_the_container(agent):
    variant, running = agent
    dump = running.exec("ebpflb", "nat", "dump")       # kubectl exec ds/ebpflb -- ebpflb nat dump
    assert sorted(frontend_backends(dump, SVC_IP, HTTP_PORT)) == sorted(
        f"{POD_IPS[p]}:{HTTP_PORT}" for p in ("A0", "B")), dump
    assert frontend_backends(dump, "10.96.0.3", HTTP_PORT) == [], dump       # svc-empty
    assert running.probe("livenessProbe") == 200


def test_a_pods_traffic_through_a_cluster_ip(agent):
    variant, running = agent
    answers = running.lab.http_get_many("C", SVC_IP, 30)
    assert set(answers) == {"A0", "B"}, answers
    flows = running.exec("ebpflb", "conntrack", "dump")
    assert POD_IPS["C"] in flows and SVC_IP in flows, flows


def test_kernel_headers_come_from_where_the_chart_says(agent):
    variant, running = agent
    build = running.exec("sh", "-c", 'readlink -f "/lib/modules/$(uname -r)/build"').strip()
    mounts = {fields[4]: fields[5].split(",") for fields in
              (line.split() for line in running.exec("cat", "/proc/self/mountinfo").splitlines())}
    # /lib is /usr/lib in Debian 12 (merged /usr): the runtime mounts at the resolved path
    modules, src = running.exec("readlink", "-f", "/lib/modules", "/usr/src").split()
    if variant == "host-headers":
        assert build == os.path.realpath(f"/lib/modules/{os.uname().release}/build")
        assert "ro" in mounts[modules] and "ro" in mounts[src], mounts
    else:
        assert modules not in mounts and src not in mounts
        assert build.startswith("/usr/src/linux-headers-") and build.endswith("-amd64")
        assert "install: linked" in running.logs()
