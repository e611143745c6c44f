#!/usr/bin/env bash
# vm-run.sh [options] SCRIPT [ARGS...]
#
# Boots Debian's 6.12 kernel under QEMU (TCG: this host has no KVM and no
# ublk_drv), runs SCRIPT with bash inside the VM, and exits with its exit status.
# Inside the VM the host's /usr and /etc are mounted read-only and the project
# folder read-write at its host path, so host programs and $PCACHE_BIN run there.
# See Tests/VM/README.md.
#
# Options:
#   --timeout SECS        bound for the whole run, boot included (default $VM_TIMEOUT or 300)
#   --mem SIZE            guest RAM (default: 1536M + what --pmem takes)
#   --smp N               guest CPUs (default 2)
#   --pmem SIZE[@OFFSET]  carve /dev/pmem0 out of guest RAM with memmap=SIZE!OFFSET
#                         (DAX-capable, contents lost at every boot). Default offset 1G
#                         (4G when SIZE > 1.5G); RAM grows by SIZE unless --mem is given
#   --nvdimm FILE:SIZE    a QEMU NVDIMM backed by FILE (created sparse when missing):
#                         its contents survive the VM, so a later run can boot on it
#   --nvdimm-label-size SIZE  give the NVDIMM a label area (namespaces with labels)
#   --disk [FILE:]SIZE    a virtio disk (raw; /dev/vda, /dev/vdb, ... in order). With
#                         FILE it is created sparse when missing and kept; without,
#                         a sparse scratch file is made and deleted after the run
#   --disk-cache MODE     QEMU cache mode for the disks (default writeback;
#                         none = O_DIRECT on the host, unsafe = ignore flushes)
#   --expect DEV[|DEV2]   fail unless /dev/DEV (or DEV2) appears at boot (repeatable;
#                         pmem0 and the disks are expected automatically)
#   -e, --env NAME[=VALUE]  pass an environment variable to SCRIPT (without =VALUE:
#                         the host's value). PCACHE_BIN is always passed when set
#   --kill-after SECS     power cut: SIGKILL QEMU SECS seconds after it started
#   --kill-on STRING      power cut: SIGKILL QEMU as soon as a console line contains STRING
#   --kill-delay SECS     with --kill-on: SECS seconds after that line instead of at once
#   --result-file FILE    write how the run ended: "exit N", "killed", "timeout",
#                         "panic", "failed", or "boot-failed" (the VM failed before
#                         the job started: nothing of SCRIPT ran)
#   --boot-retries N      boot up to N more times when a boot fails before the job
#                         started (TCG now and then oopses the guest while it boots;
#                         nothing of SCRIPT ran then, so a new boot is a fair retry)
#   --log FILE            also write the console to FILE (default: kept only on failure,
#                         in vm-out/logs/)
#   --verbose             show the kernel's boot messages (no 'quiet')
#   --append ARGS         extra kernel command line
#   --qemu-arg ARG        extra QEMU argument (repeatable)
#
# Exit status: SCRIPT's status when it ran to the end; 0 after a requested power
# cut (--kill-*); 124 on timeout (hang); 125 when the VM failed (kernel panic or
# oops, a missing device, a failed boot, QEMU error).
set -uo pipefail

# shellcheck source=Tests/VM/vm-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"

usage() {
    sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

all_args=("$@")
timeout=${VM_TIMEOUT:-300}
boot_retries=0
mem='' smp=2 pmem='' nvdimm='' nvdimm_label='' disk_cache=writeback verbose=0
kill_after='' kill_on='' kill_delay=0 result_file='' log_file='' append=''
disks=() envs=() expects=() qemu_extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout=$2; shift 2 ;;
        --mem) vm_size mem "$2" M; shift 2 ;;
        --smp) smp=$2; shift 2 ;;
        --pmem) pmem=$2; shift 2 ;;
        --nvdimm) nvdimm=$2; shift 2 ;;
        --nvdimm-label-size) nvdimm_label=$2; shift 2 ;;
        --disk) disks+=("$2"); shift 2 ;;
        --disk-cache) disk_cache=$2; shift 2 ;;
        --expect) expects+=("$2"); shift 2 ;;
        -e | --env) envs+=("$2"); shift 2 ;;
        --kill-after) kill_after=$2; shift 2 ;;
        --kill-on) kill_on=$2; shift 2 ;;
        --kill-delay)
            [[ $2 =~ ^[0-9]+$ ]] || { echo "vm-run: --kill-delay takes whole seconds, not '$2'" >&2; exit 2; }
            kill_delay=$2
            shift 2 ;;
        --result-file) result_file=$2; shift 2 ;;
        --boot-retries)
            [[ $2 =~ ^[0-9]+$ ]] || { echo "vm-run: --boot-retries takes a count, not '$2'" >&2; exit 2; }
            boot_retries=$2
            shift 2 ;;
        --log) log_file=$2; shift 2 ;;
        --verbose) verbose=1; shift ;;
        --append) append="$append $2"; shift 2 ;;
        --qemu-arg) qemu_extra+=("$2"); shift 2 ;;
        -h | --help) usage ;;
        --) shift; break ;;
        -*) echo "vm-run: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage
script=$1
shift
[ -f "$script" ] || vm_die "no such script: $script"
[[ $timeout =~ ^[0-9]+$ ]] || vm_die "--timeout needs whole seconds"

result() { [ -z "$result_file" ] || echo "$1" >"$result_file"; }

# With --boot-retries, this run only boots copies of itself (with retries off)
# until one gets past the boot, and passes on how the last one ended.
if [ "$boot_retries" -gt 0 ] && [ -z "${VM_RUN_ATTEMPT:-}" ]; then
    # The options as given (without a closing --), then this run's result file.
    options=("${all_args[@]:0:${#all_args[@]} - $# - 1}")
    ((${#options[@]})) && [ "${options[-1]}" = -- ] && unset 'options[-1]'
    attempt_result=$(mktemp)
    for attempt in $(seq 0 "$boot_retries"); do
        [ "$attempt" = 0 ] || echo "vm-run: the VM failed while booting, before the job started; boot $((attempt + 1)) of up to $((boot_retries + 1))" >&2
        VM_RUN_ATTEMPT=$((attempt + 1)) "${BASH_SOURCE[0]}" "${options[@]}" \
            --result-file "$attempt_result" -- "$script" "$@"
        rc=$?
        [ $rc -eq 125 ] && [ "$(cat "$attempt_result")" = boot-failed ] || break
    done
    result "$(cat "$attempt_result")"
    rm -f "$attempt_result"
    exit $rc
fi
fail() {
    result failed
    vm_die "$*"
}

command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 missing (run 'make setup')"
vm_prepare
vm_build_tools

# --- the run's job folder (inside the project, which the VM mounts) --------------
mkdir -p "$VM_CACHE/work"
job=$(mktemp -d "$VM_CACHE/work/run-XXXXXX")
nonce=${job##*-}
qpid=''
cleanup() {
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
        kill -KILL "$qpid" 2>/dev/null
        wait "$qpid" 2>/dev/null
    fi
    rm -rf "$job"
}
trap cleanup EXIT
trap 'echo "vm-run: interrupted" >&2; result failed; exit 130' INT TERM

# --- machine ---------------------------------------------------------------------------
# tsc=reliable: without it the guest can mark the emulated TSC unstable
# mid-run (the clocksource watchdog's verdict, we believe), which flips the
# static branch at the top of sched_clock_cpu. The kernel patches that branch
# through an int3, and under TCG another vCPU can still run the int3 after the
# patch is done: "Oops: int3" in sched_clock_cpu, a panic. The side-by-side
# bench died so in 3 of 4 runs at its first 2-job cell; with this, 0 of 5.
cmdline="console=ttyS0 panic=-1 oops=panic mitigations=off tsc=reliable"
[ "$verbose" = 1 ] || cmdline="$cmdline quiet"
machine=pc
extra_mem=0
expect=()
if [ -n "$pmem" ]; then
    vm_size psize "${pmem%@*}" M
    # QEMU's pc machine puts RAM below 3 GiB, or, from 3.5 GiB of RAM on, 3 GiB
    # low and the rest from 4 GiB up. The carved range must lie inside one part.
    if ((psize <= 1536)); then
        poff=1024
        extra_mem=$psize
    else
        poff=4096
        extra_mem=$((psize + 1536)) # 3 GiB low, the pmem high
    fi
    if [[ $pmem == *@* ]]; then
        vm_size poff "${pmem#*@}" M
        extra_mem=$((poff + psize)) # RAM up to the end of the range
    fi
    cmdline="$cmdline memmap=${psize}M!${poff}M"
    expect+=(pmem0)
fi
mem=${mem:-$((1536 + extra_mem))}
mem_arg="${mem}M"
qemu=(qemu-system-x86_64 -accel tcg -cpu max -smp "$smp" -nodefaults -no-reboot
    -display none -serial stdio -kernel "$VM_KERNEL" -initrd "$VM_INITRD"
    -device virtio-rng-pci)
if [ -n "$nvdimm" ]; then
    [[ $nvdimm == *:* ]] || fail "--nvdimm wants FILE:SIZE"
    nfile=${nvdimm%:*}
    vm_size nsize "${nvdimm##*:}" M
    if [ ! -e "$nfile" ]; then
        truncate -s "${nsize}M" "$nfile" || fail "cannot create $nfile"
    fi
    [ "$(stat -c %s "$nfile")" -ge $((nsize * 1048576)) ] || fail "$nfile is smaller than ${nsize}M"
    nfile=$(cd "$(dirname "$nfile")" && pwd -P)/$(basename "$nfile")
    machine="pc,nvdimm=on"
    mem_arg="${mem}M,slots=2,maxmem=$((mem + nsize))M"
    ndev="nvdimm,id=nvdimm0,memdev=nvmem0"
    if [ -n "$nvdimm_label" ]; then
        vm_size lsize "$nvdimm_label"
        ndev="$ndev,label-size=$lsize"
    fi
    qemu+=(-object "memory-backend-file,id=nvmem0,share=on,mem-path=$nfile,size=${nsize}M"
        -device "$ndev")
    if [ -n "$pmem" ]; then expect+=("pmem1|dax0.0|dax1.0"); else expect+=("pmem0|dax0.0"); fi
fi
qemu+=(-machine "$machine" -m "$mem_arg")

letters=(a b c d e f g h i j k l m n o p)
i=0
for d in "${disks[@]}"; do
    if [[ $d == *:* ]]; then
        dfile=${d%:*}
        dsize=${d##*:}
    else
        dfile="$job/disk$i.img"
        dsize=$d
    fi
    vm_size dbytes "$dsize"
    if [ ! -e "$dfile" ]; then
        truncate -s "$dbytes" "$dfile" || fail "cannot create $dfile"
    fi
    qemu+=(-drive "file=$dfile,format=raw,if=virtio,cache=$disk_cache,discard=unmap")
    expect+=("vd${letters[$i]}")
    i=$((i + 1))
done
expect+=("${expects[@]}")

for tag in usr etc; do
    qemu+=(-virtfs "local,path=/$tag,mount_tag=$tag,security_model=none,readonly=on,multidevs=remap")
done
qemu+=(-virtfs "local,path=$VM_PROJECT,mount_tag=project,security_model=none,multidevs=remap")
qemu+=("${qemu_extra[@]}")

exp=$(IFS=,; echo "${expect[*]}")
cmdline="$cmdline vmrun.project=$VM_PROJECT vmrun.job=$job vmrun.nonce=$nonce"
[ -z "$exp" ] || cmdline="$cmdline vmrun.expect=$exp"
cmdline="$cmdline$append"
qemu+=(-append "$cmdline")

# --- the job script --------------------------------------------------------------------
inproject() { case "$(realpath -m -s "$1")" in "$VM_PROJECT"/*) return 0 ;; *) return 1 ;; esac; }
script=$(realpath -s "$script")
if ! inproject "$script"; then
    cp "$script" "$job/$(basename "$script")"
    script="$job/$(basename "$script")"
fi
{
    echo "# written by vm-run.sh"
    if [ -n "${PCACHE_BIN:-}" ]; then
        pbin=$(realpath -m -s "$PCACHE_BIN")
        if [ -e "$pbin" ] && ! inproject "$pbin"; then
            cp "$pbin" "$job/pcache-ublk" && pbin="$job/pcache-ublk"
        fi
        printf 'export PCACHE_BIN=%q\n' "$pbin"
    fi
    printf 'export VM_PROJECT=%q VM_JOB=%q VM_TOOLS=%q VM_OUT=%q\n' \
        "$VM_PROJECT" "$job" "$VM_TOOLS" "$VM_PROJECT/vm-out"
    for e in "${envs[@]}"; do
        if [[ $e == *=* ]]; then
            printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"
        else
            printf 'export %s=%q\n' "$e" "${!e-}"
        fi
    done
    printf 'cd %q\n' "$VM_PROJECT"
    printf 'exec bash %q' "$script"
    printf ' %q' "$@"
    echo
} >"$job/job.sh"
mkdir -p "$VM_PROJECT/vm-out"

# --- boot and watch the console ----------------------------------------------------------
mkfifo "$job/console"
"${qemu[@]}" </dev/null >"$job/console" 2>&1 &
qpid=$!
exec {con}<"$job/console"
exec {log}>"$job/console.log"
start=$SECONDS
deadline=$((start + timeout))
kill_at=
[ -z "$kill_after" ] || kill_at=$((start + kill_after))
status='' panic='' setup_failed='' outcome='' started='' tail=()

on_line() {
    local l=${1%$'\r'}
    printf '%s\n' "$l"
    printf '%s\n' "$l" >&"$log"
    tail+=("$l")
    ((${#tail[@]} > 40)) && tail=("${tail[@]:1}")
    case "$l" in
        *"Kernel panic - not syncing"*) panic=1 ;;
        "VM-JOB-START $nonce") started=1 ;;
        "VM-EXIT $nonce "*) status=${l##* } ;;
        "VM-SETUP-FAILED $nonce "*) setup_failed=${l#"VM-SETUP-FAILED $nonce "} ;;
    esac
    if [ -n "$kill_on" ] && [ -z "$outcome" ] && [[ $l == *"$kill_on"* ]]; then
        if ((kill_delay > 0)); then
            # The main loop cuts at kill_at, like --kill-after.
            echo "vm-run: \"$kill_on\" seen after $((SECONDS - start)) s: power cut in $kill_delay s" >&2
            kill_on='' kill_at=$((SECONDS + kill_delay))
        else
            kill -KILL "$qpid" 2>/dev/null
            outcome=killed
            echo "vm-run: POWER CUT: killed QEMU on \"$kill_on\" after $((SECONDS - start)) s" >&2
        fi
    fi
}

while :; do
    now=$SECONDS
    wait_s=$((deadline - now))
    [ -n "$kill_at" ] && [ -z "$outcome" ] && ((kill_at - now < wait_s)) && wait_s=$((kill_at - now))
    if ((wait_s <= 0)); then
        if [ -n "$kill_at" ] && [ -z "$outcome" ] && ((SECONDS >= kill_at)); then
            kill -KILL "$qpid" 2>/dev/null
            outcome=killed
            echo "vm-run: POWER CUT: killed QEMU after $((SECONDS - start)) s" >&2
            continue
        fi
        outcome=${outcome:-timeout}
        kill -KILL "$qpid" 2>/dev/null
        break
    fi
    line=
    if IFS= read -r -t "$wait_s" -u "$con" line; then
        on_line "$line"
    else
        rc=$?
        [ -n "$line" ] && on_line "$line" # partial line (EOF, or the wait ran out)
        ((rc > 128)) && continue
        break # EOF: QEMU is gone
    fi
done
wait "$qpid" 2>/dev/null
qrc=$?
qpid=''
exec {con}<&- {log}>&-
[ -n "$status" ] || status=$(cat "$job/status" 2>/dev/null)
elapsed=$((SECONDS - start))

keep_log() {
    local dest=${log_file:-$VM_PROJECT/vm-out/logs/$(basename "$script" .sh)-$(date +%Y%m%d-%H%M%S).log}
    mkdir -p "$(dirname "$dest")"
    cp "$job/console.log" "$dest"
    echo "vm-run: console log: $dest" >&2
}
[ -z "$log_file" ] || cp "$job/console.log" "$log_file"

loud() {
    {
        echo "vm-run: ################################################################"
        echo "vm-run: $*"
        echo "vm-run: ################################################################"
    } >&2
}

if [ "$outcome" = killed ] && [ -z "$panic" ]; then
    result killed
    echo "vm-run: VM killed as requested (power cut) after ${elapsed} s" >&2
    exit 0
fi
# A panic or a lost VM before the job started is the emulator's or the boot's
# failure, never the job's: say so, so a caller may boot again.
early_failure() {
    [ -z "$started" ] || return 0
    echo "vm-run: the VM failed during boot, before the job started" >&2
    result boot-failed
    exit 125
}
if [ -n "$panic" ]; then
    loud "KERNEL PANIC/OOPS in the VM (after ${elapsed} s) - see the console output above"
    keep_log
    early_failure
    result panic
    exit 125
fi
if [ -n "$setup_failed" ]; then
    loud "VM SETUP FAILED: $setup_failed"
    keep_log
    result failed
    exit 125
fi
if [[ $status =~ ^[0-9]+$ ]]; then
    [ -n "$kill_at$kill_on" ] && echo "vm-run: note: the script ended before the requested power cut" >&2
    result "exit $status"
    if [ "$status" -ne 0 ]; then
        echo "vm-run: $(basename "$script") exited with status $status (${elapsed} s)" >&2
        [ -n "$log_file" ] || keep_log
    fi
    exit "$status"
fi
if [ "$outcome" = timeout ]; then
    loud "TIMEOUT: no result after ${timeout} s (hang?) - QEMU killed. Last console lines:"
    printf 'vm-run:   | %s\n' "${tail[@]}" >&2
    keep_log
    result timeout
    exit 124
fi
loud "the VM stopped without reporting a status (QEMU exit code $qrc, after ${elapsed} s)"
printf 'vm-run:   | %s\n' "${tail[@]}" >&2
keep_log
early_failure
result failed
exit 125
