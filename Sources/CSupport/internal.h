// Helpers shared by the C files of CSupport, kept out of Swift's view.
#ifndef PCACHE_CSUPPORT_INTERNAL_H
#define PCACHE_CSUPPORT_INTERNAL_H

#include <stdint.h>

// CLOCK_MONOTONIC in nanoseconds.
uint64_t pcs_monotonic_ns(void);

#endif
