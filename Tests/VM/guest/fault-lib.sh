#!/usr/bin/env bash
# shellcheck shell=bash
# Sourced (after lib.sh) by the fault scenarios 3x-6x: the cache device, the
# server's status and counters, and the block writer/verifier.
#
#   . "$VM_PROJECT/Tests/VM/guest/lib.sh"
#   . "$VM_PROJECT/Tests/VM/guest/fault-lib.sh"

B=${PCACHE_BIN:-/nonexistent}
RUN=/run/pcache-ublk
BLOCKCHECK="$VM_PROJECT/Tests/VM/guest/blockcheck.py"

# cache_dax: the pmem as /dev/dax0.0 (reconfigured when it is not yet).
cache_dax() {
    if [ -c /dev/dax0.0 ]; then echo /dev/dax0.0; else pmem_mode devdax; fi
}

# pcache_table CACHE BACKING: a writeback table with data_crc over all of BACKING.
pcache_table() {
    echo "0 $(blockdev --getsz "$2") pcache $1 $2 4 cache_mode writeback data_crc true"
}

# stat_of ID NAME: one counter of `status --stats` (the control socket's stats).
stat_of() {
    "$B" status -n "$1" --stats | awk -v n="$2" '$1 == n { print $2 }'
}

# status_field ID N: field N of the status line after "0 <sectors> pcache"
# (1 sb_flags 2 seg_num 3 n_segs 4 segs_used 5 gc_percent 6 cache_flags
#  7 key_head 8 dirty_tail 9 key_tail).
status_field() {
    "$B" status -n "$1" | awk -v f="$2" '{ print $(3 + f) }'
}

server_pid() {
    "$B" list --json | python3 -c "import json,sys
for d in json.load(sys.stdin):
    if d['id'] == $1: print(d['pid'])"
}

# wait_for SECONDS COMMAND...: polls (every 0.2 s) until COMMAND succeeds.

# clean ID: the dirty tail has caught up with the key head.
clean() { [ "$(status_field "$1" 7)" = "$(status_field "$1" 8)" ]; }

now() { date +%s.%N; }
