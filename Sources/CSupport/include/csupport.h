// Small C helpers for pcache-ublk: what Swift cannot express or import cleanly.
#ifndef PCACHE_CSUPPORT_H
#define PCACHE_CSUPPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// ---- CRC-32C (Castagnoli), raw register convention -------------------------
// No inversion of the seed and no final xor: the convention of the kernel's
// crc32c(seed, buf, len), which dm-pcache stores on media.
uint32_t pcs_crc32c(uint32_t crc, const void *buf, size_t len);
// The portable table-driven version, for tests and machines without SSE4.2.
uint32_t pcs_crc32c_portable(uint32_t crc, const void *buf, size_t len);
// 1 when the hardware path is in use.
int pcs_crc32c_is_hardware(void);

// ---- GNU-only libc calls ---------------------------------------------------
// open(2) with O_DIRECT added to flags.
int pcs_open_direct(const char *path, int flags);
// O_DIRECT, for callers that build their own flag set.
int pcs_o_direct(void);
// Size in bytes of the block device open at fd (BLKGETSIZE64); -errno on failure.
int pcs_block_device_size(int fd, uint64_t *size);
// The file behind the loop device open at fd (LOOP_GET_STATUS64): its st_dev,
// its inode and, when it is a device node, the device's number. -ENXIO when
// the loop device is unbound, -errno on other failures.
int pcs_loop_backing(int fd, uint64_t *device, uint64_t *inode, uint64_t *rdevice);
// Logical block size of the block device at fd (BLKSSZGET); -errno on failure.
int pcs_block_logical_size(int fd, uint32_t *size);
// What direct I/O to a regular file must be aligned to (statx STATX_DIOALIGN,
// Linux 6.1+): file offset and memory alignment in bytes, 0 when the file
// takes no direct I/O. -EOPNOTSUPP when the kernel or filesystem does not say.
int pcs_file_direct_io_alignment(int fd, uint32_t *offset_align, uint32_t *memory_align);
// Names the calling thread (at most 15 characters are kept).
void pcs_set_thread_name(const char *name);
// Runs the calling thread on one CPU only: the `n`-th (modulo their count)
// of the CPUs it may run on now, so a taskset or cpuset is respected.
// The CPU's number, or -errno.
int pcs_pin_thread_to_allowed_cpu(int n);
// Moves the calling thread to SCHED_IDLE: it runs only on a CPU nothing else
// wants. 0, or -errno.
int pcs_set_thread_idle_priority(void);
// PR_SET_IO_FLUSHER for the calling thread: its allocations must not recurse
// into writeback of the device it serves. 0 or -errno.
int pcs_set_io_flusher(void);
// fallocate(PUNCH_HOLE | KEEP_SIZE): discards a range. 0 or -errno.
int pcs_punch_hole(int fd, uint64_t offset, uint64_t length);
// The fallocate mode for that, for io_uring's IORING_OP_FALLOCATE.
int pcs_punch_hole_mode(void);
// unshare(CLONE_NEWNS): a mount namespace of the caller's own (the benchmark's
// private tmpfs, gone with the process). 0 or -errno.
int pcs_unshare_mount_namespace(void);
// Anonymous memory of `bytes` (a multiple of `alignment`, a power of two),
// aligned to `alignment`, asked for in transparent huge pages
// (MADV_HUGEPAGE) and faulted in before it returns (MADV_POPULATE_WRITE, or
// a store per page on kernels without it), so its first use takes no page
// fault. NULL with errno set when it cannot be mapped. Free with munmap.
void *pcs_map_prefaulted(size_t bytes, size_t alignment);
// Major and minor numbers of a dev_t.
unsigned pcs_major(uint64_t dev);
unsigned pcs_minor(uint64_t dev);

// Writes one byte of every `page` bytes of [p, p + bytes) with the value it
// holds: the pages count as written (to the kernel and to a hypervisor)
// while their contents stay as they were. Volatile, so the compiler cannot
// drop a store of what was just loaded. Returns how many pages took longer
// than `slow_ns` nanoseconds, and their total nanoseconds in *slow_total.
size_t pcs_rewrite_pages(void *p, size_t bytes, size_t page, uint64_t slow_ns, uint64_t *slow_total);

// ---- atomics on plain memory ------------------------------------------------
// Swift's Atomic cannot live in manually allocated arrays; these let per-segment
// counters sit in one flat allocation.
static inline uint32_t pcs_atomic_load_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pcs_atomic_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t pcs_atomic_add_u32(uint32_t *p, uint32_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
static inline uint32_t pcs_atomic_sub_u32(uint32_t *p, uint32_t v) { return __atomic_sub_fetch(p, v, __ATOMIC_ACQ_REL); }
static inline uint64_t pcs_atomic_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pcs_atomic_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint64_t pcs_atomic_add_u64(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
// Adds for a counter with a single writer: a relaxed load and store, no
// locked read-modify-write; readers on other threads see whole values.
static inline void pcs_single_writer_add_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}
// Starts loading the cache lines of [p, p + bytes) for reading, without
// waiting: several misses then overlap instead of following one another.
static inline void pcs_prefetch_range(const void *p, size_t bytes) {
    for (size_t at = 0; at < bytes; at += 64) __builtin_prefetch((const char *)p + at, 0, 3);
}
// Asks for one cache line in the state a store needs (PREFETCHW): a line
// another core wrote last comes over once, owned, instead of being shared
// first and taken over by a second request at the store. Written out because
// the compiler emits it for __builtin_prefetch only with -mprfchw; CPUs
// without it execute the encoding as a no-op.
static inline void pcs_prefetch_for_write(const void *p) {
#if defined(__x86_64__)
    __asm__ volatile("prefetchw %0" : : "m"(*(const char *)p));
#else
    __builtin_prefetch(p, 1, 3);
#endif
}
// `if_at_or_below` when a <= b, else `otherwise`, by a conditional move:
// for binary searches whose direction is random, where a branch would be
// mispredicted every other step. Written out because the compiler turns a
// select it thinks predictable back into a branch.
static inline intptr_t pcs_select_at_or_below(uint64_t a, uint64_t b, intptr_t if_at_or_below, intptr_t otherwise) {
#if defined(__x86_64__)
    __asm__("cmpq %2, %1\n\tcmovbeq %3, %0" : "+r"(otherwise) : "r"(a), "r"(b), "r"(if_at_or_below) : "cc");
    return otherwise;
#else
    return a <= b ? if_at_or_below : otherwise;
#endif
}
// Orders the loads before it against the loads after it (seqlock readers).
static inline void pcs_load_fence(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
// Loads for prefetch hints that race with a lock holder's plain stores: one
// whole aligned word, in program order with the loads after it, and nothing
// more is promised. What they return only chooses lines to prefetch.
static inline uint64_t pcs_racy_load_word(const void *p) {
    return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE);
}
// Keeps the compiler from moving memory accesses across it (no instruction):
// what a racing hint reader needs of a lock holder on x86-64, whose stores
// become visible in program order.
static inline void pcs_compiler_fence(void) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// ---- a one-word lock --------------------------------------------------------
// A mutex in a 32-bit word (0 free, 1 held, 2 held with sleepers), so it can
// share a cache line with the data it guards: taking it costs one atomic on a
// line the holder touches anyway. A contended lock spins briefly, then sleeps
// on a futex.
//
// Unlocking is a plain store unless the word says someone sleeps. An atomic
// exchange there would be a locked instruction, and a locked instruction
// waits until every earlier store has reached memory: on the write path,
// which unlocks right after copying the data with non-temporal stores, that
// wait was half of a write's time (perf, 2026-12-07). The price is a race: a
// waiter that marks the word between the unlocker's load and its store is
// not woken, so sleepers wake on a short timeout and look again.
void pcs_word_lock_contended(uint32_t *word);
void pcs_word_unlock_wake(uint32_t *word);
static inline void pcs_word_lock(uint32_t *word) {
    uint32_t expected = 0;
    if (!__atomic_compare_exchange_n(word, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        pcs_word_lock_contended(word);
}
static inline void pcs_word_unlock(uint32_t *word) {
    int sleepers = __atomic_load_n(word, __ATOMIC_RELAXED) == 2;
    __atomic_store_n(word, 0, __ATOMIC_RELEASE);
    if (sleepers) pcs_word_unlock_wake(word);
}

#endif
