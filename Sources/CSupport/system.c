// GNU-only libc calls, kept out of Swift's view of the headers.
#define _GNU_SOURCE
#include "csupport.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/stat.h>
#include <linux/futex.h>
#include <linux/loop.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

int pcs_open_direct(const char *path, int flags) { return open(path, flags | O_DIRECT); }

int pcs_o_direct(void) { return O_DIRECT; }

int pcs_block_device_size(int fd, uint64_t *size) {
    return ioctl(fd, BLKGETSIZE64, size) == 0 ? 0 : -errno;
}

int pcs_loop_backing(int fd, uint64_t *device, uint64_t *inode, uint64_t *rdevice) {
    struct loop_info64 info;
    memset(&info, 0, sizeof info);
    if (ioctl(fd, LOOP_GET_STATUS64, &info) != 0) return -errno;
    *device = info.lo_device;
    *inode = info.lo_inode;
    *rdevice = info.lo_rdevice;
    return 0;
}

int pcs_block_logical_size(int fd, uint32_t *size) {
    int value = 0;
    if (ioctl(fd, BLKSSZGET, &value) != 0) return -errno;
    *size = (uint32_t)value;
    return 0;
}

int pcs_file_direct_io_alignment(int fd, uint32_t *offset_align, uint32_t *memory_align) {
    struct statx info;
    memset(&info, 0, sizeof info);
    if (syscall(SYS_statx, fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &info) != 0) return -errno;
    if (!(info.stx_mask & STATX_DIOALIGN)) return -EOPNOTSUPP;
    *offset_align = info.stx_dio_offset_align;
    *memory_align = info.stx_dio_mem_align;
    return 0;
}

void pcs_set_thread_name(const char *name) {
    char truncated[16];
    size_t i = 0;
    for (; i < 15 && name[i]; i++) truncated[i] = name[i];
    truncated[i] = 0;
    pthread_setname_np(pthread_self(), truncated);
}

int pcs_set_thread_idle_priority(void) {
    struct sched_param param = {0};
    return sched_setscheduler(0, SCHED_IDLE, &param) == 0 ? 0 : -errno;
}

int pcs_pin_thread_to_allowed_cpu(int n) {
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return -errno;
    int count = CPU_COUNT(&allowed);
    if (count == 0) return -EINVAL;
    int wanted = n % count;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed) || wanted-- > 0) continue;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        return sched_setaffinity(0, sizeof one, &one) == 0 ? cpu : -errno;
    }
    return -EINVAL;
}

int pcs_set_io_flusher(void) { return prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0 ? 0 : -errno; }

int pcs_punch_hole(int fd, uint64_t offset, uint64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) == 0 ? 0 : -errno;
}

int pcs_punch_hole_mode(void) { return FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE; }

int pcs_unshare_mount_namespace(void) { return unshare(CLONE_NEWNS) == 0 ? 0 : -errno; }

void *pcs_map_prefaulted(size_t bytes, size_t alignment) {
    // Map one alignment more than asked and cut off what lies outside the
    // aligned range: mmap itself only promises page alignment.
    char *raw = mmap(NULL, bytes + alignment, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    char *aligned = (char *)(((uintptr_t)raw + alignment - 1) & ~(uintptr_t)(alignment - 1));
    if (aligned > raw) munmap(raw, (size_t)(aligned - raw));
    size_t after = (size_t)(raw + bytes + alignment - (aligned + bytes));
    if (after > 0) munmap(aligned + bytes, after);
    (void)madvise(aligned, bytes, MADV_HUGEPAGE);  // advice: without THP the pages are small
    if (madvise(aligned, bytes, MADV_POPULATE_WRITE) != 0) {
        if (errno != EINVAL) {  // out of memory, say: report it rather than fault later
            int saved = errno;
            munmap(aligned, bytes);
            errno = saved;
            return NULL;
        }
        long page = sysconf(_SC_PAGESIZE);  // a kernel before 5.14
        for (size_t at = 0; at < bytes; at += (size_t)page) ((volatile char *)aligned)[at] = 0;
    }
    return aligned;
}

unsigned pcs_major(uint64_t dev) { return major(dev); }
unsigned pcs_minor(uint64_t dev) { return minor(dev); }

// A spin-wait hint to the CPU (it lets a sibling hyperthread run).
static inline void pcs_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield" ::: "memory");
#endif
}

// The slow path of pcs_word_lock (Drepper's "Futexes Are Tricky", mutex 3).
// A short spin first: critical sections under these locks are a few hundred
// nanoseconds, far less than a futex sleep and wake-up.
void pcs_word_lock_contended(uint32_t *word) {
    for (int i = 0; i < 200; i++) {
        pcs_cpu_relax();
        uint32_t expected = 0;
        if (__atomic_load_n(word, __ATOMIC_RELAXED) == 0
            && __atomic_compare_exchange_n(word, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return;
    }
    // Mark the lock contended; whoever unlocks it then wakes a sleeper. The
    // timeout bounds the wait when an unlock missed the mark (see
    // pcs_word_unlock): a rare lost wake-up costs at most this long.
    const struct timespec timeout = { .tv_sec = 0, .tv_nsec = 100 * 1000 };
    while (__atomic_exchange_n(word, 2, __ATOMIC_ACQUIRE) != 0)
        syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, 2, &timeout, NULL, 0);
}

void pcs_word_unlock_wake(uint32_t *word) {
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

uint64_t pcs_monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

size_t pcs_rewrite_pages(void *p, size_t bytes, size_t page, uint64_t slow_ns, uint64_t *slow_total) {
    size_t slow = 0;
    uint64_t total = 0, before = pcs_monotonic_ns();
    for (size_t at = 0; at < bytes; at += page) {
        volatile char *byte = (volatile char *)p + at;
        *byte = *byte;
        uint64_t after = pcs_monotonic_ns();
        if (after - before > slow_ns) {
            slow++;
            total += after - before;
        }
        before = after;
    }
    *slow_total = total;
    return slow;
}
