// Value types for every on-media struct of dm-pcache, with explicit byte
// offsets. The superblock is little-endian by definition; the other structs
// are CPU-native in the kernel, which on every machine this runs on
// (x86-64, arm64) is little-endian too, so everything is encoded
// little-endian here. Offsets and sizes: Documentation/on-media-format.md.

#if _endian(big)
#error("pcache-ublk writes the little-endian dm-pcache format only")
#endif

// MARK: - Raw little-endian access

@inlinable @inline(__always)
func loadLE<T: FixedWidthInteger>(_ p: UnsafeRawPointer, _ offset: Int, _: T.Type) -> T {
    T(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: T.self))
}

@inlinable @inline(__always)
func storeLE<T: FixedWidthInteger>(_ p: UnsafeMutableRawPointer, _ offset: Int, _ value: T) {
    p.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
}

/// The CRC every metadata struct stores in its first 4 bytes: CRC-32C with
/// the pcache seed over bytes [4, size).
@inlinable
func metadataCRC(_ p: UnsafeRawPointer, size: Int) -> UInt32 {
    CRC32C.checksum(p + 4, count: size - 4, seed: PCacheLayout.crcSeed)
}

// MARK: - Dual-copy records

/// A metadata struct kept in two slots, beginning with a `MetaHeader`.
public protocol MetadataRecord: Sendable, Equatable {
    /// Bytes used on media (and covered by the CRC from byte 4).
    static var encodedSize: Int { get }
    var header: MetaHeader { get set }
    /// Whether the stored crc matched the bytes when this value was decoded
    /// (true for values built in memory).
    var isCRCValid: Bool { get }
    init(decoding pointer: UnsafeRawPointer)
    /// Writes every field and the crc over bytes [4, encodedSize).
    func encode(into pointer: UnsafeMutableRawPointer)
}

extension MetadataRecord {
    /// Whether the struct at `pointer` carries a crc matching its bytes.
    public static func hasValidCRC(at pointer: UnsafeRawPointer) -> Bool {
        loadLE(pointer, 0, UInt32.self) == metadataCRC(pointer, size: encodedSize)
    }

    /// The encoded bytes (crc filled in).
    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.encodedSize)
        bytes.withUnsafeMutableBytes { encode(into: $0.baseAddress!) }
        return bytes
    }

    public init(bytes: [UInt8]) {
        precondition(bytes.count >= Self.encodedSize)
        self = bytes.withUnsafeBytes { Self(decoding: $0.baseAddress!) }
    }
}

/// `pcache_meta_header`: 8 bytes at the start of every dual-copy struct.
public struct MetaHeader: Sendable, Equatable {
    public static let encodedSize = 8
    /// CRC-32C (pcache seed) over bytes [4, size of the enclosing struct).
    public var crc: UInt32
    /// 8-bit serial number: the copy with the later seq wins.
    public var seq: UInt8
    /// Never set by the kernel: written 0 and ignored.
    public var version: UInt8
    public var reserved: UInt16

    public init(crc: UInt32 = 0, seq: UInt8 = 0, version: UInt8 = 0, reserved: UInt16 = 0) {
        self.crc = crc
        self.seq = seq
        self.version = version
        self.reserved = reserved
    }

    public init(decoding p: UnsafeRawPointer) {
        crc = loadLE(p, 0, UInt32.self)
        seq = loadLE(p, 4, UInt8.self)
        version = loadLE(p, 5, UInt8.self)
        reserved = loadLE(p, 6, UInt16.self)
    }

    /// Writes seq, version and res; the crc field is written by the enclosing struct.
    func encodeFields(into p: UnsafeMutableRawPointer) {
        storeLE(p, 4, seq)
        storeLE(p, 5, version)
        storeLE(p, 6, reserved)
    }
}

// MARK: - Superblock

/// `pcache_sb`, the single copy at device offset 4096. Little-endian.
public struct Superblock: Sendable, Equatable {
    public static let encodedSize = 24
    public static let flagBigEndian: UInt32 = 1 << 0

    public var crc: UInt32
    public var flags: UInt32
    public var magic: UInt64
    public var segNum: UInt32
    /// Bytes 20..23: not a field, but covered by the crc. Kept as read.
    public var padding: UInt32
    /// Whether `crc` matched the bytes when decoded.
    public private(set) var isCRCValid: Bool = true
    /// The crc the bytes give, when decoded.
    public private(set) var computedCRC: UInt32 = 0

    public init(flags: UInt32 = 0, magic: UInt64 = PCacheLayout.magic, segNum: UInt32, padding: UInt32 = 0) {
        self.crc = 0
        self.flags = flags
        self.magic = magic
        self.segNum = segNum
        self.padding = padding
    }

    public init(decoding p: UnsafeRawPointer) {
        crc = loadLE(p, 0, UInt32.self)
        flags = loadLE(p, 4, UInt32.self)
        magic = loadLE(p, 8, UInt64.self)
        segNum = loadLE(p, 16, UInt32.self)
        padding = loadLE(p, 20, UInt32.self)
        computedCRC = metadataCRC(p, size: Self.encodedSize)
        isCRCValid = computedCRC == crc
    }

    public var isBigEndian: Bool { flags & Self.flagBigEndian != 0 }

    /// Writes all 24 bytes, padding included, with a fresh crc.
    public func encode(into p: UnsafeMutableRawPointer) {
        storeLE(p, 4, flags)
        storeLE(p, 8, magic)
        storeLE(p, 16, segNum)
        storeLE(p, 20, padding)
        storeLE(p, 0, metadataCRC(p, size: Self.encodedSize))
    }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.encodedSize)
        bytes.withUnsafeMutableBytes { encode(into: $0.baseAddress!) }
        return bytes
    }

    public init(bytes: [UInt8]) {
        precondition(bytes.count >= Self.encodedSize)
        self = bytes.withUnsafeBytes { Superblock(decoding: $0.baseAddress!) }
    }

    /// Equality of the on-media fields (not of the decode bookkeeping).
    public static func == (a: Superblock, b: Superblock) -> Bool {
        a.crc == b.crc && a.flags == b.flags && a.magic == b.magic && a.segNum == b.segNum && a.padding == b.padding
    }
}

// MARK: - cache_info

/// Cache modes of the cache_info flags (bits 2–5). dm-pcache 6.18 accepts
/// only write-back.
public enum CacheMode: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case writeback = 0
    case writethrough = 1
    case writearound = 2
    case writeonly = 3

    public var description: String {
        switch self {
        case .writeback: return "writeback"
        case .writethrough: return "writethrough"
        case .writearound: return "writearound"
        case .writeonly: return "writeonly"
        }
    }
}

/// `pcache_cache_info`, two slots at device offsets 8192 and 12288.
public struct CacheInfo: MetadataRecord {
    public static let encodedSize = 24

    public static let flagDataCRC: UInt32 = 1 << 0
    public static let flagInitDone: UInt32 = 1 << 1
    public static let cacheModeShift: UInt32 = 2
    public static let cacheModeMask: UInt32 = 0xF << 2  // GENMASK(5, 2)
    public static let gcPercentShift: UInt32 = 6
    public static let gcPercentMask: UInt32 = 0x7F << 6  // GENMASK(12, 6)

    public var header: MetaHeader
    /// Physical id of the first segment of the cache's chain.
    public var segID: UInt32
    /// Length of the chain.
    public var nSegs: UInt32
    public var flags: UInt32
    public var reserved: UInt32
    public private(set) var isCRCValid: Bool = true

    /// An all-zero cache_info (the state before default initialisation).
    public init() {
        header = MetaHeader()
        segID = 0
        nSegs = 0
        flags = 0
        reserved = 0
    }

    public init(decoding p: UnsafeRawPointer) {
        header = MetaHeader(decoding: p)
        segID = loadLE(p, 8, UInt32.self)
        nSegs = loadLE(p, 12, UInt32.self)
        flags = loadLE(p, 16, UInt32.self)
        reserved = loadLE(p, 20, UInt32.self)
        isCRCValid = Self.hasValidCRC(at: p)
    }

    public func encode(into p: UnsafeMutableRawPointer) {
        header.encodeFields(into: p)
        storeLE(p, 8, segID)
        storeLE(p, 12, nSegs)
        storeLE(p, 16, flags)
        storeLE(p, 20, reserved)
        storeLE(p, 0, metadataCRC(p, size: Self.encodedSize))
    }

    public var dataCRC: Bool {
        get { flags & Self.flagDataCRC != 0 }
        set { flags = newValue ? flags | Self.flagDataCRC : flags & ~Self.flagDataCRC }
    }

    public var initDone: Bool {
        get { flags & Self.flagInitDone != 0 }
        set { flags = newValue ? flags | Self.flagInitDone : flags & ~Self.flagInitDone }
    }

    /// The 4-bit mode field as stored (values above 3 have no name).
    public var cacheModeBits: UInt32 {
        get { (flags & Self.cacheModeMask) >> Self.cacheModeShift }
        set { flags = (flags & ~Self.cacheModeMask) | ((newValue << Self.cacheModeShift) & Self.cacheModeMask) }
    }

    /// The cache mode, or nil for an unnamed value. Setting nil changes nothing.
    public var cacheMode: CacheMode? {
        get { CacheMode(rawValue: cacheModeBits) }
        set { if let newValue { cacheModeBits = newValue.rawValue } }
    }

    /// The 7-bit gc_percent field (0…127 can be stored; 0…90 are accepted).
    public var gcPercent: UInt8 {
        get { UInt8((flags & Self.gcPercentMask) >> Self.gcPercentShift) }
        set { flags = (flags & ~Self.gcPercentMask) | ((UInt32(newValue) << Self.gcPercentShift) & Self.gcPercentMask) }
    }

    public static func == (a: CacheInfo, b: CacheInfo) -> Bool {
        a.header == b.header && a.segID == b.segID && a.nSegs == b.nSegs && a.flags == b.flags && a.reserved == b.reserved
    }
}

// MARK: - segment_info

/// `pcache_segment_info`, two slots at segment offsets 0 and 4096.
public struct SegmentInfo: MetadataRecord {
    public static let encodedSize = 16

    public static let flagHasNext: UInt32 = 1 << 0
    public static let typeShift: UInt32 = 1
    public static let typeMask: UInt32 = 0xF << 1  // GENMASK(4, 1)
    /// `PCACHE_SEGMENT_TYPE_CACHE_DATA`, the only type.
    public static let typeCacheData: UInt32 = 1

    public var header: MetaHeader
    public var flags: UInt32
    /// Physical id of the next segment; meaningful only with HAS_NEXT.
    public var nextSeg: UInt32
    public private(set) var isCRCValid: Bool = true

    public init(flags: UInt32 = 0, nextSeg: UInt32 = 0) {
        header = MetaHeader()
        self.flags = flags
        self.nextSeg = nextSeg
    }

    public init(decoding p: UnsafeRawPointer) {
        header = MetaHeader(decoding: p)
        flags = loadLE(p, 8, UInt32.self)
        nextSeg = loadLE(p, 12, UInt32.self)
        isCRCValid = Self.hasValidCRC(at: p)
    }

    public func encode(into p: UnsafeMutableRawPointer) {
        header.encodeFields(into: p)
        storeLE(p, 8, flags)
        storeLE(p, 12, nextSeg)
        storeLE(p, 0, metadataCRC(p, size: Self.encodedSize))
    }

    public var hasNext: Bool {
        get { flags & Self.flagHasNext != 0 }
        set { flags = newValue ? flags | Self.flagHasNext : flags & ~Self.flagHasNext }
    }

    public var type: UInt32 {
        get { (flags & Self.typeMask) >> Self.typeShift }
        set { flags = (flags & ~Self.typeMask) | ((newValue << Self.typeShift) & Self.typeMask) }
    }

    public static func == (a: SegmentInfo, b: SegmentInfo) -> Bool {
        a.header == b.header && a.flags == b.flags && a.nextSeg == b.nextSeg
    }
}

// MARK: - Positions and tails

/// A place in the cache: a cache segment id (not a physical one) and an
/// offset in that segment's data area.
public struct CachePosition: Hashable, Sendable, CustomStringConvertible {
    public var cacheSegID: UInt32
    public var segOff: UInt32

    public init(cacheSegID: UInt32, segOff: UInt32) {
        self.cacheSegID = cacheSegID
        self.segOff = segOff
    }

    public static let zero = CachePosition(cacheSegID: 0, segOff: 0)

    /// Bytes from here to the end of the data area.
    public var remaining: Int { PCacheLayout.segmentDataSize - Int(segOff) }

    /// The same segment, `bytes` further on.
    public func advanced(by bytes: Int) -> CachePosition {
        let next = Int(segOff) + bytes
        precondition(next >= 0 && next <= PCacheLayout.segmentDataSize, "position advanced past the data area")
        return CachePosition(cacheSegID: cacheSegID, segOff: UInt32(next))
    }

    /// "segment:offset", as in the status line.
    public var description: String { "\(cacheSegID):\(segOff)" }
}

/// `pcache_cache_pos_onmedia`: a tail slot (key_tail or dirty_tail).
public struct CachePositionOnMedia: MetadataRecord {
    public static let encodedSize = 16

    public var header: MetaHeader
    public var position: CachePosition
    public private(set) var isCRCValid: Bool = true

    public init(_ position: CachePosition) {
        header = MetaHeader()
        self.position = position
    }

    public init(decoding p: UnsafeRawPointer) {
        header = MetaHeader(decoding: p)
        position = CachePosition(cacheSegID: loadLE(p, 8, UInt32.self), segOff: loadLE(p, 12, UInt32.self))
        isCRCValid = Self.hasValidCRC(at: p)
    }

    public func encode(into p: UnsafeMutableRawPointer) {
        header.encodeFields(into: p)
        storeLE(p, 8, position.cacheSegID)
        storeLE(p, 12, position.segOff)
        storeLE(p, 0, metadataCRC(p, size: Self.encodedSize))
    }

    public static func == (a: CachePositionOnMedia, b: CachePositionOnMedia) -> Bool {
        a.header == b.header && a.position == b.position
    }
}

/// `pcache_cache_seg_gen`: a segment's generation, two slots at segment
/// offsets 8192 and 8208.
public struct SegmentGeneration: MetadataRecord {
    public static let encodedSize = 16

    public var header: MetaHeader
    public var gen: UInt64
    public private(set) var isCRCValid: Bool = true

    public init(gen: UInt64) {
        header = MetaHeader()
        self.gen = gen
    }

    public init(decoding p: UnsafeRawPointer) {
        header = MetaHeader(decoding: p)
        gen = loadLE(p, 8, UInt64.self)
        isCRCValid = Self.hasValidCRC(at: p)
    }

    public func encode(into p: UnsafeMutableRawPointer) {
        header.encodeFields(into: p)
        storeLE(p, 8, gen)
        storeLE(p, 0, metadataCRC(p, size: Self.encodedSize))
    }

    public static func == (a: SegmentGeneration, b: SegmentGeneration) -> Bool {
        a.header == b.header && a.gen == b.gen
    }
}

// MARK: - Keys

/// `pcache_cache_key_onmedia`: one cached extent, 40 bytes inside a kset.
public struct KeyOnMedia: Sendable, Equatable {
    public static let encodedSize = 40
    /// In-memory only; never on media.
    public static let flagEmpty: UInt32 = 1 << 0
    /// The data was filled by a read miss: nothing to write back.
    public static let flagClean: UInt32 = 1 << 1

    /// Byte offset on the backing device.
    public var off: UInt64
    public var len: UInt32
    public var flags: UInt32
    /// Cache segment id (not physical) of the data.
    public var cacheSegID: UInt32
    /// Offset of the data in that segment's data area.
    public var cacheSegOff: UInt32
    /// The segment's generation when the space was allocated.
    public var segGen: UInt64
    /// CRC-32C of the data (pcache seed) when DATA_CRC is on, else 0.
    public var dataCRC: UInt32
    public var reserved: UInt32

    public init(off: UInt64, len: UInt32, flags: UInt32 = 0, cacheSegID: UInt32, cacheSegOff: UInt32,
                segGen: UInt64, dataCRC: UInt32 = 0, reserved: UInt32 = 0) {
        self.off = off
        self.len = len
        self.flags = flags
        self.cacheSegID = cacheSegID
        self.cacheSegOff = cacheSegOff
        self.segGen = segGen
        self.dataCRC = dataCRC
        self.reserved = reserved
    }

    public init(decoding p: UnsafeRawPointer) {
        off = loadLE(p, 0, UInt64.self)
        len = loadLE(p, 8, UInt32.self)
        flags = loadLE(p, 12, UInt32.self)
        cacheSegID = loadLE(p, 16, UInt32.self)
        cacheSegOff = loadLE(p, 20, UInt32.self)
        segGen = loadLE(p, 24, UInt64.self)
        dataCRC = loadLE(p, 32, UInt32.self)
        reserved = loadLE(p, 36, UInt32.self)
    }

    public func encode(into p: UnsafeMutableRawPointer) {
        storeLE(p, 0, off)
        storeLE(p, 8, len)
        storeLE(p, 12, flags)
        storeLE(p, 16, cacheSegID)
        storeLE(p, 20, cacheSegOff)
        storeLE(p, 24, segGen)
        storeLE(p, 32, dataCRC)
        storeLE(p, 36, reserved)
    }

    public var isClean: Bool {
        get { flags & Self.flagClean != 0 }
        set { flags = newValue ? flags | Self.flagClean : flags & ~Self.flagClean }
    }

    public var position: CachePosition { CachePosition(cacheSegID: cacheSegID, segOff: cacheSegOff) }
}

// MARK: - Key sets

/// The 24-byte header of `pcache_cache_kset_onmedia`.
public struct KeySetHeader: Sendable, Equatable {
    public static let encodedSize = 24
    public static let flagLast: UInt64 = 1 << 0

    public var crc: UInt32
    /// key_num for a normal kset, next_cache_seg_id for a LAST one.
    public var keyNumOrNext: UInt32
    public var magic: UInt64
    public var flags: UInt64

    public init(crc: UInt32 = 0, keyNumOrNext: UInt32, magic: UInt64 = PCacheLayout.ksetMagic, flags: UInt64 = 0) {
        self.crc = crc
        self.keyNumOrNext = keyNumOrNext
        self.magic = magic
        self.flags = flags
    }

    public init(decoding p: UnsafeRawPointer) {
        crc = loadLE(p, 0, UInt32.self)
        keyNumOrNext = loadLE(p, 4, UInt32.self)
        magic = loadLE(p, 8, UInt64.self)
        flags = loadLE(p, 16, UInt64.self)
    }

    /// Writes all four fields as they are (the crc is not computed here).
    public func encode(into p: UnsafeMutableRawPointer) {
        storeLE(p, 0, crc)
        storeLE(p, 4, keyNumOrNext)
        storeLE(p, 8, magic)
        storeLE(p, 16, flags)
    }

    public var isLast: Bool { flags & Self.flagLast != 0 }

    /// Bytes the kset occupies: 24 for LAST, else 24 + 40 × key_num.
    /// Meaningful only when key_num ≤ 128 has been checked.
    public var encodedSize: Int {
        isLast ? KeySetHeader.encodedSize : KeySetCodec.size(keyCount: Int(keyNumOrNext))
    }
}

/// A validated kset in place (on the device or in a buffer).
public struct KeySetView: @unchecked Sendable, Equatable {
    public let pointer: UnsafeRawPointer
    public let header: KeySetHeader

    public var isLast: Bool { header.isLast }
    /// Keys in a normal kset; 0 for a LAST kset.
    public var keyCount: Int { header.isLast ? 0 : Int(header.keyNumOrNext) }
    /// The cache segment the log continues in, for a LAST kset.
    public var nextCacheSegID: UInt32? { header.isLast ? header.keyNumOrNext : nil }
    /// Bytes occupied: the step to the next kset.
    public var size: Int { header.encodedSize }

    public func key(at index: Int) -> KeyOnMedia {
        precondition(index >= 0 && index < keyCount, "key index \(index) outside a kset of \(keyCount) keys")
        return KeyOnMedia(decoding: pointer + KeySetHeader.encodedSize + index * KeyOnMedia.encodedSize)
    }

    public var keys: [KeyOnMedia] { (0..<keyCount).map { key(at: $0) } }
}

/// Why bytes are not a valid kset. Any of these ends a key log.
public enum KeySetInvalidity: Error, Sendable, Equatable, CustomStringConvertible {
    case tooShort(available: Int)
    case badMagic(found: UInt64)
    case tooManyKeys(keyNum: UInt32)
    case overrunsSegment(size: Int, available: Int)
    case crcMismatch(stored: UInt32, computed: UInt32)

    public var description: String {
        switch self {
        case let .tooShort(available):
            return "only \(available) bytes left in the segment, less than a kset header"
        case let .badMagic(found):
            return found == 0 ? "no kset (magic 0)" : "bad kset magic \(hex(found))"
        case let .tooManyKeys(n):
            return "key_num \(n) exceeds \(PCacheLayout.ksetMaxKeys)"
        case let .overrunsSegment(size, available):
            return "kset of \(size) bytes overruns the segment (\(available) bytes left)"
        case let .crcMismatch(stored, computed):
            return "kset crc \(hex(stored)) does not match its bytes (\(hex(computed)))"
        }
    }
}

/// Validation and encoding of ksets.
public enum KeySetCodec {
    /// The 24-byte empty kset: magic 0, never valid. Ends a key log.
    public static let emptyKeySet = [UInt8](repeating: 0, count: KeySetHeader.encodedSize)

    /// Bytes of a normal kset with `keyCount` keys.
    @inlinable
    public static func size(keyCount: Int) -> Int {
        KeySetHeader.encodedSize + keyCount * KeyOnMedia.encodedSize
    }

    /// Checks the kset at `pointer` with `available` readable bytes (at most
    /// the rest of the segment's data area), in the hardened order: magic,
    /// key_num ≤ 128, size ≤ available, then the crc. Reads nothing beyond
    /// the kset's claimed size, never past `available`.
    public static func check(at pointer: UnsafeRawPointer, available: Int) -> Result<KeySetView, KeySetInvalidity> {
        guard available >= KeySetHeader.encodedSize else { return .failure(.tooShort(available: max(available, 0))) }
        let header = KeySetHeader(decoding: pointer)
        guard header.magic == PCacheLayout.ksetMagic else { return .failure(.badMagic(found: header.magic)) }
        if !header.isLast && header.keyNumOrNext > UInt32(PCacheLayout.ksetMaxKeys) {
            return .failure(.tooManyKeys(keyNum: header.keyNumOrNext))
        }
        let size = header.encodedSize
        guard size <= available else { return .failure(.overrunsSegment(size: size, available: available)) }
        let computed = metadataCRC(pointer, size: size)
        guard computed == header.crc else { return .failure(.crcMismatch(stored: header.crc, computed: computed)) }
        return .success(KeySetView(pointer: pointer, header: header))
    }

    /// The kset at `pointer` if it is valid, else nil.
    public static func validate(at pointer: UnsafeRawPointer, available: Int) -> KeySetView? {
        if case let .success(view) = check(at: pointer, available: available) { return view }
        return nil
    }

    /// Completes a kset in `buffer` whose key_num (or next id), flags and
    /// keys are already there: sets the magic and the crc. Returns its size.
    /// The key_num must be ≤ 128.
    @discardableResult
    public static func seal(_ buffer: UnsafeMutableRawPointer) -> Int {
        var header = KeySetHeader(decoding: buffer)
        precondition(header.isLast || header.keyNumOrNext <= UInt32(PCacheLayout.ksetMaxKeys),
                     "kset with \(header.keyNumOrNext) keys")
        header.magic = PCacheLayout.ksetMagic
        header.encode(into: buffer)
        let size = header.encodedSize
        storeLE(buffer, 0, metadataCRC(buffer, size: size))
        return size
    }

    /// Encodes a normal kset holding `keys` into `buffer` (which must hold
    /// `size(keyCount:)` bytes) with magic and crc. Returns its size.
    @discardableResult
    public static func encode(keys: [KeyOnMedia], flags: UInt64 = 0, into buffer: UnsafeMutableRawPointer) -> Int {
        precondition(keys.count <= PCacheLayout.ksetMaxKeys)
        KeySetHeader(keyNumOrNext: UInt32(keys.count), flags: flags & ~KeySetHeader.flagLast).encode(into: buffer)
        for (i, key) in keys.enumerated() {
            key.encode(into: buffer + KeySetHeader.encodedSize + i * KeyOnMedia.encodedSize)
        }
        return seal(buffer)
    }

    /// Encodes the LAST kset that links to cache segment `next` (24 bytes).
    public static func encodeLast(nextCacheSegID next: UInt32, into buffer: UnsafeMutableRawPointer) {
        KeySetHeader(keyNumOrNext: next, flags: KeySetHeader.flagLast).encode(into: buffer)
        seal(buffer)
    }

    /// Bytes of a normal kset holding `keys`.
    public static func encoded(keys: [KeyOnMedia]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size(keyCount: keys.count))
        _ = bytes.withUnsafeMutableBytes { encode(keys: keys, into: $0.baseAddress!) }
        return bytes
    }

    /// Bytes of the LAST kset linking to `next`.
    public static func encodedLast(nextCacheSegID next: UInt32) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: KeySetHeader.encodedSize)
        bytes.withUnsafeMutableBytes { encodeLast(nextCacheSegID: next, into: $0.baseAddress!) }
        return bytes
    }
}
