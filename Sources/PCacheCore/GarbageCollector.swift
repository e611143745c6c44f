/// Reclaims cache space (dm-pcache's `cache_gc.c`): moves the key tail
/// forward over key-sets that writeback has finished with, dropping each
/// key's reference on its data segment. A segment whose last reference goes
/// is invalidated (generation bumped and persisted) and freed. Eviction is
/// FIFO over the log, and GC never passes the dirty tail.
///
/// GC starts once `segs_used >= n_segs * gc_percent / 100`; with gc_percent 0
/// it runs until the key tail reaches the dirty tail.
final class GarbageCollector: @unchecked Sendable {
    /// Unowned and unchecked, as in `Writeback`: the cache owns this object
    /// and outlives every call into it.
    private unowned(unsafe) let cache: Cache
    private(set) var keySetsCollected: UInt64 = 0
    private(set) var segmentsFreed: UInt64 = 0
    /// A key-set that cannot be decoded stops GC for good: it may be half
    /// processed and cannot be retried.
    private(set) var fatalError: CacheError?

    init(cache: Cache) {
        self.cache = cache
    }

    var isNeeded: Bool {
        let keyTail = cache.metadata.keyTail
        guard fatalError == nil, keyTail != cache.metadata.dirtyTail else { return false }
        let threshold = UInt64(cache.metadata.segmentCount) * UInt64(cache.gcPercent) / 100
        return UInt64(cache.pool.usedSegments) >= threshold
    }

    /// Collects one key-set if GC is due; true when it made progress.
    func step() -> Bool {
        guard isNeeded else { return false }
        let tail = cache.metadata.keyTail
        guard case let .success(keySet) = cache.reader.keySet(at: tail) else { return false }
        do {
            if keySet.isLast {
                // The dirty tail is still in this segment: it is not done with.
                guard cache.metadata.dirtyTail.cacheSegID != tail.cacheSegID else { return false }
                let next = try cache.reader.nextSegment(of: keySet, at: tail)
                cache.metadata.persistKeyTail(CachePosition(cacheSegID: next, segOff: 0))
                // No key points into a key-log segment: freed without a generation bump.
                cache.pool.release(tail.cacheSegID)
                segmentsFreed += 1
                return true
            }
            for i in 0..<keySet.keyCount {
                try cache.reader.validate(keySet.key(at: i), index: i, at: tail)
            }
        } catch {
            fatalError = error as? CacheError
            return false
        }
        // Persist the new key tail before dropping references. Were a segment
        // freed first and reused (say for key-sets) before a power cut, replay
        // would re-read this key-set, count references to the reused segment
        // again, and a later GC pass would free it while still in use.
        cache.metadata.persistKeyTail(tail.advanced(by: keySet.size))
        for i in 0..<keySet.keyCount {
            let segment = keySet.key(at: i).cacheSegID
            if cache.pool.dropReference(segment) {
                cache.invalidate(segment)
                segmentsFreed += 1
            }
        }
        keySetsCollected += 1
        return true
    }
}
