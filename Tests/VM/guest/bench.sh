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

# CPU time, in clock ticks, for the cost-per-I/O columns: all CPUs busy
# (user, nice, system, irq, softirq), and our server's threads by kind.
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
server_ticks() { # prints "queues writeback gc other"
    local comm pid t name ticks q=0 wb=0 gc=0 other=0
    comm=$(basename "$PCACHE_BIN" | cut -c1-15)
    for pid in $(pgrep -x "$comm"); do
        for t in /proc/"$pid"/task/*; do
            name=$(cat "$t/comm" 2>/dev/null) || continue
            ticks=$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null) || continue
            case "$name" in
                ublk*q*) q=$((q + ticks)) ;;
                pcache-wb) wb=$((wb + ticks)) ;;
                pcache-gc) gc=$((gc + ticks)) ;;
                *) other=$((other + ticks)) ;;
            esac
        done
    done
    echo "$q $wb $gc $other"
}

# fio_cell TARGET DEVICE RW QD JOBS: one fio run, one JSON line of results.
fio_cell() {
    local target=$1 dev=$2 rw=$3 qd=$4 jobs=$5 out=/tmp/fio-cell.json
    local busy0 busy1 server0 server1 t0 t1
    busy0=$(busy_ticks) server0=$(server_ticks) t0=$(date +%s%N)
    fio --name=cell --filename="$dev" --rw="$rw" --bs=4k --size="$size" --iodepth="$qd" \
        --numjobs="$jobs" --group_reporting --ioengine=io_uring --direct=1 --runtime="$runtime" \
        --time_based --ramp_time=1 --randrepeat=0 --output-format=json >"$out" 2>/dev/null
    busy1=$(busy_ticks) server1=$(server_ticks) t1=$(date +%s%N)
    python3 - "$target" "$rw" "$qd" "$jobs" "$out" "$((t1 - t0))" "$((busy1 - busy0))" \
        "$server0" "$server1" "$(getconf CLK_TCK)" >>"$results" <<'PY'
import json, sys
target, rw, qd, jobs, path, wall_ns, busy, server0, server1, hz = sys.argv[1:11]
try:
    job = json.load(open(path))["jobs"][0]
except Exception:
    print(json.dumps({"target": target, "rw": rw, "qd": int(qd), "jobs": int(jobs), "error": True}))
    sys.exit(0)
side = job["write" if "write" in rw else "read"]
pct = side.get("clat_ns", {}).get("percentile", {})
# CPU per I/O: CPU seconds per wall second (ramp included, as the counters
# run over all of fio) over the measured rate.
per_io = lambda ticks: ticks / int(hz) / (int(wall_ns) / 1e9) / side["iops"] * 1e6 if side["iops"] else 0
server = [per_io(b - a) for a, b in zip(map(int, server0.split()), map(int, server1.split()))]
print(json.dumps({"target": target, "rw": rw, "qd": int(qd), "jobs": int(jobs), "iops": side["iops"],
                  "p50_us": pct.get("50.000000", 0) / 1000, "p99_us": pct.get("99.000000", 0) / 1000,
                  "errors": job.get("error", 0), "cpu_us_per_io": per_io(int(busy)),
                  "server_us_per_io": dict(zip(["queues", "writeback", "gc", "other"], server))}))
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
print("CPU time per I/O in µs, all vCPUs together (fio, kernel and servers); for pcache-ublk and the null")
print("target also our server's share: queue threads + writeback + GC. With both vCPUs busy, IOPS follow it.")
print()
print(f"{'workload':<22}{'pcache-ublk':>34}{'dm-writecache':>16}{'null-target':>24}")
for rw in ["randwrite", "randread"]:
    for jobs in [1, 2]:
        for qd in [1, 32]:
            line = f"{rw} qd{qd} j{jobs}".ljust(22)
            for t, width in [("pcache-ublk", 34), ("dm-writecache", 16), ("null-target", 24)]:
                r = cell.get((t, rw, qd, jobs))
                if not r or r.get("error") or "cpu_us_per_io" not in r:
                    line += f"{'-':>{width}}"
                    continue
                text = f"{r['cpu_us_per_io']:.1f}"
                if t != "dm-writecache":
                    s = r["server_us_per_io"]
                    text += f" ({s['queues']:.1f}" + (f" + {s['writeback']:.1f} + {s['gc']:.1f}" if t == "pcache-ublk" else "") + ")"
                line += f"{text:>{width}}"
            print(line)
print()
print("targets: (a) pcache-ublk, (b) dm-writecache (pmem mode), (c) pcache-ublk null target, (d) bare disk, (e) raw pmem")
print("goals: a/c >= 0.8 everywhere; a/b >= 1.0 for randwrite qd32 j1")
PY
finish
