# ebpflb agent image: Debian bookworm, bcc from Debian, the package in a venv; built by the same
# scripts/install.sh that `make setup` runs on a dev machine, so the two cannot drift.
#
#   docker build -t ebpflb:0.1.0 .        (or podman/buildah; `make image` where no registry is
#                                          reachable: it makes the base image and a wheelhouse)
#
# Run it through the Helm chart (helm/ebpflb): hostNetwork, the capabilities, the bpffs and the
# kernel-header mounts are set there.

# Debian 12, the distribution the project is developed and tested on: python3-bpfcc 0.26,
# libbpf 1.1 and linux-headers-amd64 come from its archive, exactly as on the dev machine.
ARG BASE=debian:bookworm-slim

# --- build stage: the venv, and Debian's kernel headers ---------------------------------------
# Debian's linux-headers package depends on gcc (for building modules); bcc compiles with its own
# clang and reads only the header files, so the final stage takes /usr/src from here and no
# compiler. The venv is made here too: venv and pip tooling stay behind.
FROM ${BASE} AS build
# The repository lives where the editable install and the BPF sources (ebpflb/paths.py finds bpf/
# next to the package) expect it; bcc compiles bpf/*.c at agent start, so the sources must ship.
WORKDIR /opt/ebpflb
# Only what the install and the agent need: the packaging metadata, the install script, the BPF C
# sources and the Python package, and .wheelhouse/ (empty unless `make image` filled it: then pip
# installs from it alone). Not tests/, bench/, .venv or .tools (.dockerignore says so too).
COPY pyproject.toml ./
COPY scripts/ scripts/
COPY .wheelhouse/ .wheelhouse/
COPY bpf/ bpf/
COPY ebpflb/ ebpflb/
RUN scripts/install.sh --image-build && rm -rf .wheelhouse

# --- the image ----------------------------------------------------------------------------------
FROM ${BASE}
# What bcc and the agent run on (Debian's python3, bcc, libbpf), apt's lists dropped.
COPY scripts/install.sh /opt/ebpflb/scripts/install.sh
RUN /opt/ebpflb/scripts/install.sh --image
COPY --from=build /opt/ebpflb /opt/ebpflb
# Kernel headers: bcc compiles against /lib/modules/$(uname -r)/build of the *node's* kernel. The
# chart mounts the host's /lib/modules and /usr/src read-only (the build link points into /usr/src).
# Fallback for nodes without a headers package: chart value kernelHeaders.fromHost=false mounts
# nothing and runs `scripts/install.sh --link-headers` before the agent, which links these Debian
# headers (linux-headers-amd64; enough for networking programs, which only use UAPI structs;
# checked with 6.1 headers on a 6.18 kernel). No VOLUME for /sys/fs/bpf either: it must be the
# host's bpffs (a hostPath), never an anonymous volume, or the pins would not outlive the container.
COPY --from=build /usr/src/ /usr/src/
WORKDIR /opt/ebpflb

# `kubectl exec ds/ebpflb -- ebpflb nat dump` and friends find the venv's CLI on PATH.
ENV PATH=/opt/ebpflb/.venv/bin:$PATH

# The agent, from the venv (Debian's interpreter with system site-packages, where bcc lives). Flags
# come from the chart; with neither --kubeconfig nor --manifests it uses the in-cluster config.
ENTRYPOINT ["/opt/ebpflb/.venv/bin/ebpflb", "agent"]
