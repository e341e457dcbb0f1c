#!/usr/bin/env bash
# One install script for the dev machine, CI and the container image: Debian packages, the
# kernel-header link bcc needs, bpffs, and the project's venv. Idempotent.
#
#   scripts/install.sh                 dev machine / CI (`make setup`): everything, venv with [test]
#   scripts/install.sh --image-build   the Dockerfile's build stage: the venv (no [test] extras) from
#                                      the wheels in .wheelhouse/ when `make image` put some there
#                                      (no index is reachable from inside a build here), else from
#                                      the package index; and Debian's kernel headers, whose
#                                      package drags gcc in: the final stage copies /usr/src only
#   scripts/install.sh --image         the Dockerfile's final stage: only what bcc and the agent
#                                      run on (Debian's python3, bcc, libbpf); no venv tooling,
#                                      no compiler, no apt lists
#   scripts/install.sh --link-headers  only the kernel-header link, at container start, for nodes
#                                      whose headers are not mounted from the host (chart value
#                                      kernelHeaders.fromHost=false): bcc then uses the image's
#                                      Debian headers
# The image modes skip the steps that belong to the node the image will run on: the kernel-header
# link (uname -r is the build host's) and bpffs.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${EBPFLB_INSTALL_MODE:-dev}"
for arg in "$@"; do
  case "$arg" in
    --image) mode=image ;;
    --image-build) mode=image-build ;;
    --link-headers) mode=link-headers ;;
    *) echo "usage: $0 [--image | --image-build | --link-headers]" >&2; exit 2 ;;
  esac
done
case "$mode" in
  dev|image|image-build|link-headers) ;;
  *) echo "install: EBPFLB_INSTALL_MODE must be dev, image or image-build, not '$mode'" >&2; exit 2 ;;
esac

# What the agent runs on: bcc (python3-bpfcc over libbpfcc, which brings its LLVM/clang libraries)
# and libbpf (cffi). The image has these and nothing more.
RUNTIME_PACKAGES=(python3 python3-bpfcc libbpfcc libbpf1)
# Debian's generic kernel headers, the fallback when a node's own are not mounted.
HEADERS_PACKAGES=(linux-headers-amd64)
# The dev machine and CI also build the venv and run the lab: iproute2 and ethtool build the
# namespaces (the lab's senders compute checksums in software, as frames on a wire carry them),
# curl and netcat are its clients, bpftool and procps for looking around.
DEV_PACKAGES=(python3-venv iproute2 bpftool curl netcat-openbsd procps ethtool)

# bcc compiles against /lib/modules/$(uname -r)/build. The running kernel ships no headers
# package; Debian's generic headers serve networking programs (they only need UAPI structs).
link_headers() {
  local kdir hdr common
  kdir="/lib/modules/$(uname -r)"
  if [ ! -e "$kdir/build/include" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
    [ -n "$hdr" ] && [ -n "$common" ] || { echo "install: no kernel headers under /usr/src" >&2; exit 1; }
    mkdir -p "$kdir"
    ln -sfn "$hdr" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
    echo "install: linked $kdir/build -> $hdr"
  fi
}

apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "install: apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The image's layers keep what a step leaves: apt's lists and downloaded packages go at once.
apt_clean() {
  apt-get clean
  rm -rf /var/lib/apt/lists/*
}

case "$mode" in
  link-headers)
    link_headers
    exit 0 ;;
  image)
    apt_install "${RUNTIME_PACKAGES[@]}"
    apt_clean
    exit 0 ;;
  image-build)
    apt_install python3 python3-venv "${HEADERS_PACKAGES[@]}"
    apt_clean ;;
  dev)
    apt_install "${RUNTIME_PACKAGES[@]}" "${HEADERS_PACKAGES[@]}" "${DEV_PACKAGES[@]}"
    link_headers
    if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
      mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
    fi ;;
esac

# bcc's Python package lives in Debian's dist-packages: the venv must see system site-packages
# and use Debian's interpreter. (The image's build stage has no bcc: its venv is checked by the
# final stage, which has.)
if [ ! -x .venv/bin/python ] || { [ "$mode" = dev ] && ! .venv/bin/python -c "import bcc" 2>/dev/null; }; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
extras="[test]" pip_opts=()
if [ "$mode" = image-build ]; then
  extras="" pip_opts=(--no-cache-dir)             # no tests in the image; no pip cache layer
  if compgen -G ".wheelhouse/*.whl" >/dev/null; then
    pip_opts+=(--no-index --find-links .wheelhouse)
  fi
fi
stamp=.venv/.installed-$mode-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q "${pip_opts[@]}" -e ".$extras"
  rm -f .venv/.installed-* && touch "$stamp"
fi

if [ "$mode" = image-build ]; then
  # The image's venv runs, it installs nothing: pip and setuptools go. So does the kubernetes
  # client's asyncio twin (kubernetes/aio, 68 MB of the image with its bytecode): the agent uses the
  # synchronous client, which never imports it.
  .venv/bin/python -m pip uninstall -q -y pip setuptools
  site=$(echo .venv/lib/python3*/site-packages)
  rm -rf "$site/kubernetes/aio"
fi
