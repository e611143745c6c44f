#!/usr/bin/env bash
# The demo's part inside the VM (Tests/VM/demo.sh boots it): 1 GiB of pmem is
# the cache, /dev/vda (2 GiB, no host page cache) the slow backing disk.
set -uo pipefail
. "$VM_PROJECT/Tests/VM/guest/lib.sh"

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
pcache() { "$PCACHE_BIN" "$@"; }
# same_files WHAT: the files under /mnt/cached checksum as recorded in /tmp/sums.
same_files() {
    if (cd /mnt/cached && find . -type f -exec sha256sum {} + | sort -k2) | cmp -s - /tmp/sums; then
        echo "  $1"
    else
        echo "DEMO FAILED: files differ ($1)"
        exit 1
    fi
}

step "The machine: Debian's 6.12 kernel with ublk_drv, 1 GiB of pmem, a 2 GiB disk"
show uname -r
show ls -l /dev/ublk-control /dev/vda

step "Userspace needs a real DAX mapping of the pmem: switch it to device-DAX"
dax=$(pmem_mode devdax) || { echo "DEMO FAILED: no device-DAX"; exit 1; }
show ndctl list -N
show ls -l "$dax"

sectors=$(blockdev --getsz /dev/vda)
table="0 $sectors pcache $dax /dev/vda 4 cache_mode writeback data_crc true"
dev=/dev/ublkb0
step "Create the cached device (dm-pcache's table syntax); a blank cache device is formatted"
must pcache add --table "$table" -q 2
show pcache list
show pcache status -n 0
show pcache status -n 0 --table
echo "  (status fields: sb_flags seg_num n_segs segs_used gc_percent cache_flags key_head dirty_tail key_tail)"

step "A filesystem on its first GiB, and some files"
# The filesystem stops at 1 GiB: the random writes below go to the second GiB.
# (On the whole device they would land on ext4's journal, which mkfs places in
# the middle, and the filesystem would rightly no longer mount.)
must mkfs.ext4 -q -F "$dev" 1G
mkdir -p /mnt/cached
must mount "$dev" /mnt/cached
must cp -r /usr/share/doc/fio /usr/share/doc/e2fsprogs /mnt/cached/
(cd /mnt/cached && find . -type f -exec sha256sum {} + | sort -k2) >/tmp/sums
show du -sh /mnt/cached
must umount /mnt/cached
show pcache status -n 0
echo "  key_head moved: the writes were logged in pmem; dirty_tail follows once writeback has copied them to"
echo "  /dev/vda (it waits while requests keep coming and the cache has room, then runs after a second idle)"

step "Random 4 KiB writes to the second GiB: absorbed by pmem at memory speed, written back when idle or when the cache fills"
must fio --name=demo --filename="$dev" --rw=randwrite --bs=4k --offset=1G --size=512M --iodepth=16 \
    --ioengine=io_uring --direct=1 --runtime=8 --time_based --group_reporting --numjobs=1
show pcache status -n 0
show "$PCACHE_BIN" status -n 0 --stats

step "Stop the server (dirty data stays in pmem, as with dm-pcache) and start it again: replay"
must pcache del -n 0
must pcache add --table "$table"
show tail -3 /run/pcache-ublk/ublkb0.log
must mount "$dev" /mnt/cached
same_files "every file checksums the same after the restart"
must umount /mnt/cached

step "Write everything back and stop: the backing disk alone now holds the filesystem"
must pcache del -n 0 --flush
must fsck.ext4 -fn /dev/vda
must mount -o ro /dev/vda /mnt/cached
same_files "the files on /dev/vda itself checksum the same"
must umount /mnt/cached
step "Done"
