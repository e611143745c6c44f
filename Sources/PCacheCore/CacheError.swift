/// Errors of the running cache (opening devices, requests, replay), phrased
/// for an operator. Format and metadata errors are `PCacheError`.
public enum CacheError: Error, CustomStringConvertible, Sendable, Equatable {
    case backingDevice(path: String, reason: String)
    /// The device cannot be had exclusively.
    case deviceBusy(path: String, role: String, reason: String)
    /// The table asks for more sectors than the backing device holds, or fewer.
    case sizeMismatch(tableBytes: UInt64, backingPath: String, backingBytes: UInt64)
    /// A key on media that cannot be right (replay, writeback, GC).
    case corruptKey(at: CachePosition, index: Int, reason: String)
    /// The key-set log runs in a circle or links outside the cache.
    case corruptKeyLog(at: CachePosition, reason: String)
    /// data_crc verification failed for a replayed key.
    case dataCRCMismatch(at: CachePosition, keyOffset: UInt64, length: UInt32, stored: UInt32, computed: UInt32)
    /// Writeback cannot make progress (the backing device keeps failing).
    case writebackStalled(Int32)
    /// Writeback's io_uring refused to go on: writes it took may still be
    /// running, so writeback stops for good rather than reuse their buffers.
    case writebackRingFailed(operation: String, errno: Int32)
    case stopped

    public var description: String {
        switch self {
        case let .backingDevice(path, reason):
            return "backing device \(path): \(reason)"
        case let .deviceBusy(path, role, reason):
            return "\(role) \(path) is busy: \(reason)"
        case let .sizeMismatch(tableBytes, path, backingBytes):
            return "the table covers \(tableBytes / 512) sectors but backing device \(path) has \(backingBytes / 512)"
        case let .corruptKey(at, index, reason):
            return "corrupt key \(index) in the key-set at \(at): \(reason)"
        case let .corruptKeyLog(at, reason):
            return "corrupt key log at \(at): \(reason)"
        case let .dataCRCMismatch(at, offset, length, stored, computed):
            return "key: off \(offset) len \(length) in the key-set at \(at): data_crc error "
                + "(stored \(hex(stored)), data gives \(hex(computed)))"
        case let .writebackStalled(errno):
            return "writeback cannot make progress: the backing device answers \(PCacheError.errnoText(-errno)) (errno \(-errno))"
        case let .writebackRingFailed(operation, errno):
            return "writeback's io_uring failed (\(operation): \(PCacheError.errnoText(-errno)), errno \(-errno)); "
                + "writeback stops until the server restarts, dirty data stays in the cache"
        case .stopped:
            return "the cache is stopping"
        }
    }
}
