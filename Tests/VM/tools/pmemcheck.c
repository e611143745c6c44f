/*
 * pmemcheck PATH [SIZE_MIB] [ITERATIONS]
 *
 * Tells whether libpmem sees PATH as real persistent memory (a DAX mapping
 * whose stores are made durable with CPU cache flushes, no msync), and times
 * 4 KiB writes made durable the pmem way and the msync way.
 *
 * PATH may be a device DAX (/dev/daxX.Y), a file on a `-o dax` filesystem
 * (created with SIZE_MIB when missing), a block device (/dev/pmem0) or any
 * file. Built by the VM harness (Tests/VM/vm-lib.sh) into .vm-cache/tools/.
 *
 * Output lines are "key: value", easy to grep from a test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libpmem.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* Size of a block device or regular file, 0 when unknown. */
static size_t size_of(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return 0;
    if (S_ISBLK(st.st_mode)) {
        int fd = open(path, O_RDONLY);
        uint64_t bytes = 0;
        if (fd >= 0) {
            if (ioctl(fd, BLKGETSIZE64, &bytes) != 0)
                bytes = 0;
            close(fd);
        }
        return bytes;
    }
    return st.st_size;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH [SIZE_MIB] [ITERATIONS]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    size_t want = argc > 2 ? strtoull(argv[2], NULL, 0) << 20 : 0;
    long iters = argc > 3 ? strtol(argv[3], NULL, 0) : 100000;
    struct stat st;
    int exists = stat(path, &st) == 0;

    printf("path: %s\n", path);
    printf("kind: %s\n", !exists ? "new file" : S_ISCHR(st.st_mode) ? "char device" : S_ISBLK(st.st_mode) ? "block device" : "file");

    /* 1. libpmem's own view. */
    size_t mapped = 0;
    int is_pmem = 0;
    void *addr;
    if (exists && (S_ISCHR(st.st_mode)))
        addr = pmem_map_file(path, 0, 0, 0, &mapped, &is_pmem);
    else if (exists && S_ISBLK(st.st_mode)) {
        /* libpmem sizes files with stat(), which says 0 for block devices:
         * map it ourselves (libpmem then cannot know it is DAX). */
        int fd = open(path, O_RDWR);
        mapped = want ? want : size_of(path);
        addr = fd < 0 ? MAP_FAILED : mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (addr == MAP_FAILED)
            addr = NULL;
        if (fd >= 0)
            close(fd);
        is_pmem = addr ? pmem_is_pmem(addr, mapped) : 0;
    } else
        addr = pmem_map_file(path, want ? want : 64 << 20, PMEM_FILE_CREATE, 0644, &mapped, &is_pmem);
    if (!addr) {
        printf("map: failed: %s %s\n", strerror(errno), pmem_errormsg());
        return 1;
    }
    printf("mapped_mib: %zu\n", mapped >> 20);
    printf("pmem_map_is_pmem: %d\n", is_pmem);
    printf("pmem_is_pmem: %d\n", pmem_is_pmem(addr, mapped));
    printf("pmem_has_auto_flush: %d\n", pmem_has_auto_flush());

    /* 2. A plain MAP_SHARED_VALIDATE | MAP_SYNC mapping: the kernel grants it
     *    only where stores reach the media without the page cache (DAX). */
    {
        size_t probe = mapped < (1 << 21) ? mapped : (1 << 21);
        int fd = open(path, O_RDWR);
        void *p = fd < 0 ? MAP_FAILED : mmap(NULL, probe, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
        printf("map_sync: %s\n", p != MAP_FAILED ? "yes" : strerror(errno));
        if (p != MAP_FAILED)
            munmap(p, probe);
        if (fd >= 0)
            close(fd);
    }

    /* 3. Timings over a 64 MiB window (or the mapping, if smaller). */
    size_t window = mapped < (64 << 20) ? mapped : (64 << 20);
    size_t slots = window / 4096;
    char *dst = addr;
    static char src[4096] __attribute__((aligned(4096)));
    memset(src, 0xA5, sizeof src);
    for (size_t i = 0; i < window; i += 4096) /* fault the window in */
        dst[i] = 0;

    double t0 = now_ns();
    for (long i = 0; i < iters; i++)
        pmem_memcpy_persist(dst + (i % slots) * 4096, src, 4096);
    double t1 = now_ns();
    printf("pmem_memcpy_persist_4k_ns: %.0f\n", (t1 - t0) / iters);

    t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        memcpy(dst + (i % slots) * 4096, src, 4096);
        pmem_flush(dst + (i % slots) * 4096, 4096);
        pmem_drain();
    }
    t1 = now_ns();
    printf("memcpy_flush_drain_4k_ns: %.0f\n", (t1 - t0) / iters);

    long msync_iters = iters / 20 > 0 ? iters / 20 : 1;
    int msync_err = 0;
    t0 = now_ns();
    for (long i = 0; i < msync_iters; i++) {
        memcpy(dst + (i % slots) * 4096, src, 4096);
        if (pmem_msync(dst + (i % slots) * 4096, 4096) != 0)
            msync_err = errno;
    }
    t1 = now_ns();
    printf("memcpy_msync_4k_ns: %.0f%s%s\n", (t1 - t0) / msync_iters, msync_err ? " msync error: " : "", msync_err ? strerror(msync_err) : "");

    if (exists && S_ISBLK(st.st_mode))
        munmap(addr, mapped);
    else
        pmem_unmap(addr, mapped);
    return 0;
}
