#!/usr/bin/env bash
# run-tests.sh [PATTERN...]
#
# Runs the VM end-to-end scenarios, Tests/VM/scenarios/*.sh (only those whose
# name contains one of the PATTERNs, when given), each in a fresh VM, prints
# PASS/FAIL per scenario and a closing "N passed, M failed" line; exits 1 when
# one failed.
#
# A scenario is a bash script. Header comment lines say how it is run:
#   # vm-run: OPTIONS     options for vm-run.sh (e.g. --pmem 256M --disk 1G)
#   # runs-on: host       run it on the host instead of inside a VM; it then
#                         boots VMs itself with "$VM_RUN" (power-cut tests)
# Inside the VM, Tests/VM/guest/lib.sh has check/finish helpers.
set -uo pipefail
# shellcheck source=Tests/VM/vm-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"

if [ -z "${PCACHE_BIN:-}" ]; then
    export PCACHE_BIN="$VM_PROJECT/.build-static/release/pcache-ublk"
fi
[ -x "$PCACHE_BIN" ] || vm_msg "warning: PCACHE_BIN=$PCACHE_BIN is missing (run 'make static')"
export VM_RUN="$VM_DIR/vm-run.sh" VM_PROJECT VM_CACHE

total_start=$SECONDS
vm_prepare
vm_build_tools

scenarios=()
for s in "$VM_DIR"/scenarios/*.sh; do
    [ -e "$s" ] || continue
    name=$(basename "$s" .sh)
    if [ $# -gt 0 ]; then
        keep=0
        for p in "$@"; do [[ $name == *"$p"* ]] && keep=1; done
        [ $keep = 1 ] || continue
    fi
    scenarios+=("$s")
done

passed=0 failed=0 results=()
for s in "${scenarios[@]}"; do
    name=$(basename "$s" .sh)
    read -ra opts <<<"$(sed -n 's/^# vm-run://p' "$s" | head -n 1)"
    where=$(sed -n 's/^# runs-on:[[:space:]]*//p' "$s" | head -n 1)
    echo
    echo "=== $name"
    start=$SECONDS
    rebooted=''
    if [ "$where" = host ]; then
        (cd "$VM_PROJECT" && bash "$s")
        rc=$?
    else
        # QEMU's TCG now and then crashes the guest kernel while it boots (an
        # oops while the kernel patches its own text). Nothing of the scenario
        # ran then, so another boot is a fair retry (up to three: two boots in
        # a row have crashed).
        log=$(mktemp)
        "$VM_RUN" --boot-retries 3 "${opts[@]}" "$s" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        grep -q 'failed while booting' "$log" && rebooted=', after a failed boot'
        rm -f "$log"
    fi
    secs=$((SECONDS - start))
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        results+=("PASS  $name (${secs} s$rebooted)")
        echo "--- PASS $name (${secs} s)"
    else
        failed=$((failed + 1))
        results+=("FAIL  $name (exit $rc, ${secs} s$rebooted)")
        echo "--- FAIL $name (exit $rc, ${secs} s)"
    fi
done

echo
echo "VM scenarios ($((SECONDS - total_start)) s):"
for r in "${results[@]}"; do echo "  $r"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
