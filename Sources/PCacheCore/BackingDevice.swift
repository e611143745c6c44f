import CSupport
import Glibc

/// The slow device behind the cache (dm-pcache's `backing_dev`): a block
/// device, or a regular file for tests.
///
/// It is opened with O_DIRECT where the device allows it, so cache misses and
/// writeback bypass the page cache; a second, buffered descriptor serves the
/// writes whose source is not suitable for direct I/O. Durability comes from
/// an fdatasync (a device cache flush) before the dirty tail moves.
public final class BackingDevice: @unchecked Sendable {
    public let path: String
    public let size: UInt64
    public let isBlockDevice: Bool
    /// Device number for status lines (0 for regular files).
    public let deviceNumber: UInt64
    /// The descriptor for reads and writes (O_DIRECT when `isDirect`).
    public let fd: Int32
    public let isDirect: Bool
    /// A buffered descriptor on the same device.
    public let bufferedFD: Int32
    /// The device's logical block size (BLKSSZGET), or for a regular file
    /// the alignment its filesystem asks of direct I/O: direct I/O must be
    /// aligned to it. 4096 on a 4Kn disk, and for a file on one.
    public let logicalBlockSize: Int

    public init(path: String) throws {
        self.path = path
        var status = stat()
        guard stat(path, &status) == 0 else {
            throw CacheError.backingDevice(path: path, reason: "cannot open: \(SystemError.last("stat").description)")
        }
        let kind = status.st_mode & S_IFMT
        guard kind == S_IFBLK || kind == S_IFREG else {
            throw CacheError.backingDevice(path: path, reason: "not a block device or regular file")
        }
        isBlockDevice = kind == S_IFBLK
        deviceNumber = isBlockDevice ? UInt64(status.st_rdev) : 0

        let buffered = open(path, O_RDWR | O_CLOEXEC)
        guard buffered >= 0 else {
            throw CacheError.backingDevice(path: path, reason: "cannot open read-write: \(SystemError.last("open").description)")
        }
        bufferedFD = buffered

        var takesDirectIO = true
        if isBlockDevice {
            var bytes: UInt64 = 0
            let rc = pcs_block_device_size(bufferedFD, &bytes)
            guard rc == 0 else {
                close(buffered)
                throw CacheError.backingDevice(path: path, reason: "cannot read its size: \(SystemError(errno: -rc, "BLKGETSIZE64"))")
            }
            size = bytes
            var logical: UInt32 = 0
            let sizeRC = pcs_block_logical_size(bufferedFD, &logical)
            guard sizeRC == 0, logical >= 512, logical.nonzeroBitCount == 1 else {
                close(buffered)
                throw CacheError.backingDevice(path: path, reason: "cannot read its logical block size: "
                    + (sizeRC == 0 ? "\(logical) bytes" : "\(SystemError(errno: -sizeRC, "BLKSSZGET"))"))
            }
            logicalBlockSize = Int(logical)
        } else {
            size = UInt64(status.st_size)
            // statx says what the filesystem needs (Linux 6.1+): 4096 for a
            // file on a 4Kn disk, where 512-byte direct I/O fails with EINVAL.
            // Where it does not say (an older kernel, tmpfs), 512, right for
            // files on disks with 512-byte sectors.
            var offsetAlignment: UInt32 = 0, memoryAlignment: UInt32 = 0
            if pcs_file_direct_io_alignment(buffered, &offsetAlignment, &memoryAlignment) == 0 {
                let alignment = max(offsetAlignment, memoryAlignment, 512)
                takesDirectIO = offsetAlignment != 0 && alignment.nonzeroBitCount == 1
                logicalBlockSize = takesDirectIO ? Int(alignment) : 512
            } else {
                logicalBlockSize = 512
            }
        }

        let direct = takesDirectIO ? pcs_open_direct(path, O_RDWR | O_CLOEXEC) : -1
        if direct >= 0 {
            fd = direct
            isDirect = true
        } else {
            fd = buffered
            isDirect = false
        }
    }

    deinit {
        if isDirect { close(fd) }
        close(bufferedFD)
    }

    /// Whether a direct I/O of `count` bytes at `offset` from `buffer` meets
    /// O_DIRECT's alignment rules: address, offset and length aligned to the
    /// logical block size. Anything else goes through the page cache, which
    /// can write part of a block.
    @inline(__always)
    public func canUseDirect(buffer: UnsafeRawPointer, count: Int, offset: UInt64) -> Bool {
        isDirect && (Int(bitPattern: buffer) | count | Int(truncatingIfNeeded: offset)) & (logicalBlockSize - 1) == 0
    }

    /// The descriptor to use for this transfer.
    @inline(__always)
    public func descriptor(buffer: UnsafeRawPointer, count: Int, offset: UInt64) -> Int32 {
        canUseDirect(buffer: buffer, count: count, offset: offset) ? fd : bufferedFD
    }
}
