#!/usr/bin/env bash
# A slow, then failing, then healed backing device under the cache: a
# device-mapper device over /dev/vda whose table is swapped from dm-delay
# (100 ms per write and flush) to dm-flakey error_writes (every write fails)
# to dm-linear. Checks: writes and fsyncs through the cache never wait for the
# slow device nor fail with the failing one; writeback errors show in status
# (dirty tail stuck), stats (writeback_failures, writeback_last_error) and the
# log; writeback resumes by itself after the heal and catches up (dirty_tail =
# key_head); every durable write reads back through the cache and, after
# del --flush, from the backing device itself.
# vm-run: --pmem 1G --disk 256M --timeout 600
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
. "$VM_PROJECT/Tests/VM/guest/fault-lib.sh"
work=/tmp/faults
mkdir -p $work
must "pcache-ublk binary (\$PCACHE_BIN)" test -x "$B"
dmesg -n 1 # the kernel's write errors would flood the console
S=$(blockdev --getsz /dev/vda)
delay="0 $S delay /dev/vda 0 0 /dev/vda 0 100 /dev/vda 0 100"
flakey="0 $S flakey /dev/vda 0 0 3600 1 error_writes"
linear="0 $S linear /dev/vda 0"
swap() { dmsetup suspend pback && dmsetup reload pback --table "$1" && dmsetup resume pback; }
writers() { # writers ITER COUNT: 2 writers of COUNT blocks each over 32 MiB
    local pids=() w rc=0
    for w in 0 1; do
        python3 "$BLOCKCHECK" write /dev/ublkb0 --log $work/i$1-w$w.log --iter "$1" --writer $w --writers 2 \
            --blocks 8192 --count "$2" --fsync-every 32 --fua-every 29 2>>$work/writers.err &
        pids+=($!)
    done
    for w in "${pids[@]}"; do wait "$w" || rc=1; done
    return $rc
}
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

section "slow backing device: dm-delay, 100 ms per write and flush"
must "dmsetup create pback (delay)" dmsetup create pback --table "$delay"
must "/dev/mapper/pback is a block device" test -b /dev/mapper/pback
check_eq "same size as /dev/vda" "$S" "$(blockdev --getsz /dev/mapper/pback)"
dax=$(cache_dax)
must "device DAX: $dax" test -c "$dax"
must "add over /dev/mapper/pback" "$B" add --table "$(pcache_table "$dax" /dev/mapper/pback)" -n 0 -q 2
lat=$(fio --name=w --filename=/dev/ublkb0 --rw=randwrite --bs=4k --direct=1 --ioengine=psync --size=16M \
    --offset=128M --runtime=4 --time_based --output-format=json 2>/dev/null |
    python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['write']; print(int(j['clat_ns']['mean']/1000), int(j['iops']))")
note "4 KiB writes through the cache: mean latency ${lat% *} us, ${lat#* } IOPS (the backing device takes 100 ms a write)"
check "writes complete well before the backing device would (< 20 ms)" test "${lat% *}" -lt 20000
t=$(date +%s%N)
check "2 writers, 2 x 3000 writes with fsyncs" writers 1 3000
note "took $(ms_since $t) ms; $(stat_of 0 writeback_keysets) key-sets written back meanwhile"
# Writeback waits while requests keep coming and the cache has room; it
# starts within a second or so of them stopping.
check "writeback runs against the slow device once the writers stop" \
    wait_for 20 sh -c "test \$('$B' status -n 0 --stats | awk '\$1==\"writeback_keysets\" {print \$2}') -gt 0"

section "failing backing device: dm-flakey error_writes"
must "swap in the failing table" swap "$flakey"
failures0=$(stat_of 0 writeback_failures)
failing_since=$(date +%s%N)
t=$failing_since
check "2 x 4000 more writes with fsyncs: none fails" writers 2 4000
note "took $(ms_since $t) ms"
check "writeback failures are counted" wait_for 15 sh -c "test \$('$B' status -n 0 --stats | awk '\$1==\"writeback_failures\" {print \$2}') -gt $failures0"
check_eq "writeback_last_error is EIO" -5 "$(stat_of 0 writeback_last_error)"
check "the log tells" grep -q "writeback error: Input/output error (errno 5)" $RUN/ublkb0.log
grep "writeback" $RUN/ublkb0.log | tail -n 2 | indent
tail1=$(status_field 0 8)
sleep 2
check_eq "the dirty tail does not move while writes fail" "$tail1" "$(status_field 0 8)"
check "key_head is ahead of dirty_tail" test "$(status_field 0 7)" != "$tail1"
note "status: $("$B" status -n 0)"
check "reads work meanwhile (misses come from the device): everything durable reads back" \
    python3 "$BLOCKCHECK" verify /dev/ublkb0 --logs $work/i*.log

section "healed: dm-linear"
attempts=$(($(stat_of 0 writeback_failures) - failures0))
secs=$((($(date +%s%N) - failing_since) / 1000000000))
check "writeback retries back off: $attempts attempts in $secs s of failures (at most 2 + 1 per s)" \
    test "$attempts" -le $((2 + secs))
must "swap in the healthy table" swap "$linear"
t=$(date +%s%N)
check "writeback catches up: dirty_tail = key_head" wait_for 120 clean 0
note "caught up in $(ms_since $t) ms; status: $("$B" status -n 0)"
check "the log tells it resumed" grep -q "writeback resumed after" $RUN/ublkb0.log
grep "writeback resumed" $RUN/ublkb0.log | tail -n 1 | indent
f1=$(stat_of 0 writeback_failures)
check "2 x 1000 more writes" writers 3 1000
check "wait until clean again" wait_for 60 clean 0
check_eq "no new writeback failures after the heal" "$f1" "$(stat_of 0 writeback_failures)"
check "through the cache: every durable write reads back" python3 "$BLOCKCHECK" verify /dev/ublkb0 --logs $work/i*.log
check_eq "no write or fsync error in the writer logs" 0 "$(cat $work/i*.log | grep -c '^E')"

section "del --flush, then the backing device itself"
must "del --flush" "$B" del -n 0 --flush
check "/dev/mapper/pback holds every durable write" python3 "$BLOCKCHECK" verify /dev/mapper/pback --logs $work/i*.log
section "del while writes wait for space: failing backing device, full cache"
# Writeback cannot move the dirty tail, so GC frees nothing, and 1 MiB writes
# over and over the same 192 MiB fill the cache's log; the next write waits.
# STOP_DEV waits for every request the kernel handed out: after the server's
# grace period (30 s in which no room is made) the waiting ones fail with EIO
# and the stop goes on.
must "swap in the failing table" swap "$flakey"
must "add (a clean cache: it was flushed)" "$B" add --table "$(pcache_table "$dax" /dev/mapper/pback)" -n 0 -q 2
check "2 x 500 writes with fsyncs before the cache fills" writers 4 500
fio --name=fill --filename=/dev/ublkb0 --rw=write --bs=1M --ioengine=psync --direct=1 --offset=64M --size=192M \
    --loops=16 --output-format=json >$work/fill.json 2>$work/fill.err &
fill=$!
check "a write waits for cache space (deferrals counted)" \
    wait_for 120 sh -c "test \$('$B' status -n 0 --stats | awk '\$1==\"deferrals\" {print \$2}') -gt 0"
sleep 2
check "the filling writer is stuck, not done" kill -0 $fill
note "status: $("$B" status -n 0)"
t=$(date +%s%N)
check "del returns" "$B" del -n 0
secs=$((($(date +%s%N) - t) / 1000000000))
note "del took $secs s"
check "within the grace period and the stop (< 90 s)" test $secs -lt 90
check "not before the grace period (the writes had their 30 s)" test $secs -ge 29
wait $fill
check "the waiting write failed (fio exit status $?)" test $? -ne 0
check "the log tells: no room made for 30 s" grep -q "no cache space made for 30 s; failing the requests that wait for cache space" $RUN/ublkb0.log
grep "wait.* for cache space" $RUN/ublkb0.log | tail -n 2 | indent
check "/dev/ublkb0 is gone" test ! -e /dev/ublkb0

section "healed again: the dirty data of the forced stop is all there"
must "swap in the healthy table" swap "$linear"
must "add (replays the cache)" "$B" add --table "$(pcache_table "$dax" /dev/mapper/pback)" -n 0 -q 2
check "through the cache: every durable write reads back" python3 "$BLOCKCHECK" verify /dev/ublkb0 --logs $work/i*.log
must "del --flush" "$B" del -n 0 --flush
check "/dev/mapper/pback holds every durable write" python3 "$BLOCKCHECK" verify /dev/mapper/pback --logs $work/i*.log
check "dmsetup remove pback" dmsetup remove pback
finish
