#!/usr/bin/env bash
# Server crash loop: 4 writers keep writing numbered blocks (fsync and FUA
# mixed in) while the server is killed with SIGKILL at random moments and
# taken over with `recover`, 10 times (PCACHE_CRASH_CYCLES, or 40 with
# PCACHE_VM_SOAK=1). Checks: no write or fsync ever fails (I/O waits while the
# device is QUIESCED), every recover succeeds, and at the end every block holds
# its newest durable write or a newer one, through the cache and, after
# `del --flush`, on the backing device itself.
# vm-run: --pmem 1G --disk 256M --timeout 480
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
. "$VM_PROJECT/Tests/VM/guest/fault-lib.sh"

cycles=${PCACHE_CRASH_CYCLES:-10}
[ "${PCACHE_VM_SOAK:-0}" = 1 ] && cycles=${PCACHE_CRASH_CYCLES:-40}
work=/tmp/crashloop
mkdir -p $work
must "pcache-ublk binary (\$PCACHE_BIN)" test -x "$B"

section "cache: 1G pmem (devdax) over a 256 MiB disk"
dax=$(cache_dax)
must "device DAX: $dax" test -c "$dax"
must "add" "$B" add --table "$(pcache_table "$dax" /dev/vda)" -n 0 -q 2
must "/dev/ublkb0" test -b /dev/ublkb0
# GC from 10 % on: the key log stays short (replay at each recover reads all of
# it) and garbage collection runs, and is cut, too.
check "message gc_percent 10" "$B" message -n 0 gc_percent 10

section "a write acknowledged but not flushed before the server dies"
# Its key is still in an open key-set. Those live in a stash in /run that
# outlives the process, and `recover` logs them before serving: the write
# survives (a power cut, unlike a server crash, may lose it).
printf 'OLD!%.0s' $(seq 1024) >$work/old
printf 'NEW!%.0s' $(seq 1024) >$work/new
off=$((200 << 20))
dd if=$work/old of=/dev/ublkb0 bs=4096 seek=$((off / 4096)) oflag=direct conv=fsync status=none
sleep 1.5
pid=$(server_pid 0)
dd if=$work/new of=/dev/ublkb0 bs=4096 seek=$((off / 4096)) oflag=direct status=none && kill -9 "$pid"
wait_for 10 sh -c "'$B' list | grep -q QUIESCED"
must "recover after the kill" "$B" recover -n 0
got=$(dd if=/dev/ublkb0 bs=4096 skip=$((off / 4096)) count=1 iflag=direct status=none | head -c 4)
check_eq "acknowledged write survives kill -9 + recover" "NEW!" "$got"

section "4 writers, $cycles kill -9 + recover cycles under load"
writers=4 blocks=16384 # 64 MiB at offset 0
for w in $(seq 0 $((writers - 1))); do
    python3 "$BLOCKCHECK" write /dev/ublkb0 --log $work/w$w.log --iter 0 --writer $w --writers $writers \
        --blocks $blocks --fsync-every 48 --fua-every 13 --until $work/stop 2>$work/w$w.err &
    wpids[w]=$!
done
sleep 2
recovered=0 quiesced=0 max_recover=0
for i in $(seq 1 "$cycles"); do
    sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.3 + (r % 120) / 100 }')"
    pid=$(server_pid 0)
    t0=$(now)
    kill -9 "$pid"
    t1=$(now)
    echo "K $t0 $t1" >>$work/kills
    wait_for 10 sh -c "'$B' list | grep -q 'QUIESCED'" && quiesced=$((quiesced + 1))
    s=$(date +%s%N)
    if "$B" recover -n 0 >$work/recover.out 2>&1; then
        recovered=$((recovered + 1))
    else
        note "cycle $i: recover failed: $(cat $work/recover.out)"
    fi
    ms=$((($(date +%s%N) - s) / 1000000))
    ((ms > max_recover)) && max_recover=$ms
    alive=0
    for p in "${wpids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
    note "cycle $i: killed server $pid, recovered in $ms ms, $alive writers running, $(grep -hc '^F' $work/w*.log | paste -sd+ | bc) fsyncs so far"
done
check_eq "the device went QUIESCED after every kill" "$cycles" "$quiesced"
check_eq "every recover succeeded" "$cycles" "$recovered"
note "slowest recover: $max_recover ms"
touch $work/stop
failed_writers=0
for w in "${!wpids[@]}"; do wait "${wpids[w]}" || failed_writers=$((failed_writers + 1)); done
check_eq "no write or fsync failed across the kills (writers exiting non-zero)" 0 "$failed_writers"
cat $work/w*.err 2>/dev/null | head -5 | indent
check_eq "error records in the writer logs" 0 "$(cat $work/w*.log | grep -c '^E')"
note "writes: $(grep -h '^DONE' $work/w*.log | awk '{ s += $2 } END { print s }'), fsyncs: $(cat $work/w*.log | grep -c '^F'), FUA: $(cat $work/w*.log | grep -c '^U')"

# Strict: a write acknowledged before a kill must survive it, flushed or not
# (PCACHE_VM_STRICT_RECOVER=0 accepts losing unflushed ones, as a power cut may).
strict=(--strict-kills)
[ "${PCACHE_VM_STRICT_RECOVER:-1}" = 0 ] && strict=()
note "stats: $("$B" status -n 0 --stats | grep -E '^(segments_used|gc_segments_freed|writeback_keysets|deferrals) ' | paste -sd' ')"
section "verify through the cache"
check "every durable write (or a newer one) reads back; nothing else does" \
    python3 "$BLOCKCHECK" verify /dev/ublkb0 --logs $work/w*.log --kills $work/kills "${strict[@]}" --summary $work/v1
cat $work/v1 | paste -sd' ' | indent
lost_kill=$(awk '$1 == "lost_kill" { print $2 }' $work/v1)
check_eq "blocks that lost a write acknowledged before a kill" 0 "${lost_kill:-0}"
check_eq "no CRC errors on read hits" 0 "$(stat_of 0 crcErrors)"

section "del --flush, then verify the backing device itself"
must "del --flush" "$B" del -n 0 --flush
check "the backing device holds the same" \
    python3 "$BLOCKCHECK" verify /dev/vda --logs $work/w*.log --kills $work/kills "${strict[@]}" --summary $work/v2
check "dump --keys: the cache is consistent" "$B" dump "$dax" --keys
finish
