#!/usr/bin/env bash
# The demo's part inside the VM (Tests/VM/demo.sh boots it): /dev/pmem0 is the
# cache (512 MiB), /dev/vda the slow backing disk (2 GiB).
set -uo pipefail

step() { printf '\n>>> %s\n' "$*"; }
show() {
    printf '$'
    printf ' %q' "$@"
    echo
    "$@" 2>&1 | sed 's/^/  /'
    return "${PIPESTATUS[0]}"
}
# must: show, and end the demo when the command fails.
must() {
    show "$@" || {
        printf '\nDEMO FAILED: %s\n' "$*"
        exit 1
    }
}

step "The machine"
show uname -r
show ls -l /dev/ublk-control /dev/pmem0 /dev/vda
show lsblk -o NAME,SIZE,TYPE,DAX /dev/pmem0 /dev/vda
show ndctl list -N

step "The pcache-ublk binary (built statically on the host, run from the shared project folder)"
show ls -l "$PCACHE_BIN"
show "$PCACHE_BIN" --version

table="0 $(blockdev --getsz /dev/vda) pcache /dev/pmem0 /dev/vda 4 cache_mode writeback data_crc true"
dev=/dev/ublkb0
step "Create the cached device: /dev/vda cached by /dev/pmem0"
# Same table syntax as dm-pcache (see the project README). The device counts as
# created only when $dev shows up.
show timeout 120 "$PCACHE_BIN" add --table "$table"
for _ in $(seq 50); do [ -b "$dev" ] && break; sleep 0.1; done

if [ -b "$dev" ]; then
    show "$PCACHE_BIN" list
    step "A filesystem on it"
    must mkfs.ext4 -q -F "$dev"
    mkdir -p /mnt/cached
    must mount "$dev" /mnt/cached
    must cp -r /usr/share/doc/fio /mnt/cached/
    show df -h /mnt/cached
    must umount /mnt/cached
    step "Random 4 KiB writes through the cache"
    must fio --name=demo --filename="$dev" --rw=randwrite --bs=4k --size=256M --iodepth=16 \
        --ioengine=io_uring --direct=1 --runtime=10 --time_based --group_reporting
    show "$PCACHE_BIN" status -n 0
    step "Remove it"
    must "$PCACHE_BIN" del -n 0
else
    step "What comes next"
    cat <<'TXT'
  No /dev/ublkb0 appeared: the pcache-ublk server is still being built.
  When it is in, this demo creates /dev/ublkb0 (the 2 GiB disk /dev/vda
  cached by /dev/pmem0), puts an ext4 filesystem on it, runs fio random
  writes against it and removes it. What it needs is shown above and works:
  the ublk driver, a DAX pmem device, the backing disk and the static
  binary running inside this VM.
TXT
fi
