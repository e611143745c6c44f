// liburing, importable from Swift.
// A libc header must come before <liburing.h>: liburing defines feature-test
// macros that otherwise clash with libpmem's view of <sys/select.h>.
#include <sys/types.h>
#include <sys/uio.h>
#include <linux/types.h>
#include <liburing.h>

// IOSQE_* are bit-shift macros Swift cannot import.
static const unsigned char PCU_IOSQE_FIXED_FILE = 1U << IOSQE_FIXED_FILE_BIT;
static const unsigned char PCU_IOSQE_IO_LINK = 1U << IOSQE_IO_LINK_BIT;
static const unsigned char PCU_IOSQE_IO_DRAIN = 1U << IOSQE_IO_DRAIN_BIT;

// The command area of a (128-byte) SQE is a zero-length array at offset 48;
// Swift cannot take the address of such a member.
static inline void *pcu_sqe_cmd(struct io_uring_sqe *sqe) {
    return (void *)sqe->cmd;
}

// Debian's liburing 2.3 lacks io_uring_prep_uring_cmd: fill the SQE by hand.
static inline void pcu_prep_uring_cmd(struct io_uring_sqe *sqe, int fd, __u32 cmd_op) {
    io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fd, NULL, 0, 0);
    sqe->cmd_op = cmd_op;
}
