#!/usr/bin/env bash
# The side-by-side benchmark, inside one VM (Tests/VM/bench.sh boots it).
#
# The same pmem (1 GiB, memmap) and the same backing disk (/dev/vda, no host
# page cache) for every target:
#   (a) pcache-ublk: devdax pmem caching vda
#   (b) dm-writecache in pmem mode: /dev/pmem0 caching vda
#   (c) pcache-ublk's null target: the ublk transport alone
#   (d) vda: the bare backing disk
#   (e) /dev/pmem0: the raw pmem block device
# fio 4 KiB randwrite and randread (hits: the working set is written first
# and fits every cache), iodepth 1 and 32, numjobs 1 and 2. ublk devices use
# one queue per fio job. Results go to $VM_OUT/bench-vm.json and a table.
set -uo pipefail
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
runtime=${BENCH_RUNTIME:-5}
size=${BENCH_SIZE:-256M}     # working set per job: fits in every cache
results=$VM_OUT/bench-vm.jsonl
: >"$results"
backing_sectors=$(blockdev --getsz /dev/vda)

# fio_cell TARGET DEVICE RW QD JOBS: one fio run, one JSON line of results.
fio_cell() {
    local target=$1 dev=$2 rw=$3 qd=$4 jobs=$5 out=/tmp/fio-cell.json
    fio --name=cell --filename="$dev" --rw="$rw" --bs=4k --size="$size" --iodepth="$qd" \
        --numjobs="$jobs" --group_reporting --ioengine=io_uring --direct=1 --runtime="$runtime" \
        --time_based --ramp_time=1 --randrepeat=0 --output-format=json >"$out" 2>/dev/null
    python3 - "$target" "$rw" "$qd" "$jobs" "$out" >>"$results" <<'PY'
import json, sys
target, rw, qd, jobs, path = sys.argv[1:6]
try:
    job = json.load(open(path))["jobs"][0]
except Exception:
    print(json.dumps({"target": target, "rw": rw, "qd": int(qd), "jobs": int(jobs), "error": True}))
    sys.exit(0)
side = job["write" if "write" in rw else "read"]
pct = side.get("clat_ns", {}).get("percentile", {})
print(json.dumps({"target": target, "rw": rw, "qd": int(qd), "jobs": int(jobs), "iops": side["iops"],
                  "p50_us": pct.get("50.000000", 0) / 1000, "p99_us": pct.get("99.000000", 0) / 1000,
                  "errors": job.get("error", 0)}))
PY
}

# prefill DEVICE: write the working set once, so reads hit.
prefill() {
    fio --name=fill --filename="$1" --rw=write --bs=1M --size="$size" --ioengine=io_uring --direct=1 \
        --iodepth=8 >/dev/null 2>&1
}

# cells TARGET DEVICE [JOBS...]: the workload matrix on one device.
cells() {
    local target=$1 dev=$2
    shift 2
    local jobs_list=("${@:-1 2}")
    [ -e "/sys/block/$(basename "$(readlink -f "$dev")")/queue/scheduler" ] &&
        echo none >"/sys/block/$(basename "$(readlink -f "$dev")")/queue/scheduler" 2>/dev/null
    prefill "$dev"
    for jobs in ${jobs_list[@]}; do
        for rw in randwrite randread; do
            for qd in 1 32; do
                echo "bench: $target $rw qd=$qd jobs=$jobs" >&2
                fio_cell "$target" "$dev" "$rw" "$qd" "$jobs"
            done
        done
    done
}

ublk_add() { # ARGS...: add a ublk device, print its node
    "$PCACHE_BIN" add "$@" | tail -1
}

section "targets"
pmem_mode fsdax >/dev/null
# (e) raw pmem and (d) the bare disk.
cells pmem /dev/pmem0
cells disk /dev/vda

# (b) dm-writecache, pmem mode, on the same pmem and disk.
dd if=/dev/zero of=/dev/pmem0 bs=1M count=4 oflag=direct status=none
dmsetup create bench-wc --table "0 $backing_sectors writecache p /dev/vda /dev/pmem0 4096 0"
wc_dev=/dev/mapper/bench-wc
[ -b "$wc_dev" ] || wc_dev=/dev/dm-0
cells dm-writecache "$wc_dev"
dmsetup remove bench-wc

# (c) the null target and (a) pcache-ublk, one queue per fio job.
for jobs in 1 2; do
    dev=$(ublk_add --null 4G -q "$jobs")
    [ -b "$dev" ] || { echo "bench: no null target device" >&2; continue; }
    cells "null-target" "$dev" "$jobs"
    "$PCACHE_BIN" del --all >/dev/null
done
dax=$(pmem_mode devdax)
for jobs in 1 2; do
    # A fresh cache each time (dm-writecache's metadata is on this pmem too).
    "$PCACHE_BIN" format --force "$dax" >/dev/null
    dev=$(ublk_add --table "0 $backing_sectors pcache $dax /dev/vda" -q "$jobs")
    [ -b "$dev" ] || { echo "bench: no pcache-ublk device" >&2; continue; }
    cells pcache-ublk "$dev" "$jobs"
    "$PCACHE_BIN" status -n 0 >&2
    "$PCACHE_BIN" del --all >/dev/null
done

python3 - "$results" "$runtime" "$size" <<'PY' | tee "$VM_OUT/bench-vm.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
runtime, size = sys.argv[2], sys.argv[3]
cell = {(r["target"], r["rw"], r["qd"], r["jobs"]): r for r in rows}
targets = ["pcache-ublk", "dm-writecache", "null-target", "disk", "pmem"]
print()
print(f"fio 4 KiB, O_DIRECT, io_uring, {runtime} s per cell, {size} working set per job; QEMU TCG (software CPU):")
print("compare rows with each other, not with real hardware. IOPS, then p50/p99 completion latency in µs.")
print()
head = f"{'workload':<22}" + "".join(f"{t:>22}" for t in targets) + "   a/b    a/c    a/e"
print(head)
for rw in ["randwrite", "randread"]:
    for jobs in [1, 2]:
        for qd in [1, 32]:
            line = f"{rw} qd{qd} j{jobs}".ljust(22)
            vals = {}
            for t in targets:
                r = cell.get((t, rw, qd, jobs))
                if not r or r.get("error"):
                    line += f"{'-':>22}"
                    continue
                vals[t] = r["iops"]
                line += f"{r['iops']:>9.0f} {r['p50_us']:>5.0f}/{r['p99_us']:<6.0f}"
            a = vals.get("pcache-ublk")
            for other in ["dm-writecache", "null-target", "pmem"]:
                b = vals.get(other)
                line += f" {a / b:5.2f} " if a and b else "    - "
            print(line)
print()
print("targets: (a) pcache-ublk, (b) dm-writecache (pmem mode), (c) pcache-ublk null target, (d) bare disk, (e) raw pmem")
print("goals: a/c >= 0.8 everywhere; a/b >= 1.0 for randwrite qd32 j1")
PY
finish
