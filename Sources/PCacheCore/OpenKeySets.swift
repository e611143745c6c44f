import CSupport

/// The key-sets being filled (dm-pcache's per-CPU `pcache_cache_kset`), one
/// per queue.
///
/// Replay inserts keys in log order, so two keys for the same bytes must
/// reach the log in the order they entered the index. The kernel gets that by
/// sending every key of a 4 MiB stripe to key-set `stripe mod count`, which
/// makes queues share key-sets (their locks and buffers) all the time. Here a
/// key goes to its own queue's key-set unless it overlaps a key that is still
/// unclosed in another one: then it joins that one, behind the key it
/// overwrites. So all unclosed keys covering a byte are always in one
/// key-set, in write order, and every key-set closed earlier is earlier in
/// the log. A key overlapping unclosed keys of two key-sets closes them both
/// first (rare: it needs two queues writing next to each other within the
/// same second), after which any key-set is right.
///
/// Index keys carry the key-set and epoch they were appended in
/// (`Extent.keySetTag`); each key-set counts its closes (its epoch), so a key
/// whose key-set has closed since is recognisably logged. Only overlap
/// matters, not the stripe: with a hot region of a few stripes, stripe-level
/// joining put nearly every write of two queues into one key-set, and two
/// threads wrote less than one (native bench, 512 MiB span).
///
/// Each key-set has its own lock, taken inside the subtree lock.
final class OpenKeySets: @unchecked Sendable {
    struct Slot {
        /// The key-set's lock (`pcs_word_lock`), on the line it guards.
        var lockWord: UInt32 = 0
        var keyCount: Int
        var buffer: UnsafeMutableRawPointer
        /// Monotonic time of the first key not yet closed, 0 when empty.
        var firstAppendNanos: UInt64
        /// To 64 bytes: each queue's slot on its own cache line.
        var padding: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    }

    enum AppendResult {
        case appended
        /// Appended, but a forced or full close found no free segment:
        /// the key is durable only after a later close succeeds.
        case appendedCloseFailed
        /// The key-set is full and could not be closed: nothing appended.
        case full
    }

    let count: Int
    private let slots: UnsafeMutablePointer<Slot>
    /// Closes per key-set, each on its own cache line; read without the lock.
    private let epochs: UnsafeMutablePointer<UInt32>
    private static let epochStride = 16
    private let keyLog: KeyLog
    private let dataCRC: Bool

    /// Where the slot buffers live when they must survive the process.
    private let stash: KeySetStash?

    /// With a `stash`, the buffers are its slots and each key-set's key_num
    /// is kept current in its header, so a crashed server's keys can be found.
    init(count: Int, keyLog: KeyLog, dataCRC: Bool, stash: KeySetStash? = nil) {
        self.stash = stash
        self.count = stash?.slotCount ?? max(count, 1)
        precondition(self.count < 1 << (32 - Int(Self.epochBits)) - 1, "too many key-sets for the key tag")
        self.keyLog = keyLog
        self.dataCRC = dataCRC
        slots = UnsafeMutableRawPointer.allocate(byteCount: self.count * MemoryLayout<Slot>.stride, alignment: 64)
            .bindMemory(to: Slot.self, capacity: self.count)
        epochs = UnsafeMutableRawPointer.allocate(
            byteCount: self.count * Self.epochStride * MemoryLayout<UInt32>.stride, alignment: 64
        ).bindMemory(to: UInt32.self, capacity: self.count * Self.epochStride)
        epochs.initialize(repeating: 0, count: self.count * Self.epochStride)
        for i in 0..<self.count {
            let buffer: UnsafeMutableRawPointer
            if let stash {
                buffer = stash.slot(i)
            } else {
                buffer = .allocate(byteCount: PCacheLayout.ksetMaxSize, alignment: 64)
                buffer.initializeMemory(as: UInt8.self, repeating: 0, count: PCacheLayout.ksetMaxSize)
            }
            (slots + i).initialize(to: Slot(keyCount: 0, buffer: buffer, firstAppendNanos: 0))
        }
    }

    deinit {
        for i in 0..<count {
            if stash == nil { slots[i].buffer.deallocate() }
        }
        UnsafeMutableRawPointer(slots).deallocate()
        UnsafeMutableRawPointer(epochs).deallocate()
    }

    /// Tag bits: key-set index + 1 above, epoch below (wrapping; a stale
    /// match only makes a key join a key-set it need not have).
    private static let epochBits: UInt32 = 20
    private static let epochMask: UInt32 = (1 << epochBits) - 1

    @inline(__always)
    private func tag(keySet index: Int, epoch: UInt32) -> UInt32 {
        UInt32(index + 1) << Self.epochBits | epoch & Self.epochMask
    }

    /// The key-set a tagged key is still unclosed in, or nil if it is logged.
    @inline(__always)
    private func unclosedKeySet(of tag: UInt32) -> Int? {
        guard tag != 0 else { return nil }
        let index = Int(tag >> Self.epochBits) - 1
        guard index < count,
              pcs_atomic_load_u32(epochs + index * Self.epochStride) & Self.epochMask == tag & Self.epochMask
        else { return nil }
        return index
    }

    /// Whether a key with `tag` is logged (its key-set has closed since it
    /// was appended). A wrapped epoch can only make a logged key look
    /// unclosed, never the reverse.
    @inline(__always)
    func isLogged(tag: UInt32) -> Bool { unclosedKeySet(of: tag) == nil }

    /// The key-set a key for [start, end) must go to: the one holding the
    /// unclosed keys it overlaps, or else the appending queue's own. Nil when
    /// a key-set that had to be closed first could not be (no free segment
    /// for the key log). Called with the stripe's subtree lock held; `first`
    /// is `keys.first(endingAfter: start)`.
    func keySet(for start: UInt64, _ end: UInt64, in keys: SubtreeIndex, first: SubtreeIndex.Cursor, own: Int) -> Int? {
        var target = -1
        var closedTarget = false
        var cursor = first
        while let key = keys.key(at: cursor), key.start < end {
            cursor = keys.next(after: cursor)
            guard let unclosed = unclosedKeySet(of: key.keySetTag), unclosed != target else { continue }
            if target < 0 && !closedTarget {
                target = unclosed
                continue
            }
            // Unclosed keys in two key-sets: log both before this key.
            if !closedTarget {
                guard close(target) else { return nil }
                closedTarget = true
            }
            guard close(unclosed) else { return nil }
        }
        return target >= 0 && !closedTarget ? target : own % count
    }

    /// Closes every key-set holding an unclosed key in [start, end), so
    /// those keys are logged before anything written after they leave the
    /// index (discard). False if a close found no free segment.
    func closeKeySets(holding start: UInt64, _ end: UInt64, in keys: SubtreeIndex) -> Bool {
        var cursor = keys.first(endingAfter: start)
        while let key = keys.key(at: cursor), key.start < end {
            cursor = keys.next(after: cursor)
            if let unclosed = unclosedKeySet(of: key.keySetTag), !close(unclosed) { return false }
        }
        return true
    }

    /// Appends `key` to key-set `index`, closing it when full or when `forceClose`.
    /// `insertIntoIndex` runs once room is certain, under the key-set lock, so
    /// the index never holds a key that could not be logged (a key inserted
    /// and then withdrawn would already have cut older keys out of the index).
    /// It gets the tag to store in the key (`Extent.keySetTag`).
    func append(
        _ key: Extent, to index: Int, forceClose: Bool, insertIntoIndex: (_ keySetTag: UInt32) -> Void
    ) -> AppendResult {
        let slot = slots + index
        pcs_word_lock(&slot.pointee.lockWord)
        defer { pcs_word_unlock(&slot.pointee.lockWord) }
        if slot.pointee.keyCount == PCacheLayout.ksetMaxKeys {
            guard closeLocked(index) else { return .full }
        }
        insertIntoIndex(tag(keySet: index, epoch: epochs[index * Self.epochStride]))
        KeySetEncoding.encode(key, dataCRC: dataCRC, slot: slot.pointee.keyCount, into: slot.pointee.buffer)
        slot.pointee.keyCount += 1
        // After the key itself: a crash between the two leaves the key uncounted
        // (and the write it belongs to unacknowledged). The buffer is a shared
        // mapping a restarted server reads after kill -9; x86 keeps the stores
        // in order, and the fence keeps the compiler from swapping them (a
        // count over the slot's previous key would bring that key back).
        pcs_compiler_fence()
        slot.pointee.buffer.storeBytes(of: UInt32(slot.pointee.keyCount).littleEndian, toByteOffset: 4, as: UInt32.self)
        if slot.pointee.firstAppendNanos == 0 { slot.pointee.firstAppendNanos = monotonicNanoseconds() }
        if forceClose || slot.pointee.keyCount == PCacheLayout.ksetMaxKeys {
            return closeLocked(index) ? .appended : .appendedCloseFailed
        }
        return .appended
    }

    private func closeLocked(_ index: Int) -> Bool {
        let slot = slots + index
        let keyCount = slot.pointee.keyCount
        guard keyCount > 0 else { return true }
        let size = KeySetEncoding.seal(keyCount: keyCount, buffer: slot.pointee.buffer)
        guard keyLog.write(keySet: slot.pointee.buffer, size: size) else { return false }
        slot.pointee.keyCount = 0
        slot.pointee.buffer.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        slot.pointee.firstAppendNanos = 0
        let epoch = epochs + index * Self.epochStride
        pcs_atomic_store_u32(epoch, epoch.pointee &+ 1)
        return true
    }

    @inline(__always)
    private func locked<R>(_ index: Int, _ body: () -> R) -> R {
        pcs_word_lock(&slots[index].lockWord)
        defer { pcs_word_unlock(&slots[index].lockWord) }
        return body()
    }

    /// Closes key-set `index`; false when no segment was free for the log.
    func close(_ index: Int) -> Bool {
        locked(index) { closeLocked(index) }
    }

    /// Closes every key-set (FLUSH, stop). False if any could not be closed.
    func closeAll() -> Bool {
        var ok = true
        for i in 0..<count where !close(i) { ok = false }
        return ok
    }

    /// Closes key-sets whose oldest unclosed key is older than `age` (the
    /// 1 s timer). Returns false if a close found no free segment.
    func closeExpired(olderThan age: UInt64) -> Bool {
        let now = monotonicNanoseconds()
        var ok = true
        for i in 0..<count {
            locked(i) {
                let first = slots[i].firstAppendNanos
                if first != 0 && now &- first >= age && !closeLocked(i) { ok = false }
            }
        }
        return ok
    }

    /// Keys appended to key-set `index` and not yet closed.
    func pendingKeys(in index: Int) -> Int {
        locked(index) { slots[index].keyCount }
    }

    /// Keys appended but not yet closed, over all key-sets.
    var pendingKeys: Int {
        var total = 0
        for i in 0..<count { total += locked(i) { slots[i].keyCount } }
        return total
    }
}
