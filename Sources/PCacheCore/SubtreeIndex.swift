import CSupport

/// The keys of one 4 MiB stripe of the backing device, sorted by offset and
/// never overlapping (dm-pcache's per-subtree red-black tree).
///
/// Two levels: a directory of leaves, each leaf a small sorted array of at
/// most `leafCapacity` keys, and the directory sorted by each leaf's last key.
/// Leaves and directories come from an `IndexArena` when one is given (the
/// cache's index), else from malloc (short-lived indexes and tests).
/// A lookup is two binary searches; an insert moves at most one leaf's keys.
/// One flat sorted array was simpler, but an insert moved half the stripe's
/// keys (kilobytes with a few hundred keys, up to 200 KiB at the 8192-key
/// limit), and with two queue threads those cache lines were usually the other
/// core's: two threads together wrote fewer keys than one alone. Leaves are
/// never freed while the subtree lives (emptied ones are kept as spares past
/// the used part of the directory), so steady state allocates nothing, and
/// nothing is reference counted.
///
/// Positions are `Cursor`s. Any edit may move keys between leaves, so a
/// cursor is valid only until the next edit, except the one `remove(at:)`
/// returns.
///
/// Not synchronised: the owner holds the subtree's lock around every call,
/// except the prefetch hints (`prefetchDirectory(of:)`, `leafHint(of:)`),
/// which a writer reads before it takes the lock.
public struct SubtreeIndex {
    /// Keys per leaf: 32 × 48 bytes, so an insert moves at most 1.5 KiB.
    static let leafCapacity = 32

    struct Leaf {
        var keys: UnsafeMutablePointer<Extent>
        var count: Int
        /// End of the leaf's last key: what the directory is searched by.
        var lastEnd: UInt64
    }

    /// A key's position: leaf and slot in it. `leaf == leafCount` is the end.
    public struct Cursor: Equatable {
        var leaf: Int
        var slot: Int
    }

    /// Leaves in use are `directory[0..<leafCount]`, none empty; emptied
    /// spares follow up to `allocatedLeaves`.
    private var directory: UnsafeMutablePointer<Leaf>
    private var leafCount = 0
    private var allocatedLeaves = 0
    private var directoryCapacity = 0
    public private(set) var count = 0
    /// Where leaves and directories come from; nil: malloc.
    private let arena: IndexArena?

    /// Nothing is allocated for leaves until the first insert, so an index
    /// over a large backing device costs little until it is used.
    public init() {
        self.init(arena: nil)
    }

    init(arena: IndexArena?) {
        self.arena = arena
        directory = DirectoryBlock.allocate(capacity: 0, replacing: nil, arena: arena)
    }

    /// Frees what came from malloc; what came from an arena goes with it.
    public func deallocate() {
        guard arena == nil else { return }
        for i in 0..<allocatedLeaves { directory[i].keys.deallocate() }
        var block: UnsafeMutablePointer<Leaf>? = directory
        while let current = block {
            block = DirectoryBlock.replaced(by: current)
            DirectoryBlock.deallocate(current)
        }
    }

    public var isEmpty: Bool { count == 0 }

    /// Bytes of memory this subtree holds, replaced directories included.
    public var memoryBytes: Int {
        var bytes = allocatedLeaves * Self.leafCapacity * MemoryLayout<Extent>.stride
        var block: UnsafeMutablePointer<Leaf>? = directory
        while let current = block {
            bytes += DirectoryBlock.capacity(of: current) * MemoryLayout<Leaf>.stride
            block = DirectoryBlock.replaced(by: current)
        }
        return bytes
    }

    /// A directory's memory: a header (the block this one replaced, and
    /// this one's capacity), then the leaves. A replaced block is kept until
    /// the subtree is deallocated, because hint readers may still be reading
    /// it without the lock; directories grow by doubling, so the kept ones
    /// add less than the current one holds.
    private enum DirectoryBlock {
        static let headerBytes = 16

        static func allocate(
            capacity: Int, replacing previous: UnsafeMutablePointer<Leaf>?, arena: IndexArena?
        ) -> UnsafeMutablePointer<Leaf> {
            let bytes = headerBytes + max(capacity, 1) * MemoryLayout<Leaf>.stride
            let raw = arena?.allocate(bytes: bytes) ?? UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 16)
            raw.storeBytes(of: previous.map { UnsafeMutableRawPointer($0) }, as: UnsafeMutableRawPointer?.self)
            raw.storeBytes(of: capacity, toByteOffset: 8, as: Int.self)
            return (raw + headerBytes).bindMemory(to: Leaf.self, capacity: max(capacity, 1))
        }

        static func replaced(by block: UnsafeMutablePointer<Leaf>) -> UnsafeMutablePointer<Leaf>? {
            (UnsafeMutableRawPointer(block) - headerBytes).load(as: UnsafeMutableRawPointer?.self)?
                .assumingMemoryBound(to: Leaf.self)
        }

        static func capacity(of block: UnsafeMutablePointer<Leaf>) -> Int {
            (UnsafeMutableRawPointer(block) - headerBytes).load(fromByteOffset: 8, as: Int.self)
        }

        static func deallocate(_ block: UnsafeMutablePointer<Leaf>) {
            (UnsafeMutableRawPointer(block) - headerBytes).deallocate()
        }
    }

    // MARK: Reading

    /// The first key whose end lies after `offset`, i.e. the first key that
    /// could overlap a range starting at `offset`; `endCursor` if none.
    @inline(__always)
    public func first(endingAfter offset: UInt64) -> Cursor {
        let low = Self.countEnding(atOrBefore: offset, in: leafCount) { directory[$0].lastEnd }
        guard low < leafCount else { return endCursor }
        let keys = directory[low].keys
        let slots = directory[low].count
        // The binary search below would miss on up to five lines of a cold
        // leaf, one after another; asked for at once, the misses overlap.
        pcs_prefetch_range(keys, slots * MemoryLayout<Extent>.stride)
        return Cursor(leaf: low, slot: Self.countEnding(atOrBefore: offset, in: slots) { keys[$0].end })
    }

    public var endCursor: Cursor { Cursor(leaf: leafCount, slot: 0) }

    /// How many of the `count` sorted ends `end(i)` are <= `offset`: a
    /// binary search whose steps depend only on `count`, with the comparison
    /// chosen by a conditional move. Which way a step goes is random for
    /// random writes, so a branch there was mispredicted about every other
    /// step, some 15 cycles each, about ten times per lookup.
    @inline(__always)
    static func countEnding(atOrBefore offset: UInt64, in count: Int, _ end: (Int) -> UInt64) -> Int {
        guard count > 0 else { return 0 }
        var base = 0, remaining = count
        while remaining > 1 {
            let half = remaining &>> 1
            base = pcs_select_at_or_below(end(base &+ half &- 1), offset, base &+ half, base)
            remaining &-= half
        }
        return base &+ (end(base) <= offset ? 1 : 0)
    }

    // MARK: Prefetch hints, without the lock

    // The index lines a write searches are usually cold: the stripe's
    // header, its directory, then a leaf, each a miss that can only be asked
    // for once the one before it has arrived. A queue that has its next
    // requests in hand asks for them a step at a time, a request or more
    // ahead (`CacheQueue.lookAhead`), so they arrive while earlier requests
    // are served instead of stalling the search under the lock.
    //
    // The hints read the directory while a lock holder may be editing it, so
    // what they find may be stale or half-moved; it only chooses which lines
    // to prefetch (a prefetch never faults), never what is read or written.
    // What must hold is that every load stays inside allocated memory:
    // leaves and directory blocks are never freed while the subtree lives,
    // and the leaf count is read before the directory pointer, while a lock
    // holder stores a grown directory before any count that needs its room.
    // x86-64 keeps stores in program order (and `pcs_compiler_fence` keeps
    // the compiler from reordering them); elsewhere the hints do nothing.

    @inline(__always) private static var leafCountOffset: Int { MemoryLayout<SubtreeIndex>.offset(of: \SubtreeIndex.leafCount)! }
    @inline(__always) private static var directoryOffset: Int { MemoryLayout<SubtreeIndex>.offset(of: \SubtreeIndex.directory)! }
    @inline(__always) private static var lastEndOffset: Int { MemoryLayout<Leaf>.offset(of: \Leaf.lastEnd)! }
    @inline(__always) private static var countOffset: Int { MemoryLayout<Leaf>.offset(of: \Leaf.count)! }
    @inline(__always) private static var keysOffset: Int { MemoryLayout<Leaf>.offset(of: \Leaf.keys)! }

    /// Leaf count and directory as a racing reader may use them.
    @inline(__always)
    static func racyDirectory(of index: UnsafeRawPointer) -> (leaves: Int, directory: UnsafeRawPointer)? {
        #if arch(x86_64)
        let leaves = Int(truncatingIfNeeded: pcs_racy_load_word(index + leafCountOffset))
        guard let directory = UnsafeRawPointer(bitPattern: UInt(pcs_racy_load_word(index + directoryOffset))) else {
            return nil
        }
        return (leaves, directory)
        #else
        return nil
        #endif
    }

    /// Asks for the directory lines of the subtree at `index`.
    @inline(__always)
    static func prefetchDirectory(of index: UnsafeRawPointer) {
        guard let (leaves, directory) = racyDirectory(of: index) else { return }
        pcs_prefetch_range(directory, max(leaves, 0) &* MemoryLayout<Leaf>.stride)
    }

    /// The keys of the leaf `first(endingAfter: offset)` would search, as a
    /// racing reader sees them: where they are and how many (at most
    /// `leafCapacity`). Nil at the end of the subtree.
    @inline(__always)
    static func leafHint(of index: UnsafeRawPointer, endingAfter offset: UInt64) -> (keys: UnsafeRawPointer, count: Int)? {
        guard let (leaves, directory) = racyDirectory(of: index) else { return nil }
        let stride = MemoryLayout<Leaf>.stride
        let low = countEnding(atOrBefore: offset, in: leaves) {
            pcs_racy_load_word(directory + $0 &* stride + lastEndOffset)
        }
        guard low < leaves,
              let keys = UnsafeRawPointer(bitPattern: UInt(pcs_racy_load_word(directory + low * stride + keysOffset)))
        else { return nil }
        let count = Int(truncatingIfNeeded: pcs_racy_load_word(directory + low * stride + countOffset))
        return (keys, min(max(count, 0), leafCapacity))
    }

    /// Asks for the lines of the leaf a search for `offset` will read.
    @inline(__always)
    static func prefetchLeaf(of index: UnsafeRawPointer, endingAfter offset: UInt64) {
        guard let (keys, count) = leafHint(of: index, endingAfter: offset) else { return }
        pcs_prefetch_range(keys, count * MemoryLayout<Extent>.stride)
    }

    /// The key at `cursor`, nil at the end.
    @inline(__always)
    public func key(at cursor: Cursor) -> Extent? {
        cursor.leaf < leafCount ? directory[cursor.leaf].keys[cursor.slot] : nil
    }

    @inline(__always)
    public func next(after cursor: Cursor) -> Cursor {
        cursor.slot + 1 < directory[cursor.leaf].count
            ? Cursor(leaf: cursor.leaf, slot: cursor.slot + 1) : Cursor(leaf: cursor.leaf + 1, slot: 0)
    }

    /// Calls `body` for every key in offset order.
    public func forEach(_ body: (Extent) throws -> Void) rethrows {
        for l in 0..<leafCount {
            let leaf = directory[l]
            for s in 0..<leaf.count { try body(leaf.keys[s]) }
        }
    }

    /// Every key in offset order (allocates: for inspection and tests).
    public var allKeys: [Extent] {
        var all: [Extent] = []
        all.reserveCapacity(count)
        forEach { all.append($0) }
        return all
    }

    /// Finds the placeholder with `token` inside [start, end), if a write has
    /// not removed it.
    public func placeholder(token: UInt32, start: UInt64, end: UInt64) -> Cursor? {
        var cursor = first(endingAfter: start)
        while let key = key(at: cursor), key.start < end {
            if key.isPlaceholder && key.placeholderToken == token { return cursor }
            cursor = next(after: cursor)
        }
        return nil
    }

    // MARK: Editing

    /// Inserts `key` and resolves every overlap so the newest data wins:
    /// covered keys are removed, partly covered keys are cut, and a key that
    /// strictly contains the new one is split in two. Placeholders (read
    /// misses in flight) are only ever shortened, never split: the part after
    /// the new key is given up, as dm-pcache does.
    public mutating func insert(_ key: Extent) {
        insert(key, at: first(endingAfter: key.start))
    }

    /// `insert` for a caller that already has `first(endingAfter: key.start)`
    /// and has not edited the index since: the write path, which looks at the
    /// overlapped keys first (`OpenKeySets.keySet`), searches only once.
    public mutating func insert(_ key: Extent, at cursor: Cursor) {
        assert(cursor == first(endingAfter: key.start), "insert(_:at:) needs a cursor from first(endingAfter:) of this key")
        if let next = self.key(at: cursor), next.start < key.end {
            if next.start == key.start && next.length == key.length {
                // A rewrite of exactly one cached key, the common overwrite:
                // the new key takes its slot. The range is the same, so the
                // order, the leaf's last end and the count all stay as they
                // are, and no keys move.
                directory[cursor.leaf].keys[cursor.slot] = key
                return
            }
            removeRange(start: key.start, end: key.end)
            place(key, at: first(endingAfter: key.start))
        } else {
            place(key, at: cursor)  // overlaps nothing: the common case of a write to uncached blocks
        }
    }

    /// Removes every key overlapping [start, end) and cuts those that stick
    /// out; a placeholder sticking out past `end` is removed (see `insert`).
    public mutating func removeRange(start: UInt64, end: UInt64) {
        guard start < end else { return }
        var cursor = first(endingAfter: start)
        guard let existing = key(at: cursor) else { return }
        if existing.start < start {
            if existing.end > end {
                // [start, end) lies strictly inside one key: keep its head,
                // and its tail unless it is a placeholder.
                modify(cursor) { $0.cutBack(UInt32(existing.end - start)) }
                if !existing.isPlaceholder {
                    var tail = existing
                    tail.cutFront(UInt32(end - existing.start))
                    place(tail, at: next(after: cursor))
                }
                return
            }
            // Head overlap: keep the part before `start`.
            modify(cursor) { $0.cutBack(UInt32(existing.end - start)) }
            cursor = next(after: cursor)
        }
        // Every key from the cursor on starts at or after `start`. Remove
        // the covered ones, a leaf's run at a time.
        while cursor.leaf < leafCount {
            let leaf = directory[cursor.leaf]
            var last = cursor.slot
            while last < leaf.count && leaf.keys[last].end <= end { last += 1 }
            let stoppedInside = last < leaf.count
            if last > cursor.slot && removeSlots(leaf: cursor.leaf, cursor.slot..<last) {
                cursor.slot = 0  // the leaf went: the cursor is now on the next one
                continue
            }
            if stoppedInside { break }
            cursor = Cursor(leaf: cursor.leaf + 1, slot: 0)
        }
        if let tail = key(at: cursor), tail.start < end {
            // Tail overlap: a placeholder is dropped, a real key cut at the front.
            if tail.isPlaceholder {
                cursor = remove(at: cursor)
            } else {
                modify(cursor) { $0.cutFront(UInt32(end - tail.start)) }
            }
        }
        if cursor.leaf > 0 { mergeIfSparse(cursor.leaf - 1) }
    }

    /// Removes the key at `cursor`; returns the position of the key that
    /// followed it.
    @discardableResult
    public mutating func remove(at cursor: Cursor) -> Cursor {
        var position = cursor
        if removeSlots(leaf: cursor.leaf, cursor.slot..<(cursor.slot + 1)) {
            position.slot = 0
        } else if position.leaf + 1 < leafCount
            && directory[position.leaf].count + directory[position.leaf + 1].count <= Self.leafCapacity / 2 {
            mergeIfSparse(position.leaf)  // the next leaf's keys follow on in this one
        } else if position.leaf > 0
            && directory[position.leaf - 1].count + directory[position.leaf].count <= Self.leafCapacity / 2 {
            let before = directory[position.leaf - 1].count
            mergeIfSparse(position.leaf - 1)
            position = Cursor(leaf: position.leaf - 1, slot: before + position.slot)
        }
        if position.leaf < leafCount && position.slot >= directory[position.leaf].count {
            position = Cursor(leaf: position.leaf + 1, slot: 0)
        }
        return position
    }

    /// Removes up to `limit` keys for which `isStale` holds; returns how many.
    public mutating func removeStale(limit: Int, _ isStale: (Extent) -> Bool) -> Int {
        var removed = 0
        var l = 0
        while l < leafCount && removed < limit {
            let keys = directory[l].keys
            var kept = 0
            for s in 0..<directory[l].count {
                let key = keys[s]
                if removed < limit && !key.isPlaceholder && isStale(key) {
                    removed += 1
                } else {
                    if kept != s { keys[kept] = key }
                    kept += 1
                }
            }
            count -= directory[l].count - kept
            directory[l].count = kept
            if kept == 0 {
                removeLeaf(l)
                continue
            }
            directory[l].lastEnd = keys[kept - 1].end
            let leavesBefore = leafCount
            if l > 0 { mergeIfSparse(l - 1) }
            if leafCount == leavesBefore { l += 1 }  // else leaf l went into l - 1, and l is the next one
        }
        return removed
    }

    /// Removes every key; the leaves stay allocated as spares.
    public mutating func removeAll() {
        for l in 0..<leafCount { directory[l].count = 0 }
        leafCount = 0
        count = 0
    }

    /// Describes the first broken structural rule, nil if none (for tests):
    /// no empty or overfull leaf, `lastEnd` current, keys sorted without
    /// overlap across leaves, `count` their sum.
    func structuralProblem() -> String? {
        var total = 0
        var previousEnd: UInt64 = 0
        for l in 0..<leafCount {
            let leaf = directory[l]
            if leaf.count == 0 || leaf.count > Self.leafCapacity { return "leaf \(l) holds \(leaf.count) keys" }
            for s in 0..<leaf.count {
                let key = leaf.keys[s]
                if key.length == 0 { return "zero-length key in leaf \(l)" }
                if key.start < previousEnd { return "leaf \(l) slot \(s) overlaps or is out of order" }
                previousEnd = key.end
            }
            if leaf.lastEnd != previousEnd { return "leaf \(l) lastEnd \(leaf.lastEnd), last key ends at \(previousEnd)" }
            total += leaf.count
        }
        return total == count ? nil : "count \(count), keys held \(total)"
    }

    /// Leaves in use (for tests and memory figures).
    var leavesInUse: Int { leafCount }

    /// Where the keys of the leaf at `cursor` are (for tests of the hints).
    func leafKeys(at cursor: Cursor) -> (keys: UnsafeRawPointer, count: Int)? {
        cursor.leaf < leafCount ? (UnsafeRawPointer(directory[cursor.leaf].keys), directory[cursor.leaf].count) : nil
    }

    /// Every leaf's key array, spares included (for tests of the hints).
    var allLeafKeyArrays: [UnsafeRawPointer] { (0..<allocatedLeaves).map { UnsafeRawPointer(directory[$0].keys) } }

    // MARK: Leaves

    /// Puts `key` at `cursor`, which is `first(endingAfter: key.start)`;
    /// nothing in the index overlaps the key.
    private mutating func place(_ key: Extent, at cursor: Cursor) {
        count += 1
        if leafCount == 0 {
            insertLeaf(at: 0)
            append(key, toLeaf: 0)
            return
        }
        var l = cursor.leaf, slot = cursor.slot
        if l == leafCount {
            // After every key: onto the last leaf, or a new one when it is
            // full (so sequential writes fill leaves completely).
            if directory[l - 1].count == Self.leafCapacity { insertLeaf(at: l) } else { l -= 1 }
            append(key, toLeaf: l)
            return
        }
        if slot == 0 && l > 0 && directory[l - 1].count < Self.leafCapacity {
            // Between two leaves: the end of the previous one has room.
            append(key, toLeaf: l - 1)
            return
        }
        if directory[l].count == Self.leafCapacity {
            if slot == 0 {
                insertLeaf(at: l)
                append(key, toLeaf: l)
                return
            }
            let half = Self.leafCapacity / 2
            split(l, at: half)
            if slot > half {
                l += 1
                slot -= half
            }
        }
        let leaf = directory + l
        if slot < leaf.pointee.count {
            (leaf.pointee.keys + slot + 1).moveInitialize(from: leaf.pointee.keys + slot, count: leaf.pointee.count - slot)
        }
        (leaf.pointee.keys + slot).initialize(to: key)
        leaf.pointee.count += 1
        if slot == leaf.pointee.count - 1 { leaf.pointee.lastEnd = key.end }
    }

    @inline(__always)
    private mutating func append(_ key: Extent, toLeaf l: Int) {
        let leaf = directory + l
        (leaf.pointee.keys + leaf.pointee.count).initialize(to: key)
        leaf.pointee.count += 1
        leaf.pointee.lastEnd = key.end
    }

    /// Edits the key at `cursor` in place (its order must not change).
    @inline(__always)
    private mutating func modify(_ cursor: Cursor, _ edit: (inout Extent) -> Void) {
        let leaf = directory + cursor.leaf
        edit(&leaf.pointee.keys[cursor.slot])
        if cursor.slot == leaf.pointee.count - 1 { leaf.pointee.lastEnd = leaf.pointee.keys[cursor.slot].end }
    }

    /// Removes `slots` of leaf `l`; true if that emptied the leaf, which is
    /// then gone from the directory.
    private mutating func removeSlots(leaf l: Int, _ slots: Range<Int>) -> Bool {
        let leaf = directory + l
        let tail = leaf.pointee.count - slots.upperBound
        if tail > 0 {
            (leaf.pointee.keys + slots.lowerBound).moveInitialize(from: leaf.pointee.keys + slots.upperBound, count: tail)
        }
        leaf.pointee.count -= slots.count
        count -= slots.count
        if leaf.pointee.count == 0 {
            removeLeaf(l)
            return true
        }
        leaf.pointee.lastEnd = leaf.pointee.keys[leaf.pointee.count - 1].end
        return false
    }

    /// Moves leaf `l + 1`'s keys onto the end of leaf `l` when together they
    /// fill at most half a leaf, so removals cannot leave many near-empty
    /// leaves behind (every two neighbours hold more than half a leaf).
    private mutating func mergeIfSparse(_ l: Int) {
        guard l + 1 < leafCount else { return }
        let into = directory + l, from = directory + l + 1
        guard into.pointee.count + from.pointee.count <= Self.leafCapacity / 2 else { return }
        (into.pointee.keys + into.pointee.count).moveInitialize(from: from.pointee.keys, count: from.pointee.count)
        into.pointee.count += from.pointee.count
        into.pointee.lastEnd = from.pointee.lastEnd
        from.pointee.count = 0
        removeLeaf(l + 1)
    }

    /// Moves keys `at...` of full leaf `l` into a new leaf after it.
    private mutating func split(_ l: Int, at: Int) {
        insertLeaf(at: l + 1)
        let from = directory + l, into = directory + l + 1
        into.pointee.keys.moveInitialize(from: from.pointee.keys + at, count: from.pointee.count - at)
        into.pointee.count = from.pointee.count - at
        into.pointee.lastEnd = from.pointee.lastEnd
        from.pointee.count = at
        from.pointee.lastEnd = from.pointee.keys[at - 1].end
    }

    /// Opens an empty leaf at directory position `l`, reusing a spare.
    private mutating func insertLeaf(at l: Int) {
        if leafCount == allocatedLeaves {
            if allocatedLeaves == directoryCapacity {
                // The old block keeps its entries for hint readers; the new
                // one is filled before it is published, and published before
                // any leaf count that needs its room (see `leafHint(of:)`).
                let newCapacity = max(directoryCapacity * 2, 4)
                let grown = DirectoryBlock.allocate(capacity: newCapacity, replacing: directory, arena: arena)
                grown.initialize(from: directory, count: allocatedLeaves)
                pcs_compiler_fence()
                directory = grown
                directoryCapacity = newCapacity
                pcs_compiler_fence()
            }
            let keys = arena.map {
                $0.allocate(bytes: Self.leafCapacity * MemoryLayout<Extent>.stride)
                    .bindMemory(to: Extent.self, capacity: Self.leafCapacity)
            } ?? .allocate(capacity: Self.leafCapacity)
            (directory + allocatedLeaves).initialize(to: Leaf(keys: keys, count: 0, lastEnd: 0))
            allocatedLeaves += 1
        }
        let spare = directory[leafCount]
        if l < leafCount {
            (directory + l + 1).moveInitialize(from: directory + l, count: leafCount - l)
        }
        (directory + l).initialize(to: spare)
        leafCount += 1
    }

    /// Takes empty leaf `l` out of the directory and keeps it as a spare.
    private mutating func removeLeaf(_ l: Int) {
        let spare = directory[l]
        if l + 1 < leafCount {
            (directory + l).moveInitialize(from: directory + l + 1, count: leafCount - l - 1)
        }
        leafCount -= 1
        (directory + leafCount).initialize(to: Leaf(keys: spare.keys, count: 0, lastEnd: 0))
    }
}
