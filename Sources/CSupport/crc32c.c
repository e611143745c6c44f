// CRC-32C in the raw register convention (seed used as is, no final xor).
//
// The hardware path runs three independent crc32 instruction streams over
// three adjacent blocks and merges them with precomputed "shift by n bytes"
// tables, hiding the instruction's 3-cycle latency (about 3x a single stream).
//
// Which path runs is decided once, by timing both: the instruction is not
// fast everywhere. QEMU's software CPU (TCG), which the project's VM tests
// use, emulates each crc32 instruction one bit at a time, about 5x slower than
// the table path; on real x86 hardware the instruction path is about 10x
// faster. (The kernel picks its RAID-6 and xor routines the same way.)
#include "csupport.h"
#include "internal.h"

#include <pthread.h>
#include <string.h>

#define POLY 0x82f63b78u  // reflected Castagnoli polynomial

static uint32_t table8[8][256];      // slicing-by-8 for the portable path
static uint32_t shift_long[4][256];  // multiply by x^(8*LONG_BLOCK)
static uint32_t shift_short[4][256]; // multiply by x^(8*SHORT_BLOCK)
static int have_sse42;
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

enum { LONG_BLOCK = 8192, SHORT_BLOCK = 256 };

// Product of a and b modulo POLY, both in reflected form (bit 31 is x^0).
static uint32_t mult_mod_poly(uint32_t a, uint32_t b) {
    uint32_t product = 0;
    for (uint32_t m = 1u << 31; m != 0; m >>= 1) {
        if (a & m) product ^= b;
        b = (b & 1) ? (b >> 1) ^ POLY : b >> 1;
    }
    return product;
}

// x^(8*n) modulo POLY.
static uint32_t x_pow_8n(size_t n) {
    uint32_t result = 1u << 31;  // x^0
    uint32_t square = 1u << 23;  // x^8
    while (n) {
        if (n & 1) result = mult_mod_poly(square, result);
        square = mult_mod_poly(square, square);
        n >>= 1;
    }
    return result;
}

static void build_shift_table(uint32_t table[4][256], size_t bytes) {
    uint32_t factor = x_pow_8n(bytes);
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++)
            table[k][b] = mult_mod_poly(factor, b << (8 * k));
}

static inline uint32_t shift_crc(uint32_t table[4][256], uint32_t crc) {
    return table[0][crc & 0xff] ^ table[1][(crc >> 8) & 0xff] ^
           table[2][(crc >> 16) & 0xff] ^ table[3][crc >> 24];
}

static uint32_t crc32c_tables(uint32_t crc, const void *buf, size_t len);
#if defined(__x86_64__)
static int sse42_is_faster(void);
#endif

static void build_tables(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = n;
        for (int k = 0; k < 8; k++) crc = (crc & 1) ? (crc >> 1) ^ POLY : crc >> 1;
        table8[0][n] = crc;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = table8[0][n];
        for (int k = 1; k < 8; k++) {
            crc = table8[0][crc & 0xff] ^ (crc >> 8);
            table8[k][n] = crc;
        }
    }
    build_shift_table(shift_long, LONG_BLOCK);
    build_shift_table(shift_short, SHORT_BLOCK);
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2") && sse42_is_faster();
#endif
}

uint32_t pcs_crc32c_portable(uint32_t crc, const void *buf, size_t len) {
    pthread_once(&tables_once, build_tables);
    return crc32c_tables(crc, buf, len);
}

static uint32_t crc32c_tables(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = buf;
    while (len && ((uintptr_t)p & 7)) {
        crc = table8[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        word ^= crc;
        crc = table8[7][word & 0xff] ^ table8[6][(word >> 8) & 0xff] ^
              table8[5][(word >> 16) & 0xff] ^ table8[4][(word >> 24) & 0xff] ^
              table8[3][(word >> 32) & 0xff] ^ table8[2][(word >> 40) & 0xff] ^
              table8[1][(word >> 48) & 0xff] ^ table8[0][word >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) crc = table8[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
#pragma clang attribute push(__attribute__((target("sse4.2"))), apply_to = function)

static inline uint64_t load64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

// Three streams of `block` bytes each; returns the CRC of all 3*block bytes.
static inline uint32_t crc_three_way(uint32_t crc, const unsigned char *p, size_t block,
                                     uint32_t table[4][256]) {
    uint64_t c0 = crc, c1 = 0, c2 = 0;
    const unsigned char *end = p + block;
    while (p < end) {
        c0 = __builtin_ia32_crc32di(c0, load64(p));
        c1 = __builtin_ia32_crc32di(c1, load64(p + block));
        c2 = __builtin_ia32_crc32di(c2, load64(p + 2 * block));
        p += 8;
    }
    uint32_t merged = shift_crc(table, (uint32_t)c0) ^ (uint32_t)c1;
    return shift_crc(table, merged) ^ (uint32_t)c2;
}

static uint32_t crc32c_sse42(uint32_t crc, const unsigned char *p, size_t len) {
    while (len && ((uintptr_t)p & 7)) {
        crc = __builtin_ia32_crc32qi(crc, *p++);
        len--;
    }
    while (len >= 3 * LONG_BLOCK) {
        crc = crc_three_way(crc, p, LONG_BLOCK, shift_long);
        p += 3 * LONG_BLOCK;
        len -= 3 * LONG_BLOCK;
    }
    while (len >= 3 * SHORT_BLOCK) {
        crc = crc_three_way(crc, p, SHORT_BLOCK, shift_short);
        p += 3 * SHORT_BLOCK;
        len -= 3 * SHORT_BLOCK;
    }
    uint64_t c = crc;
    while (len >= 8) {
        c = __builtin_ia32_crc32di(c, load64(p));
        p += 8;
        len -= 8;
    }
    crc = (uint32_t)c;
    while (len--) crc = __builtin_ia32_crc32qi(crc, *p++);
    return crc;
}

#pragma clang attribute pop
#endif

#if defined(__x86_64__)
// Best of five 4 KiB runs of each path (the tables are built by now). The
// instruction path keeps its place unless the tables beat it by half.
static int sse42_is_faster(void) {
    static unsigned char sample[4096];
    for (size_t i = 0; i < sizeof sample; i++) sample[i] = (unsigned char)(i * 131u + 7u);
    uint64_t best_sse42 = UINT64_MAX, best_tables = UINT64_MAX;
    volatile uint32_t sink = 0;
    for (int round = 0; round < 5; round++) {
        uint64_t t0 = pcs_monotonic_ns();
        sink ^= crc32c_sse42(sink, sample, sizeof sample);
        uint64_t t1 = pcs_monotonic_ns();
        sink ^= crc32c_tables(sink, sample, sizeof sample);
        uint64_t t2 = pcs_monotonic_ns();
        if (t1 - t0 < best_sse42) best_sse42 = t1 - t0;
        if (t2 - t1 < best_tables) best_tables = t2 - t1;
    }
    return best_tables * 2 > best_sse42;
}
#endif

uint32_t pcs_crc32c(uint32_t crc, const void *buf, size_t len) {
    pthread_once(&tables_once, build_tables);
#if defined(__x86_64__)
    if (have_sse42) return crc32c_sse42(crc, buf, len);
#endif
    return crc32c_tables(crc, buf, len);
}

int pcs_crc32c_is_hardware(void) {
    pthread_once(&tables_once, build_tables);
    return have_sse42;
}
