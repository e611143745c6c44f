/// The keys of one 4 MiB stripe of the backing device, sorted by offset and
/// never overlapping (dm-pcache's per-subtree red-black tree).
///
/// A subtree holds at most 8192 keys (4 MiB in 512-byte sectors), so a flat
/// sorted array with binary search and `memmove` for inserts is both simpler
/// and faster than a pointer tree here: one contiguous allocation, no per-node
/// reference counting, and allocation only when the array grows.
///
/// Not synchronised: the owner holds the subtree's lock around every call.
public struct SubtreeIndex {
    private(set) var keys: UnsafeMutablePointer<Extent>
    public private(set) var count: Int = 0
    public private(set) var capacity: Int

    /// With capacity 0 nothing is allocated until the first insert, so an
    /// index over a large backing device costs little until it is used.
    public init(initialCapacity: Int = 0) {
        capacity = max(initialCapacity, 0)
        keys = .allocate(capacity: max(capacity, 1))
    }

    public func deallocate() {
        keys.deallocate()
    }

    @inline(__always)
    public subscript(index: Int) -> Extent {
        get { keys[index] }
        nonmutating set { keys[index] = newValue }
    }

    /// Bytes of memory this subtree holds.
    public var memoryBytes: Int { capacity * MemoryLayout<Extent>.stride }

    /// Index of the first key whose end lies after `offset`, i.e. the first
    /// key that could overlap a range starting at `offset`.
    @inline(__always)
    public func firstIndex(endingAfter offset: UInt64) -> Int {
        var low = 0, high = count
        while low < high {
            let mid = (low + high) >> 1
            if keys[mid].end <= offset { low = mid + 1 } else { high = mid }
        }
        return low
    }

    // MARK: Editing

    private mutating func reserve(_ needed: Int) {
        guard needed > capacity else { return }
        var newCapacity = max(capacity * 2, 8)
        while newCapacity < needed { newCapacity *= 2 }
        let grown = UnsafeMutablePointer<Extent>.allocate(capacity: newCapacity)
        grown.moveInitialize(from: keys, count: count)
        keys.deallocate()
        keys = grown
        capacity = newCapacity
    }

    /// Replaces keys[range] with `replacement` (0, 1 or 2 keys), shifting the rest.
    private mutating func replace(_ range: Range<Int>, with first: Extent?, _ second: Extent? = nil) {
        let inserted = (first == nil ? 0 : 1) + (second == nil ? 0 : 1)
        let delta = inserted - range.count
        if delta > 0 { reserve(count + delta) }
        let tail = count - range.upperBound
        if delta != 0 && tail > 0 {
            (keys + range.upperBound + delta).moveInitialize(from: keys + range.upperBound, count: tail)
        }
        if let first { (keys + range.lowerBound).initialize(to: first) }
        if let second { (keys + range.lowerBound + 1).initialize(to: second) }
        count += delta
    }

    /// Removes the key at `index`.
    public mutating func remove(at index: Int) {
        replace(index..<(index + 1), with: nil)
    }

    /// Inserts `key` and resolves every overlap so the newest data wins:
    /// covered keys are removed, partly covered keys are cut, and a key that
    /// strictly contains the new one is split in two. Placeholders (read
    /// misses in flight) are only ever shortened, never split: the part after
    /// the new key is given up, as dm-pcache does.
    public mutating func insert(_ key: Extent) {
        var i = firstIndex(endingAfter: key.start)
        if i < count && keys[i].start < key.start {
            let existing = keys[i]
            if existing.end > key.end {
                // The new key lies strictly inside an existing one.
                var head = existing
                head.cutBack(UInt32(existing.end - key.start))
                if existing.isPlaceholder {
                    keys[i] = head
                    replace((i + 1)..<(i + 1), with: key)
                } else {
                    var tail = existing
                    tail.cutFront(UInt32(key.end - existing.start))
                    keys[i] = head
                    replace((i + 1)..<(i + 1), with: key, tail)
                }
                return
            }
            // Head overlap: keep the part before the new key.
            keys[i].cutBack(UInt32(existing.end - key.start))
            i += 1
        }
        // Every key from i on starts at or after key.start.
        var j = i
        while j < count && keys[j].end <= key.end { j += 1 }
        if j < count && keys[j].start < key.end {
            // Tail overlap: a placeholder is dropped, a real key cut at the front.
            if keys[j].isPlaceholder {
                j += 1
            } else {
                keys[j].cutFront(UInt32(key.end - keys[j].start))
            }
        }
        replace(i..<j, with: key)
    }

    /// Removes every key overlapping [start, end) and cuts those that stick out.
    /// Used by discard. Returns the number of bytes of keys removed.
    public mutating func removeRange(start: UInt64, end: UInt64) {
        guard start < end else { return }
        var i = firstIndex(endingAfter: start)
        if i < count && keys[i].start < start {
            let existing = keys[i]
            if existing.end > end {
                var head = existing
                head.cutBack(UInt32(existing.end - start))
                keys[i] = head
                if !existing.isPlaceholder {
                    var tail = existing
                    tail.cutFront(UInt32(end - existing.start))
                    replace((i + 1)..<(i + 1), with: tail)
                }
                return
            }
            keys[i].cutBack(UInt32(existing.end - start))
            i += 1
        }
        var j = i
        while j < count && keys[j].end <= end { j += 1 }
        if j < count && keys[j].start < end {
            if keys[j].isPlaceholder { j += 1 } else { keys[j].cutFront(UInt32(end - keys[j].start)) }
        }
        replace(i..<j, with: nil)
    }

    /// Finds the placeholder with `token` inside [start, end), if a write has
    /// not removed it.
    public func placeholderIndex(token: UInt32, start: UInt64, end: UInt64) -> Int? {
        var i = firstIndex(endingAfter: start)
        while i < count && keys[i].start < end {
            if keys[i].isPlaceholder && keys[i].placeholderToken == token { return i }
            i += 1
        }
        return nil
    }

    /// Removes up to `limit` keys for which `isStale` holds; returns how many.
    public mutating func removeStale(limit: Int, _ isStale: (Extent) -> Bool) -> Int {
        var removed = 0
        var write = 0
        var read = 0
        while read < count {
            let key = keys[read]
            if removed < limit && !key.isPlaceholder && isStale(key) {
                removed += 1
            } else {
                if write != read { keys[write] = key }
                write += 1
            }
            read += 1
        }
        count = write
        return removed
    }

    /// Removes every key.
    public mutating func removeAll() { count = 0 }
}
