#!/usr/bin/env bash
# make demo's script (Tests/VM/guest/demo.sh), run as a test so that the
# README's first command cannot break unnoticed: ext4 on the cache, random
# writes, a restart with replay, del --flush, the files checked on the bare
# disk. It must reach its last step with exit status 0.
# vm-run: --pmem 1G --disk 2G --disk-cache none --timeout 600
. "$VM_PROJECT/Tests/VM/guest/lib.sh"

section "make demo's guest script"
bash "$VM_PROJECT/Tests/VM/guest/demo.sh" >/tmp/demo.out 2>&1
rc=$?
grep -E '^>>>|DEMO FAILED|checksums? the same' /tmp/demo.out | sed 's/^/   /'
check_eq "the demo's exit status" 0 "$rc"
check "it reached its last step" grep -q '^>>> Done' /tmp/demo.out
[ "$rc" -eq 0 ] || tail -n 30 /tmp/demo.out | sed 's/^/   | /'
finish
