#!/usr/bin/env bash
# bench.sh [RUNTIME_SECS] (make bench-vm): one VM, the side-by-side benchmark
# of pcache-ublk, dm-writecache, our null target, the bare disk and raw pmem
# (fio 4 KiB randwrite/randread, iodepth 1/32, numjobs 1/2); prints the table
# with ratios (also vm-out/bench-vm.txt). The work is in Tests/VM/guest/bench.sh.
#
# Numbers come from QEMU's software CPU emulation (TCG): compare the columns
# with each other, not with real hardware.
set -uo pipefail
# shellcheck source=Tests/VM/vm-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
export PCACHE_BIN=${PCACHE_BIN:-$VM_PROJECT/.build-static/release/pcache-ublk}
runtime=${1:-${BENCH_RUNTIME:-5}}

# The backing disk bypasses the host's page cache (cache=none), so it behaves
# like a disk rather than like RAM.
exec "$VM_DIR/vm-run.sh" --boot-retries 3 --timeout "${VM_TIMEOUT:-1800}" --pmem 1G --disk 4G --disk-cache none \
    -e BENCH_RUNTIME="$runtime" -e BENCH_SIZE="${BENCH_SIZE:-256M}" "$VM_DIR/guest/bench.sh"
