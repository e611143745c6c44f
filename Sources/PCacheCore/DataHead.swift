/// Where one queue allocates cache space for data (dm-pcache's per-CPU data
/// head). Owned by a single queue thread, so allocation takes no lock; only
/// taking a fresh segment goes to the shared `SegmentPool`.
///
/// Heads are not persisted: after a restart every head starts empty, and a
/// partly filled segment is never appended to again (GC frees it once no key
/// refers to it).
struct DataHead {
    private(set) var segment: UInt32 = 0
    private(set) var offset: UInt32 = 0
    private(set) var isEmpty = true

    struct Allocation {
        var segment: UInt32
        var offset: UInt32
        var length: UInt32
        var generation: UInt64
    }

    /// Allocates up to `length` bytes; the allocation is shorter when the
    /// current segment has less left. Each allocation holds one reference on
    /// its segment for the key that will point at it. Returns nil when no
    /// segment is free.
    ///
    /// Takes no closure for invalidating segments: one made from a method of
    /// the shared `Cache` (`cache.invalidate`) retains and releases that
    /// object on every call, an atomic read-modify-write on a cache line every
    /// queue thread touches. None is needed here, see below.
    mutating func allocate(_ length: UInt32, pool: SegmentPool) -> Allocation? {
        if isEmpty {
            guard let fresh = pool.allocate() else { return nil }
            pool.takeReference(fresh)  // the head's own reference
            segment = fresh
            offset = 0
            isEmpty = false
        }
        let remaining = UInt32(PCacheLayout.segmentDataSize) - offset
        let granted = min(length, remaining)
        let allocation = Allocation(
            segment: segment, offset: offset, length: granted, generation: pool.generation(segment))
        pool.takeReference(segment)
        offset += granted
        if offset == UInt32(PCacheLayout.segmentDataSize) {
            // Full: the head lets the segment go. Its last reference cannot
            // be this one, as the allocation just made holds another.
            isEmpty = true
            let wasLast = pool.dropReference(segment)
            assert(!wasLast, "a full segment lost its last reference while an allocation holds one")
        }
        return allocation
    }

    /// Gives up the current segment (full, or the queue is stopping).
    mutating func retire(pool: SegmentPool, invalidate: (UInt32) -> Void) {
        guard !isEmpty else { return }
        isEmpty = true
        if pool.dropReference(segment) { invalidate(segment) }
    }
}
