// The ublk userspace ABI as of Linux 6.12, written out for pcache-ublk.
//
// Debian's default kernel headers (6.1) lack the ioctl-encoded command numbers
// and several feature bits, so the layouts and numbers we rely on are spelled
// out here. Struct layouts are ABI: sizes are pinned by static asserts below.
#ifndef PCACHE_UBLK_UAPI_H
#define PCACHE_UBLK_UAPI_H

#include <stdint.h>

// ---- control commands (on /dev/ublk-control, SQE128 ring) -----------------
// Encoded as _IOR/_IOWR('u', nr, struct ublksrv_ctrl_cmd) on x86_64.
static const uint32_t UBLK_U_CMD_GET_QUEUE_AFFINITY = 0x80207501;
static const uint32_t UBLK_U_CMD_GET_DEV_INFO = 0x80207502;
static const uint32_t UBLK_U_CMD_ADD_DEV = 0xc0207504;
static const uint32_t UBLK_U_CMD_DEL_DEV = 0xc0207505;
static const uint32_t UBLK_U_CMD_START_DEV = 0xc0207506;
static const uint32_t UBLK_U_CMD_STOP_DEV = 0xc0207507;
static const uint32_t UBLK_U_CMD_SET_PARAMS = 0xc0207508;
static const uint32_t UBLK_U_CMD_GET_PARAMS = 0x80207509;
static const uint32_t UBLK_U_CMD_START_USER_RECOVERY = 0xc0207510;
static const uint32_t UBLK_U_CMD_END_USER_RECOVERY = 0xc0207511;
static const uint32_t UBLK_U_CMD_GET_DEV_INFO2 = 0x80207512;
static const uint32_t UBLK_U_CMD_GET_FEATURES = 0x80207513;
// Since 6.9: DEL_DEV without waiting for the device's last reference.
static const uint32_t UBLK_U_CMD_DEL_DEV_ASYNC = 0x80207514;

// ---- I/O commands (on /dev/ublkcN, one ring per queue) --------------------
// Encoded as _IOWR('u', nr, struct ublksrv_io_cmd).
static const uint32_t UBLK_U_IO_FETCH_REQ = 0xc0107520;
static const uint32_t UBLK_U_IO_COMMIT_AND_FETCH_REQ = 0xc0107521;
static const uint32_t UBLK_U_IO_NEED_GET_DATA = 0xc0107522;

static const int32_t UBLK_IO_RES_OK = 0;
static const int32_t UBLK_IO_RES_NEED_GET_DATA = 1;
// A queue is being torn down: -ENODEV.
static const int32_t UBLK_IO_RES_ABORT = -19;

static const uint32_t UBLK_MAX_QUEUE_DEPTH = 4096;
static const uint32_t UBLK_MAX_NR_QUEUES = 4096;
// Per-queue descriptor arrays are mmapped at q_id times this stride.
static const uint64_t UBLK_QUEUE_DESC_STRIDE = 4096 * 24;

// ---- feature flags (ublksrv_ctrl_dev_info.flags) ---------------------------
static const uint64_t UBLK_F_SUPPORT_ZERO_COPY = 1ULL << 0;
static const uint64_t UBLK_F_URING_CMD_COMP_IN_TASK = 1ULL << 1;
static const uint64_t UBLK_F_NEED_GET_DATA = 1ULL << 2;
static const uint64_t UBLK_F_USER_RECOVERY = 1ULL << 3;
static const uint64_t UBLK_F_USER_RECOVERY_REISSUE = 1ULL << 4;
static const uint64_t UBLK_F_UNPRIVILEGED_DEV = 1ULL << 5;
static const uint64_t UBLK_F_CMD_IOCTL_ENCODE = 1ULL << 6;
static const uint64_t UBLK_F_USER_COPY = 1ULL << 7;
static const uint64_t UBLK_F_ZONED = 1ULL << 8;

// ---- device states ---------------------------------------------------------
static const uint16_t UBLK_S_DEV_DEAD = 0;
static const uint16_t UBLK_S_DEV_LIVE = 1;
static const uint16_t UBLK_S_DEV_QUIESCED = 2;

// ---- request ops and flags (ublksrv_io_desc.op_flags) ----------------------
static const uint8_t UBLK_IO_OP_READ = 0;
static const uint8_t UBLK_IO_OP_WRITE = 1;
static const uint8_t UBLK_IO_OP_FLUSH = 2;
static const uint8_t UBLK_IO_OP_DISCARD = 3;
static const uint8_t UBLK_IO_OP_WRITE_SAME = 4;
static const uint8_t UBLK_IO_OP_WRITE_ZEROES = 5;

static const uint32_t UBLK_IO_F_FAILFAST_DEV = 1U << 8;
static const uint32_t UBLK_IO_F_FAILFAST_TRANSPORT = 1U << 9;
static const uint32_t UBLK_IO_F_FAILFAST_DRIVER = 1U << 10;
static const uint32_t UBLK_IO_F_META = 1U << 11;
static const uint32_t UBLK_IO_F_FUA = 1U << 13;
static const uint32_t UBLK_IO_F_NOUNMAP = 1U << 15;
static const uint32_t UBLK_IO_F_SWAP = 1U << 16;

// ---- parameters --------------------------------------------------------------
static const uint32_t UBLK_ATTR_READ_ONLY = 1U << 0;
static const uint32_t UBLK_ATTR_ROTATIONAL = 1U << 1;
static const uint32_t UBLK_ATTR_VOLATILE_CACHE = 1U << 2;
static const uint32_t UBLK_ATTR_FUA = 1U << 3;

static const uint32_t UBLK_PARAM_TYPE_BASIC = 1U << 0;
static const uint32_t UBLK_PARAM_TYPE_DISCARD = 1U << 1;
static const uint32_t UBLK_PARAM_TYPE_DEVT = 1U << 2;
static const uint32_t UBLK_PARAM_TYPE_ZONED = 1U << 3;

// ---- structures ---------------------------------------------------------------

// Payload of every control command (first 32 bytes of the SQE command area).
struct ublksrv_ctrl_cmd {
    uint32_t dev_id;        // 0xFFFFFFFF on ADD_DEV: "any free id"
    uint16_t queue_id;      // 0xFFFF unless the command is per-queue
    uint16_t len;           // length of the buffer at addr
    uint64_t addr;          // user buffer for the command's in/out data
    uint64_t data[1];       // inline argument (server pid for START_DEV)
    uint16_t dev_path_len;  // unprivileged mode only
    uint16_t pad;
    uint32_t reserved;
};

struct ublksrv_ctrl_dev_info {
    uint16_t nr_hw_queues;
    uint16_t queue_depth;
    uint16_t state;
    uint16_t pad0;
    uint32_t max_io_buf_bytes;
    uint32_t dev_id;
    int32_t ublksrv_pid;
    uint32_t pad1;
    uint64_t flags;
    uint64_t ublksrv_flags;  // opaque to the kernel, kept for the server
    uint32_t owner_uid;
    uint32_t owner_gid;
    uint64_t reserved1;
    uint64_t reserved2;
};

// One request as the kernel describes it, in the mmapped per-queue array.
struct ublksrv_io_desc {
    uint32_t op_flags;       // op in the low 8 bits, UBLK_IO_F_* above
    uint32_t nr_sectors;
    uint64_t start_sector;
    uint64_t addr;           // the buffer the server gave with FETCH_REQ
};

// Payload of FETCH_REQ / COMMIT_AND_FETCH_REQ (16 bytes of the command area).
struct ublksrv_io_cmd {
    uint16_t q_id;
    uint16_t tag;
    int32_t result;          // bytes done, or -errno, on COMMIT
    uint64_t addr;           // the tag's data buffer
};

struct ublk_param_basic {
    uint32_t attrs;
    uint8_t logical_bs_shift;
    uint8_t physical_bs_shift;
    uint8_t io_opt_shift;
    uint8_t io_min_shift;
    uint32_t max_sectors;
    uint32_t chunk_sectors;
    uint64_t dev_sectors;
    uint64_t virt_boundary_mask;
};

struct ublk_param_discard {
    uint32_t discard_alignment;
    uint32_t discard_granularity;
    uint32_t max_discard_sectors;
    uint32_t max_write_zeroes_sectors;
    uint16_t max_discard_segments;
    uint16_t reserved0;
};

struct ublk_param_devt {
    uint32_t char_major;
    uint32_t char_minor;
    uint32_t disk_major;
    uint32_t disk_minor;
};

struct ublk_param_zoned {
    uint32_t max_open_zones;
    uint32_t max_active_zones;
    uint32_t max_zone_append_sectors;
    uint8_t reserved[20];
};

struct ublk_params {
    uint32_t len;            // sizeof(struct ublk_params) the server knows
    uint32_t types;          // UBLK_PARAM_TYPE_* present
    struct ublk_param_basic basic;
    struct ublk_param_discard discard;
    struct ublk_param_devt devt;
    struct ublk_param_zoned zoned;
};

_Static_assert(sizeof(struct ublksrv_ctrl_cmd) == 32, "ublksrv_ctrl_cmd is 32 bytes");
_Static_assert(sizeof(struct ublksrv_ctrl_dev_info) == 64, "ublksrv_ctrl_dev_info is 64 bytes");
_Static_assert(sizeof(struct ublksrv_io_desc) == 24, "ublksrv_io_desc is 24 bytes");
_Static_assert(sizeof(struct ublksrv_io_cmd) == 16, "ublksrv_io_cmd is 16 bytes");
_Static_assert(sizeof(struct ublk_params) == 112, "ublk_params is 112 bytes in 6.12");

#endif
