#!/usr/bin/env bash
# shellcheck shell=bash
# Sourced inside the VM by scenario scripts (Tests/VM/scenarios/*.sh):
#
#   . "$VM_PROJECT/Tests/VM/guest/lib.sh"
#   section "pmem"
#   check "/dev/pmem0 exists" test -b /dev/pmem0
#   check_eq "pmem0 is DAX" 1 "$(cat /sys/block/pmem0/queue/dax)"
#   ...
#   finish            # exits 1 if any check failed
#
# Everything a check runs is shown indented under it when it fails.

set -uo pipefail
_checks=0
_failed=0

section() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
indent() { sed 's/^/   | /'; }

# check DESCRIPTION COMMAND [ARGS...]: runs the command, records ok/FAIL.
check() {
    local desc=$1 out rc
    shift
    _checks=$((_checks + 1))
    out=$("$@" 2>&1)
    rc=$?
    if [ $rc -eq 0 ]; then
        printf '   ok    %s\n' "$desc"
    else
        printf '   FAIL  %s (exit %d: %s)\n' "$desc" "$rc" "$*"
        [ -z "$out" ] || printf '%s\n' "$out" | indent
        _failed=$((_failed + 1))
    fi
    return $rc
}

# check_eq DESCRIPTION EXPECTED ACTUAL
check_eq() {
    _checks=$((_checks + 1))
    if [ "$2" = "$3" ]; then
        printf '   ok    %s (%s)\n' "$1" "$3"
    else
        printf '   FAIL  %s: expected [%s], got [%s]\n' "$1" "$2" "$3"
        _failed=$((_failed + 1))
        return 1
    fi
}

# must DESCRIPTION COMMAND...: like check, but a failure ends the scenario.
must() {
    check "$@" || {
        echo "   (cannot go on)"
        finish
    }
}

# pmem_mode MODE [NAMESPACE]: reconfigures a pmem namespace (default
# namespace0.0) to devdax or fsdax and prints the device it now has
# (/dev/daxN.M or /dev/pmemN). devdax is the one that gives a process a real
# DAX mapping of a whole device (see Tests/VM/README.md).
pmem_mode() {
    local mode=$1 ns=${2:-namespace0.0} out dev
    out=$(ndctl create-namespace -f -e "$ns" -m "$mode" 2>&1) || {
        printf '%s\n' "$out" >&2
        return 1
    }
    dev=$(printf '%s\n' "$out" | sed -n 's/.*"\(chardev\|blockdev\)":"\([^"]*\)".*/\2/p' | head -n 1)
    [ -n "$dev" ] && [ -e "/dev/$dev" ] || return 1
    echo "/dev/$dev"
}

# wait_for SECONDS COMMAND...: polls COMMAND (quietly) every 0.1 s until it
# succeeds; fails when SECONDS pass first.
wait_for() {
    local n=$(($1 * 10))
    shift
    while [ $n -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
        n=$((n - 1))
    done
    return 1
}

# gone ID: ublk device ID no longer exists.
gone() { ! test -e "/sys/class/ublk-char/ublkc$1"; }

# no_process PID: the process has exited.
no_process() { ! kill -0 "$1" 2>/dev/null; }

# finish: prints the tally and exits (1 when a check failed).
finish() {
    echo
    if [ "$_failed" -gt 0 ]; then
        echo "$_failed of $_checks checks FAILED"
        exit 1
    fi
    # A job that checks nothing (the bench) says nothing of checks.
    [ "$_checks" -eq 0 ] || echo "all $_checks checks passed"
    exit 0
}
