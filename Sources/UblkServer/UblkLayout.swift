import CUblk
import Glibc
import PCacheCore

/// Pure arithmetic of the ublk shared memory and of a queue ring's user_data
/// space; kept apart so it can be unit-tested without the kernel.
public enum UblkLayout {
    public static let descriptorSize = MemoryLayout<ublksrv_io_desc>.size  // 24
    public static let maxQueueDepth = Int(UBLK_MAX_QUEUE_DEPTH)

    public static var pageSize: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

    @inline(__always)
    public static func roundUp(_ value: Int, to multiple: Int) -> Int {
        (value + multiple - 1) / multiple * multiple
    }

    /// The stride between queues' descriptor arrays in /dev/ublkcN: the size
    /// for the maximum depth, page-rounded (98304 with 4 KiB pages).
    public static func descriptorStride(pageSize: Int = pageSize) -> Int {
        roundUp(maxQueueDepth * descriptorSize, to: pageSize)
    }

    /// mmap offset of queue `queueID`'s descriptor array.
    public static func descriptorOffset(queueID: Int, pageSize: Int = pageSize) -> Int {
        queueID * descriptorStride(pageSize: pageSize)
    }

    /// mmap length of a queue's descriptor array for `depth` tags.
    public static func descriptorLength(depth: Int, pageSize: Int = pageSize) -> Int {
        roundUp(depth * descriptorSize, to: pageSize)
    }

    /// SQ entries for a queue ring: two per tag (a COMMIT_AND_FETCH may sit
    /// next to the handler's I/O for the same tag) plus room for backing I/O
    /// and the waker, as a power of two.
    /// Completion-ring entries for a queue: one per tag's command, plus what
    /// the handler may have in flight per request, plus `extra`; at most the
    /// kernel's 65536.
    public static func completionEntries(depth: Int, ioPerRequest: Int, extra: Int = 64) -> UInt32 {
        var n = 1
        while n < depth * (1 + ioPerRequest) + extra { n <<= 1 }
        return UInt32(min(n, 65536))
    }

    public static func ringEntries(depth: Int, extra: Int = 64) -> UInt32 {
        var n = 1
        while n < depth * 2 + extra { n <<= 1 }
        return UInt32(min(n, 32768))
    }

    // user_data on a queue ring:
    //   bit 63 set:        a ublk command for tag (low 16 bits)
    //   bit 62 set:        the queue's own bookkeeping (the waker's eventfd read)
    //   otherwise (< 2^62): the handler's own I/O, handed back to it
    public static let commandBit: UInt64 = 1 << 63
    public static let internalBit: UInt64 = 1 << 62

    public enum UserData: Equatable {
        case command(tag: UInt16)
        case waker
        case handler(UInt64)
    }

    @inline(__always)
    public static func commandUserData(tag: UInt16) -> UInt64 { commandBit | UInt64(tag) }
    public static let wakerUserData: UInt64 = internalBit | 1

    @inline(__always)
    public static func decode(_ userData: UInt64) -> UserData {
        if userData & commandBit != 0 { return .command(tag: UInt16(truncatingIfNeeded: userData)) }
        if userData & internalBit != 0 { return .waker }
        return .handler(userData)
    }
}
