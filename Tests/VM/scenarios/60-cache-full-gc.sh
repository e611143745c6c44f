#!/usr/bin/env bash
# Cache full and garbage collection: a 1G pmem cache (62 segments) in front of
# a 3G disk takes 768 + 768 + 1280 MiB of writes, at gc_percent 0, 50 and 90
# in turn (2.8x the cache; fio writes with crc32c verify headers; the last region is
# read back through the cache, all three from the disk at the end). In the
# 90 % phase the backing device (dm-linear) is suspended for a while, so
# writeback stops and the cache fills up. Checks: no I/O fails (requests wait
# while the cache is full, and go on when writeback resumes), GC frees
# segments in every phase (gc_segments_freed grows), segs_used stays within
# the cache and, with GC from 0 or 50 %, comes down again; every block
# verifies through the cache and, after del --flush, on the backing device.
# vm-run: --pmem 1G --disk 3G --timeout 600
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
. "$VM_PROJECT/Tests/VM/guest/fault-lib.sh"
work=/tmp/gc
mkdir -p $work
must "pcache-ublk binary (\$PCACHE_BIN)" test -x "$B"
region=$((768 << 20))
size90=$((1280 << 20)) # more than the whole cache: it must fill up while the backing device is suspended
# job NAME OFFSET [fio options]: 1 MiB sequential writes, depth 8, with verify headers.
job() {
    local dev=$1 off=$2
    shift 2
    fio --name=gc --filename="$dev" --rw=write --bs=1M --iodepth=8 --ioengine=io_uring --direct=1 \
        --offset="$off" --size=${size:-$region} --verify=crc32c --verify_fatal=1 --randrepeat=1 \
        --output-format=json "$@" >$work/fio.json 2>$work/fio.err
}
fio_summary() {
    python3 -c "import json; j=json.load(open('$work/fio.json'))['jobs'][0]
print(j['error'], int(j['write']['bw']/1024), int(j['read']['bw']/1024))"
}

section "1G pmem cache over a 3G disk (through dm-linear, to suspend it later)"
must "dmsetup create gcback" dmsetup create gcback --table "0 $(blockdev --getsz /dev/vda) linear /dev/vda 0"
must "/dev/mapper/gcback is a block device" test -b /dev/mapper/gcback
dax=$(cache_dax)
must "device DAX: $dax" test -c "$dax"
must "add" "$B" add --table "$(pcache_table "$dax" /dev/mapper/gcback)" -n 0 -q 2
nsegs=$(status_field 0 3)
note "status: $("$B" status -n 0) ($nsegs segments)"

i=0
for pct in 0 50 90; do
    mib=$((region >> 20))
    [ $pct = 90 ] && mib=$((size90 >> 20))
    section "gc_percent $pct: $mib MiB of writes at $((i * region >> 20)) MiB"
    check "message gc_percent $pct" "$B" message -n 0 gc_percent $pct
    freed0=$(stat_of 0 gc_segments_freed)
    defer0=$(stat_of 0 deferrals)
    (while :; do status_field 0 4; sleep 0.5; done) >$work/used-$pct 2>/dev/null &
    sampler=$!
    t=$SECONDS
    verify=0
    if [ $pct = 90 ]; then
        verify=1 # read back through the cache: hits and misses
        check "suspend the backing device: writeback stops" dmsetup suspend gcback
        size=$size90 job /dev/ublkb0 $((i * region)) --do_verify=$verify &
        fio_pid=$!
        waited=0 d=0 u=0
        for _ in $(seq 1 90); do # the cache fills within ~30 s
            d=$(stat_of 0 deferrals) u=$(status_field 0 4)
            [ "${d:-0}" -gt "$defer0" ] && waited=1 && break
            kill -0 $fio_pid 2>/dev/null || break
            sleep 1
        done
        check "the cache fills up ($u of $nsegs segments) and writes wait for space ($((d - defer0)) deferrals)" \
            test $waited = 1
        note "while full: status $("$B" status -n 0)"
        check "fio is still running (waiting, not failing)" kill -0 $fio_pid
        sleep 3
        check "resume the backing device" dmsetup resume gcback
        wait $fio_pid
        rc=$?
    else
        job /dev/ublkb0 $((i * region)) --do_verify=$verify
        rc=$?
    fi
    kill $sampler
    wait $sampler 2>/dev/null
    read -r err wbw rbw <<<"$(fio_summary)"
    check_eq "fio: no I/O error$([ $verify = 1 ] && echo ', every block read back and verified') (exit $rc)" 0 "${err:-x}"
    [ "$rc" = 0 ] || indent <$work/fio.err
    max=$(sort -n $work/used-$pct | tail -n 1)
    last=$(tail -n 1 $work/used-$pct)
    check "segs_used stayed within the cache ($max <= $nsegs)" test "$max" -le "$nsegs"
    if [ $pct -lt 90 ]; then
        # Below gc_percent writeback waits for an idle second; at it, writeback
        # and GC run until usage is back there.
        check "segs_used comes down to the GC threshold once writeback catches up" \
            wait_for 60 sh -c "test \$('$B' status -n 0 | awk '{print \$7}') -le \$(( $nsegs * $pct / 100 + 4 ))"
    fi
    freed=$(($(stat_of 0 gc_segments_freed) - freed0))
    note "$((SECONDS - t)) s: write ${wbw} MiB/s, verify read ${rbw} MiB/s; segs_used max $max of $nsegs," \
        "at the end of the writes $last; GC freed $freed segments; $(($(stat_of 0 deferrals) - defer0)) requests waited for space"
    check "GC freed segments" test "$freed" -gt 0
    i=$((i + 1))
done
check_eq "no CRC errors on read hits" 0 "$(stat_of 0 crcErrors)"
check_eq "no backing errors" 0 "$(stat_of 0 backingErrors)"

section "del --flush, then verify the backing device itself"
must "del --flush" "$B" del -n 0 --flush
for i in 0 1 2; do
    size=$region
    [ $i = 2 ] && size=$size90
    size=$size job /dev/mapper/gcback $((i * region)) --verify_only
    check_eq "region at $((i * region >> 20)) MiB verifies on the backing device" 0 "$(fio_summary | awk '{ print $1 }')"
done
check "dump --keys: the cache is consistent" "$B" dump "$dax" --keys
check "dmsetup remove gcback" dmsetup remove gcback
finish
