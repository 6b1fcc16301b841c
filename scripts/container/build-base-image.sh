#!/usr/bin/env bash
# Build a Debian bookworm base image locally with debootstrap and `podman import`, for machines
# that reach the Debian mirror but no container registry. Idempotent: does nothing when the image
# exists (FORCE=1 rebuilds).
#
# Usage: build-base-image.sh [IMAGE]   (default localhost/finetune-base:bookworm)
# Env:   DEBIAN_MIRROR (default http://deb.debian.org/debian), FORCE=1
set -euo pipefail

image=${1:-localhost/finetune-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# What the Dockerfile installs with apt anyway; baking it in makes that step a no-op here.
include=ca-certificates,python3,python3-venv,python3-pip,tini

if [[ -z ${FORCE:-} ]] && podman image exists "$image"; then
  echo "build-base-image.sh: $image exists (FORCE=1 to rebuild)"
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/finetune-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror"

# A container needs no apt caches or package lists; the Dockerfile runs apt-get update itself.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

tar -C "$rootfs" -c . | podman import \
  --change 'CMD ["/bin/bash"]' \
  --change 'ENV LANG=C.UTF-8' \
  - "$image"
podman image inspect --format '{{.Id}} {{.Size}}' "$image"
