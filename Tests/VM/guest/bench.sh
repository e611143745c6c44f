#!/usr/bin/env bash
# The benchmark's part inside the VM (Tests/VM/bench.sh boots it):
# /dev/pmem0 (1 GiB) is the cache device, /dev/vda (4 GiB) the backing disk.
#
# Each target is a pair of functions: setup_NAME prints the block device to
# test (or nothing when it cannot be tested yet), teardown_NAME undoes it.
set -uo pipefail
runtime=${BENCH_RUNTIME:-5}
size=512M # working set: fits in every cache, so all targets see the same offsets

setup_pmem() { echo /dev/pmem0; }
teardown_pmem() { :; }

setup_disk() { echo /dev/vda; }
teardown_disk() { :; }

# Upper bound for any block device of this kernel: no data movement at all.
setup_null() {
    modload null_blk nr_devices=1 gb=4 bs=4096 queue_mode=2 irqmode=0 >&2 && echo /dev/nullb0
}
teardown_null() { :; }

# The in-kernel reference: dm-writecache with pmem0 caching vda.
setup_dmwc() {
    # A fresh cache: dm-writecache refuses a device with a foreign superblock.
    dd if=/dev/zero of=/dev/pmem0 bs=1M count=1 oflag=direct status=none &&
        dmsetup create bench-wc --table "0 $(blockdev --getsz /dev/vda) writecache p /dev/vda /dev/pmem0 4096 0" >&2 &&
        echo /dev/mapper/bench-wc
}
teardown_dmwc() {
    dmsetup remove bench-wc >&2
}

# pcache-ublk: pmem0 caching vda (counts only once /dev/ublkb0 shows up).
setup_pcache() {
    timeout 120 "$PCACHE_BIN" add --table "0 $(blockdev --getsz /dev/vda) pcache /dev/pmem0 /dev/vda 4 cache_mode writeback data_crc false" >&2
    for _ in $(seq 50); do [ -b /dev/ublkb0 ] && break; sleep 0.1; done
    [ -b /dev/ublkb0 ] && echo /dev/ublkb0
}
teardown_pcache() {
    "$PCACHE_BIN" del -n 0 >&2
}

targets=(pmem disk null dmwc pcache)
declare -A label=([pmem]="pmem0 (raw)" [disk]="vda (backing disk)" [null]="null_blk"
    [dmwc]="dm-writecache" [pcache]="pcache-ublk")
declare -A missing=([pcache]="server not ready yet")

# iops DEVICE QUEUE_DEPTH: write IOPS of fio 4 KiB random writes.
iops() {
    fio --name=bench --filename="$1" --rw=randwrite --bs=4k --size="$size" --iodepth="$2" \
        --ioengine=io_uring --direct=1 --runtime="$runtime" --time_based --ramp_time=1 \
        --minimal 2>/dev/null | awk -F';' 'NR == 1 { printf "%d", $49 }'
}

results=()
for t in "${targets[@]}"; do
    dev=$("setup_$t")
    if [ -z "$dev" ] || [ ! -b "$dev" ]; then
        results+=("$(printf '%-22s %12s %12s' "${label[$t]}" "-" "-")  (${missing[$t]:-setup failed})")
        continue
    fi
    echo "bench: ${label[$t]} ($dev) ..." >&2
    q1=$(iops "$dev" 1)
    q32=$(iops "$dev" 32)
    "teardown_$t"
    results+=("$(printf '%-22s %12s %12s' "${label[$t]}" "${q1:-error}" "${q32:-error}")")
done

{
    echo
    echo "fio 4 KiB random writes, O_DIRECT, io_uring, ${runtime} s each, ${size} working set"
    echo "(QEMU TCG: software-emulated CPU; compare the rows with each other)"
    printf '%-22s %12s %12s\n' "target" "IOPS qd=1" "IOPS qd=32"
    printf '%s\n' "${results[@]}"
} | tee "$VM_OUT/bench-vm.txt"
