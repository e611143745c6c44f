import CSupport

/// The cache segments: which are in use (dm-pcache's `seg_map`), how many keys
/// refer to each, and each one's generation.
///
/// Allocation and release take one short lock; reference counts and
/// generations are atomics in flat arrays, so the write path (taking a
/// reference) and the read path (checking a generation) never lock.
public final class SegmentPool: @unchecked Sendable {
    public let count: UInt32
    private let lock = PThreadMutex()
    private var usedBits: [UInt64]
    private var hint: UInt32 = 0
    private var usedCount: UInt32 = 0
    /// Set when an allocation found nothing; cleared when a segment is freed.
    private(set) var isFull = false

    /// One cache line per segment: two queues' data heads are usually
    /// neighbouring segments, and their counters must not share a line.
    private let references: UnsafeMutablePointer<UInt32>
    private static let referenceStride = 16
    private let generations: UnsafeMutablePointer<UInt64>

    /// Called, outside the lock, after a segment went back to the free pool.
    var onSegmentFreed: (@Sendable () -> Void)?

    public init(count: UInt32, generations initial: (UInt32) -> UInt64) {
        self.count = count
        usedBits = [UInt64](repeating: 0, count: (Int(count) + 63) / 64)
        references = .allocate(capacity: Int(count) * Self.referenceStride)
        references.initialize(repeating: 0, count: Int(count) * Self.referenceStride)
        generations = .allocate(capacity: Int(count))
        for id in 0..<count { (generations + Int(id)).initialize(to: initial(id)) }
    }

    deinit {
        references.deallocate()
        generations.deallocate()
        lock.destroy()
    }

    // MARK: Allocation

    /// Takes a free segment, searching from the last one handed out
    /// (dm-pcache's next-fit), or returns nil and marks the cache full.
    public func allocate() -> UInt32? {
        lock.withLock {
            if let id = findFree(from: hint) ?? findFree(from: 0) {
                setUsed(id)
                hint = id
                return id
            }
            isFull = true
            return nil
        }
    }

    private func findFree(from start: UInt32) -> UInt32? {
        var id = start
        while id < count {
            let word = usedBits[Int(id / 64)]
            if word == ~0 {
                id = (id / 64 + 1) * 64
                continue
            }
            if word & (1 << UInt64(id % 64)) == 0 { return id }
            id += 1
        }
        return nil
    }

    private func setUsed(_ id: UInt32) {
        let bit: UInt64 = 1 << UInt64(id % 64)
        if usedBits[Int(id / 64)] & bit == 0 {
            usedBits[Int(id / 64)] |= bit
            usedCount += 1
        }
    }

    /// Marks a segment used without allocating it (replay, new cache start).
    public func markUsed(_ id: UInt32) {
        lock.withLock { setUsed(id) }
    }

    public func isUsed(_ id: UInt32) -> Bool {
        lock.withLock { usedBits[Int(id / 64)] & (1 << UInt64(id % 64)) != 0 }
    }

    /// Returns a segment to the free pool. For key-log segments this is the
    /// whole release (no key points into them, so no generation bump).
    public func release(_ id: UInt32) {
        lock.withLock {
            let bit: UInt64 = 1 << UInt64(id % 64)
            if usedBits[Int(id / 64)] & bit != 0 {
                usedBits[Int(id / 64)] &= ~bit
                usedCount -= 1
            }
            isFull = false
        }
        onSegmentFreed?()
    }

    /// Segments in use: key-log, data and data-head segments alike.
    public var usedSegments: UInt32 { lock.withLock { usedCount } }

    // MARK: References and generations

    @inline(__always)
    public func takeReference(_ id: UInt32) {
        _ = pcs_atomic_add_u32(references + Int(id) * Self.referenceStride, 1)
    }

    /// Drops one reference; true when it was the last, and the caller must
    /// invalidate the segment.
    @inline(__always)
    public func dropReference(_ id: UInt32) -> Bool {
        pcs_atomic_sub_u32(references + Int(id) * Self.referenceStride, 1) == 0
    }

    public func referenceCount(_ id: UInt32) -> UInt32 {
        pcs_atomic_load_u32(references + Int(id) * Self.referenceStride)
    }

    @inline(__always)
    public func generation(_ id: UInt32) -> UInt64 {
        pcs_atomic_load_u64(generations + Int(id))
    }

    /// Bumps the generation (making every key into the segment stale) and
    /// returns the new value. The caller persists it before releasing.
    public func bumpGeneration(_ id: UInt32) -> UInt64 {
        let next = generation(id) + 1
        pcs_atomic_store_u64(generations + Int(id), next)
        return next
    }

    /// True when a key allocated at `keyGeneration` may still be served.
    @inline(__always)
    public func isCurrent(segment id: UInt32, keyGeneration: UInt64) -> Bool {
        keyGeneration >= generation(id)
    }
}
