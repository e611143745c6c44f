#!/usr/bin/env bash
# The ublk transport end to end with the null target (answers every request
# at once, stores nothing): add, I/O of every kind, list, status, the control
# socket under garbage while I/O runs, several devices and queues, kill -9 then
# recover with I/O waiting, SIGTERM, del, and a /dev without devtmpfs.
# vm-run: --timeout 600
. "$VM_PROJECT/Tests/VM/guest/lib.sh"

B=${PCACHE_BIN:-/nonexistent}
RUN=/run/pcache-ublk
must "pcache-ublk binary (\$PCACHE_BIN)" test -x "$B"
must "/dev/ublk-control exists" test -c /dev/ublk-control

# json_field ID FIELD: a field of device ID in `list --json`.
json_field() {
    "$B" list --json | python3 -c "import json,sys
for d in json.load(sys.stdin):
    if d['id'] == $1: print(d['$2'])"
}
# wait_for SECONDS COMMAND...: polls until COMMAND succeeds.
# sock_raw ID: sends stdin as raw bytes to device ID's control socket, prints the reply.
sock_raw() {
    python3 -c "import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect('$RUN/ublkb$1.sock'); s.settimeout(10)
try:
    s.sendall(sys.stdin.buffer.read()); s.shutdown(socket.SHUT_WR)
except OSError: pass
out=b''
while True:
    try: b=s.recv(65536)
    except OSError: break
    if not b: break
    out+=b
sys.stdout.write(out.decode('utf-8','replace'))"
}
# fio_iops RW SECONDS: prints the IOPS of a 4 KiB direct job at depth 32 on /dev/ublkb0.
fio_iops() {
    fio --name=t --filename=/dev/ublkb0 --rw="$1" --bs=4k --direct=1 --ioengine=io_uring --iodepth=32 \
        --runtime="$2" --time_based --output-format=json 2>/dev/null |
        python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]
print(int(j['read']['iops'] + j['write']['iops']) if j['error'] == 0 else 'error')"
}

section "add --null 1G"
out=$("$B" add --null 1G 2>&1)
check_eq "add prints the device" /dev/ublkb0 "$out"
must "/dev/ublkb0 is a block device" test -b /dev/ublkb0
check_eq "its size" 1073741824 "$(blockdev --getsize64 /dev/ublkb0)"
check_eq "logical block size" 512 "$(blockdev --getss /dev/ublkb0)"
check_eq "volatile write cache advertised" "write back" "$(cat /sys/block/ublkb0/queue/write_cache)"
check_eq "control socket mode" 600 "$(stat -c %a $RUN/ublkb0.sock)"
check_eq "runtime directory mode" 700 "$(stat -c %a $RUN)"
check "record for recover" grep -qx "target null 1073741824" $RUN/ublkb0.conf
check "log file" grep -q "serving /dev/ublkb0" $RUN/ublkb0.log
pid0=$(json_field 0 pid)
check "the server runs in the background (pid $pid0)" kill -0 "$pid0"

section "I/O of every kind"
check "direct write 64 MiB" dd if=/dev/zero of=/dev/ublkb0 bs=1M count=64 oflag=direct status=none
check "direct read 64 MiB" dd if=/dev/ublkb0 of=/dev/null bs=1M count=64 iflag=direct status=none
check "buffered write + fsync (FLUSH)" dd if=/dev/zero of=/dev/ublkb0 bs=1M count=8 conv=fsync status=none
check "FUA writes (O_DSYNC)" dd if=/dev/zero of=/dev/ublkb0 bs=4k count=64 oflag=direct,dsync status=none
check "discard" blkdiscard -o 0 -l 16M /dev/ublkb0
check "write zeroes" blkdiscard -z -o 0 -l 16M /dev/ublkb0
check "unaligned 512-byte reads" dd if=/dev/ublkb0 of=/dev/null bs=512 skip=7 count=33 iflag=direct status=none
check "last sector" dd if=/dev/ublkb0 of=/dev/null bs=512 skip=2097151 count=1 iflag=direct status=none
echo none >/sys/block/ublkb0/queue/scheduler
r=$(fio_iops randread 5)
w=$(fio_iops randwrite 5)
note "null target, 1 queue, fio 4 KiB QD32 (TCG): randread $r IOPS, randwrite $w IOPS"
check "fio randread ran without errors" test "$r" != error -a -n "$r"
check "fio randwrite ran without errors" test "$w" != error -a -n "$w"

section "list and status"
check "list shows it LIVE" sh -c "'$B' list | grep -E '^/dev/ublkb0 +LIVE +$pid0 +1 +128 +1.0 GiB +null$'"
check_eq "list --json state" live "$(json_field 0 state)"
check_eq "status" "0 2097152 null" "$("$B" status -n 0)"
check_eq "status --table" "0 2097152 null" "$("$B" status -n 0 --table)"
check_eq "status (all devices)" "/dev/ublkb0: 0 2097152 null" "$("$B" status)"
served=$("$B" status -n 0 --info | sed -n 's/^requests //p')
check "status --info counts the requests ($served)" test "${served:-0}" -gt 1000
out=$("$B" message -n 0 gc_percent 10 2>&1)
check "the null target refuses messages" sh -c "echo '$out' | grep -q 'accepts no messages'"
out=$("$B" message -n 0 gc_percent 91 2>&1)
check "gc_percent 91 is refused before reaching the server" sh -c "echo '$out' | grep -q 'Invalid gc_percent value'"

section "control socket abuse while I/O runs"
fio --name=bg --filename=/dev/ublkb0 --rw=randrw --bs=4k --direct=1 --ioengine=io_uring --iodepth=16 \
    --runtime=8 --time_based --output-format=json >/tmp/bg.json 2>&1 &
fiopid=$!
sleep 1
check_eq "unknown verb" "error: unknown request 'frobnicate' (expected one of: status, table, stats, message, info, stop)" \
    "$(printf 'frobnicate\n' | sock_raw 0 | head -n 1)"
check_eq "64 KiB request" "error: request too long (limit 4096 bytes)" \
    "$(head -c 65536 /dev/zero | tr '\0' a | sock_raw 0 | head -n 1)"
check_eq "binary garbage" "error: malformed request: control character 0x0" \
    "$(head -c 3000 /dev/urandom | tr '\n' x | sed 's/^/\x00/' | sock_raw 0 | head -n 1)"
check_eq "empty line" "error: empty request" "$(printf '\n' | sock_raw 0 | head -n 1)"
check_eq "stop with a bad argument" "error: 'stop' takes no argument or 'flush'" \
    "$(printf 'stop now\n' | sock_raw 0 | head -n 1)"
for i in $(seq 20); do printf 'status\n' | sock_raw 0 >/dev/null; done
check_eq "still answering" "0 2097152 null" "$("$B" status -n 0)"
wait $fiopid
check "background fio finished without errors" \
    python3 -c "import json; j=json.load(open('/tmp/bg.json'))['jobs'][0]; assert j['error'] == 0"
check "the server is still the same process" kill -0 "$pid0"

section "a second device: -n 5 -q 2 -d 64"
out=$("$B" add --null 256M -n 5 -q 2 -d 64 2>&1)
check_eq "add -n 5" /dev/ublkb5 "$out"
check_eq "queues" 2 "$(json_field 5 queues)"
check_eq "depth" 64 "$(json_field 5 depth)"
check "I/O on both devices at once" sh -c \
    "dd if=/dev/zero of=/dev/ublkb5 bs=64k count=512 oflag=direct status=none &
     dd if=/dev/ublkb0 of=/dev/null bs=64k count=512 iflag=direct status=none; wait"
out=$("$B" add --null 256M -n 5 2>&1)
check "adding id 5 again fails" sh -c "echo '$out' | grep -q 'File exists'"
check_eq "and leaves device 5 alone" live "$(json_field 5 state)"
check "del -n 5" "$B" del -n 5
check "device 5 is gone" gone 5

section "kill -9, then recover with I/O waiting"
check "kill -9 the server" kill -9 "$pid0"
check "the device becomes QUIESCED" wait_for 10 sh -c "'$B' list --json | grep -q '\"state\":\"quiesced\"'"
check "/dev/ublkb0 is still there" test -b /dev/ublkb0
dd if=/dev/zero of=/dev/ublkb0 bs=4k count=16 oflag=direct status=none &
ddpid=$!
sleep 1
check "a write issued meanwhile waits" kill -0 $ddpid
out=$("$B" recover -n 0 2>&1)
check_eq "recover prints the device" /dev/ublkb0 "$out"
wait $ddpid
check_eq "the waiting write completed (dd exit status)" 0 "$?"
pid1=$(json_field 0 pid)
check "served by a new process ($pid1)" test "$pid1" != "$pid0" -a -n "$pid1"
check_eq "LIVE again" live "$(json_field 0 state)"
check "I/O after recovery" dd if=/dev/ublkb0 of=/dev/null bs=1M count=16 iflag=direct status=none
check "the log tells" grep -q "(recovered)" $RUN/ublkb0.log
out=$("$B" recover -n 0 2>&1)
check "recover of a LIVE device is refused" sh -c "echo '$out' | grep -q 'nothing to recover'"

section "SIGTERM stops cleanly"
check "kill -TERM" kill -TERM "$pid1"
check "the device is deleted" wait_for 10 gone 0
# The device goes before the server has removed its files: wait for the exit.
check "the server exited" wait_for 10 no_process "$pid1"
check "the socket and the record are removed" test ! -e $RUN/ublkb0.sock -a ! -e $RUN/ublkb0.conf
check "the log says so" grep -q "/dev/ublkb0 removed" $RUN/ublkb0.log

section "del and its errors"
"$B" add --null 64M >/dev/null
"$B" add --null 64M >/dev/null
check_eq "two devices" 2 "$("$B" list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
check "del --all" "$B" del --all
check_eq "none left" "no ublk devices" "$("$B" list)"
out=$("$B" del -n 9 2>&1)
check "del of a missing device fails" sh -c "echo '$out' | grep -q 'no such device'"
out=$("$B" add --table "0 8 pcache /dev/pmem0" 2>&1)
check "add with an invalid table fails with the kernel's words" sh -c "echo '$out' | grep -q 'Insufficient args'"
out=$("$B" add --null 1000 2>&1)
check "add --null with a bad size fails" sh -c "echo '$out' | grep -q 'not a positive size'"
"$B" add --null 64M >/dev/null
pid=$(json_field 0 pid)
check "kill -9 and del without a server" sh -c "kill -9 $pid; sleep 1; '$B' del -n 0"
check "deleted" gone 0

section "a queue thread fails: the server leaves the device to recover"
# PCACHE_UBLK_FAULT_QUEUE=1:100 makes queue 1 fail once it has served 100
# requests, as if its io_uring had failed. The device has USER_RECOVERY, so
# the server exits without stopping it: its I/O waits for recover.
out=$(PCACHE_UBLK_FAULT_QUEUE=1:100 "$B" add --null 64M -q 2 2>&1)
check_eq "add -q 2" /dev/ublkb0 "$out"
pid=$(json_field 0 pid)
# blk-mq maps CPU 1 to queue 1.
taskset -c 1 dd if=/dev/ublkb0 of=/dev/null bs=4k count=400 iflag=direct status=none &
ddpid=$!
check "the server exits" wait_for 20 no_process "$pid"
check_eq "the device is QUIESCED, not deleted" quiesced "$(json_field 0 state)"
check "the log names the failed queue" grep -q "queue 1 failed: injected failure" $RUN/ublkb0.log
check "and what to do" grep -q "its I/O waits for 'pcache-ublk recover -n 0'" $RUN/ublkb0.log
check "a read on queue 1 waits meanwhile" kill -0 $ddpid
out=$("$B" recover -n 0 2>&1)
check_eq "recover" /dev/ublkb0 "$out"
wait $ddpid
check_eq "the waiting reads completed (dd exit status)" 0 "$?"
check_eq "LIVE again" live "$(json_field 0 state)"
check "I/O on queue 1 after recovery" taskset -c 1 dd if=/dev/ublkb0 of=/dev/null bs=4k count=400 iflag=direct status=none
check "del" "$B" del -n 0
check "deleted" gone 0

section "del while a program holds /dev/ublkb0 open"
# Not exclusively (del leaves devices in use alone): a shell redirect. The
# server deletes the device without waiting for it (DEL_DEV_ASYNC) and exits;
# the kernel frees the device when the holder closes it.
out=$("$B" add --null 64M 2>&1)
check_eq "add" /dev/ublkb0 "$out"
pid=$(json_field 0 pid)
sleep 600 </dev/ublkb0 &
holder=$!
t=$(date +%s)
out=$("$B" del -n 0 2>&1)
check "del succeeds (exit $?)" test $? -eq 0
check "and says a program still holds it" sh -c "echo '$out' | grep -q 'a program still holds it open'"
check "promptly (< 15 s)" test $(($(date +%s) - t)) -lt 15
check "the server exited" wait_for 10 no_process "$pid"
kill $holder
wait $holder 2>/dev/null
check "once the holder has closed it, id 0 is free again" wait_for 10 sh -c "'$B' add --null 64M -n 0 >/dev/null"
check "del" "$B" del -n 0
check "deleted" gone 0

section "without devtmpfs: nodes made from /sys"
mkdir -p /tmp/olddev
mount --bind /dev /tmp/olddev
mount -t tmpfs -o mode=755 tmpfs /dev
mknod -m 600 /dev/ublk-control c $(tr : ' ' </sys/class/misc/ublk-control/dev)
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
out=$("$B" add --null 64M 2>&1)
check_eq "add without devtmpfs" /dev/ublkb0 "$out"
check "/dev/ublkc0 was made" test -c /dev/ublkc0
check "/dev/ublkb0 was made" test -b /dev/ublkb0
check "I/O through the made node" dd if=/dev/zero of=/dev/ublkb0 bs=1M count=8 oflag=direct status=none
check "del" "$B" del -n 0
umount /dev
umount /tmp/olddev

finish
