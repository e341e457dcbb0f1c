"""A container of the chart's DaemonSet, as `podman run` arguments (tests/test_image.py).

`make image-test` runs the image with exactly the privileges and host mounts that `helm template`
renders, so the translation reads them from the rendered pod spec and refuses what it does not
know how to give the same meaning (a new securityContext field, a new kind of volume, a writable
host mount other than the bpffs): when the chart changes there, the test breaks rather than run
the image some other way.

What stands for what, the lab node being the Kubernetes node:
  hostNetwork: true          --network ns:/run/netns/<the lab node's namespace> (never the machine's)
  hostPath /sys/fs/bpf       the lab node's own directory in the machine's bpffs
  hostPath /sys/fs/cgroup... the lab node's own cgroup (its agent attaches its host-socket hooks
                             there, never on the machine's root cgroup)
  other hostPaths            the machine's path, read-only mounts only
  securityContext            --privileged, or --cap-drop/--cap-add, --user; seccomp: no profile in
                             the chart runs under podman's default one, the stricter of the two a
                             kubelet may apply (Unconfined, or RuntimeDefault with --seccomp-default)
  mountPropagation           HostToContainer -> rslave, Bidirectional -> rshared, none -> rprivate
  service-account token      what the kubelet mounts (automountServiceAccountToken): sa_dir
  env fieldRef spec.nodeName the node's name; $(VAR) in command/args expanded as the kubelet does
Not translated (no effect on what the test shows): resources, probes (the test asks the probe's
URL itself), ports (the node's network), tolerations, priority, dnsPolicy.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

PODMAN = ["podman", "--runtime", "runc"]
# crun cannot set RLIMIT_NOFILE in this VM; runc needs explicit limits too (machine facts).
ULIMITS = ["--ulimit", "nofile=1024:4096", "--ulimit", "nproc=1024:1024"]

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
BPFFS = "/sys/fs/bpf"
CGROUP = "/sys/fs/cgroup"
PROPAGATION = {None: "rprivate", "None": "rprivate", "HostToContainer": "rslave", "Bidirectional": "rshared"}
SECURITY_KEYS = {"privileged", "runAsUser", "capabilities", "readOnlyRootFilesystem",
                 "allowPrivilegeEscalation", "seccompProfile"}
CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "args", "env", "ports", "readinessProbe",
                  "livenessProbe", "resources", "securityContext", "volumeMounts"}
POD_KEYS = {"serviceAccountName", "hostNetwork", "dnsPolicy", "priorityClassName",
            "terminationGracePeriodSeconds", "tolerations", "nodeSelector", "affinity", "initContainers",
            "containers", "volumes", "imagePullSecrets", "automountServiceAccountToken"}


class Untranslatable(ValueError):
    """The rendered pod asks for something this translation cannot give the same meaning."""


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in command and args ($$ escapes, unknown names stay)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def container_env(container: dict, node_name: str) -> dict[str, str]:
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
        elif var.get("valueFrom") == {"fieldRef": {"fieldPath": "spec.nodeName"}}:
            env[var["name"]] = node_name
        else:
            raise Untranslatable(f"env {var['name']}: {var.get('valueFrom')}")
    return env


def security_args(container: dict) -> list[str]:
    sc = container.get("securityContext", {})
    unknown = set(sc) - SECURITY_KEYS
    if unknown:
        raise Untranslatable(f"{container['name']}: securityContext {sorted(unknown)}")
    if sc.get("privileged"):
        args = ["--privileged"]
    else:
        caps = sc.get("capabilities", {})
        if set(caps) - {"add", "drop"}:
            raise Untranslatable(f"{container['name']}: capabilities {caps}")
        drop = caps.get("drop", [])
        args = ["--cap-drop=all"] if "ALL" in drop else [f"--cap-drop={c}" for c in drop]
        args += [f"--cap-add={c}" for c in caps.get("add", [])]
    if "runAsUser" in sc:
        args.append(f"--user={sc['runAsUser']}")
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    profile = sc.get("seccompProfile", {}).get("type")
    if profile == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    elif profile not in (None, "RuntimeDefault"):
        raise Untranslatable(f"{container['name']}: seccompProfile {profile}")
    return args


def mount_args(pod: dict, container: dict, node_bpffs: Path, node_cgroup: Path,
               volume_dirs: dict[str, Path]) -> list[str]:
    """-v per volumeMount. volume_dirs: what the test provides for a non-hostPath volume, by name."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    args = []
    for mount in container.get("volumeMounts", []):
        if set(mount) - {"name", "mountPath", "readOnly", "mountPropagation"}:
            raise Untranslatable(f"{container['name']}: volumeMount {mount}")
        volume = volumes[mount["name"]]
        read_only = bool(mount.get("readOnly"))
        if "hostPath" in volume:
            host = volume["hostPath"]
            if host["path"] == BPFFS:
                source = node_bpffs
            elif host["path"] == CGROUP or host["path"].startswith(CGROUP + "/"):
                source = node_cgroup
            elif read_only:
                source = Path(host["path"])
            else:
                raise Untranslatable(f"{container['name']}: writable host mount {host['path']}")
            kind = host.get("type", "")
            if kind == "DirectoryOrCreate":
                source.mkdir(parents=True, exist_ok=True)
            elif kind == "Directory":
                if not source.is_dir():
                    raise Untranslatable(f"hostPath {host['path']} (type Directory) is missing here")
            else:
                raise Untranslatable(f"hostPath {host['path']} of type {kind!r}")
        elif mount["name"] in volume_dirs:
            source = volume_dirs[mount["name"]]
        else:
            raise Untranslatable(f"{container['name']}: volume {volume}")
        options = ["ro" if read_only else "rw", PROPAGATION[mount.get("mountPropagation")]]
        args += ["--volume", f"{source}:{mount['mountPath']}:{','.join(options)}"]
    return args


def run_args(ds: dict, container_name: str, *, name: str, netns: str, node_name: str, node_bpffs: Path,
             node_cgroup: Path, sa_dir: Path, volume_dirs: dict[str, Path] | None = None) -> list[str]:
    """`podman run` arguments (after `run`) for one container of the rendered DaemonSet: options,
    the image, then its arguments."""
    pod = ds["spec"]["template"]["spec"]
    unknown = set(pod) - POD_KEYS
    if unknown:
        raise Untranslatable(f"pod spec {sorted(unknown)}")
    if pod.get("hostNetwork") is not True:
        raise Untranslatable("the agent's pod is not in the node's network (hostNetwork)")
    (container,) = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == container_name]
    if set(container) - CONTAINER_KEYS:
        raise Untranslatable(f"{container_name}: {sorted(set(container) - CONTAINER_KEYS)}")
    env = container_env(container, node_name)
    args = [*ULIMITS, "--name", name, "--pull=never", "--network", f"ns:/run/netns/{netns}",
            f"--stop-timeout={pod.get('terminationGracePeriodSeconds', 30)}",
            *security_args(container), *mount_args(pod, container, node_bpffs, node_cgroup, volume_dirs or {})]
    if pod.get("automountServiceAccountToken", True):
        args += ["--volume", f"{sa_dir}:{SA_MOUNT}:ro,rprivate"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    command = [expand(c, env) for c in container.get("command", [])]
    if command:                      # command replaces the image's ENTRYPOINT, as in Kubernetes
        args.append(f"--entrypoint={json.dumps(command)}")
    return [*args, container["image"], *(expand(a, env) for a in container.get("args", []))]
