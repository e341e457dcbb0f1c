#!/usr/bin/env bash
# One install script for the dev machine, CI and the container image: Debian packages, the
# kernel-header link bcc needs, bpffs, and the project's venv. Idempotent.
#
#   scripts/install.sh                 dev machine / CI (`make setup`): everything, venv with [test]
#   scripts/install.sh --image         image build (Dockerfile; or EBPFLB_INSTALL_MODE=image): the same
#                                      packages and venv, without the [test] extras, and without the
#                                      steps that belong to the node the image will run on: the
#                                      kernel-header link (uname -r is the build host's) and bpffs
#   scripts/install.sh --link-headers  only the kernel-header link, at container start, for nodes
#                                      whose headers are not mounted from the host (chart value
#                                      kernelHeaders.fromHost=false): bcc then uses the image's
#                                      Debian headers
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${EBPFLB_INSTALL_MODE:-dev}"
for arg in "$@"; do
  case "$arg" in
    --image) mode=image ;;
    --link-headers) mode=link-headers ;;
    *) echo "usage: $0 [--image | --link-headers]" >&2; exit 2 ;;
  esac
done
case "$mode" in
  dev|image|link-headers) ;;
  *) echo "install: EBPFLB_INSTALL_MODE must be dev or image, not '$mode'" >&2; exit 2 ;;
esac

# ethtool: the lab's senders compute checksums in software (frames as a wire carries them).
APT_PACKAGES=(python3 python3-venv python3-bpfcc libbpfcc libbpf1 linux-headers-amd64
              iproute2 bpftool curl netcat-openbsd procps ethtool)

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

if [ "$mode" = link-headers ]; then
  link_headers
  exit 0
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install: apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$mode" = dev ]; then
  link_headers
  if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
    mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
  fi
fi

# bcc's Python package lives in Debian's dist-packages: the venv must see system site-packages
# and use Debian's interpreter.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import bcc" 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
extras="[test]" pip_opts=()
[ "$mode" = image ] && extras="" pip_opts=(--no-cache-dir)   # no tests in the image; no pip cache layer
stamp=.venv/.installed-$mode-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q "${pip_opts[@]}" -e ".$extras"
  rm -f .venv/.installed-* && touch "$stamp"
fi
