// libpmem, importable from Swift.
#include <sys/types.h>
#include <libpmem.h>
