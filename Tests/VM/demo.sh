#!/usr/bin/env bash
# demo.sh (make demo): boots a VM with 1 GiB of pmem and a 2 GiB backing
# disk and shows pcache-ublk at work there (Tests/VM/guest/demo.sh).
set -uo pipefail
# shellcheck source=Tests/VM/vm-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
export PCACHE_BIN=${PCACHE_BIN:-$VM_PROJECT/.build-static/release/pcache-ublk}
[ -x "$PCACHE_BIN" ] || vm_die "no $PCACHE_BIN: run 'make demo' (it builds it)"

echo "pcache-ublk demo: booting a QEMU VM (Debian's 6.12 kernel with ublk_drv; this host's kernel has none)"
exec "$VM_DIR/vm-run.sh" --boot-retries 3 --timeout "${VM_TIMEOUT:-600}" --pmem 1G --disk 2G --disk-cache none \
    "$VM_DIR/guest/demo.sh" "$@"
