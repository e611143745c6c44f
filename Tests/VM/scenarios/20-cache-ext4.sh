#!/usr/bin/env bash
# The cache under a filesystem: add with a table, mkfs.ext4, a file tree with
# sha256 sums, del refused while it is mounted, umount, del, add again -> the
# files are replayed from the cache and fsck is clean; del --flush -> the
# backing device alone holds the filesystem (mounted directly, read-only); the
# cache device's first MiB zeroed -> add formats a fresh cache and the files
# come from the backing device.
# vm-run: --pmem 1G --disk 2G --timeout 600 -e PCACHE_VM_SOAK
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
. "$VM_PROJECT/Tests/VM/guest/cache-lib.sh"

cache_setup
MNT=/mnt/cache
mkdir -p $MNT /mnt/backing

# make_tree DIR TAG: a tree of files of many sizes (and a few links).
make_tree() {
    local dir=$1 tag=$2 i
    mkdir -p "$dir/$tag/a/b/c" "$dir/$tag/empty"
    for i in $(seq 1 $((24 * SOAK))); do
        head -c $(((i * 7919) % 300000 + 1)) /dev/urandom >"$dir/$tag/a/f$i"
    done
    for i in 1 2 3 4; do head -c $((i << 20)) /dev/urandom >"$dir/$tag/a/b/big$i"; done
    head -c $((16 << 20)) /dev/urandom >"$dir/$tag/a/b/c/huge"
    cp -a /usr/share/doc/bash "$dir/$tag/doc" 2>/dev/null || true
    ln -s a/f1 "$dir/$tag/link"
    ln "$dir/$tag/a/f2" "$dir/$tag/hardlink"
    : >"$dir/$tag/empty/zero-length"
}
# sums DIR: sha256 of every file, by relative path.
sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
# same_sums DIR FILE: the tree under DIR matches the sums in FILE.
same_sums() { (cd "$1" && sha256sum --quiet -c "$2"); }

section "add: a table creates /dev/ublkb0"
out=$(cache_add 2>&1)
check_eq "add prints the device" /dev/ublkb0 "$out"
must "/dev/ublkb0 is a block device" test -b /dev/ublkb0
check_eq "its size is the backing device's" "$(blockdev --getsize64 "$BACKING")" "$(blockdev --getsize64 /dev/ublkb0)"
check_eq "2 hardware queues" 2 "$(ls /sys/block/ublkb0/mq | wc -l)"
note "status: $("$B" status -n 0)"
head0=$(key_head 0)

section "ext4 on the cache"
check "mkfs.ext4" mkfs.ext4 -q -F /dev/ublkb0
must "mount" mount /dev/ublkb0 $MNT
make_tree $MNT one
sums $MNT >/tmp/sums-one
check "file tree written ($(wc -l </tmp/sums-one) files, $(du -sm $MNT | cut -f1) MiB)" test "$(wc -l </tmp/sums-one)" -gt 30
check "sync" sync
out=$("$B" del -n 0 2>&1)
check "del refuses a mounted device (exit $?)" test $? -eq 1
check_eq "and says why" "pcache-ublk del: /dev/ublkb0: in use: mounted on $MNT; nothing was stopped (unmount or remove it first, or --force)" "$out"
check "the files are still there and whole" same_sums $MNT /tmp/sums-one
check_eq "the device is still live" live "$("$B" list --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['state'])")"
check "umount" umount $MNT
check "key_head moved ($head0 -> $(key_head 0))" test "$(key_head 0)" != "$head0"
note "status: $("$B" status -n 0)"

section "del, add again: replay"
pid=$(server_pid 0)
check "del -n 0" "$B" del -n 0
check "the device is gone" gone 0
check "the server exited" wait_for 10 no_process "$pid"
check "socket and record removed" test ! -e $RUN/ublkb0.sock -a ! -e $RUN/ublkb0.conf
out=$(cache_add 2>&1)
check_eq "add again" /dev/ublkb0 "$out"
note "status after replay: $("$B" status -n 0)"
check "fsck.ext4 -fn is clean" fsck.ext4 -fn /dev/ublkb0
must "mount" mount /dev/ublkb0 $MNT
check "every file intact (sha256)" same_sums $MNT /tmp/sums-one
# The reads were served by the replayed index, not by the backing device.
hit=$(stat_value 0 hitBytes) miss=$(stat_value 0 missBytes)
note "read since the add: $((hit >> 20)) MiB from the cache, $((miss >> 20)) MiB from $BACKING"
check "the files were read from the cache (replayed keys), not the backing device" \
    test "$hit" -gt $((24 << 20)) -a "$miss" -lt $((hit / 8))
check "the symlink survived" test "$(readlink $MNT/one/link)" = a/f1
check "the hard link survived" test "$(stat -c %h $MNT/one/hardlink)" = 2
# More data, left dirty in the cache for the flush below.
make_tree $MNT two
sums $MNT >/tmp/sums-two
check "umount" umount $MNT
note "status: $("$B" status -n 0)"

section "del --flush: the backing device alone holds the filesystem"
pid=$(server_pid 0)
out=$("$B" del --flush -n 0 2>&1)
check_eq "del --flush" "deleted /dev/ublkb0" "$out"
check "the device is gone" gone 0
check "the server exited (it held $BACKING exclusively)" wait_for 10 no_process "$pid"
check "its log tells of the flush" grep -q "stop requested over the control socket (flush)" $RUN/ublkb0.log
check "dump: the cache is consistent" "$B" dump "$DAX"
tails=$("$B" dump "$DAX" | awk '/^key_tail|^dirty_tail/ { print $1 "=" $2 }' | tr '\n' ' ')
note "on the cache device: $tails"
check "fsck.ext4 -fn of $BACKING itself is clean" fsck.ext4 -fn "$BACKING"
must "mount $BACKING read-only, without the cache" mount -o ro "$BACKING" /mnt/backing
check "every file intact on $BACKING (sha256)" same_sums /mnt/backing /tmp/sums-two
check "umount $BACKING" umount /mnt/backing

section "a fresh cache (first MiB of $DAX zeroed) over the same backing device"
check "zero the first MiB of $DAX" dax_zero "$DAX" 1
out=$("$B" dump "$DAX" 2>&1)
check "dump sees no cache any more" test $? -ne 0
note "dump: $(printf '%s\n' "$out" | head -n 2 | tr '\n' ' ')"
out=$(cache_add 2>&1)
check_eq "add on the zeroed cache device" /dev/ublkb0 "$out"
st=$("$B" status -n 0)
note "status: $st"
check_eq "a new cache: key_tail 0:0" 0:0 "$(key_tail 0)"
# The key log, and one data segment per queue whose data head cached some of
# the partition scan's reads: the scan may run on either CPU, so on either queue.
check "few segments in use: $(status_field 0 4) (the key log, a data segment per queue)" test "$(status_field 0 4)" -le 3
check "fsck.ext4 -fn through the fresh cache is clean" fsck.ext4 -fn /dev/ublkb0
must "mount" mount /dev/ublkb0 $MNT
check "every file intact, read through the fresh cache (sha256)" same_sums $MNT /tmp/sums-two
check "umount" umount $MNT
check "del -n 0" "$B" del -n 0
check "no server left" test -z "$(servers_left)"

finish
