#!/usr/bin/env bash
# Install and configure podman so it builds and runs images on the build/CI machines
# (root, no stdin, no Docker engine, hybrid cgroups). Idempotent: safe to run again.
#
# Why these settings: crun fails on this host's hybrid cgroups and on rlimits, so the
# runtime is runc with the cgroupfs manager, and default ulimits are capped explicitly.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "setup-podman.sh: run as root (apt-get and /etc/containers need it)" >&2
  exit 1
fi

# catatonit backs `podman run --init` (what `docker run --init` does with docker-init).
packages=(podman runc catatonit debootstrap uidmap fuse-overlayfs)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi

mkdir -p /etc/containers
cat > /etc/containers/containers.conf <<'CONF'
# Written by scripts/container/setup-podman.sh
[containers]
default_ulimits = [
  "nofile=4096:4096",
  "nproc=4096:4096",
]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF

cat > /etc/containers/storage.conf <<'CONF'
# Written by scripts/container/setup-podman.sh
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF

# Short names such as "nvidia/cuda:..." must not prompt (no stdin) or reach a registry.
if [[ ! -f /etc/containers/registries.conf ]] || ! grep -q '^short-name-mode' /etc/containers/registries.conf; then
  echo 'short-name-mode = "permissive"' >> /etc/containers/registries.conf
fi

podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} {{.Store.GraphDriverName}}'
