"""The Helm chart (helm/ebpflb) and the Dockerfile: lint, render with default and non-default
values; every rendered object valid against the OpenAPI schemas of a current Kubernetes release
(kubernetes-validate, strict: no unknown field), with names the API server accepts, accepted by
`kubectl apply --dry-run=client`, and a valid object of the `kubernetes` client's models;
least-privilege RBAC, the DaemonSet's node-agent essentials, flags the agent's CLI accepts, and an
image built by the same install script as `make setup`.

helm and kubectl come from scripts/install-helm.sh (`make tools`, which `make test` runs first);
without them these tests fail rather than skip."""
import copy
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s
from packaging.version import Version

from ebpflb import cli
from tests.kubectl_api import KubectlApi

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "ebpflb"
HELM = ROOT / ".tools" / "bin" / "helm"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
# The newest release kubernetes-validate has schemas for (1.37 with kubernetes-validate 1.37.0).
K8S_RELEASE = kubernetes_validate.utils.latest_version()
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ["/opt/ebpflb/.venv/bin/ebpflb", "agent"]

CAPS = {"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"}
ALLOWED_RULES = {("", "services"), ("", "nodes"), ("discovery.k8s.io", "endpointslices")}
READ_VERBS = {"get", "list", "watch"}

# name -> values (as a values file, so regexes keep their backslashes)
VARIANTS = {
    "default": {},
    "privileged": {"privileged": True},
    "privileged-no-init": {"privileged": True, "bpffs": {"mountInitContainer": False}},
    "no-init": {"bpffs": {"mountInitContainer": False}},
    "service-monitor": {"serviceMonitor": {"enabled": True, "interval": "15s",
                                           "labels": {"release": "kube-prometheus-stack"}}},
    "kubeconfig": {"agent": {"kubeconfig": {"secretName": "ebpflb-kubeconfig", "key": "config"}}},
    "manifests": {"agent": {"manifests": {"configMapName": "ebpflb-manifests"}}},
    "custom-flags": {
        "agent": {"pinDir": "/sys/fs/bpf/lb", "minSyncPeriod": 0.5,
                  "workloadIfaces": r"^(cali|veth\d+|lxc[0-9a-f]{4})", "proxyName": "ebpflb",
                  "ctTimeouts": "tcp-established=600,udp=30", "ctSweepInterval": 5,
                  "hairpinAddr": "169.254.7.1", "uplinks": "eth0,eth1", "nodeportAddresses": "10.0.0.0/8",
                  "ctMapMax": 65536, "frontendMapMax": 4096, "backendMapMax": 40960, "noEndpoints": "drop",
                  "bpfTrace": True, "icmpRate": 200, "icmpBurst": 10,
                  "extraArgs": ["--ct-sweep-interval=3"]},
        "metrics": {"bindAddress": "127.0.0.1", "port": 10300},
        "k8sServiceHost": "10.0.0.10", "k8sServicePort": "6443",
        "extraEnv": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "image": {"repository": "registry.example/ebpflb", "tag": "dev", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "resources": {"requests": {"cpu": "200m", "memory": "400Mi"}, "limits": {"memory": "1Gi"}},
        "podAnnotations": {"example.com/a": "b"}, "podLabels": {"team": "net"},
        "serviceAccount": {"name": "lb-agent", "annotations": {"example.com/x": "z"}},
        "dnsPolicy": "Default", "fullnameOverride": "lb",
    },
    "no-host-headers": {"kernelHeaders": {"fromHost": False}},
    "cleanup": {"cleanup": {"enabled": True}},
    "external-sa": {"serviceAccount": {"create": False, "name": "existing"}},
    # the longest names: fullname at its 63-character limit, with the metrics Service
    "long-names": {"fullnameOverride": "ebpflb-" + "x" * 56, "serviceMonitor": {"enabled": True}},
    "kube-proxy-ports": {"kubeProxyPorts": {"enabled": True}, "agent": {"healthzTimeout": 90}},
}


@pytest.fixture(scope="session")
def helm() -> Path:
    assert HELM.is_file() and HELM.stat().st_mode & 0o111, \
        f"{HELM} is missing: run scripts/install-helm.sh (`make tools`; `make test` does it)"
    return HELM


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def render_text(helm: Path, tmp_path: Path, values: dict, chart: Path = CHART, extra=()) -> str:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    return run_helm(helm, "template", "ebpflb", str(chart), "--namespace", "kube-system",
                    "-f", str(values_file), *extra).stdout


def render(helm: Path, tmp_path: Path, values: dict, chart: Path = CHART, extra=()) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render_text(helm, tmp_path, values, chart, extra)) if doc]


@pytest.fixture(scope="module", params=list(VARIANTS))
def rendered(request, helm, tmp_path_factory) -> tuple[str, dict, list[dict]]:
    name = request.param
    return name, VARIANTS[name], render(helm, tmp_path_factory.mktemp(name), VARIANTS[name])


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def the(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def setting(values: dict, *path, default=None):
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return default
        values = values[key]
    return values


# -- every object is a valid object of the kubernetes client's models -------------------------

API = k8s.ApiClient()


def model_name(obj: dict) -> str | None:
    """apps/v1 DaemonSet -> V1DaemonSet, when the client has that model."""
    version = obj["apiVersion"].rsplit("/", 1)[-1]
    name = version[0].upper() + version[1:] + obj["kind"]
    return name if hasattr(k8s, name) else None


def unknown_fields(given, serialized, where: str = "") -> list[str]:
    """Paths of `given` that did not survive a round trip through the models: an unknown or
    misspelled field is silently dropped by deserialization, so it is missing from the output."""
    if isinstance(given, dict):
        if not isinstance(serialized, dict):
            return [where or "."]
        missing = []
        for key, value in given.items():
            if key not in serialized:
                missing.append(f"{where}.{key}")
            else:
                missing += unknown_fields(value, serialized[key], f"{where}.{key}")
        return missing
    if isinstance(given, list):
        if not isinstance(serialized, list) or len(serialized) != len(given):
            return [where]
        return [m for i, (g, s) in enumerate(zip(given, serialized))
                for m in unknown_fields(g, s, f"{where}[{i}]")]
    return []


def roundtrip_unknown(obj: dict, model: str) -> list[str]:
    instance = API._ApiClient__deserialize(copy.deepcopy(obj), model)
    # sanitize_for_serialization: the model's to_dict() under the API's own (camelCase) names
    return unknown_fields(obj, API.sanitize_for_serialization(instance))


def test_unknown_field_check_catches_a_misspelling():
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
          "spec": {"selector": {"matchLabels": {"a": "b"}},
                   "template": {"metadata": {"labels": {"a": "b"}},
                                "spec": {"hostNetwrok": True,
                                         "containers": [{"name": "c", "image": "i",
                                                         "volumeMounts": [{"name": "v", "mountPath": "/x",
                                                                           "mountPropagaton": "Bidirectional"}]}]}}}}
    assert roundtrip_unknown(ds, "V1DaemonSet") == [
        ".spec.template.spec.hostNetwrok", ".spec.template.spec.containers[0].volumeMounts[0].mountPropagaton"]


def check_service_monitor(sm: dict, service: dict) -> None:
    """A CRD (monitoring.coreos.com/v1), not in the client: its shape by hand."""
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["metadata"]) <= {"name", "namespace", "labels", "annotations"}
    spec = sm["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "scheme"}
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
        for relabel in endpoint.get("relabelings", []):
            assert set(relabel) <= {"sourceLabels", "targetLabel", "action", "regex", "replacement"}


def test_every_object_deserializes_without_unknown_fields(rendered):
    name, values, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    expected = ["ClusterRole", "ClusterRoleBinding", "DaemonSet"]
    if setting(values, "serviceAccount", "create", default=True):
        expected.append("ServiceAccount")
    if setting(values, "serviceMonitor", "enabled"):
        expected += ["Service", "ServiceMonitor"]
    assert kinds == sorted(expected), name
    for obj in docs:
        model = model_name(obj)
        if obj["kind"] == "ServiceMonitor":
            check_service_monitor(obj, the(docs, "Service"))
            continue
        assert model, f"{obj['apiVersion']} {obj['kind']}: no model in the kubernetes client"
        assert roundtrip_unknown(obj, model) == [], f"{name}: {obj['kind']} has unknown fields"


# -- every object is valid against a current release's OpenAPI schemas --------------------

def schema_errors(obj: dict) -> list[str]:
    """Where obj breaks the schema of its kind in K8S_RELEASE (strict: unknown fields too)."""
    try:
        kubernetes_validate.validate(obj, K8S_RELEASE, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"]
    return []


def test_schemas_are_of_a_current_release():
    assert Version(K8S_RELEASE) >= Version("1.33"), f"kubernetes-validate's newest schemas are {K8S_RELEASE}"


def test_schema_check_catches_misspellings_and_wrong_types():
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
          "spec": {"selector": {"matchLabels": {"a": "b"}},
                   "template": {"metadata": {"labels": {"a": "b"}},
                                "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    assert schema_errors(ds) == []
    misspelt = copy.deepcopy(ds)
    misspelt["spec"]["template"]["spec"]["hostNetwrok"] = True
    assert "hostNetwrok" in schema_errors(misspelt)[0]
    wrong_type = copy.deepcopy(ds)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "9949"}]
    assert "containers.0.ports.0.containerPort" in schema_errors(wrong_type)[0]


def test_every_object_is_valid_against_the_kubernetes_openapi_schemas(rendered):
    name, values, docs = rendered
    for obj in docs:
        if obj["kind"] == "ServiceMonitor":
            continue            # a CRD's (the Prometheus Operator's): checked by hand above
        assert schema_errors(obj) == [], f"{name}: {obj['kind']} {obj['metadata']['name']}"


# The API server's name rules (apimachinery's validation), which no schema carries.
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def name_problems(obj: dict) -> list[str]:
    problems = []

    def check(what: str, value: str, pattern: re.Pattern, limit: int) -> None:
        if len(value) > limit or not pattern.fullmatch(value):
            problems.append(f"{what} {value!r} ({len(value)} characters)")

    name = obj["metadata"]["name"]
    if obj["kind"] == "Service":
        check("Service name", name, DNS1035_LABEL, 63)
    elif obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):      # these: any path segment
        check(f"{obj['kind']} name", name, DNS1123_SUBDOMAIN, 253)
    template = obj.get("spec", {}).get("template", {})
    for labels in (obj["metadata"].get("labels", {}), template.get("metadata", {}).get("labels", {})):
        for key, value in labels.items():
            check(f"label {key}", str(value), LABEL_VALUE, 63)
    pod = template.get("spec", {})
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        check("container name", c["name"], DNS1123_LABEL, 63)
        for port in c.get("ports", []):
            check("port name", port["name"], DNS1123_LABEL, 15)
    for volume in pod.get("volumes", []):
        check("volume name", volume["name"], DNS1123_LABEL, 63)
    return problems


def test_names_and_labels_are_ones_the_api_server_accepts(rendered):
    name, values, docs = rendered
    for obj in docs:
        assert name_problems(obj) == [], f"{name}: {obj['kind']}"


# -- kubectl apply --dry-run=client -----------------------------------------------------------

@pytest.fixture(scope="session")
def kubectl() -> Path:
    assert KUBECTL.is_file() and KUBECTL.stat().st_mode & 0o111, \
        f"{KUBECTL} is missing: run scripts/install-helm.sh (`make tools`; `make test` does it)"
    return KUBECTL


def served_by_a_current_release(docs: list[dict], crds: bool) -> dict[str, list[str]]:
    """The group-versions and kinds the API server serves: those of K8S_RELEASE (a schema in
    kubernetes-validate), and ServiceMonitor when the Prometheus Operator's CRDs are installed."""
    served: dict[str, list[str]] = {}
    for obj in docs:
        if obj["kind"] == "ServiceMonitor" and not crds:
            continue
        if obj["kind"] != "ServiceMonitor":
            try:
                kubernetes_validate.validate({**obj, "metadata": {}}, K8S_RELEASE, strict=False)
            except kubernetes_validate.utils.SchemaNotFoundError:
                continue
            except kubernetes_validate.ValidationError:
                pass
        kinds = served.setdefault(obj["apiVersion"], [])
        if obj["kind"] not in kinds:
            kinds.append(obj["kind"])
    return served


def kubectl_apply_dry_run(kubectl: Path, tmp_path: Path, manifest: str, served: dict) -> tuple[subprocess.CompletedProcess, list[str]]:
    (tmp_path / "chart.yaml").write_text(manifest)
    with KubectlApi(served) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        # --validate=false: kubectl's own schema check needs the server's protobuf OpenAPI document;
        # the schemas are checked above
        proc = subprocess.run([str(kubectl), "--kubeconfig", kubeconfig, "apply", "--dry-run=client",
                               "--validate=false", "-f", str(tmp_path / "chart.yaml")],
                              capture_output=True, text=True, timeout=60)
    return proc, api.requests


def test_kubectl_apply_dry_run_client(rendered, helm, kubectl, tmp_path):
    name, values, docs = rendered
    manifest = render_text(helm, tmp_path, values)          # helm's own text, as a user pipes it
    proc, requests = kubectl_apply_dry_run(kubectl, tmp_path, manifest, served_by_a_current_release(docs, crds=True))
    assert proc.returncode == 0, f"{name}: {proc.stderr}"
    expected = set()
    for obj in docs:
        group = obj["apiVersion"].rpartition("/")[0]
        expected.add(f"{obj['kind'].lower()}{'.' + group if group else ''}/{obj['metadata']['name']} created (dry run)")
        # kubectl looked for each object where it lives: the release's namespace, or the cluster
        base = f"/api/{obj['apiVersion']}" if not group else f"/apis/{obj['apiVersion']}"
        scoped = obj["kind"] not in ("ClusterRole", "ClusterRoleBinding")
        plural = KubectlApi.plural(obj["kind"])
        path = f"{base}/namespaces/kube-system/{plural}/{obj['metadata']['name']}" if scoped \
            else f"{base}/{plural}/{obj['metadata']['name']}"
        assert f"GET {path}" in requests, (name, path, requests)
    assert set(proc.stdout.splitlines()) == expected, f"{name}: {proc.stdout}"


def test_kubectl_refuses_the_service_monitor_without_its_crds(rendered, helm, kubectl, tmp_path):
    name, values, docs = rendered
    if not setting(values, "serviceMonitor", "enabled"):
        return
    proc, _ = kubectl_apply_dry_run(kubectl, tmp_path, render_text(helm, tmp_path, values),
                                    served_by_a_current_release(docs, crds=False))
    assert proc.returncode != 0 and 'no matches for kind "ServiceMonitor"' in proc.stderr, proc.stderr


# -- RBAC -------------------------------------------------------------------------------------

def test_cluster_role_is_read_only_on_services_nodes_endpointslices(rendered):
    _, _, docs = rendered
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    role = the(docs, "ClusterRole")
    assert "aggregationRule" not in role
    granted = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule   # no resourceNames/nonResourceURLs
        assert set(rule["verbs"]) == READ_VERBS, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) in ALLOWED_RULES, (group, resource)
                granted.add((group, resource))
    assert granted == ALLOWED_RULES


def test_binding_ties_the_role_to_the_pods_service_account(rendered):
    _, _, docs = rendered
    binding, role, ds = the(docs, "ClusterRoleBinding"), the(docs, "ClusterRole"), the(docs, "DaemonSet")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "kube-system"}]
    for account in by_kind(docs, "ServiceAccount"):
        assert account["metadata"]["name"] == sa


# -- the DaemonSet ----------------------------------------------------------------------------

def containers(ds: dict) -> list[dict]:
    spec = ds["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def agent(ds: dict) -> dict:
    (found,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"]
    return found


def privileged(container: dict) -> bool:
    return bool(container.get("securityContext", {}).get("privileged"))


def test_daemonset_runs_on_every_node_in_the_host_network(rendered):
    name, values, docs = rendered
    pod = the(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == setting(values, "dnsPolicy", default="ClusterFirstWithHostNet")
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]     # every taint, every effect


def test_bpffs_is_the_hosts_with_bidirectional_propagation(rendered):
    name, values, docs = rendered
    ds = the(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (bpffs,) = [v for v in pod["volumes"] if v.get("hostPath", {}).get("path") == "/sys/fs/bpf"]
    mounts = {c["name"]: m for c in containers(ds) for m in c.get("volumeMounts", [])
              if m["name"] == bpffs["name"]}
    assert mounts["agent"]["mountPath"] == "/sys/fs/bpf"
    bidirectional = {c for c, m in mounts.items() if m.get("mountPropagation") == "Bidirectional"}
    if values.get("privileged") or setting(values, "bpffs", "mountInitContainer", default=True):
        assert bidirectional, f"{name}: no container mounts bpffs with Bidirectional propagation"
    else:
        assert mounts["agent"]["mountPropagation"] == "HostToContainer"
    # the API server refuses Bidirectional propagation in an unprivileged container
    for c in containers(ds):
        if c["name"] in bidirectional:
            assert privileged(c), f"{name}: {c['name']} has Bidirectional but is not privileged"


def test_agent_privileges_are_the_documented_ones(rendered):
    name, values, docs = rendered
    a = agent(the(docs, "DaemonSet"))
    sc = a["securityContext"]
    if values.get("privileged"):
        assert sc["privileged"] is True
    else:
        assert sc["privileged"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"]["add"]) == CAPS


def test_kernel_headers_from_the_host_read_only(rendered):
    name, values, docs = rendered
    ds = the(docs, "DaemonSet")
    host_paths = {v["name"]: v["hostPath"]["path"] for v in ds["spec"]["template"]["spec"]["volumes"]
                  if "hostPath" in v}
    mounts = {m["mountPath"]: m for m in agent(ds)["volumeMounts"] if m["name"] in host_paths}
    if setting(values, "kernelHeaders", "fromHost", default=True):
        for path in ("/lib/modules", "/usr/src"):
            assert host_paths[mounts[path]["name"]] == path and mounts[path]["readOnly"] is True
        assert "command" not in agent(ds) or setting(values, "cleanup", "enabled")
    else:
        assert "/lib/modules" not in mounts and "/usr/src" not in mounts
        assert "scripts/install.sh --link-headers" in agent(ds)["command"][2]


def test_the_hosts_cgroup_v2_root_is_where_the_agent_attaches(rendered):
    """--cgroup-root is the host's cgroup v2 root, mounted read-only (a container's own
    /sys/fs/cgroup is only its own cgroup), and cleanup detaches from the same place."""
    name, values, docs = rendered
    ds = the(docs, "DaemonSet")
    (volume,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "cgroup"]
    assert volume["hostPath"]["path"] == setting(values, "cgroup", "hostRoot", default="/sys/fs/cgroup")
    (mount,) = [m for m in agent(ds)["volumeMounts"] if m["name"] == "cgroup"]
    root = setting(values, "agent", "cgroupRoot", default="/run/ebpflb/cgroupv2")
    assert mount["mountPath"] == root and mount["readOnly"] is True
    if setting(values, "cleanup", "enabled"):
        argv = shlex.split(agent(ds)["command"][2].split("&&")[0])
        assert cli.parser().parse_args(argv[1:]).cgroup_root == root
    else:
        args = cli.parser().parse_args(agent_argv(ds))
        assert args.cgroup_root == root and args.socket_lb == setting(values, "agent", "socketLb", default="on")


def test_node_name_from_the_downward_api(rendered):
    _, _, docs = rendered
    env = {e["name"]: e for e in agent(the(docs, "DaemonSet"))["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_probes_and_metrics_port(rendered):
    name, values, docs = rendered
    a = agent(the(docs, "DaemonSet"))
    if setting(values, "cleanup", "enabled"):
        assert "readinessProbe" not in a and "livenessProbe" not in a   # no agent, no /readyz
        return
    (port,) = a["ports"]
    assert port["name"] == "metrics" and port["containerPort"] == setting(values, "metrics", "port", default=9949)
    loopback = setting(values, "metrics", "bindAddress") == "127.0.0.1"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = a[probe]["httpGet"]
        assert get["path"] == path and get["port"] == "metrics"
        assert get.get("host") == ("127.0.0.1" if loopback else None)
    for svc in by_kind(docs, "Service"):
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
        assert svc["spec"]["selector"].items() <= \
            the(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"].items()


def agent_argv(ds: dict) -> list[str]:
    """What the agent container executes, as the CLI sees it (after `ebpflb`)."""
    a = agent(ds)
    args = [arg.replace("$(NODE_NAME)", "node-0") for arg in a["args"]]
    if "command" in a:                       # sh -c '... exec ebpflb agent "$@"' ebpflb ARGS
        script = a["command"][2]
        assert script.endswith(f'exec {ENTRYPOINT[0]} agent "$@"'), script
        return ["agent", *args]
    return [*ENTRYPOINT[1:], *args]


def test_agent_flags_parse_with_the_real_cli(rendered):
    name, values, docs = rendered
    ds = the(docs, "DaemonSet")
    if setting(values, "cleanup", "enabled"):
        script = agent(ds)["command"][2]
        argv = shlex.split(script.split("&&")[0])
        assert argv[0] == ENTRYPOINT[0]
        assert cli.parser().parse_args(argv[1:]).verb == "cleanup"
        return
    args = cli.parser().parse_args(agent_argv(ds))
    a = values.get("agent", {})
    assert args.verb == "agent" and args.node_name == "node-0"
    assert args.pin_dir == a.get("pinDir", "/sys/fs/bpf/ebpflb")
    own = f"{setting(values, 'metrics', 'bindAddress', default='0.0.0.0')}:{setting(values, 'metrics', 'port', default=9949)}"
    if setting(values, "kubeProxyPorts", "enabled"):   # kube-proxy's ports beside the probes' own
        assert (args.metrics_addr, args.healthz_addr) == (f"{own},127.0.0.1:10249", "0.0.0.0:10256")
    else:
        assert (args.metrics_addr, args.healthz_addr) == (own, "")
    assert args.healthz_timeout == a.get("healthzTimeout", 60)
    assert args.min_sync_period == a.get("minSyncPeriod", 1.0)
    defaults = cli.parser().parse_args(["agent"])
    assert args.workload_ifaces == a.get("workloadIfaces", defaults.workload_ifaces)
    assert args.proxy_name == (a.get("proxyName") or None)
    assert args.hairpin_addr == a.get("hairpinAddr", defaults.hairpin_addr)
    assert (args.icmp_rate, args.icmp_burst) == (a.get("icmpRate", 1000), a.get("icmpBurst", 50))
    assert args.uplinks == (a.get("uplinks") or None)
    assert args.nodeport_addresses == a.get("nodeportAddresses", "")
    if "ctTimeouts" in a:
        assert args.ct_timeouts == cli.ct_timeouts(a["ctTimeouts"])
    assert (args.ct_map_max, args.frontend_map_max, args.backend_map_max) == (
        a.get("ctMapMax", defaults.ct_map_max), a.get("frontendMapMax", defaults.frontend_map_max),
        a.get("backendMapMax", defaults.backend_map_max))
    assert args.no_endpoints == a.get("noEndpoints", "reject") and args.bpf_trace == a.get("bpfTrace", False)
    if a.get("extraArgs"):
        assert args.ct_sweep_interval == 3.0          # appended last, so it wins
    else:
        assert args.ct_sweep_interval == a.get("ctSweepInterval", 10.0)
    secret = setting(a, "kubeconfig", "secretName")
    assert args.kubeconfig == (f"/etc/ebpflb/kubeconfig/{a['kubeconfig']['key']}" if secret else None)
    assert args.manifests == ("/etc/ebpflb/manifests" if setting(a, "manifests", "configMapName") else None)
    mounts = {m["mountPath"] for m in agent(ds)["volumeMounts"]}
    for path in (args.kubeconfig, args.manifests):
        if path:
            assert any(path.startswith(m) for m in mounts), path
    env = {e["name"]: e.get("value") for e in agent(ds)["env"]}
    assert env.get("KUBERNETES_SERVICE_HOST") == values.get("k8sServiceHost")


def test_images_are_the_dockerfiles(rendered):
    name, values, docs = rendered
    image = (f"{setting(values, 'image', 'repository', default='ebpflb')}:"
             f"{setting(values, 'image', 'tag', default=yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion'])}")
    for c in containers(the(docs, "DaemonSet")):
        assert c["image"] == image


# -- helm itself ------------------------------------------------------------------------------

def test_helm_lint(helm, tmp_path):
    run_helm(helm, "lint", str(CHART), "--strict")
    for name, values in VARIANTS.items():
        values_file = tmp_path / f"{name}.yaml"
        values_file.write_text(yaml.safe_dump(values))
        run_helm(helm, "lint", str(CHART), "--strict", "-f", str(values_file))


@pytest.mark.parametrize("values, message", [
    ({"agent": {"kubeconfig": {"secretName": "a"}, "manifests": {"configMapName": "b"}}}, "exclude each other"),
    ({"agent": {"pinDir": "/var/run/ebpflb"}}, "under /sys/fs/bpf/"),
    ({"metrics": {"port": 0}}, "metrics.port is required"),
])
def test_bad_values_are_refused(helm, tmp_path, values, message):
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    proc = run_helm(helm, "template", "x", str(CHART), "-f", str(values_file), check=False)
    assert proc.returncode != 0 and message in proc.stderr


def render_notes(helm: Path, tmp_path: Path, values: dict) -> str:
    """`helm template` does not render NOTES.txt: render it as a ConfigMap of a copy of the chart."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes_test.tpl").write_text('{{- define "notes-test" }}' + notes + "{{- end }}")
    (chart / "templates" / "notes-test.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n'
        'data: {notes: {{ include "notes-test" . | toJson }}}\n')
    (doc,) = [d for d in render(helm, tmp_path, values, chart=chart, extra=("--show-only", "templates/notes-test.yaml"))]
    return doc["data"]["notes"]


def test_notes_say_how_to_take_kube_proxy_off_check_a_node_and_clean_up(helm, tmp_path):
    notes = render_notes(helm, tmp_path, {})
    patch = re.search(r"kubectl -n kube-system patch ds kube-proxy -p '(.*)'", notes)
    assert patch, notes
    selector = json.loads(patch.group(1))["spec"]["template"]["spec"]["nodeSelector"]
    assert selector == {"non-ebpflb": "true"}
    assert "nodeSelector\":{\"non-ebpflb\": null}" in notes                  # and back
    assert "kubectl -n kube-system exec ds/ebpflb -- ebpflb nat dump" in notes
    assert "--set cleanup.enabled=true" in notes and "helm -n kube-system uninstall ebpflb" in notes
    assert "FIRST set k8sServiceHost" in notes
    assert "FIRST set k8sServiceHost" not in render_notes(helm, tmp_path / "b", {"k8sServiceHost": "10.0.0.10"})
    cleaning = render_notes(helm, tmp_path / "c", {"cleanup": {"enabled": True}})
    assert "CLEANUP mode" in cleaning and "uninstall ebpflb" in cleaning


def test_values_give_every_agent_flag():
    """Each `ebpflb agent` option has a value in values.yaml (--node-name: the downward API)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (agent_parser,) = [p for a in cli.parser()._subparsers._group_actions
                       for name, p in a.choices.items() if name == "agent"]
    flags = {opt for action in agent_parser._actions for opt in action.option_strings
             if opt.startswith("--") and opt != "--help"}
    camel = {flag: re.sub(r"-(\w)", lambda m: m.group(1).upper(), flag[2:]) for flag in flags}
    by_value = {**values["agent"], "metricsAddr": values["metrics"], "healthzAddr": values["kubeProxyPorts"]}
    missing = [flag for flag, key in camel.items() if key not in by_value and flag != "--node-name"]
    assert missing == []


# -- the Dockerfile ---------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue                                     # comment inside a continuation
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a continuation"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions by stage (ARGs before the first FROM: stage 0's prelude)."""
    found = [[]]
    for op, arg in dockerfile_instructions():
        if op == "FROM" and found[-1] and any(o == "FROM" for o, _ in found[-1]):
            found.append([])
        found[-1].append((op, arg))
    return found


def test_dockerfile_builds_with_the_same_install_script_as_make_setup():
    build, final = stages()
    (base,) = [arg for op, arg in build if op == "ARG"]
    assert re.fullmatch(r"BASE=debian:bookworm(-slim)?(@sha256:[0-9a-f]{64})?", base)
    assert [arg for op, arg in build + final if op == "FROM"] == ["${BASE} AS build", "${BASE}"]
    runs = [arg for op, arg in build + final if op == "RUN"]
    for run in runs:
        commands = [c.strip() for c in re.split(r"&&|;|\|\|", run)]
        assert re.fullmatch(r"(/opt/ebpflb/)?scripts/install\.sh --image(-build)?", commands[0]), run
        # nothing installed beside the script, so image and dev machine cannot drift
        assert not re.search(r"apt-get install|apt install|pip install|pip3 install|curl |wget ", run), run
    assert [r.split()[1] for r in runs] == ["--image-build", "--image"]
    setup = re.search(r"^setup:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert setup.split()[0] == "scripts/install.sh"                     # `make setup`: the same script
    copied = {arg.split()[0].rstrip("/") for op, arg in build if op == "COPY"}
    assert {"scripts", "pyproject.toml", "bpf", "ebpflb", ".wheelhouse"} <= copied
    # the image takes the venv and sources, and the headers, from the build stage; no wheelhouse
    assert {arg for op, arg in final if op == "COPY" and arg.startswith("--from=")} == {
        "--from=build /opt/ebpflb /opt/ebpflb", "--from=build /usr/src/ /usr/src/"}
    assert "rm -rf .wheelhouse" in [r for r in runs if "--image-build" in r][0]
    (entrypoint,) = [arg for op, arg in final if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ENTRYPOINT
    workdir = [arg for op, arg in final if op == "WORKDIR"]
    assert workdir == ["/opt/ebpflb"] and ENTRYPOINT[0].startswith(workdir[0] + "/.venv/")


def test_image_runtime_packages_carry_no_compiler():
    """What the image runs on: bcc (and the LLVM it links), libbpf, python3; the kernel headers'
    package (it drags gcc in) stays in the build stage."""
    text = (ROOT / "scripts" / "install.sh").read_text()
    runtime = re.search(r"^RUNTIME_PACKAGES=\((.*?)\)", text, re.M | re.S).group(1).split()
    assert runtime == ["python3", "python3-bpfcc", "libbpfcc", "libbpf1"]


def test_dockerignore_keeps_the_dev_tree_out_of_the_context():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".tools", ".git", "tests"} <= ignored
    copied = {arg.split()[0].rstrip("/") for stage in stages() for op, arg in stage
              if op == "COPY" and not arg.startswith("--from")}
    assert not copied & ignored


def test_install_script_modes():
    script = ROOT / "scripts" / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bad = subprocess.run([str(script), "--no-such-mode"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
