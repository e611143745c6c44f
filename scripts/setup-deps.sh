#!/usr/bin/env bash
# Installs the Debian packages pcache-ublk builds, tests and demonstrates with.
# Idempotent: does nothing when everything is present.
set -euo pipefail

packages=(
    pkg-config liburing-dev libpmem-dev libndctl-dev   # build
    qemu-system-x86 busybox-static xz-utils cpio gcc   # VM harness (gcc: Tests/VM/tools)
    fio e2fsprogs dmsetup ndctl daxctl                 # used inside the VM
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "setup: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install packages (run 'sudo make setup')" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
