#!/usr/bin/env bash
# Which pmem paths give a userspace process a real DAX mapping (libpmem's
# pmem_is_pmem() = 1, durability by cache flushes)? See Tests/VM/README.md.
# vm-run: --pmem 256M
. "$VM_PROJECT/Tests/VM/guest/lib.sh"
pc="$VM_TOOLS/pmemcheck"
iters=20000

# pmemcheck PATH [SIZE_MIB]: runs the tool, shows its output, sets $pm_out.
pmemcheck() {
    pm_out=$("$pc" "$1" "${2:-0}" "$iters" 2>&1)
    printf '%s\n' "$pm_out" | indent
}
val() { printf '%s\n' "$pm_out" | sed -n "s/^$1: //p"; }

must "pmemcheck tool built by the harness" test -x "$pc"

section "/dev/pmem0 (memmap=, block device): mmap goes through the page cache"
pmemcheck /dev/pmem0
check_eq "pmem_is_pmem on a /dev/pmem0 mapping" 0 "$(val pmem_is_pmem)"
check_eq "MAP_SYNC on /dev/pmem0" "Operation not supported" "$(val map_sync)"

section "ext4 -o dax on /dev/pmem0"
mkdir -p /mnt/dax
check "mkfs.ext4 -b 4096 (DAX needs block size = page size)" mkfs.ext4 -q -F -b 4096 /dev/pmem0
if check "mount -o dax" mount -o dax /dev/pmem0 /mnt/dax; then
    pmemcheck /mnt/dax/cache 64
    check_eq "pmem_is_pmem on a file of ext4 -o dax" 1 "$(val pmem_is_pmem)"
    check_eq "MAP_SYNC there" yes "$(val map_sync)"
    umount /mnt/dax
fi

section "device DAX: ndctl create-namespace -m devdax on the memmap region"
dax=$(pmem_mode devdax)
check_eq "pmem_mode devdax (guest/lib.sh) gives" /dev/dax0.0 "$dax"
if check "/dev/dax0.0 is a char device" test -c /dev/dax0.0; then
    pmemcheck /dev/dax0.0
    check_eq "pmem_is_pmem on /dev/dax0.0" 1 "$(val pmem_is_pmem)"
fi
check_eq "back to fsdax with pmem_mode fsdax" /dev/pmem0 "$(pmem_mode fsdax)"

finish
