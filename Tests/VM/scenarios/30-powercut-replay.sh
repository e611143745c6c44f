#!/usr/bin/env bash
# Power cuts under write load: a file-backed NVDIMM (1G, devdax) caches a kept
# 256 MiB disk image; each boot adds the cache (replay), verifies what earlier
# boots wrote, and starts 4 writers of numbered blocks (fsync and FUA mixed
# in) until QEMU is killed at a random moment: a third of the cuts during
# replay/verify, the rest 1-9 s after the writers start. 10 cuts
# (PCACHE_POWERCUT_ITERATIONS, or 30 with PCACHE_VM_SOAK=1), then a last boot
# verifies, writes back, and checks the backing device itself. Every replay
# must succeed, every write completed before its fsync (or a completed FUA
# write) must read back, or a newer write of its block, and nothing else may:
# no torn, foreign or older blocks.
# runs-on: host
set -uo pipefail
: "${VM_RUN:?run me through Tests/VM/run-tests.sh}" "${VM_CACHE:?}"
iterations=${PCACHE_POWERCUT_ITERATIONS:-10}
[ "${PCACHE_VM_SOAK:-0}" = 1 ] && iterations=${PCACHE_POWERCUT_ITERATIONS:-30}
mkdir -p "$VM_CACHE/work"
dir=$(mktemp -d "$VM_CACHE/work/powercut-replay.XXXXXX") && [ -d "$dir" ] || exit 1
trap 'rm -rf "$dir"' EXIT
guest="$VM_PROJECT/Tests/VM/guest/powercut-guest.sh"
# --boot-retries: a boot that TCG crashes before the job starts never touched
# the NVDIMM or the disk, so it is booted again rather than counted as a failure.
machine=(--nvdimm "$dir/nvdimm.img:1G" --disk "$dir/disk.img:256M" --timeout 240 --boot-retries 3)
failed=0
ok() { echo "   ok    $*"; }
bad() {
    echo "   FAIL  $*"
    failed=1
}

echo "   note: under TCG a power cut cannot lose stores the guest already made to the NVDIMM"
echo "         (no CPU cache to lose), and disk writes QEMU already issued survive the kill;"
echo "         torn pmem lines and lost cache flushes are covered by the crash-point unit tests"
echo "         (DataPathCrashTests, CrashConsistencyTests)."

# When to cut: a third of the boots during replay/verify (up to 6 s before the
# writers start; the boot before tells when they started, as guest uptime ~
# QEMU's age), the others 1-9 s after this boot's writers start (the guest's
# PC-WRITING line). Cutting at a time from QEMU's start alone landed most cuts
# before the writes on a slow host: replay and verify take longer each boot.
write_at=22
cuts_in=()
for i in $(seq 0 $((iterations - 1))); do
    if ((RANDOM % 3 == 0)); then
        cut=$((write_at - 6 + RANDOM % 7))
        when=(--kill-after "$cut") what="$cut s after QEMU started"
    else
        delay=$((1 + RANDOM % 9))
        when=(--kill-on PC-WRITING --kill-delay "$delay") what="$delay s into the writes"
    fi
    log="$dir/boot-$i.log"
    echo "-- boot $((i + 1)) of $((iterations + 1)): power cut $what"
    "$VM_RUN" "${machine[@]}" "${when[@]}" --log "$log" --result-file "$dir/r$i" \
        "$guest" "$dir" "$i" write >"$dir/out-$i" 2>&1
    rc=$?
    result=$(cat "$dir/r$i" 2>/dev/null)
    grep -E '^   (ok|FAIL|\|)' "$dir/out-$i"
    grep -q 'failed while booting' "$dir/out-$i" &&
        echo "   note  $(grep -c 'failed while booting' "$dir/out-$i") boot(s) failed before the job started and were booted again"
    [ -f "$dir/verify-$i" ] && echo "         verified: $(paste -sd' ' "$dir/verify-$i")"
    phase=$(grep -a '^PC-PHASE' "$log" | tail -n 1 | awk '{ print $2 }')
    w=$(grep -a '^PC-WRITING' "$log" | awk '{ printf "%d", $3 + 1 }')
    [ -n "$w" ] && write_at=$w
    fsyncs=$(cat "$dir"/logs/i"$i"-w*.log 2>/dev/null | grep -c '^F')
    if [ "$result" = killed ]; then
        ok "cut during '${phase:-boot}' ($fsyncs fsyncs of this boot logged)"
        cuts_in+=("${phase:-boot}")
    elif [ "$result" = "exit 0" ]; then
        echo "   note  the boot ended before the cut ($fsyncs fsyncs logged)"
    else
        bad "boot $((i + 1)): exit $rc, $result"
        tail -n 30 "$dir/out-$i" | sed 's/^/   | /'
        break
    fi
done

if [ $failed = 0 ]; then
    echo "-- last boot: replay, verify, del --flush, verify the backing device"
    "$VM_RUN" "${machine[@]}" --result-file "$dir/rfinal" "$guest" "$dir" "$iterations" final >"$dir/out-final" 2>&1
    rc=$?
    grep -E '^   (ok|FAIL|\||note)' "$dir/out-final"
    [ -f "$dir/verify-$iterations" ] && echo "         verified: $(paste -sd' ' "$dir/verify-$iterations")"
    [ $rc -eq 0 ] || bad "last boot: exit $rc, $(cat "$dir/rfinal" 2>/dev/null)"
fi
echo "   cuts landed in: $(printf '%s\n' "${cuts_in[@]}" | sort | uniq -c | awk '{ printf "%s %s, ", $2, $1 }')"
echo "   writes logged: $(cat "$dir"/logs/*.log 2>/dev/null | grep -c '^B') batches, $(cat "$dir"/logs/*.log 2>/dev/null | grep -c '^F') fsyncs, $(cat "$dir"/logs/*.log 2>/dev/null | grep -c '^U') FUA writes"
[ $failed = 0 ] && echo "all power cuts replayed and verified" || echo "power-cut scenario FAILED"
exit $failed
