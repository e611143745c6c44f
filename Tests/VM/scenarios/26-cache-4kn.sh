#!/usr/bin/env bash
# A backing disk with 4 KiB logical blocks (4Kn; here a loop device with
# 4096-byte sectors): /dev/ublkbN takes the same logical block size, as dm
# stacks it, so no write smaller than a block reaches the cache; writes and
# reads verify, writeback runs without errors, and after del --flush the
# data verifies on the disk itself. The same for a backing file on ext4 on
# that disk, whose direct I/O must be 4 KiB aligned too (statx DIOALIGN).
# vm-run: --pmem 1G --disk 256M --timeout 300
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
B=$PCACHE_BIN

# fio_verify TARGET SIZE [--verify_only]: fio 4-64 KiB random writes with
# crc32c verify on TARGET (or, with --verify_only, the check of what they wrote).
fio_verify() {
    local mode=${3:---do_verify=1}
    fio --name=v --filename="$1" --rw=randwrite --bsrange=4k-64k --size="$2" --iodepth=8 \
        --ioengine=io_uring --direct=1 --verify=crc32c "$mode" --randrepeat=0
}

# add_over BACKING SECTORS: a fresh cache over BACKING with one queue; checks
# that the cached device takes 4096-byte blocks and that the kernel refuses a
# 512-byte direct write; sets $dev.
add_over() {
    must "format the cache" "$B" format --force "$dax"
    dev=$("$B" add --table "0 $2 pcache $dax $1" -q 1 2>&1 | tail -1)
    must "add over $1 ($dev)" test -b "$dev"
    check_eq "the cached device has 4096-byte logical blocks" 4096 "$(blockdev --getss "$dev")"
    check "a 512-byte direct write is refused by the kernel, not sent to the cache" \
        sh -c "! dd if=/dev/zero of=$dev bs=512 count=1 seek=9 oflag=direct status=none 2>/dev/null"
}

# write_back_cleanly SIZE: verified writes through $dev, then writeback at
# once (gc_percent 0) without failures, backing errors or logged errors.
write_back_cleanly() {
    check "fio 4 KiB and 64 KiB writes with crc32c verify" fio_verify "$dev" "$1"
    check "gc_percent 0 (write back at once)" "$B" message -n 0 gc_percent 0
    wait_for 30 sh -c "\"$B\" status -n 0 --stats | grep -q '^writeback_bytes [1-9]'"
    sleep 2
    local stats
    stats=$("$B" status -n 0 --stats)
    note "$(printf '%s\n' "$stats" | grep -E '^(writeback_(bytes|requests|failures)|backingErrors) ' | paste -sd' ')"
    check_eq "writeback failures" 0 "$(printf '%s\n' "$stats" | awk '$1=="writeback_failures" {print $2}')"
    check_eq "backing errors" 0 "$(printf '%s\n' "$stats" | awk '$1=="backingErrors" {print $2}')"
    check "no writeback error in the log" sh -c "! grep -q 'writeback error' /run/pcache-ublk/ublkb0.log"
}

section "a 4Kn backing disk"
truncate -s 256M /tmp/backing.img
loop=$(losetup -b 4096 -f --show /tmp/backing.img)
check_eq "the loop device has 4096-byte logical blocks" 4096 "$(blockdev --getss "$loop")"
dax=$(pmem_mode devdax)
add_over "$loop" "$(blockdev --getsz "$loop")"

section "writes and reads through the cache"
write_back_cleanly 96M

section "del --flush: the data on the disk itself"
check "del --flush" "$B" del -n 0 --flush
check "fio verifies on $loop" fio_verify "$loop" 96M --verify_only

section "a backing file on ext4 on the 4Kn disk"
must "mkfs.ext4 on $loop" mkfs.ext4 -q -F "$loop"
mkdir -p /mnt/4kn
must "mount it" mount -t ext4 "$loop" /mnt/4kn
truncate -s 128M /mnt/4kn/backing
add_over /mnt/4kn/backing $((128 << 11))
write_back_cleanly 48M
check "del --flush" "$B" del -n 0 --flush
check "fio verifies on the file" fio_verify /mnt/4kn/backing 48M --verify_only
umount /mnt/4kn
losetup -d "$loop"
finish
