/// The superblock layer (the kernel's cache_dev): checks the device, formats
/// a blank one, and knows where each physical segment is.
public final class CacheDevice: @unchecked Sendable {
    public let memory: any PersistentMemory
    /// The superblock as validated (or as just written).
    public let superblock: Superblock
    /// `seg_num`: physical segments on the device.
    public let segmentCount: UInt32
    /// Whether this open found magic 0 and wrote a new superblock.
    public let didFormat: Bool

    /// The device name used in messages.
    public var name: String { memory.label }

    private init(memory: any PersistentMemory, superblock: Superblock, didFormat: Bool) {
        self.memory = memory
        self.superblock = superblock
        self.segmentCount = superblock.segNum
        self.didFormat = didFormat
    }

    /// Opens the device the way dm-pcache does: a device smaller than 512 MiB
    /// is refused; magic 0 means unformatted, and the device is formatted
    /// (cache_info and cache_ctrl zeroed, then the superblock written last);
    /// any other superblock must be valid, and nothing is written when it is not.
    public static func open(memory: any PersistentMemory) throws -> CacheDevice {
        try open(memory: memory, minimumSize: PCacheLayout.minimumDeviceSize)
    }

    /// Validates the superblock without ever writing: a blank device gives
    /// `PCacheError.notFormatted`. For the inspector.
    public static func openReadOnly(memory: any PersistentMemory) throws -> CacheDevice {
        try openReadOnly(memory: memory, minimumSize: PCacheLayout.minimumDeviceSize)
    }

    /// Test hook: `minimumSize` below 512 MiB lets tests use small images.
    static func open(memory: any PersistentMemory, minimumSize: Int) throws -> CacheDevice {
        try checkSize(memory, minimumSize)
        let found = Superblock(decoding: memory.pointer(at: PCacheLayout.superblockOffset, count: Superblock.encodedSize))
        if found.magic == 0 {
            let sb = Superblock(flags: 0, magic: PCacheLayout.magic,
                                segNum: PCacheLayout.segmentCount(deviceBytes: UInt64(memory.size)))
            try validate(sb, memory)
            format(memory, sb)
            let written = Superblock(decoding: memory.pointer(at: PCacheLayout.superblockOffset, count: Superblock.encodedSize))
            return CacheDevice(memory: memory, superblock: written, didFormat: true)
        }
        try validate(found, memory)
        return CacheDevice(memory: memory, superblock: found, didFormat: false)
    }

    static func openReadOnly(memory: any PersistentMemory, minimumSize: Int) throws -> CacheDevice {
        try checkSize(memory, minimumSize)
        let found = Superblock(decoding: memory.pointer(at: PCacheLayout.superblockOffset, count: Superblock.encodedSize))
        if found.magic == 0 { throw PCacheError.notFormatted(device: memory.label) }
        try validate(found, memory)
        return CacheDevice(memory: memory, superblock: found, didFormat: false)
    }

    private static func checkSize(_ memory: any PersistentMemory, _ minimumSize: Int) throws {
        // Even the test hook needs the fixed regions and one segment.
        let floor = max(minimumSize, PCacheLayout.segmentsOffset + PCacheLayout.segmentSize)
        if memory.size < floor {
            throw PCacheError.deviceTooSmall(device: memory.label, size: memory.size, minimum: floor)
        }
    }

    /// The superblock checks, in the kernel's order plus the hardened bounds.
    static func validate(_ sb: Superblock, _ memory: any PersistentMemory) throws {
        guard sb.magic == PCacheLayout.magic else {
            throw PCacheError.unexpectedMagic(device: memory.label, found: sb.magic)
        }
        guard sb.isCRCValid else {
            throw PCacheError.superblockCRCMismatch(device: memory.label, stored: sb.crc, computed: sb.computedCRC)
        }
        guard !sb.isBigEndian else { throw PCacheError.bigEndianDevice(device: memory.label) }
        let fits = PCacheLayout.segmentsThatFit(deviceBytes: UInt64(memory.size))
        guard sb.segNum > 0, UInt64(sb.segNum) <= fits, Int(sb.segNum) <= PCacheLayout.maximumSegments else {
            throw PCacheError.invalidSegmentCount(device: memory.label, segNum: sb.segNum, fits: fits,
                                                  maximum: PCacheLayout.maximumSegments)
        }
    }

    /// Zeroes both cache_info slots and the cache_ctrl page, then writes the
    /// superblock: every byte but the magic first, then the magic. Until the
    /// magic is durable the device still reads as blank, so a power cut at
    /// any point (even one tearing 8-byte words) leaves either a blank
    /// device or a complete superblock. The bytes are the kernel's.
    private static func format(_ memory: any PersistentMemory, _ sb: Superblock) {
        memory.persistZero(at: PCacheLayout.cacheInfoOffset,
                           count: PCacheLayout.segmentsOffset - PCacheLayout.cacheInfoOffset)
        var bytes = sb.encoded()
        let magicOffset = 8
        let magicBytes = Array(bytes[magicOffset..<magicOffset + 8])
        for i in magicOffset..<magicOffset + 8 { bytes[i] = 0 }
        memory.persist(at: PCacheLayout.superblockOffset, bytes: bytes)
        memory.persist(at: PCacheLayout.superblockOffset + magicOffset, bytes: magicBytes)
    }

    /// Device offset of physical segment `physical`.
    public func segmentBase(physical: UInt32) -> Int {
        precondition(physical < segmentCount, "physical segment \(physical) of \(segmentCount)")
        return PCacheLayout.segmentByteOffset(physical: physical)
    }

    /// Device offset of the data area of physical segment `physical`.
    public func segmentDataBase(physical: UInt32) -> Int {
        segmentBase(physical: physical) + PCacheLayout.segmentDataOffset
    }
}
