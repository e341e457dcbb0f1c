#!/usr/bin/env bash
# `make image [IMAGE=name:tag]`: build the Dockerfile with podman on a machine that reaches Debian's
# archive and PyPI but no image registry (this project's dev machines and CI).
#
#   1. podman, runc and debootstrap from Debian when missing.
#   2. The Dockerfile's base image (its `ARG BASE`), when not in local storage: debootstrap of the
#      same Debian release, minimal variant, trimmed as Debian's -slim images are, imported under
#      the name FROM uses. A registry's image of that name is used as is when present.
#   3. A wheelhouse (.wheelhouse/) of the venv's dependencies, made with the host's pip: pip inside
#      the build cannot reach the index here (its TLS certificate does not verify from inside the
#      container). The host's Python is Debian 12's 3.11, the image's, so the wheels fit.
#   4. podman build with runc and explicit ulimits (crun cannot set RLIMIT_NOFILE in this VM, nor
#      run with its hybrid cgroups), --network host for apt inside the build.
# Prints the image's size. Users with a registry need none of this: `docker build .` works.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-${IMAGE:-}}"
[ -n "$image" ] || { echo "usage: $0 NAME:TAG" >&2; exit 2; }

# podman with runc and explicit limits, the only combination that runs here (machine facts).
PODMAN=(podman --runtime runc)
ULIMITS=(--ulimit nofile=1024:4096 --ulimit nproc=1024:1024)

missing=()
for tool in podman:podman runc:runc debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "image: apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

base=$(sed -n 's/^ARG BASE=//p' Dockerfile)
[ -n "$base" ] || { echo "image: no 'ARG BASE=' in Dockerfile" >&2; exit 1; }
"${PODMAN[@]}" image exists "$base" || scripts/base-image.sh "$base"

# The venv's dependencies (pyproject's, no [test]) and the build backend pip needs for `-e .`.
# Rebuilt when pyproject.toml changes.
stamp=".wheelhouse/.pyproject-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "image: wheelhouse for the image's venv (.wheelhouse/)"
  find .wheelhouse -maxdepth 1 \( -name '*.whl' -o -name '.pyproject-*' \) -delete
  py=.venv/bin/python
  [ -x "$py" ] || py=/usr/bin/python3
  deps=$("$py" - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    p = tomllib.load(f)
print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"]))
PY
)
  mapfile -t reqs <<<"$deps"
  "$py" -m pip wheel -q --wheel-dir .wheelhouse "${reqs[@]}"
  touch "$stamp"
fi

echo "image: podman build -t $image"
start=$(date +%s)
"${PODMAN[@]}" build "${ULIMITS[@]}" --network host --pull=never -t "$image" .
echo "image: built $image in $(( $(date +%s) - start )) s;" \
     "size $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$image" | numfmt --to=iec)"
