#!/usr/bin/env bash
# One boot of scenario 30-powercut-replay (runs in the VM):
#   powercut-guest.sh DIR ITER write|final
# Takes the NVDIMM as /dev/dax0.0 (devdax persists on it), adds the cache over
# /dev/vda (replaying what the last boot left), verifies every writer log of
# earlier boots (DIR/logs), then either starts 4 writers until the power is
# cut (write) or writes everything back and checks the backing device (final).
# Markers on the console: PC-PHASE <name>, PC-VERIFIED, PC-WRITING.
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
. "$VM_PROJECT/Tests/VM/guest/fault-lib.sh"
dir=$1 iter=$2 mode=$3
logs=$dir/logs
mkdir -p "$logs"
phase() { echo "PC-PHASE $1 uptime $(cut -d' ' -f1 /proc/uptime)"; }

phase devdax
dax=$(cache_dax)
must "device DAX: $dax" test -c "$dax"
phase add
if ! "$B" add --table "$(pcache_table "$dax" /dev/vda)" -n 0 -q 2 >/tmp/add.out 2>&1; then
    check "add (replay of what the last boot left)" false
    indent </tmp/add.out
    indent <$RUN/ublkb0.log 2>/dev/null
    finish
fi
check "add: replay succeeded" test -b /dev/ublkb0
note "$(grep -h 'replay\|serving' $RUN/ublkb0.log | tail -2)"
note "status: $("$B" status -n 0)"
[ "$iter" = 0 ] && check "message gc_percent 20 (GC runs, and is cut too)" "$B" message -n 0 gc_percent 20

if ls "$logs"/*.log >/dev/null 2>&1; then
    phase verify
    check "every write fsynced before a power cut reads back (or a newer one), nothing else" \
        python3 "$BLOCKCHECK" verify /dev/ublkb0 --logs "$logs"/*.log --summary "$dir/verify-$iter"
    echo "PC-VERIFIED $iter"
fi

if [ "$mode" = final ]; then
    phase final
    check_eq "no CRC errors on read hits" 0 "$(stat_of 0 crcErrors)"
    must "del --flush" "$B" del -n 0 --flush
    echo "   note  $(grep -h 'stopped: writeback' $RUN/ublkb0.log | tail -1)"  # shown by the host side
    if ls "$logs"/*.log >/dev/null 2>&1; then
        check "after del --flush the backing device holds the same" \
            python3 "$BLOCKCHECK" verify /dev/vda --logs "$logs"/*.log
    fi
    check "dump --keys: the cache is consistent" "$B" dump "$dax" --keys
    finish
fi

phase write
for w in 0 1 2 3; do
    python3 "$BLOCKCHECK" write /dev/ublkb0 --log "$logs/i$iter-w$w.log" --iter "$iter" --writer $w --writers 4 \
        --blocks 16384 --fsync-every 40 --fua-every 17 --seconds 40 &
done
echo "PC-WRITING uptime $(cut -d' ' -f1 /proc/uptime)"
wait
note "the writers finished before the power cut"
finish
