#!/usr/bin/env bash
# One install script for the dev machine, CI and (later) the container image: Debian packages,
# the kernel-header link bcc needs, bpffs, and the project's venv. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3 python3-venv python3-bpfcc libbpfcc libbpf1 linux-headers-amd64
              iproute2 bpftool curl netcat-openbsd procps)

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

# bcc compiles against /lib/modules/$(uname -r)/build. The running kernel ships no headers
# package; Debian's generic headers serve networking programs (they only need UAPI structs).
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

if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
  mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
fi

# bcc's Python package lives in Debian's dist-packages: the venv must see system site-packages
# and use Debian's interpreter.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import bcc" 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q -e ".[test]"
  rm -f .venv/.installed-* && touch "$stamp"
fi
