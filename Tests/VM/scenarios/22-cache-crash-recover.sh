#!/usr/bin/env bash
# The server killed (-9) under load, and stopped by signals.
# - kill -9 under a fio write load: the device stays QUIESCED and its I/O
#   waits; `recover -n 0` takes it over; fio completes and everything that
#   was acknowledged reads back (fio verify=crc32c): the writes flushed
#   before the kill, and the FUA writes fio saw complete before, during and
#   after it.
# - kill -9 under a read load, recover: the reads complete and verify.
# - kill -9, then del without a server, then add: replay from the cache.
# - SIGTERM (and SIGINT) stop cleanly: the device is removed, and add
#   replays everything, unflushed writes included.
# - kill -9 under plain writes (no FLUSH, no FUA): a volatile write cache may
#   lose those on power loss, but a server crash is not one: the open
#   key-sets live in a stash in /run that the next server logs, so these
#   writes survive too. (PCACHE_VM_UNFLUSHED_CRASH=0 skips that part.)
# vm-run: --pmem 1G --disk 2G --timeout 600 -e PCACHE_VM_SOAK -e PCACHE_VM_UNFLUSHED_CRASH
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
. "$VM_PROJECT/Tests/VM/guest/cache-lib.sh"

cache_setup
M=$SOAK
common=(--verify=crc32c --verify_fatal=1 --randrepeat=1 --bs=4k --iodepth=32)
r1=(--rw=randwrite --offset=0 --size=$((32 * M))M)                           # flushed before the kill
r2=(--rw=randwrite --offset=256M --size=$((96 * M))M)                        # FUA, across the kill
r3=(--rw=randwrite --offset=$((256 + 128 * M))M --size=$((32 * M))M)         # unflushed, before SIGTERM
r4=(--rw=randwrite --offset=$((256 + 192 * M))M --size=$((64 * M))M)         # unflushed, across a kill

quiesced() { [ "$(device_state 0)" = quiesced ]; }
live() { [ "$(device_state 0)" = live ]; }
writes() { stat_value 0 writes; }

# kill_server: kill -9 of device 0's server; checks the device is QUIESCED.
kill_server() {
    local pid
    pid=$(server_pid 0)
    check "kill -9 the server (pid $pid)" kill -9 "$pid"
    check "the device becomes QUIESCED" wait_for 10 quiesced
    check "/dev/ublkb0 stays" test -b /dev/ublkb0
    killed_pid=$pid
}
# recover_server: recover -n 0; checks a new server runs it LIVE.
recover_server() {
    local out pid
    out=$("$B" recover -n 0 2>&1)
    check_eq "recover -n 0" /dev/ublkb0 "$out"
    pid=$(server_pid 0)
    check "served by a new process ($killed_pid -> $pid)" test -n "$pid" -a "$pid" != "$killed_pid"
    check "LIVE again" live
}

section "add, write region 1 and FLUSH"
out=$(cache_add 2>&1)
check_eq "add" /dev/ublkb0 "$out"
must "/dev/ublkb0 exists" test -b /dev/ublkb0
check "region 1: randwrite $((32 * M)) MiB (no FUA)" fio_job r1 "${common[@]}" "${r1[@]}" --do_verify=0
check "FLUSH (fsync of /dev/ublkb0)" flush_dev /dev/ublkb0

section "kill -9 under a FUA write load, recover"
w0=$(writes)
fio_job r2 "${common[@]}" "${r2[@]}" --sync=1 --rate_iops=$((2500 * M)) --do_verify=1 &
fiopid=$!
check "the load runs (3000 writes served)" wait_for 60 sh -c "[ \$('$B' status -n 0 --stats | awk '\$1 == \"writes\" { print \$2 }') -gt $((w0 + 3000)) ]"
note "before the kill: $(($(writes) - w0)) FUA writes served; status $("$B" status -n 0)"
kill_server
sleep 1
check "fio waits (its I/O is held, not failed)" kill -0 $fiopid
out=$("$B" status -n 0 2>&1)
note "status without a server: $out"
check "status says the server died and how to recover" sh -c "echo '$out' | grep -q \"recover -n 0\""
recover_server
check "the log says recovered" grep -q "(recovered)" $RUN/ublkb0.log
wait $fiopid
check_eq "fio completed and verified every write (exit status)" 0 $?
note "$(fio_summary r2)"
check "verify_only region 1 (flushed before the kill)" fio_job r1v "${common[@]}" "${r1[@]}" --verify_only
check "verify_only region 2 (FUA writes across the kill)" fio_job r2v "${common[@]}" "${r2[@]}" --verify_only

section "kill -9 under a read load, recover"
fio_job r2r "${common[@]}" "${r2[@]}" --verify_only --rate_iops=$((4000 * M)) &
fiopid=$!
r0=$(stat_value 0 reads)
check "the reads run" wait_for 60 sh -c "[ \$('$B' status -n 0 --stats | awk '\$1 == \"reads\" { print \$2 }') -gt $((r0 + 2000)) ]"
kill_server
sleep 1
check "fio waits" kill -0 $fiopid
recover_server
wait $fiopid
check_eq "the reads completed and verified (fio exit status)" 0 $?

section "kill -9, del without a server, add again"
kill_server
out=$("$B" del -n 0 2>&1)
check_eq "del of the QUIESCED device" "deleted /dev/ublkb0" "$out"
check "gone" gone 0
out=$(cache_add 2>&1)
check_eq "add again" /dev/ublkb0 "$out"
check "verify_only region 1" fio_job r1a "${common[@]}" "${r1[@]}" --verify_only
check "verify_only region 2" fio_job r2a "${common[@]}" "${r2[@]}" --verify_only

section "SIGTERM stops cleanly; add replays, unflushed writes included"
check "region 3: randwrite $((32 * M)) MiB, no FLUSH, no FUA" fio_job r3 "${common[@]}" "${r3[@]}" --do_verify=0
pid=$(server_pid 0)
check "kill -TERM $pid" kill -TERM "$pid"
check "the device is removed" wait_for 20 gone 0
check "the server exited" wait_for 10 no_process "$pid"
check "socket and record removed" test ! -e $RUN/ublkb0.sock -a ! -e $RUN/ublkb0.conf
check "the log: signal 15, then removed" sh -c "grep -q 'signal 15: stopping' $RUN/ublkb0.log && grep -q '/dev/ublkb0 removed' $RUN/ublkb0.log"
out=$(cache_add 2>&1)
check_eq "add again" /dev/ublkb0 "$out"
check "verify_only region 1" fio_job r1t "${common[@]}" "${r1[@]}" --verify_only
check "verify_only region 2" fio_job r2t "${common[@]}" "${r2[@]}" --verify_only
check "verify_only region 3 (never flushed)" fio_job r3t "${common[@]}" "${r3[@]}" --verify_only
pid=$(server_pid 0)
check "kill -INT $pid stops it too" kill -INT "$pid"
check "the device is removed" wait_for 20 gone 0
check "the log: signal 2" grep -q 'signal 2: stopping' $RUN/ublkb0.log
out=$(cache_add 2>&1)
check_eq "add again" /dev/ublkb0 "$out"
check "verify_only region 3" fio_job r3i "${common[@]}" "${r3[@]}" --verify_only

section "unflushed writes across kill -9"
if [ "${PCACHE_VM_UNFLUSHED_CRASH:-1}" = 1 ]; then
    w0=$(writes)
    fio_job r4 "${common[@]}" "${r4[@]}" --rate_iops=$((2500 * M)) --do_verify=0 &
    fiopid=$!
    check "the load runs" wait_for 60 sh -c "[ \$('$B' status -n 0 --stats | awk '\$1 == \"writes\" { print \$2 }') -gt $((w0 + 4000)) ]"
    kill_server
    recover_server
    wait $fiopid
    check_eq "fio completed (exit status)" 0 $?
    check "verify_only region 4: writes acknowledged without FLUSH survive kill -9" \
        fio_job r4v "${common[@]}" "${r4[@]}" --verify_only
    check "the new server logged the stashed keys" grep -q 'keys the previous server had acknowledged' $RUN/ublkb0.log
else
    note "skipped (PCACHE_VM_UNFLUSHED_CRASH=0)"
fi

check "del -n 0" "$B" del -n 0
check "no server left" test -z "$(servers_left)"
finish
