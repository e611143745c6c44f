/// The keys of one writeback batch, overlaps resolved so a later key wins,
/// visited in backing-device order.
///
/// One sorted array for the whole batch would move half of it on every
/// insert: with thousands of keys that is megabytes of memmove per batch.
/// So, like the cache index, the batch is split by 4 MiB stripe: a small
/// sorted `SubtreeIndex` per stripe the batch touches, found through a
/// dictionary, and the touched stripes sorted once when the batch is walked.
/// Everything is kept between batches, so a steady state allocates nothing.
struct WritebackBatch {
    private var slotOfStripe: [Int: Int] = [:]
    private var stripes: [Int] = []
    private var subtrees: [SubtreeIndex] = []
    private var used = 0

    init(expectedKeys: Int) {
        slotOfStripe.reserveCapacity(expectedKeys)
        stripes.reserveCapacity(expectedKeys)
    }

    func deallocate() {
        for subtree in subtrees { subtree.deallocate() }
    }

    var isEmpty: Bool { used == 0 }

    mutating func removeAll() {
        for slot in 0..<used { subtrees[slot].removeAll() }
        slotOfStripe.removeAll(keepingCapacity: true)
        stripes.removeAll(keepingCapacity: true)
        used = 0
    }

    /// Adds `key`; where it overlaps keys already in the batch, it wins.
    mutating func insert(_ key: Extent) {
        var rest = key
        while rest.length > 0 {
            let stripe = CacheIndex.subtree(of: rest.start)
            let stripeEnd = UInt64(stripe + 1) << UInt64(PCacheLayout.subtreeShift)
            var piece = rest
            if piece.end > stripeEnd {
                // Keys we write never cross a stripe; a replayed one might.
                piece.cutBack(UInt32(piece.end - stripeEnd))
            }
            subtrees[subtreeSlot(for: stripe)].insert(piece)
            rest.cutFront(piece.length)
        }
    }

    /// Calls `body` for every key, in offset order.
    mutating func forEach(_ body: (Extent) -> Void) {
        stripes.sort()
        for stripe in stripes {
            subtrees[slotOfStripe[stripe]!].forEach(body)
        }
    }

    private mutating func subtreeSlot(for stripe: Int) -> Int {
        let slot: Int
        if let known = slotOfStripe[stripe] {
            slot = known
        } else {
            slot = used
            used += 1
            if slot == subtrees.count { subtrees.append(SubtreeIndex()) }
            slotOfStripe[stripe] = slot
            stripes.append(stripe)
        }
        return slot
    }
}
