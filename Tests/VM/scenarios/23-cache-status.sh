#!/usr/bin/env bash
# status, table and messages, over the control socket and through the CLI:
# the reference format (dm-pcache's `dmsetup status` / `dmsetup table`), the
# positions moving as they should (key_head with closed key-sets, dirty_tail
# after writeback, key_tail with GC), gc_percent set by a message, shown in
# status and kept across del/add, gc_percent 0 draining the cache, and
# malformed messages refused with a clear error and no effect.
# vm-run: --pmem 1G --disk 2G --timeout 600 -e PCACHE_VM_SOAK
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
. "$VM_PROJECT/Tests/VM/guest/cache-lib.sh"

cache_setup
M=$SOAK
hex='[0-9a-f]+'
num='[0-9]+'
pos='[0-9]+:[0-9]+'
status_re="^0 $SECTORS pcache $hex $num $num $num $num $hex $pos $pos $pos\$"
majmin() { printf '%d:%d' "0x$(stat -c %t "$1")" "0x$(stat -c %T "$1")"; }

# pos_after A B: position B is past A (same segment: larger offset; or another segment).
pos_after() { [ "$1" != "$2" ] && { [ "${1%%:*}" != "${2%%:*}" ] || [ "${2#*:}" -gt "${1#*:}" ]; }; }
# socket_line ID REQUEST: the single payload line of an "ok" reply.
socket_line() { sock "$1" "$2" | sed -n '2p'; }

section "format of status and table"
out=$(cache_add 2>&1)
check_eq "add" /dev/ublkb0 "$out"
must "/dev/ublkb0 exists" test -b /dev/ublkb0
# The start-up's reads (partition scan) are cached as clean keys; their
# key-set closes within ~1 s and moves key_head: let it, so the status stays put.
sleep 2
st=$("$B" status -n 0)
note "status: $st"
check "status matches '0 <len> pcache <sb_flags hex> <seg_num> <n_segs> <segs_used> <gc_percent> <cache_flags hex> <key_head> <dirty_tail> <key_tail>'" \
    sh -c "echo '$st' | grep -Eq '$status_re'"
set -- $st
dax_bytes=$(cat /sys/bus/dax/devices/${DAX#/dev/}/size)
check_eq "sb_flags" 0 "$4"
check_eq "seg_num = floor(($dax_bytes - 20480) / 16 MiB)" $(((dax_bytes - 20480) / (16 << 20))) "$5"
check_eq "n_segs = seg_num" "$5" "$6"
check "segs_used between 1 and 3 on a new cache ($7)" test "$7" -ge 1 -a "$7" -le 3
check_eq "gc_percent default" 70 "$8"
check_eq "cache_flags: data_crc | init_done | gc_percent 70 << 6" "$(printf '%x' $(((70 << 6) | 3)))" "$9"
check_eq "key_tail of a new cache" 0:0 "${12}"
check_eq "dirty_tail = key_head (nothing dirty yet)" "${10}" "${11}"
check_eq "the socket's status reply" "$(printf 'ok\n%s\n\n' "$st")" "$(sock 0 status)"
check_eq "status without -n: every device, with its path" "/dev/ublkb0: $st" "$("$B" status)"
tbl="0 $SECTORS pcache $(majmin "$DAX") $(majmin "$BACKING") 4 cache_mode writeback crc true"
check_eq "status --table (dm-pcache's line, 'crc' included)" "$tbl" "$("$B" status -n 0 --table)"
check_eq "the socket's table reply" "$tbl" "$(socket_line 0 table)"
stats=$("$B" status -n 0 --stats)
check_eq "stats: key_head as in status" "${10}" "$(printf '%s\n' "$stats" | awk '$1 == "key_head" { print $2 }')"
check_eq "stats: segments_used as in status" "$7 of $6" "$(printf '%s\n' "$stats" | sed -n 's/^segments_used //p')"
check_eq "stats: persistence (device DAX)" pmem "$(printf '%s\n' "$stats" | sed -n 's/^persistence //p')"
check "status --info: pid, state LIVE, 2 queues" sh -c "'$B' status -n 0 --info | grep -qx 'state LIVE' && '$B' status -n 0 --info | grep -qx 'queues 2'"
out=$("$B" status -n 0 --table --info 2>&1)
check_eq "status --table --info is a usage error (exit 2)" 2 "$?"
note "$(printf '%s\n' "$out" | head -n 1)"
out=$("$B" status -n 7 2>&1)
check "status of a missing device fails: $out" test $? -ne 0 -a -n "$out"

section "key_head moves with closed key-sets, dirty_tail follows after writeback"
h0=$(key_head 0)
check "1 MiB direct write + FLUSH" sh -c "dd if=/dev/urandom of=/dev/ublkb0 bs=64k count=16 oflag=direct status=none && \
    python3 -c \"import os; fd=os.open('/dev/ublkb0', os.O_WRONLY); os.fsync(fd)\""
h1=$(key_head 0)
check "the FLUSH closed the key-set: key_head $h0 -> $h1" pos_after "$h0" "$h1"
check "dirty_tail catches up with key_head (<= 20 s)" wait_for 20 dirty_caught_up 0
check "1 MiB direct write, no FLUSH" dd if=/dev/urandom of=/dev/ublkb0 bs=64k count=16 seek=64 oflag=direct status=none
check "the 1 s timer closes the key-set: key_head moves within 3 s" wait_for 3 sh -c "[ \"\$('$B' status -n 0 | awk '{ print \$10 }')\" != '$h1' ]"
note "key_head $h1 -> $(key_head 0)"
check "FUA write (O_DSYNC) moves key_head at once" sh -c "h=\$('$B' status -n 0 | awk '{ print \$10 }'); \
    dd if=/dev/urandom of=/dev/ublkb0 bs=4k count=1 seek=4096 oflag=direct,dsync status=none; \
    [ \"\$('$B' status -n 0 | awk '{ print \$10 }')\" != \"\$h\" ]"
used0=$(status_field 0 4)
# (160 MiB stays below gc_percent 70 of the 62 segments.)
check "fio: 160 MiB of random writes" fio_job fill --rw=randwrite --bs=4k --iodepth=32 --size=160M --offset=256M
note "$(fio_summary fill)"
# Close the key-sets fio's last writes are in, so the positions stay put.
check "FLUSH" flush_dev /dev/ublkb0
check "dirty_tail catches up (<= 60 s)" wait_for 60 dirty_caught_up 0
st=$("$B" status -n 0)
note "status: $st"
used1=$(status_field 0 4)
check "segs_used grew ($used0 -> $used1)" test "$used1" -gt "$used0"
check_eq "key_tail still 0:0 (below gc_percent 70 nothing is collected)" 0:0 "$(key_tail 0)"
check_eq "the socket's status equals the CLI's" "$st" "$(socket_line 0 status)"

section "message gc_percent"
check "message -n 0 gc_percent 10" "$B" message -n 0 gc_percent 10
check_eq "status shows gc_percent 10" 10 "$(status_field 0 5)"
check_eq "and in cache_flags" "$(printf '%x' $(((10 << 6) | 3)))" "$(status_field 0 6)"
check "GC collects down to 10%: key_tail moves (<= 30 s)" wait_for 30 sh -c "[ \"\$('$B' status -n 0 | awk '{ print \$12 }')\" != 0:0 ]"
check "segs_used drops ($used1 -> <= 10% of $(status_field 0 3)) (<= 30 s)" \
    wait_for 30 sh -c "[ \$('$B' status -n 0 | awk '{ print \$7 }') -le $(($(status_field 0 3) / 10 + 1)) ]"
note "status: $("$B" status -n 0)"
for m in "gc_percent 91" "gc_percent -1" "gc_percent bad" "gc_percent 300" "gc_percent 256" "gc_percent 0x10" \
    "gc_percent 1 2" "gc_percent" "invalid_cmd 1" "flush"; do
    out=$("$B" message -n 0 $m 2>&1)
    rc=$?
    check "message '$m' refused (exit $rc): $out" test $rc -eq 1 -a -n "$out"
done
out=$("$B" message -n 0 gc_percent "" 2>&1)
rc=$?
check "message gc_percent '' refused (exit $rc): $out" test $rc -eq 1 -a -n "$out"
out=$("$B" message -n 0 2>&1)
check_eq "message without words is a usage error (exit 2)" 2 $?
check_eq "gc_percent still 10 after the refused messages" 10 "$(status_field 0 5)"
# The server refuses them too (the CLI checks first; a raw client does not).
for m in "gc_percent 91" "gc_percent bad" "invalid_cmd 1"; do
    out=$(sock 0 "message $m" | head -n 1)
    check "socket: message '$m' refused: $out" sh -c "echo '$out' | grep -q '^error: '"
done
check_eq "socket: message without words" "error: 'message' needs a message, e.g. 'message gc_percent 80'" \
    "$(sock 0 message | head -n 1)"
check_eq "gc_percent still 10" 10 "$(status_field 0 5)"
check "the name is case-insensitive: GC_PERCENT 20" "$B" message -n 0 GC_PERCENT 20
check_eq "gc_percent 20" 20 "$(status_field 0 5)"
check_eq "socket: message gc_percent 10" "$(printf 'ok\n\n')" "$(sock 0 'message gc_percent 10')"
check_eq "gc_percent 10" 10 "$(status_field 0 5)"

section "gc_percent persists across del/add"
check "del -n 0" "$B" del -n 0
check "dump: gc_percent 10 on the cache device" sh -c "'$B' dump '$DAX' | grep -q 'gc_percent 10)'"
out=$(cache_add 2>&1)
check_eq "add" /dev/ublkb0 "$out"
check_eq "status: gc_percent 10 after the restart" 10 "$(status_field 0 5)"

section "gc_percent 0 drains the cache"
check "more writes: fio $((64 * M)) MiB" fio_job more --rw=randwrite --bs=4k --iodepth=32 --size=$((64 * M))M --offset=0 \
    --verify=crc32c --do_verify=0
# A FLUSH closes the key-sets still open: key_head == key_tail then means
# everything, not just what had closed when it was looked at.
check "FLUSH" flush_dev /dev/ublkb0
check "message gc_percent 0" "$B" message -n 0 gc_percent 0
check "key_head == key_tail (<= 60 s)" wait_for 60 drained 0
st=$("$B" status -n 0)
note "status: $st"
set -- $st
drained_at="${10} ${11} ${12}"
check_eq "dirty_tail there too" "${10}" "${11}"
check "segs_used back to the key log's and the 2 queues' data heads ($7)" test "$7" -le 3
check "del -n 0" "$B" del -n 0
check_eq "dump: the tails on the cache device" "key_tail ${12} dirty_tail ${11}" \
    "$("$B" dump "$DAX" | awk '/^key_tail/ { k = $2 } /^dirty_tail/ { d = $2 } END { print "key_tail " k " dirty_tail " d }')"
out=$(cache_add 2>&1)
check_eq "add" /dev/ublkb0 "$out"
set -- $("$B" status -n 0)
note "after the restart: key_head ${10} dirty_tail ${11} key_tail ${12} (drained at $drained_at)"
check_eq "gc_percent 0 kept" 0 "$8"
# The start-up's own reads (partition scan) may have closed a key-set of
# clean keys since, which gc_percent 0 collects at once: then key_tail is
# past the drained position; a lost key_tail would be 0:0 or behind it.
dk=${drained_at##* }
kept_or_past() { [ "$1" = "$dk" ] || { [ "$1" != 0:0 ] && pos_after "$dk" "$1"; }; }
check "key_tail kept: ${12} (drained at $dk)" kept_or_past "${12}"
check "and drains again (<= 30 s)" wait_for 30 drained 0
check "the data reads back from $BACKING (written back and collected)" fio_job morev --rw=randwrite --bs=4k \
    --iodepth=32 --size=$((64 * M))M --offset=0 --verify=crc32c --verify_only
check "del -n 0" "$B" del -n 0
check "no server left" test -z "$(servers_left)"

finish
