#!/usr/bin/env bash
# Foundation: what every other VM test relies on is there and works.
# vm-run: --pmem 256M --disk 256M
. "$VM_PROJECT/Tests/VM/guest/lib.sh"

section "kernel and devices"
note "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo) RAM"
check "ublk_drv is loaded" test -d /sys/module/ublk_drv
check "/dev/ublk-control exists" test -c /dev/ublk-control
check "/dev/pmem0 exists" test -b /dev/pmem0
check_eq "/sys/block/pmem0/queue/dax" 1 "$(cat /sys/block/pmem0/queue/dax 2>&1)"
check_eq "pmem0 size (bytes)" $((256 << 20)) "$(blockdev --getsize64 /dev/pmem0 2>&1)"
check "/dev/vda (the backing disk) exists" test -b /dev/vda
check_eq "vda size (bytes)" $((256 << 20)) "$(blockdev --getsize64 /dev/vda 2>&1)"

section "pcache-ublk binary (\$PCACHE_BIN)"
note "PCACHE_BIN=${PCACHE_BIN:-<unset>}"
if check "the binary is there" test -x "${PCACHE_BIN:-/nonexistent}"; then
    out=$("$PCACHE_BIN" --version 2>&1)
    rc=$?
    printf '%s\n' "$out" | head -n 20 | indent
    # 126/127: not executable or a library/loader is missing; >128: killed by a signal.
    check "it executed inside the VM (exit $rc)" test "$rc" -ne 126 -a "$rc" -ne 127 -a "$rc" -lt 128
    check "it printed something" test -n "$out"
    missing=$(ldd "$PCACHE_BIN" 2>&1 | grep 'not found' || true)
    check "its shared libraries resolve" test -z "$missing"
fi

section "device mapper (dmsetup without udev)"
sectors=$((64 << 11)) # 64 MiB
truncate -s 64M /tmp/backing.img
loopdev=$(losetup -f --show /tmp/backing.img 2>&1)
must "loop device over a file ($loopdev)" test -b "$loopdev"

check "dm-linear over $loopdev: create" dmsetup create vmt-linear --table "0 $sectors linear $loopdev 0"
check "/dev/mapper/vmt-linear exists" test -b /dev/mapper/vmt-linear
check "write + read back through dm-linear" \
    sh -c 'echo linear-ok | dd of=/dev/mapper/vmt-linear bs=4096 conv=sync oflag=direct status=none &&
           dd if=/dev/mapper/vmt-linear bs=4096 count=1 iflag=direct status=none | grep -aq linear-ok'
check "dm-linear: remove" dmsetup remove vmt-linear

# dm-writecache with pmem0 as the cache: the in-kernel reference for benchmarks.
check "dm-writecache (pmem0 caching $loopdev): create" \
    dmsetup create vmt-wc --table "0 $sectors writecache p $loopdev /dev/pmem0 4096 0"
head -c 8M /dev/urandom >/tmp/pattern
check "write 8 MiB through dm-writecache" dd if=/tmp/pattern of=/dev/mapper/vmt-wc bs=1M oflag=direct status=none
note "status: $(dmsetup status vmt-wc 2>&1)"
check "dm-writecache: flush" dmsetup message vmt-wc 0 flush
check "dm-writecache: remove" dmsetup remove vmt-wc
check "the data reached the backing device" \
    cmp -n 8388608 /tmp/pattern <(dd if="$loopdev" bs=1M count=8 iflag=direct status=none)
losetup -d "$loopdev"

finish
