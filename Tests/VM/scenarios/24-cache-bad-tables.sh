#!/usr/bin/env bash
# Malformed tables and bad add options: each refused by `add` with a clear
# message (printed), no device or server left behind, and both devices (and
# any file involved) byte-for-byte unchanged. Then a second add on devices a
# running server holds is refused, and the first device keeps working.
# vm-run: --pmem 1G --disk 2G --timeout 600 -e PCACHE_VM_SOAK
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
. "$VM_PROJECT/Tests/VM/guest/cache-lib.sh"

cache_setup
S=$SECTORS V=$BACKING
hasher_start
export SNAP_FAST=1

# Bash-only tests for the per-case checks (a process start costs much under TCG).
no_device() { ! compgen -G "/sys/class/ublk-char/ublkc*" >/dev/null; }
no_run_files() { ! compgen -G "$RUN/add-*.log" >/dev/null && ! compgen -G "$RUN/*.sock" >/dev/null && ! compgen -G "$RUN/*.conf" >/dev/null; }
says() { [ "$1" -ne 0 ] && [[ $2 == *"$3"* ]]; }

section "a cache with data on it, devices to misuse"
out=$(cache_add 2>&1)
check_eq "add" /dev/ublkb0 "$out"
check "16 MiB written with verify headers" fio_job data --rw=randwrite --bs=4k --iodepth=16 --size=16M \
    --verify=crc32c --do_verify=0
check "FLUSH" flush_dev /dev/ublkb0
check "written back (dirty_tail = key_head)" wait_for 30 dirty_caught_up 0
check "del" "$B" del -n 0
truncate -s 256M /tmp/small.img
SMALL=$(losetup -f --show /tmp/small.img)
head -c 1M /dev/zero >/tmp/tiny.img
truncate -s 600M /tmp/garbage.img
head -c 1M /dev/urandom | dd of=/tmp/garbage.img conv=notrunc status=none
truncate -s 64M /tmp/m.img
mkfs.ext4 -q -F /tmp/m.img
MOUNTED=$(losetup -f --show /tmp/m.img)
mkdir -p /mnt/m && mount "$MOUNTED" /mnt/m
MS=$(blockdev --getsz "$MOUNTED")
mknod /tmp/vda-alias b "$((0x$(stat -c %t "$V")))" "$((0x$(stat -c %T "$V")))"
mkfifo /tmp/fifo
note "small loop device $SMALL (256 MiB), mounted loop device $MOUNTED, /tmp/vda-alias = $V"
FILES="$DAX $V /tmp/garbage.img /tmp/tiny.img $SMALL"
before=$(snap 64 $FILES)
note "first 64 MiB: $before"

# refused EXPECTED ADD-ARGUMENTS...: add must fail, saying EXPECTED, and
# change nothing: the first $PER_CASE_MIB MiB of both devices are compared
# before and after each case, the first 64 MiB of every device and file
# before and after all of them (crc32: sha256 is too slow under TCG). bad EXPECTED TABLE [OPTIONS...]: the same for
# a table.
n_bad=0
PER_CASE_MIB=$((SOAK > 1 ? 64 : 2))
refused() {
    local expect=$1 out rc b a
    shift
    n_bad=$((n_bad + 1))
    b=$(snap $PER_CASE_MIB $DAX $V)
    out=$("$B" add "$@" 2>&1)
    rc=$?
    a=$(snap $PER_CASE_MIB $DAX $V)
    printf '   %2d  add' $n_bad
    printf ' %q' "$@"
    printf '\n         -> exit %d: %s\n' $rc "$(printf '%s' "$out" | head -n 1)"
    check "  refused (exit $rc), saying '$expect'" says $rc "$out" "$expect"
    check "  no device, no files left" eval "no_device && no_run_files"
    check_eq "  devices unchanged" "$b" "$a"
}
bad() {
    local expect=$1 table=$2
    shift 2
    refused "$expect" --table "$table" "$@"
}

section "malformed tables"
T="$DAX $V"
bad "Invalid table" ""
bad "Invalid table" "0"
bad "Invalid table" "0 $S"
bad "Insufficient args" "0 $S pcache"
bad "Insufficient args" "0 $S pcache $DAX"
bad "Invalid start sector" "x $S pcache $T"
bad "Target must start at sector 0" "8 $S pcache $T"
bad "Invalid target length" "0 abc pcache $T"
bad "Invalid target length" "0 -5 pcache $T"
bad "Invalid target length" "0 99999999999999999999999 pcache $T"
bad "Zero-length target" "0 0 pcache $T"
bad "Target length does not match the backing device" "0 $((S - 8)) pcache $T"
bad "Target length does not match the backing device" "0 $((S + 8)) pcache $T"
bad "Unknown target type" "0 $S linear $V 0"
bad "Unknown target type" "0 $S PCACHE $T"
bad "Invalid number of cache option arguments" "0 $S pcache $T 4 cache_mode"
bad "Invalid number of cache option arguments" "0 $S pcache $T 4 cache_mode writeback"
bad "Invalid number of cache option arguments" "0 $S pcache $T 4 data_crc true"
bad "Invalid number of cache option arguments" "0 $S pcache $T 7 cache_mode writeback data_crc true writeback_history true x"
bad "Unrecognised cache option requested" "0 $S pcache $T 5 cache_mode writeback data_crc true x"
bad "Invalid number of cache option arguments" "0 $S pcache $T INVAL"
bad "Invalid number of cache option arguments" "0 $S pcache $T 100"
bad "Invalid number of cache option arguments" "0 $S pcache $T -1"
bad "Missing value for cache_mode" "0 $S pcache $T 1 cache_mode"
bad "Missing value for data_crc" "0 $S pcache $T 3 cache_mode writeback data_crc"
bad "Invalid cache mode parameter" "0 $S pcache $T 2 cache_mode writethrough"
bad "Invalid cache mode parameter" "0 $S pcache $T 2 cache_mode invalid"
bad "Invalid data crc parameter" "0 $S pcache $T 2 data_crc invalid"
bad "Invalid data crc parameter" "0 $S pcache $T 2 data_crc TRUE"
bad "Missing value for writeback_history" "0 $S pcache $T 1 writeback_history"
bad "Invalid writeback history parameter" "0 $S pcache $T 2 writeback_history yes"
bad "Invalid data crc parameter" "0 $S pcache $T 2 data_crc 1"
bad "Unrecognised cache option requested" "0 $S pcache $T 2 foo bar"
bad "Unrecognised cache option requested" "0 $S pcache $T 4 cache_mode writeback crc true"
bad "Unexpected arguments after the cache options" "0 $S pcache $T 2 cache_mode writeback extra"
bad "Unexpected arguments after the cache options" "0 $S pcache $T 0 $S pcache $T"
bad "Error opening cache device" "0 $S pcache /dev/nonexistent $V"
bad "Error opening backing device" "0 $S pcache $DAX /dev/nonexistent"
bad "Unsupported cache device type" "0 $S pcache /dev/null $V"
bad "Unsupported cache device type" "0 $S pcache /tmp $V"
bad "Unsupported cache device type" "0 $S pcache /tmp/fifo $V"
bad "Unsupported backing device type" "0 $S pcache $DAX /dev/null"
bad "Unsupported backing device type" "0 $S pcache $DAX $DAX"
bad "Cache and backing device are the same" "0 $S pcache $V $V"
bad "Cache and backing device are the same" "0 $S pcache /tmp/vda-alias $V"
bad "Cache device too small" "0 $S pcache $SMALL $V"
bad "Cache device too small" "0 $S pcache /tmp/tiny.img $V"
bad "Error opening backing device" "0 $MS pcache $DAX $MOUNTED"
bad "Error opening cache device" "0 $S pcache $MOUNTED $V"
# Past the table: the server opens the devices and refuses them (compared
# over 64 MiB each).
PER_CASE_MIB=64
bad "data_crc" "0 $S pcache $T 2 data_crc false"
bad "data_crc" "0 $S pcache $T"
g=$(snap 64 /tmp/garbage.img)
bad "magic" "0 $S pcache /tmp/garbage.img $V"
check_eq "  the garbage cache file unchanged" "$g" "$(snap 64 /tmp/garbage.img)"
PER_CASE_MIB=$((SOAK > 1 ? 64 : 2))

section "bad add options (usage errors, exit 2)"
TABLE_OK="0 $S pcache $T 4 cache_mode writeback data_crc true"
refused "--table is required" -q 2
refused "--table needs a value" --table
bad "queues must be a number in 1...4096" "$TABLE_OK" -q 0
bad "queues must be a number in 1...4096" "$TABLE_OK" -q abc
bad "depth must be a number in 1...4096" "$TABLE_OK" -d 0
bad "depth must be a number in 1...4096" "$TABLE_OK" -d 5000
bad "invalid device id" "$TABLE_OK" -n abc
bad "invalid device id" "$TABLE_OK" -n 99999999
bad "unknown option --frobnicate" "$TABLE_OK" --frobnicate
bad "unexpected argument" "$TABLE_OK" extra
bad "--table and --null exclude each other" "$TABLE_OK" --null 1G
check "no server process left" test -z "$(servers_left)"
after=$(snap 64 $FILES)
check_eq "after all $n_bad: the first 64 MiB of every device and file unchanged" "$before" "$after"
check "dump: the cache is still consistent" "$B" dump "$DAX"

section "a second add on devices a running server holds"
out=$(cache_add 2>&1)
check_eq "add" /dev/ublkb0 "$out"
pid=$(server_pid 0)
truncate -s "$(blockdev --getsize64 "$V")" /tmp/other-backing.img
OTHER=$(losetup -f --show /tmp/other-backing.img)
truncate -s 600M /tmp/other-cache.img
held_before=$(snap 8 $OTHER /tmp/other-cache.img)
for t in "$TABLE:Error opening backing device" \
    "0 $S pcache $DAX $OTHER 4 cache_mode writeback data_crc true:another pcache-ublk process is serving it" \
    "0 $S pcache /tmp/other-cache.img $V:Error opening backing device"; do
    table=${t%%:*} expect=${t#*:}
    out=$("$B" add --table "$table" 2>&1)
    rc=$?
    note "add --table \"$table\" -> exit $rc: $out"
    check "  refused, saying '$expect'" says $rc "$out" "$expect"
    check "  no second device" test ! -e /sys/class/ublk-char/ublkc1
done
check_eq "the other devices unchanged" "$held_before" "$(snap 8 $OTHER /tmp/other-cache.img)"
mkdir -p /mnt/v
out=$(mount -o ro "$V" /mnt/v 2>&1)
check "mounting the backing device under the cache is refused: $out" test $? -ne 0
out=$("$B" recover -n 0 2>&1)
check "recover of the LIVE device is refused: $out" sh -c "printf '%s' \"\$1\" | grep -q 'nothing to recover'" _ "$out"
check_eq "the first device is still LIVE" live "$(device_state 0)"
check_eq "served by the same process" "$pid" "$(server_pid 0)"
check "its data verifies" fio_job datav --rw=randwrite --bs=4k --iodepth=16 --size=16M --verify=crc32c --verify_only
check "and it takes new writes (fio verify)" fio_job more --rw=randwrite --bs=4k --iodepth=16 --offset=64M --size=16M \
    --verify=crc32c --do_verify=1
check "del -n 0" "$B" del -n 0
umount /mnt/m
losetup -d "$MOUNTED" "$SMALL" "$OTHER"
check "no server left" test -z "$(servers_left)"

finish
