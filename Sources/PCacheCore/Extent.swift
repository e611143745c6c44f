/// An in-memory cache key: a range of the backing device and where its bytes
/// live in the cache (dm-pcache's `pcache_cache_key`).
///
/// Keys are plain values stored in the leaves of each subtree's sorted
/// arrays (`SubtreeIndex`), so walking the index costs no reference counting.
public struct Extent: Equatable, Sendable {
    /// Logical byte offset on the backing device.
    public var start: UInt64
    /// Length in bytes.
    public var length: UInt32
    public var flags: Flags
    /// Cache segment id and offset in its data area (unused for placeholders).
    public var segment: UInt32
    public var segmentOffset: UInt32
    /// The segment's generation when the space was allocated; a key older
    /// than its segment's current generation is stale and never served.
    public var generation: UInt64
    /// With data_crc: the CRC and the span it covers, which is the key as it
    /// was appended. Cutting or splitting a key keeps the span, so a read of
    /// any piece can verify the whole original extent.
    /// For a placeholder, `crc` holds the token of the miss that owns it.
    public var crc: UInt32
    public var crcSpanOffset: UInt32
    public var crcSpanLength: UInt32
    /// The key-set and its epoch the key was appended in, while that may
    /// still be unclosed (`OpenKeySets.tag`); 0 for keys known to be logged
    /// and for placeholders. Fits the padding after the fields above.
    var keySetTag: UInt32 = 0

    public struct Flags: OptionSet, Sendable, Equatable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// A placeholder for a backing read in flight (never on media).
        public static let empty = Flags(rawValue: 1 << 0)
        /// Data equal to the backing device's (a read fill): never written back.
        public static let clean = Flags(rawValue: 1 << 1)
    }

    public init(
        start: UInt64, length: UInt32, flags: Flags = [], segment: UInt32 = 0, segmentOffset: UInt32 = 0,
        generation: UInt64 = 0, crc: UInt32 = 0, crcSpanOffset: UInt32 = 0, crcSpanLength: UInt32 = 0
    ) {
        self.start = start
        self.length = length
        self.flags = flags
        self.segment = segment
        self.segmentOffset = segmentOffset
        self.generation = generation
        self.crc = crc
        self.crcSpanOffset = crcSpanOffset
        self.crcSpanLength = crcSpanLength
    }

    /// A placeholder for a read miss; `token` identifies the miss that owns it.
    public static func placeholder(start: UInt64, length: UInt32, token: UInt32) -> Extent {
        Extent(start: start, length: length, flags: .empty, crc: token)
    }

    @inline(__always) public var end: UInt64 { start + UInt64(length) }
    @inline(__always) public var isPlaceholder: Bool { flags.contains(.empty) }
    @inline(__always) public var placeholderToken: UInt32 { crc }

    /// Drops the first `count` bytes; the cache position moves with them.
    @inline(__always)
    public mutating func cutFront(_ count: UInt32) {
        start += UInt64(count)
        length -= count
        if !isPlaceholder { segmentOffset += count }
    }

    /// Drops the last `count` bytes.
    @inline(__always)
    public mutating func cutBack(_ count: UInt32) {
        length -= count
    }
}
