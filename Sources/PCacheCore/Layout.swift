/// Fixed geometry of a dm-pcache cache device.
///
/// All offsets are bytes. "Device offsets" count from the start of the cache
/// device; "segment offsets" from the start of a 16 MiB segment; "data
/// offsets" (`seg_off` on media) from the start of a segment's data area.
/// See Documentation/on-media-format.md.
public enum PCacheLayout {
    /// Every metadata region is one 4 KiB page.
    public static let pageSize = 4096

    // MARK: Device regions

    /// The single superblock copy (bytes [0, 4096) are never touched).
    public static let superblockOffset = 4096
    /// Bytes of the superblock that are used (and covered by its CRC).
    public static let superblockSize = 24

    /// cache_info slot 0; slot 1 is one page further.
    public static let cacheInfoOffset = 8192
    public static let cacheInfoSlotStride = 4096
    public static let cacheInfoSize = 24

    /// cache_ctrl page: both tails, two adjacent 16-byte slots each.
    public static let cacheCtrlOffset = 16384
    public static let keyTailOffset = 16384
    public static let dirtyTailOffset = 16416
    public static let tailSlotStride = 16
    public static let cachePositionSize = 16

    /// First byte of physical segment 0.
    public static let segmentsOffset = 20480

    // MARK: Segments

    public static let segmentSize = 16 << 20
    /// segment_info slot 0 is at segment offset 0, slot 1 one page further.
    public static let segmentInfoSlotStride = 4096
    public static let segmentInfoSize = 16
    /// seg_ctrl page; the two generation slots are its first 32 bytes.
    public static let segmentCtrlOffset = 8192
    public static let segmentGenerationOffset = 8192
    public static let segmentGenerationSlotStride = 16
    public static let segmentGenerationSize = 16
    /// The data area: cached data or a key-set log. `seg_off` counts from here.
    public static let segmentDataOffset = 12288
    public static let segmentDataSize = 16_764_928

    /// Bytes at the start of a segment zeroed when it joins a new cache
    /// (both segment_info slots and the seg_ctrl page).
    public static let segmentMetadataSize = 12288

    // MARK: Device limits

    public static let minimumDeviceSize = 512 << 20
    public static let maximumSegments = 1 << 20

    /// Number of copies of every dual-copy metadata object.
    public static let metadataSlotCount = 2

    // MARK: Keys and key sets

    public static let ksetHeaderSize = 24
    public static let keySize = 40
    public static let ksetMaxKeys = 128
    public static let ksetMaxSize = 5144

    // MARK: Magic numbers and CRC

    public static let magic: UInt64 = 0x65B0_5EFA_96C5_96EF
    public static let ksetMagic: UInt64 = 0x6768_94A6_4E16_4F1A
    public static let crcSeed: UInt32 = 0x3B15A

    // MARK: Index geometry and tunables

    public static let subtreeShift = 22
    public static let subtreeSize = 1 << 22
    public static let subtreeMask = (1 << 22) - 1

    public static let gcPercentDefault: UInt8 = 70
    public static let gcPercentMax: UInt8 = 90

    /// Whole segments that fit on a device of `deviceBytes`, before the
    /// 2^20 cap: floor((bytes − 20480) / 16 MiB), or 0 when it is smaller.
    public static func segmentsThatFit(deviceBytes: UInt64) -> UInt64 {
        guard deviceBytes > UInt64(segmentsOffset) else { return 0 }
        return (deviceBytes - UInt64(segmentsOffset)) / UInt64(segmentSize)
    }

    /// `seg_num` written when formatting a device of `deviceBytes`: every
    /// whole segment that fits, capped at `maximumSegments` (16 TiB), so the
    /// result always passes the hardened superblock check.
    public static func segmentCount(deviceBytes: UInt64) -> UInt32 {
        UInt32(min(segmentsThatFit(deviceBytes: deviceBytes), UInt64(maximumSegments)))
    }

    /// Device offset of physical segment `physical`.
    @inlinable
    public static func segmentByteOffset(physical: UInt32) -> Int {
        segmentsOffset + Int(physical) * segmentSize
    }

    /// Device offset of the data area of physical segment `physical`.
    @inlinable
    public static func segmentDataByteOffset(physical: UInt32) -> Int {
        segmentByteOffset(physical: physical) + segmentDataOffset
    }
}
