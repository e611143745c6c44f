import Glibc

/// Everything that can go wrong in PCacheCore, phrased for an operator.
///
/// Each description is a full sentence naming the device, the place on it,
/// the field, and what was found against what was expected. The cache core
/// adds its own cases here.
public enum PCacheError: Error, CustomStringConvertible, Sendable, Equatable {
    // MARK: Opening and mapping

    /// A system call failed; `errno` is kept.
    case system(operation: String, path: String, errno: Int32)
    /// The device cannot be mapped as a whole.
    case mappingFailed(path: String, reason: String)

    // MARK: Superblock (cache_dev layer)

    case deviceTooSmall(device: String, size: Int, minimum: Int)
    case notFormatted(device: String)
    case unexpectedMagic(device: String, found: UInt64)
    case superblockCRCMismatch(device: String, stored: UInt32, computed: UInt32)
    case bigEndianDevice(device: String)
    case invalidSegmentCount(device: String, segNum: UInt32, fits: UInt64, maximum: Int)
    case alreadyFormatted(device: String, magic: UInt64)

    // MARK: Cache metadata (cache layer)

    case dataCRCOptionMismatch(requested: Bool, stored: Bool)
    case invalidCacheSegmentCount(device: String, nSegs: UInt32, segNum: UInt32)
    case segmentIDOutOfRange(device: String, what: String, id: UInt32, limit: UInt32)
    case segmentChainLoop(device: String, cacheSegID: UInt32, physical: UInt32)
    case segmentChainTooShort(device: String, cacheSegID: UInt32, physical: UInt32, nSegs: UInt32)
    case segmentInfoUnreadable(device: String, cacheSegID: UInt32, physical: UInt32)
    case corruptedTails(device: String, which: String)
    case tailOutOfRange(device: String, which: String, position: CachePosition, nSegs: UInt32)
    case cacheNotInitialised(device: String, reason: String)
    case keyLogLinkOutOfRange(device: String, at: CachePosition, next: UInt32, nSegs: UInt32)
    case keyLogLoop(device: String, at: CachePosition, next: UInt32)

    // MARK: Command line

    case usage(String)

    public var description: String {
        switch self {
        case let .system(operation, path, errno):
            return "\(operation) \(path) failed: \(PCacheError.errnoText(errno)) (errno \(errno))"
        case let .mappingFailed(path, reason):
            return "cannot map \(path): \(reason)"
        case let .deviceTooSmall(device, size, minimum):
            return "cache device is too small: \(device) has \(size) bytes, at least \(minimum) needed"
        case let .notFormatted(device):
            return "\(device) is not formatted: the superblock magic at offset \(PCacheLayout.superblockOffset + 8) is 0"
        case let .unexpectedMagic(device, found):
            return "\(device) does not hold a pcache superblock: unexpected magic \(hex(found)) at offset "
                + "\(PCacheLayout.superblockOffset + 8), expected \(hex(PCacheLayout.magic)) or 0; "
                + "nothing was written. To reuse this device as a cache, run `pcache-ublk format --force \(device)` "
                + "or zero its first MiB (dd if=/dev/zero of=\(device) bs=1M count=1)"
        case let .superblockCRCMismatch(device, stored, computed):
            return "corrupted superblock on \(device): crc at offset \(PCacheLayout.superblockOffset) is "
                + "\(hex(stored)), the bytes give \(hex(computed))"
        case let .bigEndianDevice(device):
            return "\(device) was formatted on a big-endian machine (superblock flag BIGENDIAN set) "
                + "and cannot be used on this little-endian one"
        case let .invalidSegmentCount(device, segNum, fits, maximum):
            return "invalid seg_num \(segNum) in the superblock of \(device): the device holds \(fits) segments "
                + "and at most \(maximum) are allowed"
        case let .alreadyFormatted(device, magic):
            let what = magic == PCacheLayout.magic ? "a pcache superblock" : "data at the superblock (magic \(hex(magic)))"
            return "\(device) already holds \(what); refusing to format it. Add --force to destroy its contents"
        case let .dataCRCOptionMismatch(requested, stored):
            return "invalid option for data_crc: \(requested), expected: \(stored) "
                + "(the cache was formatted with data_crc \(stored))"
        case let .invalidCacheSegmentCount(device, nSegs, segNum):
            return "invalid n_segs \(nSegs) in cache_info of \(device): it must be between 1 and seg_num \(segNum)"
        case let .segmentIDOutOfRange(device, what, id, limit):
            return "invalid segment id \(id) from \(what) on \(device) (must be below \(limit))"
        case let .segmentChainLoop(device, cacheSegID, physical):
            return "segment chain of \(device) loops: cache segment \(cacheSegID) is physical segment \(physical), "
                + "which is already in the chain"
        case let .segmentChainTooShort(device, cacheSegID, physical, nSegs):
            return "segment chain of \(device) ends early: cache segment \(cacheSegID) (physical \(physical)) "
                + "has no HAS_NEXT flag but cache_info says n_segs is \(nSegs)"
        case let .segmentInfoUnreadable(device, cacheSegID, physical):
            return "can't read segment info of segment: \(physical) (cache segment \(cacheSegID)) on \(device): "
                + "neither copy at segment offset 0 or 4096 has a valid crc"
        case let .corruptedTails(device, which):
            return "Corrupted key tail or dirty tail on \(device): no valid copy of the \(which)"
        case let .tailOutOfRange(device, which, position, nSegs):
            return "\(which) \(position) on \(device) is out of range: segment must be below \(nSegs) "
                + "and offset below \(PCacheLayout.segmentDataSize)"
        case let .cacheNotInitialised(device, reason):
            return "the cache on \(device) was never completely started (\(reason)); "
                + "its first start will build it afresh"
        case let .keyLogLinkOutOfRange(device, at, next, nSegs):
            return "key log chain does not terminate on \(device): the LAST kset at \(at) links to cache segment "
                + "\(next), but the cache has \(nSegs) segments"
        case let .keyLogLoop(device, at, next):
            return "key log chain does not terminate on \(device): the LAST kset at \(at) links back to cache "
                + "segment \(next), which the chain already passed"
        case let .usage(text):
            return text
        }
    }

    static func errnoText(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "error \(code)" }
        return String(cString: text)
    }
}

/// "0x…" in lower-case hex, the way the kernel prints magic numbers and crcs.
@usableFromInline
func hex<T: BinaryInteger>(_ value: T) -> String {
    "0x" + String(value, radix: 16)
}
