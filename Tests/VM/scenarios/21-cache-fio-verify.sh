#!/usr/bin/env bash
# fio with verify=crc32c over the raw cached device (2 queues): random writes
# at iodepth 1 and 32 (two jobs, so both queues carry I/O), mixed block sizes,
# 512-byte writes, 512 KiB sequential writes, each read back and checked;
# then a separate --verify_only pass after del/add (served by the replayed
# cache), and one over the backing device itself after del --flush. Last,
# 32 MiB overwritten once before writeback runs, with writeback_history false
# (the first pass is skipped: writeback_skipped_bytes) and true (nothing is),
# the backing device verified after each.
# vm-run: --pmem 1G --disk 2G --timeout 600 -e PCACHE_VM_SOAK
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
. "$VM_PROJECT/Tests/VM/guest/cache-lib.sh"

cache_setup
M=$SOAK

# The jobs, each on its own region of the 2 GiB device. Every one writes
# with a crc32c header per block and (do_verify) reads all of it back.
common=(--verify=crc32c --verify_fatal=1 --randrepeat=1)
qd1=(--rw=randwrite --bs=4k --iodepth=1 --offset=0 --size=$((12 * M))M)
# Two jobs, one per CPU: blk-mq maps CPU n to queue n, so both queues work.
qd32=(--rw=randwrite --bsrange=4k-64k --iodepth=32 --numjobs=2 --offset=64M --offset_increment=$((64 * M))M
    --size=$((48 * M))M --cpus_allowed=0-1 --cpus_allowed_policy=split)
small=(--rw=randwrite --bs=512 --iodepth=8 --offset=$((64 + 128 * M))M --size=$((2 * M))M)
seq=(--rw=write --bs=512k --iodepth=8 --offset=$((80 + 128 * M))M --size=$((32 * M))M)

section "add -q 2"
out=$(cache_add 2>&1)
check_eq "add" /dev/ublkb0 "$out"
must "/dev/ublkb0 exists" test -b /dev/ublkb0
echo none >/sys/block/ublkb0/queue/scheduler

section "write + verify"
check "randwrite 4k, iodepth 1, verify" fio_job qd1 "${common[@]}" "${qd1[@]}" --do_verify=1
note "$(fio_summary qd1)"
check "randwrite 4k-64k, iodepth 32, 2 jobs, verify" fio_job qd32 "${common[@]}" "${qd32[@]}" --do_verify=1
note "$(fio_summary qd32)"
check "randwrite 512 bytes, iodepth 8, verify" fio_job small "${common[@]}" "${small[@]}" --do_verify=1
note "$(fio_summary small)"
check "sequential write 512 KiB, iodepth 8, verify" fio_job seq "${common[@]}" "${seq[@]}" --do_verify=1
note "$(fio_summary seq)"
read -r -a per_queue <<<"$("$B" status -n 0 --info | sed -n 's/^queue_requests //p')"
check_eq "requests counted for 2 queues (${per_queue[*]})" 2 "${#per_queue[@]}"
for q in 0 1; do
    check "queue $q served requests (${per_queue[$q]:-none})" test "${per_queue[$q]:-0}" -gt 1000
done
note "status: $("$B" status -n 0)"
check_eq "no CRC errors" 0 "$(stat_value 0 crcErrors)"
check_eq "no backing device errors" 0 "$(stat_value 0 backingErrors)"

section "del, add, verify_only (the replayed cache)"
check "del -n 0" "$B" del -n 0
check "gone" gone 0
out=$(cache_add 2>&1)
check_eq "add again" /dev/ublkb0 "$out"
echo none >/sys/block/ublkb0/queue/scheduler
check "verify_only: iodepth 1 region" fio_job qd1v "${common[@]}" "${qd1[@]}" --verify_only
check "verify_only: iodepth 32 regions" fio_job qd32v "${common[@]}" "${qd32[@]}" --verify_only
check "verify_only: 512-byte region" fio_job smallv "${common[@]}" "${small[@]}" --verify_only
check "verify_only: sequential region" fio_job seqv "${common[@]}" "${seq[@]}" --verify_only
hit=$(stat_value 0 hitBytes) miss=$(stat_value 0 missBytes)
note "read since the add: $((hit >> 20)) MiB from the cache, $((miss >> 20)) MiB from $BACKING"
# (All of it when it fits below gc_percent; with PCACHE_VM_SOAK GC may have
# collected some of it, which is then read from the backing device.)
check "read from the replayed cache" test "$hit" -gt $(((12 + 96 + 2 + 32) * (M > 1 ? M / 2 : 1) << 20))

section "del --flush, verify_only over $BACKING itself"
pid=$(server_pid 0)
check "del --flush -n 0" "$B" del --flush -n 0
check "the server exited" wait_for 10 no_process "$pid"
check "verify_only on $BACKING: iodepth 1 region" fio_job qd1b --filename="$BACKING" "${common[@]}" "${qd1[@]}" --verify_only
check "verify_only on $BACKING: iodepth 32 regions" fio_job qd32b --filename="$BACKING" "${common[@]}" "${qd32[@]}" --verify_only
check "verify_only on $BACKING: 512-byte region" fio_job smallb --filename="$BACKING" "${common[@]}" "${small[@]}" --verify_only
check "verify_only on $BACKING: sequential region" fio_job seqb --filename="$BACKING" "${common[@]}" "${seq[@]}" --verify_only
check "no server left" test -z "$(servers_left)"

# Overwrites: the same 32 MiB written twice, with different data, before
# writeback runs (it waits for an idle second). By default the first pass is
# not written back (a newer, logged write covers every block of it); with
# writeback_history true it is. Either way the backing device ends up with
# the second pass. Both passes are jobs of one fio run: between two fio
# processes the device can sit idle for a second under TCG, and writeback
# then takes the first pass (16 MiB of it once, in a full make test).
is_clean() { [ "$(key_head 0)" = "$(dirty_tail 0)" ]; }
over=(--rw=randwrite --bs=4k --iodepth=16 --offset=$((160 + 128 * M))M --size=32M)
for history in false true; do
    section "overwrites, writeback_history $history"
    TABLE="0 $SECTORS pcache $DAX $BACKING 6 cache_mode writeback data_crc true writeback_history $history"
    out=$(cache_add 2>&1)
    check_eq "add (writeback_history $history)" /dev/ublkb0 "$out"
    check_eq "status --stats says writeback_history $history" "$history" "$(stat_value 0 writeback_history)"
    check "first pass, then a second with other data" fio_job over1 --filename=/dev/ublkb0 "${common[@]}" \
        "${over[@]}" --randseed=1 --name=over2 --stonewall --filename=/dev/ublkb0 --ioengine=io_uring --direct=1 \
        --verify_state_save=0 "${common[@]}" "${over[@]}" --randseed=2
    check "written back once idle (dirty_tail = key_head)" wait_for 60 is_clean
    skipped=$(stat_value 0 writeback_skipped_bytes)
    note "writeback: $(("$(stat_value 0 writeback_bytes)" >> 20)) MiB written, $((skipped >> 20)) MiB skipped"
    if [ $history = false ]; then
        # All but what a still-open key-set covered when writeback ran.
        check "most of the first pass was skipped ($skipped bytes)" test "$skipped" -ge $((24 << 20))
    else
        check_eq "nothing skipped" 0 "$skipped"
    fi
    check "del --flush -n 0" "$B" del --flush -n 0
    check "verify_only on $BACKING: the second pass" fio_job overb --filename="$BACKING" "${common[@]}" "${over[@]}" \
        --randseed=2 --verify_only
done

finish
