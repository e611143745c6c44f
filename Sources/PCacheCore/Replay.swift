/// Rebuilds the index from the key log at start-up (dm-pcache's
/// `cache_replay`): walks the key-sets from the key tail to the first invalid
/// one, inserting each key in log order so the newest data wins.
///
/// A torn or corrupt key-set at the end simply ends the log: it was never
/// completely written, so nothing in it had been made durable by a FLUSH.
struct Replay {
    struct Outcome {
        var keyHead: CachePosition
        var keySets = 0
        var keys = 0
        var staleKeys = 0
    }

    let reader: KeyLogReader
    let pool: SegmentPool
    let index: CacheIndex
    let dataCRC: Bool

    func run(from keyTail: CachePosition) throws -> Outcome {
        var position = keyTail
        var outcome = Outcome(keyHead: keyTail)
        pool.markUsed(position.cacheSegID)
        // Every segment can be crossed at most once; more means a loop.
        var segmentJumps: UInt32 = 0
        while true {
            guard case let .success(keySet) = reader.keySet(at: position) else { break }
            outcome.keySets += 1
            if keySet.isLast {
                let next = try reader.nextSegment(of: keySet, at: position)
                segmentJumps += 1
                guard segmentJumps <= reader.segmentCount else {
                    throw CacheError.corruptKeyLog(at: position, reason: "the key log runs in a circle")
                }
                position = CachePosition(cacheSegID: next, segOff: 0)
                pool.markUsed(next)
                continue
            }
            for i in 0..<keySet.keyCount {
                if try insert(keySet.key(at: i), index: i, at: position) { outcome.keys += 1 } else { outcome.staleKeys += 1 }
            }
            position = position.advanced(by: keySet.size)
        }
        outcome.keyHead = position
        return outcome
    }

    /// Validates one key and puts it in the index; false when it is stale.
    /// GC drops one reference per key when it passes its key-set again,
    /// stale or not, so every key takes one now.
    func insert(_ key: KeyOnMedia, index i: Int, at position: CachePosition) throws -> Bool {
        try reader.validate(key, index: i, at: position)
        if dataCRC { try reader.checkDataCRC(key, at: position) }
        pool.markUsed(key.cacheSegID)
        pool.takeReference(key.cacheSegID)
        guard key.segGen >= pool.generation(key.cacheSegID) else { return false }
        let extent = Extent(
            start: key.off, length: key.len, flags: key.isClean ? .clean : [], segment: key.cacheSegID,
            segmentOffset: key.cacheSegOff, generation: key.segGen, crc: key.dataCRC,
            crcSpanOffset: key.cacheSegOff, crcSpanLength: key.len)
        index.withShard(CacheIndex.subtree(of: key.off)) { $0.insert(extent) }
        return true
    }
}
