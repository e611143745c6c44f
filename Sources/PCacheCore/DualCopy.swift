/// The dual-copy scheme of dm-pcache metadata (`PCACHE_META_INDEX_MAX` = 2),
/// with the Fixed write order: a new version always goes to the slot that
/// does not hold the current copy, so a torn write leaves the current copy
/// intact.
///
/// A value of this type tracks one object on the device: where its two slots
/// are, which slot holds the current copy and the 64-bit sequence counter
/// (only its low 8 bits are stored). It is not synchronised: the owner
/// serialises writes (see `CacheMetadata`).
public struct DualCopySlots<Record: MetadataRecord>: Sendable {
    /// Device offset of slot 0.
    public let offset: Int
    /// Distance from slot 0 to slot 1: 4096 for cache_info and segment_info,
    /// 16 for tails and generations.
    public let stride: Int
    /// The slot holding the current copy (0 when none was found).
    public private(set) var index: Int = 0
    /// Sequence of the current copy; the next write stores `sequence + 1`.
    public private(set) var sequence: UInt64 = 0

    public init(offset: Int, stride: Int) {
        precondition(stride >= Record.encodedSize, "slots of \(Record.self) overlap")
        self.offset = offset
        self.stride = stride
    }

    /// Device offset of slot `slot`.
    public func slotOffset(_ slot: Int) -> Int { offset + slot * stride }

    /// Which slot wins, given the seq of each slot whose crc is valid (nil
    /// for an invalid one): slot 0, unless slot 1 is valid and
    /// `(Int8)(seq1 − seq0) > 0`, or slot 0 is invalid. Nil when neither is valid.
    public static func latestSlot(seq0: UInt8?, seq1: UInt8?) -> Int? {
        switch (seq0, seq1) {
        case (nil, nil): return nil
        case (_?, nil): return 0
        case (nil, _?): return 1
        case let (s0?, s1?): return Int8(bitPattern: s1 &- s0) > 0 ? 1 : 0
        }
    }

    /// Both slots as decoded (for the inspector).
    public func readSlots(from memory: any PersistentMemory) -> [Record] {
        (0..<PCacheLayout.metadataSlotCount).map { slot in
            Record(decoding: memory.pointer(at: slotOffset(slot), count: Record.encodedSize))
        }
    }

    /// The latest valid copy and its slot, or nil when neither slot is valid.
    public func findLatest(in memory: any PersistentMemory) -> (record: Record, slot: Int)? {
        let slots = readSlots(from: memory)
        let seqs = slots.map { $0.isCRCValid ? $0.header.seq : nil }
        guard let winner = Self.latestSlot(seq0: seqs[0], seq1: seqs[1]) else { return nil }
        return (slots[winner], winner)
    }

    /// Loads the latest copy and makes its slot and seq current. With no
    /// valid copy, returns nil and starts over at slot 0, seq 0 (so the next
    /// write goes to slot 1 with seq 1).
    public mutating func load(from memory: any PersistentMemory) -> Record? {
        guard let (record, slot) = findLatest(in: memory) else {
            index = 0
            sequence = 0
            return nil
        }
        index = slot
        sequence = UInt64(record.header.seq)
        return record
    }

    /// Writes `record` as the next version: seq + 1, advance to the other
    /// slot first, write the slot, flush and fence. Returns the record as
    /// written (seq and crc filled in).
    @discardableResult
    public mutating func write(_ record: Record, to memory: any PersistentMemory) -> Record {
        sequence &+= 1
        index = (index + 1) % PCacheLayout.metadataSlotCount
        var written = record
        written.header = MetaHeader(seq: UInt8(truncatingIfNeeded: sequence))
        let target = slotOffset(index)
        withUnsafeTemporaryAllocation(byteCount: Record.encodedSize, alignment: 8) { buffer in
            let p = buffer.baseAddress!
            written.encode(into: p)
            written.header.crc = loadLE(p, 0, UInt32.self)
            memory.persist(at: target, from: p, count: Record.encodedSize)
        }
        return written
    }
}
