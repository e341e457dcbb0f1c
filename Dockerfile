# ebpflb agent image: Debian bookworm, bcc from Debian, the package in a venv; built by the same
# scripts/install.sh that `make setup` runs on a dev machine, so the two cannot drift.
#
#   docker build -t ebpflb:0.1.0 .
#
# Run it through the Helm chart (helm/ebpflb): hostNetwork, the capabilities, the bpffs and the
# kernel-header mounts are set there.

# Debian 12, the distribution the project is developed and tested on: python3-bpfcc 0.26,
# libbpf 1.1 and linux-headers-amd64 come from its archive, exactly as on the dev machine.
FROM debian:bookworm-slim

# The repository lives where the editable install and the BPF sources (ebpflb/paths.py finds bpf/
# next to the package) expect it; bcc compiles bpf/*.c at agent start, so the sources must ship.
WORKDIR /opt/ebpflb

# Only what the install and the agent need: the packaging metadata, the install script, the BPF C
# sources and the Python package. Not tests/, bench/, .venv or .tools (a dev venv would carry the
# dev machine's paths; there is no .dockerignore to rely on).
COPY pyproject.toml ./
COPY scripts/ scripts/
COPY bpf/ bpf/
COPY ebpflb/ ebpflb/

# The one install script, in image mode: the same Debian packages (bcc, libbpf, iproute2, the
# distro kernel headers as fallback) and the same venv, minus the [test] extras; it skips the two
# steps that belong to the node the image runs on (the /lib/modules/$(uname -r)/build link: uname
# -r here is the build host's kernel; and mounting bpffs). Then drop apt's lists: not needed at
# run time.
RUN scripts/install.sh --image && rm -rf /var/lib/apt/lists/*

# `kubectl exec ds/ebpflb -- ebpflb nat dump` and friends find the venv's CLI on PATH.
ENV PATH=/opt/ebpflb/.venv/bin:$PATH

# Kernel headers: bcc compiles against /lib/modules/$(uname -r)/build of the *node's* kernel. The
# chart mounts the host's /lib/modules and /usr/src read-only (the build link points into /usr/src).
# Fallback for nodes without a headers package: chart value kernelHeaders.fromHost=false mounts
# nothing and runs `scripts/install.sh --link-headers` before the agent, which links the Debian
# headers installed above (linux-headers-amd64; enough for networking programs, which only use
# UAPI structs; checked with 6.1 headers on a 6.18 kernel). No VOLUME for /sys/fs/bpf either: it
# must be the host's bpffs (a hostPath), never an anonymous volume, or the pins would not outlive
# the container.

# The agent, from the venv (Debian's interpreter with system site-packages, where bcc lives). Flags
# come from the chart; with neither --kubeconfig nor --manifests it uses the in-cluster config.
ENTRYPOINT ["/opt/ebpflb/.venv/bin/ebpflb", "agent"]
