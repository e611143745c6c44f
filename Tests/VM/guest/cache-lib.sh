#!/usr/bin/env bash
# shellcheck shell=bash
# Helpers for the cache scenarios (Tests/VM/scenarios/2x-*.sh), sourced after
# lib.sh inside the VM:
#
#   . "$VM_PROJECT/Tests/VM/guest/lib.sh"
#   . "$VM_PROJECT/Tests/VM/guest/cache-lib.sh"
#   cache_setup                    # $DAX (devdax pmem), $BACKING, $SECTORS, $TABLE
#   must "add" cache_add
#   ...
#
# PCACHE_VM_SOAK (set on the host; the scenarios pass it with
# `-e PCACHE_VM_SOAK`) makes them run longer: $SOAK scales their I/O sizes and
# repetitions: 1 normally, 4 with PCACHE_VM_SOAK=1 (or yes/true), N with
# PCACHE_VM_SOAK=N for N >= 2.

# Sections show the seconds since the scenario started.
section() { printf '\n== %s  [%d s]\n' "$*" "$SECONDS"; }

B=${PCACHE_BIN:-/nonexistent}
RUN=/run/pcache-ublk
SOAK=${PCACHE_VM_SOAK:-0}
case $SOAK in '' | 0 | no | false) SOAK=1 ;; 1 | yes | true) SOAK=4 ;; *[!0-9]*) SOAK=4 ;; esac
[ "$SOAK" -gt 1 ] && note "PCACHE_VM_SOAK: sizes and repetitions x$SOAK"

must "pcache-ublk binary (\$PCACHE_BIN)" test -x "$B"
must "/dev/ublk-control exists" test -c /dev/ublk-control

# cache_setup [BACKING]: turns the pmem into device DAX and sets DAX,
# BACKING (default /dev/vda), SECTORS and TABLE (data_crc true).
cache_setup() {
    DAX=$(pmem_mode devdax)
    must "pmem in devdax mode ($DAX)" test -c "$DAX"
    BACKING=${1:-/dev/vda}
    SECTORS=$(blockdev --getsz "$BACKING")
    TABLE="0 $SECTORS pcache $DAX $BACKING 4 cache_mode writeback data_crc true"
    note "table: $TABLE"
}

# cache_add [ID] [extra add options...]: adds $TABLE with 2 queues; prints what add printed.
cache_add() {
    "$B" add --table "$TABLE" -q 2 "$@"
}

# server_pid ID: the pid of device ID's server (from `status --info`).
server_pid() { "$B" status -n "$1" --info 2>/dev/null | sed -n 's/^pid //p'; }

# device_state ID: live, quiesced, … from `list --json`.
device_state() {
    "$B" list --json | python3 -c "import json,sys
for d in json.load(sys.stdin):
    if d['id'] == $1: print(d['state'])"
}

# sock ID LINE: sends LINE to device ID's control socket, prints the raw reply.
sock() {
    python3 - "$RUN/ublkb$1.sock" "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
sys.stdout.write(out.decode("utf-8", "replace"))
PY
}

# status_field ID N: field N (1-based) of the status line after "0 <len> pcache".
status_field() { "$B" status -n "$1" | awk -v n="$2" '{ print $(n + 3) }'; }
key_head() { status_field "$1" 7; }
dirty_tail() { status_field "$1" 8; }
key_tail() { status_field "$1" 9; }
# stat_value ID NAME: a counter of `status --stats`.
stat_value() { "$B" status -n "$1" --stats | awk -v n="$2" '$1 == n { print $2 }'; }

# dirty_caught_up ID: dirty_tail == key_head (everything written back).
dirty_caught_up() {
    local s
    s=$("$B" status -n "$1") || return 1
    set -- $s
    [ "${10}" = "${11}" ]
}
# drained ID: key_head == key_tail (written back and collected).
drained() {
    local s
    s=$("$B" status -n "$1") || return 1
    set -- $s
    [ "${10}" = "${12}" ]
}

# hasher_start: starts a python co-process that hashes devices on request
# (one python start-up instead of one per hash: TCG makes those slow).
# snap MIB PATH...: prints "PATH=hash" for the first MIB MiB of each
# (sha256; with SNAP_FAST=1 crc32, much cheaper under TCG).
hasher_start() {
    coproc HASHER { python3 -u -c '
import hashlib, mmap, os, stat, sys, zlib
class Crc:
    def __init__(self): self.v = 0
    def update(self, b): self.v = zlib.crc32(b, self.v)
    def hexdigest(self): return "%08x" % self.v
def h(path, size, fast):
    st = os.stat(path)
    d = Crc() if fast else hashlib.sha256()
    if stat.S_ISCHR(st.st_mode):
        fd = os.open(path, os.O_RDONLY)
        m = mmap.mmap(fd, (size + (2 << 20) - 1) // (2 << 20) * (2 << 20), mmap.MAP_SHARED, mmap.PROT_READ)
        d.update(m[:size])
        m.close()
    else:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if stat.S_ISBLK(st.st_mode) else 0))
        buf = mmap.mmap(-1, 1 << 20)
        off = 0
        while off < size:
            n = os.preadv(fd, [buf], off)
            if n <= 0:
                break
            d.update(buf[:n])
            off += n
    os.close(fd)
    return d.hexdigest()[:16]
for line in sys.stdin:
    words = line.split()
    try:
        fast = words[0] == "fast"
        print(" ".join(p + "=" + h(p, int(words[1]) << 20, fast) for p in words[2:]))
    except Exception as e:
        print("error:", e)
'; }
}
snap() {
    local out
    echo "$([ "${SNAP_FAST:-0}" = 1 ] && echo fast || echo sha) $*" >&"${HASHER[1]}"
    read -r out <&"${HASHER[0]}"
    echo "$out"
}

# dax_zero PATH MIB: zeroes the first MIB MiB of a device-DAX node through a
# shared mapping (like `dd if=/dev/zero of=/dev/pmem0 bs=1M count=1`, which
# dtg-tests use to make dm-pcache format anew).
dax_zero() {
    python3 - "$1" "$2" <<'PY'
import mmap, os, sys
path, mib = sys.argv[1], int(sys.argv[2])
size = ((mib << 20) + (2 << 20) - 1) // (2 << 20) * (2 << 20)
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[: mib << 20] = bytes(mib << 20)  # (msync is EINVAL on device DAX; the stores are the write)
m.close()
os.close(fd)
PY
}

# flush_dev DEV: fsync on the block device node: the kernel sends a FLUSH.
flush_dev() { python3 -c "import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY); os.fsync(fd); os.close(fd)" "$1"; }

# fio_job NAME ARGS...: runs fio on /dev/ublkb0 (unless --filename is given)
# with its output in /tmp/fio-NAME.out; fails unless fio exits 0 with err=0.
fio_job() {
    local name=$1 rc file=(--filename=/dev/ublkb0)
    shift
    [[ " $* " == *" --filename="* ]] && file=()
    # fio would create a regular file in place of a missing device node.
    [ ${#file[@]} -eq 0 ] || test -b /dev/ublkb0 || { echo "/dev/ublkb0 is not a block device"; return 1; }
    # (fio would leave its verify state files in the working directory: the project)
    fio --name="$name" "${file[@]}" --ioengine=io_uring --direct=1 --verify_state_save=0 "$@" \
        --output=/tmp/fio-"$name".out >/tmp/fio-"$name".err 2>&1
    rc=$?
    if [ $rc -ne 0 ] || ! grep -q 'err= 0' /tmp/fio-"$name".out; then
        grep -E 'err=|verify|bad|error|fio:' /tmp/fio-"$name".out /tmp/fio-"$name".err | head -n 12
        return 1
    fi
}
# fio_summary NAME: the IOPS/bandwidth lines of a fio_job.
fio_summary() { grep -E '^ +(read|write):' /tmp/fio-"$1".out | sed 's/^ *//;s/, [0-9]* zone resets//' | tr '\n' ' '; }

# servers_left: pcache-ublk server processes still running (pids).
servers_left() { pgrep -f "$B (add|recover) .*--foreground" || true; }

# cleanup_devices: deletes every device (for the end of a scenario).
cleanup_devices() { "$B" del --all >/dev/null 2>&1 || true; }
