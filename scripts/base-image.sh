#!/usr/bin/env bash
# Make a Debian base image locally, for machines that reach Debian's archive but no image registry:
#
#   scripts/base-image.sh debian:bookworm-slim
#
# debootstrap of that release, minimal variant, trimmed the way Debian's official -slim images are
# (debuerreotype's "slimify": no documentation, man pages or translations, now or from later
# installs; apt keeps no caches and no translated indexes), imported into podman's local storage
# under the given name, which is what the Dockerfile's FROM asks for.
set -euo pipefail

name="${1:?usage: $0 debian:RELEASE[-slim]}"
release=$(echo "$name" | sed -E 's#^(.*/)?debian:([a-z]+).*$#\2#')
[ "$release" != "$name" ] || { echo "base-image: cannot tell the Debian release of '$name'" >&2; exit 2; }
# The mirror this machine's apt uses (deb822 sources), else Debian's own.
mirror=$(sed -n 's#^URIs: *\(http[^ ]*/debian\)$#\1#p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
mirror="${mirror:-http://deb.debian.org/debian}"

rootfs=$(mktemp -d /tmp/ebpflb-base.XXXXXX)
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT

echo "base-image: debootstrap --variant=minbase $release ($mirror)"
debootstrap --variant=minbase "$release" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
  || { tail -n 20 "$rootfs.log" >&2; exit 1; }

# The official images' sources: the release, its updates and its security archive.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $release $release-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $release-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# Slim: dpkg leaves these paths out of every package installed later, and they go now.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda,locale}/*
# apt in image builds: no package caches, compressed indexes, no translations; nothing cached now.
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
find "$rootfs"/var/cache/apt "$rootfs"/var/lib/apt/lists "$rootfs"/var/log -type f -delete
rm -rf "$rootfs"/tmp/*

tar -C "$rootfs" --numeric-owner -c . \
  | podman import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      - "$name" >/dev/null
echo "base-image: $name ($(podman image inspect --format '{{.Size}}' "$name" | numfmt --to=iec))"
