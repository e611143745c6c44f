#!/usr/bin/env bash
# Harness self-test for power-cut tests: a file-backed NVDIMM and a disk image
# keep what the guest wrote when QEMU is killed abruptly, a second boot on the
# same files sees it, a hung guest is stopped by the timeout, a kernel crash
# is reported (one before the job starts as a failed boot, which --boot-retries
# boots again), and a cut can come a set time after a marker line.
# runs-on: host
set -uo pipefail
: "${VM_RUN:?run me through Tests/VM/run-tests.sh}" "${VM_CACHE:?}"
mkdir -p "$VM_CACHE/work"
dir=$(mktemp -d "$VM_CACHE/work/powercut.XXXXXX") && [ -d "$dir" ] || exit 1
trap 'rm -rf "$dir"' EXIT
failed=0
ok() { echo "   ok    $*"; }
bad() {
    echo "   FAIL  $*"
    failed=1
}

cat >"$dir/write.sh" <<'EOF'
set -e
for dev in /dev/pmem0 /dev/vda; do
    echo "$1 on $dev" | dd of=$dev bs=4096 conv=sync oflag=direct status=none
done
echo WRITES-DONE
sleep 1000
EOF
cat >"$dir/read.sh" <<'EOF'
for dev in /dev/pmem0 /dev/vda; do
    got=$(dd if=$dev bs=4096 count=1 iflag=direct status=none | tr -d '\0')
    echo "read back: $got"
    [ "$got" = "$1 on $dev" ] || exit 1
done
EOF
machine=(--nvdimm "$dir/nvdimm.img:64M" --disk "$dir/disk.img:64M" --boot-retries 3)
tag="cut-$RANDOM"

echo "-- bad option values are refused before anything boots"
for bad_option in "--boot-retries x:takes a count, not 'x'" "--kill-delay 1.5:takes whole seconds, not '1.5'"; do
    option=${bad_option%%:*} message=${bad_option#*:}
    # shellcheck disable=SC2086 # the option and its value are two words
    out=$("$VM_RUN" $option --kill-on X "$dir/read.sh" 2>&1)
    rc=$?
    [ $rc -eq 2 ] && [[ $out == *"$message"* ]] && ok "$option: exit 2, \"$message\"" ||
        bad "$option: exit $rc, $out"
done

echo "-- boot 1: write, then power cut on the WRITES-DONE line"
"$VM_RUN" "${machine[@]}" --kill-on WRITES-DONE --result-file "$dir/r1" "$dir/write.sh" "$tag"
rc=$?
[ $rc -eq 0 ] && [ "$(cat "$dir/r1")" = killed ] && ok "QEMU killed on the marker" || bad "boot 1: exit $rc, result $(cat "$dir/r1" 2>/dev/null)"

echo "-- boot 2: same NVDIMM and disk files"
"$VM_RUN" "${machine[@]}" --result-file "$dir/r2" "$dir/read.sh" "$tag"
rc=$?
[ $rc -eq 0 ] && ok "the NVDIMM and the disk kept the writes" || bad "boot 2: exit $rc, result $(cat "$dir/r2" 2>/dev/null)"

echo "-- boot 3: a guest that hangs is killed by --timeout"
echo 'echo hanging; sleep 1000' >"$dir/hang.sh"
"$VM_RUN" --timeout 10 --log "$dir/hang.log" --result-file "$dir/r3" "$dir/hang.sh" >/dev/null 2>&1
rc=$?
[ $rc -eq 124 ] && [ "$(cat "$dir/r3")" = timeout ] && ok "timeout reported (exit 124)" || bad "boot 3: exit $rc, result $(cat "$dir/r3" 2>/dev/null)"

echo "-- boot 4: a kernel crash is reported as a panic"
echo 'echo c >/proc/sysrq-trigger; sleep 100' >"$dir/crash.sh"
"$VM_RUN" --timeout 60 --log "$dir/crash.log" --result-file "$dir/r4" "$dir/crash.sh" >"$dir/crash.out" 2>&1
rc=$?
[ $rc -eq 125 ] && [ "$(cat "$dir/r4")" = panic ] && grep -q 'KERNEL PANIC' "$dir/crash.out" &&
    ok "panic reported (exit 125)" || bad "boot 4: exit $rc, result $(cat "$dir/r4" 2>/dev/null)"

echo "-- boot 5: a crash before the job starts is a failed boot; --boot-retries 1 boots once more"
"$VM_RUN" --timeout 60 --boot-retries 1 --append rdinit=/no-such-init --log "$dir/boot.log" --result-file "$dir/r5" \
    "$dir/crash.sh" >"$dir/boot.out" 2>&1
rc=$?
boots=$(grep -c 'the VM failed during boot, before the job started' "$dir/boot.out")
[ $rc -eq 125 ] && [ "$(cat "$dir/r5")" = boot-failed ] && [ "$boots" = 2 ] &&
    grep -q 'boot 2 of up to 2' "$dir/boot.out" &&
    ok "failed boot reported (exit 125, result boot-failed) after 2 boots" ||
    bad "boot 5: exit $rc, result $(cat "$dir/r5" 2>/dev/null), $boots failed boots seen"

echo "-- boot 6: a power cut some seconds after a marker line (--kill-delay)"
echo 'echo GO; for n in $(seq 1 30); do sleep 1; echo TICK $n; done' >"$dir/tick.sh"
"$VM_RUN" --timeout 120 --boot-retries 3 --kill-on GO --kill-delay 6 --log "$dir/tick.log" --result-file "$dir/r6" "$dir/tick.sh" \
    >/dev/null 2>&1
rc=$?
ticks=$(grep -a -c '^TICK' "$dir/tick.log")
# A tick takes 1-2 s under TCG (each `sleep` is a process), and the cut comes
# 5-6 s after the line: a few ticks, not 0 (cut at once) and not the 30 of a
# guest left to run. (With a 4 s delay, 2 and 3 ticks were seen.)
[ $rc -eq 0 ] && [ "$(cat "$dir/r6")" = killed ] && ((ticks >= 2 && ticks <= 12)) &&
    ok "QEMU killed 6 s after the marker ($ticks ticks of the guest's seconds seen)" ||
    bad "boot 6: exit $rc, result $(cat "$dir/r6" 2>/dev/null), $ticks ticks"

exit $failed
