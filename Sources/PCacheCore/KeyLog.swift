/// The key log's head: where the next closed key-set is written
/// (dm-pcache's `key_head`, guarded by its `key_head_lock`).
///
/// Closing is serialised here on purpose: each close writes an empty
/// terminator just past its key-set, and that terminator must never land on a
/// key-set another closer wrote after it. Closes are rare next to appends (one
/// per 128 keys, FLUSH, FUA or the 1 s timer), so one short lock is enough.
final class KeyLog: @unchecked Sendable {
    private let memory: PersistentMemory
    private let pool: SegmentPool
    private let dataAreaOffset: (UInt32) -> Int
    private let lock = PThreadMutex()
    private var head: CachePosition
    private let zeroes: UnsafeMutableRawPointer
    private let lastKeySet: UnsafeMutableRawPointer
    /// Told the new head after every close (see `KeySetStash`).
    var onHeadMoved: ((CachePosition) -> Void)?

    init(memory: PersistentMemory, pool: SegmentPool, head: CachePosition, dataAreaOffset: @escaping (UInt32) -> Int) {
        self.memory = memory
        self.pool = pool
        self.head = head
        self.dataAreaOffset = dataAreaOffset
        zeroes = .allocate(byteCount: PCacheLayout.ksetHeaderSize, alignment: 64)
        zeroes.initializeMemory(as: UInt8.self, repeating: 0, count: PCacheLayout.ksetHeaderSize)
        lastKeySet = .allocate(byteCount: PCacheLayout.ksetHeaderSize, alignment: 64)
    }

    deinit {
        zeroes.deallocate()
        lastKeySet.deallocate()
        lock.destroy()
    }

    /// The position the next key-set will be written at.
    var currentHead: CachePosition { lock.withLock { head } }

    /// Writes an encoded key-set (crc filled) of `size` bytes at the head and
    /// advances it. Returns false, writing nothing, when the current segment
    /// is too full and no free segment was available to continue the log.
    func write(keySet: UnsafeRawPointer, size: Int) -> Bool {
        lock.withLock {
            let terminator = PCacheLayout.ksetHeaderSize
            if PCacheLayout.segmentDataSize - Int(head.segOff) < size + terminator {
                guard let next = pool.allocate() else { return false }
                // The new segment starts terminated, then the old one points at it.
                memory.persist(at: dataAreaOffset(next), from: zeroes, count: terminator)
                KeySetEncoding.encodeLast(next: next, into: lastKeySet)
                memory.persist(at: dataAreaOffset(head.cacheSegID) + Int(head.segOff), from: lastKeySet, count: terminator)
                head = CachePosition(cacheSegID: next, segOff: 0)
            }
            let at = dataAreaOffset(head.cacheSegID) + Int(head.segOff)
            // Terminator first: until the key-set itself is durable, the log
            // must still end where it ended before.
            memory.storeAndFlush(at: at + size, from: zeroes, count: terminator)
            memory.drain()
            memory.storeAndFlush(at: at, from: keySet, count: size)
            memory.drain()
            head.segOff += UInt32(size)
            onHeadMoved?(head)
            return true
        }
    }
}

/// How the writer fills its in-memory key-set buffers.
enum KeySetEncoding {
    /// Encodes `key` into key slot `slot` of a key-set buffer.
    @inline(__always)
    static func encode(_ key: Extent, dataCRC: Bool, slot: Int, into buffer: UnsafeMutableRawPointer) {
        KeyOnMedia(
            off: key.start, len: key.length, flags: key.flags.contains(.clean) ? KeyOnMedia.flagClean : 0,
            cacheSegID: key.segment, cacheSegOff: key.segmentOffset, segGen: key.generation,
            dataCRC: dataCRC ? key.crc : 0
        ).encode(into: buffer + KeySetHeader.encodedSize + slot * KeyOnMedia.encodedSize)
    }

    /// Completes a normal key-set of `keyCount` keys (header, magic, crc);
    /// returns its size.
    static func seal(keyCount: Int, buffer: UnsafeMutableRawPointer) -> Int {
        KeySetHeader(keyNumOrNext: UInt32(keyCount)).encode(into: buffer)
        return KeySetCodec.seal(buffer)
    }

    /// A LAST key-set naming the next key-log segment (24 bytes).
    static func encodeLast(next: UInt32, into buffer: UnsafeMutableRawPointer) {
        KeySetCodec.encodeLast(nextCacheSegID: next, into: buffer)
    }
}
