#!/usr/bin/env bash
# data_crc against corrupted pmem: cached data corrupted behind the server's
# back (through a second mapping of /dev/dax0.0) fails the read with EIO and
# counts a CRC error, never returning wrong data; a corrupted key makes replay
# refuse to start (add and recover), naming the key, creating no device and
# writing nothing; what an operator does then (see the notes printed); and
# del --flush, when writeback stops at such a key, says the data stayed.
# vm-run: --pmem 1G --disk 256M --timeout 300
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
. "$VM_PROJECT/Tests/VM/guest/fault-lib.sh"
POKE="$VM_PROJECT/Tests/VM/guest/daxpoke.py"
work=/tmp/crc
mkdir -p $work
must "pcache-ublk binary (\$PCACHE_BIN)" test -x "$B"
dax=$(cache_dax)
must "device DAX: $dax" test -c "$dax"
table=$(pcache_table "$dax" /dev/vda)

# pattern NAME: 4 KiB of a recognisable pattern in $work/NAME.
pattern() { python3 -c "import sys; sys.stdout.buffer.write((b'$1-' * 1024)[:4096])" >$work/$1; }
put() { dd if=$work/$1 of=/dev/ublkb0 bs=4096 seek=$(($2 / 4096)) oflag=direct status=none; }
get() { dd if=/dev/ublkb0 bs=4096 skip=$(($1 / 4096)) count=1 iflag=direct status=none; }
# where OFFSET: the device offset of cached byte OFFSET (newest key) on $dax.
where() {
    "$B" dump "$dax" --keys --json >$work/dump.json 2>/dev/null
    python3 "$POKE" locate $work/dump.json "$1" | awk '{ print $1 }'
}
A=$((8 << 20)) C=$((64 << 20)) D=$((100 << 20))
for p in alpha beta gamma delta; do pattern $p; done

section "a read hit on corrupted pmem fails with EIO (server running)"
must "add with data_crc" "$B" add --table "$table" -n 0 -q 2
put alpha $A
put beta $((A + 4096))
put gamma $C
sync /dev/ublkb0 # FLUSH: the keys are in the log
# Written back first: writeback checks data CRCs too, and one that found the
# byte flipped below would stop for good (the Hardened kernel's latch). It runs
# after 1 s without I/O, which the steps below can leave under TCG.
check "written back before the corruption (dirty_tail = key_head)" wait_for 30 clean 0
check "read hit before the corruption" cmp -s $work/alpha <(get $A)
at=$(where $A)
must "found the cached extent of byte $A on $dax (device offset $at)" test -n "$at"
check "corrupt one byte of it through a second mapping" python3 "$POKE" flip "$dax" $((at + 100))
check "read of the corrupted block fails" sh -c "! dd if=/dev/ublkb0 of=$work/out bs=4096 skip=$((A / 4096)) count=1 iflag=direct status=none"
check "dd reports an I/O error" sh -c "dd if=/dev/ublkb0 of=/dev/null bs=4096 skip=$((A / 4096)) count=1 iflag=direct 2>&1 | grep -q 'Input/output error'"
check_eq "no data handed out for it" 0 "$(stat -c %s $work/out 2>/dev/null || echo 0)"
check_eq "crcErrors counted" 2 "$(stat_of 0 crcErrors)"
check "the block next to it still reads" cmp -s $work/beta <(get $((A + 4096)))
check "restore the byte" python3 "$POKE" flip "$dax" $((at + 100))
check "the read succeeds again with the right data" cmp -s $work/alpha <(get $A)
check "still clean: the read errors did not stop writeback" wait_for 30 clean 0
must "del (dirty data, if any, stays in the cache)" "$B" del -n 0

section "replay refuses a key whose data does not match its CRC"
at=$(where $C)
must "found the cached extent of byte $C (device offset $at)" test -n "$at"
check "corrupt one byte of it (server stopped)" python3 "$POKE" flip "$dax" $((at + 7))
sum_pmem() { python3 - "$dax" <<'PY'
import hashlib, mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 64 << 20, mmap.MAP_SHARED, mmap.PROT_READ)
print(hashlib.sha256(m).hexdigest())
PY
}
before_pmem=$(sum_pmem) before_disk=$(sha256sum </dev/vda)
"$B" add --table "$table" -n 0 -q 2 >$work/add.out 2>&1
rc=$?
check "add refuses (exit $rc)" test $rc -ne 0
indent <$work/add.out
check "the error names the key (off $C) and data_crc" grep -q "key: off $C len 4096 .*data_crc error" $work/add.out
check "no device was created" sh -c "! test -e /dev/ublkb0 && ! test -e /sys/class/ublk-char/ublkc0"
check_eq "nothing written to the cache metadata and first segments (64 MiB)" "$before_pmem" "$(sum_pmem)"
check_eq "nothing written to the backing device" "$before_disk" "$(sha256sum </dev/vda)"
"$B" recover -n 0 >$work/recover.out 2>&1
check "recover -n 0 has nothing to take over (exit $?)" test -s $work/recover.out
indent <$work/recover.out
"$B" dump "$dax" --keys >$work/dump.out 2>&1
rc=$?
check "dump --keys reports the bad key (exit $rc)" grep -q "data_crc error: stored" $work/dump.out
grep -E "data_crc error|^dirty_tail|^key_tail" $work/dump.out | cut -c1-150 | indent

section "operator: the bad key was already written back, so format --force loses nothing"
note "dump shows dirty_tail at or past the bad key's key-set: the backing device has its data."
note "(with the key still dirty, format --force would lose it and every other dirty write)"
check "format --force --data-crc" "$B" format "$dax" --data-crc --force
must "add on the fresh cache" "$B" add --table "$table" -n 0 -q 2
check "byte $C reads its written data (from the backing device)" cmp -s $work/gamma <(get $C)
check "byte $A too" cmp -s $work/alpha <(get $A)

section "recover after the server died also refuses a corrupted key"
put delta $D
sync /dev/ublkb0
pid=$(server_pid 0)
kill -9 "$pid"
check "device QUIESCED after kill -9" wait_for 10 sh -c "'$B' list | grep -q QUIESCED"
at=$(where $D)
check "corrupt the key's data (device offset $at)" python3 "$POKE" flip "$dax" $((at + 11))
"$B" recover -n 0 >$work/recover2.out 2>&1
rc=$?
check "recover refuses (exit $rc)" test $rc -ne 0
indent <$work/recover2.out
check "the error names the key (off $D)" grep -q "key: off $D len 4096 .*data_crc error" $work/recover2.out
check "the device stays QUIESCED (I/O would wait, never see wrong data)" sh -c "'$B' list | grep -q QUIESCED"
check "del -n 0 removes it" "$B" del -n 0
check "gone" wait_for 10 sh -c "! test -e /sys/class/ublk-char/ublkc0"

section "del --flush when writeback stops at a corrupted key: it says the data stayed"
must "format --force --data-crc" "$B" format "$dax" --data-crc --force
must "add" "$B" add --table "$table" -n 0 -q 2
# Reads keep the device busy, so writeback (which waits for a second without
# I/O) leaves the key dirty until it is corrupted.
( while true; do get $A >/dev/null; done ) &
busy=$!
E=$((120 << 20))
pattern epsilon
put epsilon $E
sync /dev/ublkb0
at=$(where $E)
check "corrupt the dirty key's data (device offset $at)" python3 "$POKE" flip "$dax" $((at + 5))
check "it is still dirty (dirty_tail != key_head)" test "$(status_field 0 7)" != "$(status_field 0 8)"
kill $busy
wait $busy 2>/dev/null
"$B" del -n 0 --flush >$work/del.out 2>&1
rc=$?
indent <$work/del.out
check_eq "del --flush fails" 1 "$rc"
check "it says the dirty data stayed in the cache" grep -q "not everything was written back" $work/del.out
check "the device is gone all the same (the data is safe in pmem)" wait_for 10 sh -c "! test -e /sys/class/ublk-char/ublkc0"
check "the server's log says why" grep -q "writeback halted: key: off $E len 4096 .*data_crc error" $RUN/ublkb0.log
finish
