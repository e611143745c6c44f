#!/usr/bin/env bash
# Cache full and garbage collection: a 1G pmem cache (62 segments) in front of
# a 4G disk takes 3 x 1 GiB of writes, at gc_percent 0, 50 and 90 in turn
# (3x the cache; fio writes with crc32c verify headers and reads everything
# back). Checks: no I/O fails (requests wait while the cache is full), GC frees
# segments in every phase (gc_segments_freed grows), segs_used stays within
# the cache and, with GC from 0 or 50 %, comes down again; every block verifies
# through the cache and, after del --flush, on the backing device itself.
# vm-run: --pmem 1G --disk 4G --timeout 600
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
. "$VM_PROJECT/Tests/VM/guest/fault-lib.sh"
work=/tmp/gc
mkdir -p $work
must "pcache-ublk binary (\$PCACHE_BIN)" test -x "$B"
region=$((1 << 30))
# job NAME OFFSET [fio options]: 1 MiB sequential writes, depth 8, with verify headers.
job() {
    local dev=$1 off=$2
    shift 2
    fio --name=gc --filename="$dev" --rw=write --bs=1M --iodepth=8 --ioengine=io_uring --direct=1 \
        --offset="$off" --size=$region --verify=crc32c --verify_fatal=1 --randrepeat=1 \
        --output-format=json "$@" >$work/fio.json 2>$work/fio.err
}
fio_summary() {
    python3 -c "import json; j=json.load(open('$work/fio.json'))['jobs'][0]
print(j['error'], int(j['write']['bw']/1024), int(j['read']['bw']/1024))"
}

section "1G pmem cache over a 4G disk"
dax=$(cache_dax)
must "device DAX: $dax" test -c "$dax"
must "add" "$B" add --table "$(pcache_table "$dax" /dev/vda)" -n 0 -q 2
nsegs=$(status_field 0 3)
note "status: $("$B" status -n 0) ($nsegs segments)"

i=0
for pct in 0 50 90; do
    section "gc_percent $pct: 1 GiB of writes at $((i))G, then read back and verified"
    check "message gc_percent $pct" "$B" message -n 0 gc_percent $pct
    freed0=$(stat_of 0 gc_segments_freed)
    defer0=$(stat_of 0 deferrals)
    (while :; do status_field 0 4; sleep 0.5; done) >$work/used-$pct 2>/dev/null &
    sampler=$!
    t=$SECONDS
    job /dev/ublkb0 $((i * region))
    rc=$?
    kill $sampler
    wait $sampler 2>/dev/null
    read -r err wbw rbw <<<"$(fio_summary)"
    check_eq "fio: no I/O error, every block verified (exit $rc)" 0 "${err:-x}"
    [ "$rc" = 0 ] || indent <$work/fio.err
    freed=$(($(stat_of 0 gc_segments_freed) - freed0))
    max=$(sort -n $work/used-$pct | tail -n 1)
    last=$(tail -n 1 $work/used-$pct)
    note "$((SECONDS - t)) s: write ${wbw} MiB/s, verify read ${rbw} MiB/s; segs_used max $max of $nsegs," \
        "at the end $last; GC freed $freed segments; $(($(stat_of 0 deferrals) - defer0)) requests waited for space"
    check "GC freed segments" test "$freed" -gt 0
    check "segs_used stayed within the cache ($max <= $nsegs)" test "$max" -le "$nsegs"
    if [ $pct -lt 90 ]; then
        check "segs_used comes down to the GC threshold once writeback catches up" \
            wait_for 60 sh -c "test \$('$B' status -n 0 | awk '{print \$7}') -le \$(( $nsegs * $pct / 100 + 4 ))"
    fi
    i=$((i + 1))
done
check_eq "no CRC errors on read hits" 0 "$(stat_of 0 crcErrors)"
check_eq "no backing errors" 0 "$(stat_of 0 backingErrors)"

section "del --flush, then verify the backing device itself"
must "del --flush" "$B" del -n 0 --flush
for i in 0 1 2; do
    job /dev/vda $((i * region)) --verify_only
    check_eq "region ${i}G verifies on /dev/vda" 0 "$(fio_summary | awk '{ print $1 }')"
done
check "dump --keys: the cache is consistent" "$B" dump "$dax" --keys
finish
