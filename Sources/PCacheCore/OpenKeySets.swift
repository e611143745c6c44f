/// The key-sets being filled (dm-pcache's per-CPU `pcache_cache_kset`).
///
/// A key goes to key-set `subtree mod count`: keys of one 4 MiB stripe always
/// share a key-set, so their order in the log is the order they were inserted
/// in the index, and replay rebuilds the newest view. (A key-set per queue
/// would let two queues' writes to the same block reach the log out of order.)
/// Each key-set has its own lock, taken inside the subtree lock.
final class OpenKeySets: @unchecked Sendable {
    private struct Slot {
        var lock: PThreadMutex
        var buffer: UnsafeMutableRawPointer
        var keyCount: Int
        /// Monotonic time of the first key not yet closed, 0 when empty.
        var firstAppendNanos: UInt64
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
    private let keyLog: KeyLog
    private let dataCRC: Bool

    init(count: Int, keyLog: KeyLog, dataCRC: Bool) {
        self.count = max(count, 1)
        self.keyLog = keyLog
        self.dataCRC = dataCRC
        slots = .allocate(capacity: self.count)
        for i in 0..<self.count {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: PCacheLayout.ksetMaxSize, alignment: 64)
            buffer.initializeMemory(as: UInt8.self, repeating: 0, count: PCacheLayout.ksetMaxSize)
            (slots + i).initialize(to: Slot(lock: PThreadMutex(), buffer: buffer, keyCount: 0, firstAppendNanos: 0))
        }
    }

    deinit {
        for i in 0..<count {
            slots[i].buffer.deallocate()
            slots[i].lock.destroy()
        }
        slots.deallocate()
    }

    @inline(__always)
    func keySet(forSubtree subtree: Int) -> Int { subtree % count }

    /// Appends `key` to key-set `index`, closing it when full or when `forceClose`.
    /// `insertIntoIndex` runs once room is certain, under the key-set lock, so
    /// the index never holds a key that could not be logged (a key inserted
    /// and then withdrawn would already have cut older keys out of the index).
    func append(
        _ key: Extent, to index: Int, forceClose: Bool, insertIntoIndex: () -> Void
    ) -> AppendResult {
        let slot = slots + index
        slot.pointee.lock.lock()
        defer { slot.pointee.lock.unlock() }
        if slot.pointee.keyCount == PCacheLayout.ksetMaxKeys {
            guard closeLocked(slot) else { return .full }
        }
        insertIntoIndex()
        KeySetEncoding.encode(key, dataCRC: dataCRC, slot: slot.pointee.keyCount, into: slot.pointee.buffer)
        slot.pointee.keyCount += 1
        if slot.pointee.firstAppendNanos == 0 { slot.pointee.firstAppendNanos = monotonicNanoseconds() }
        if forceClose || slot.pointee.keyCount == PCacheLayout.ksetMaxKeys {
            return closeLocked(slot) ? .appended : .appendedCloseFailed
        }
        return .appended
    }

    private func closeLocked(_ slot: UnsafeMutablePointer<Slot>) -> Bool {
        let keyCount = slot.pointee.keyCount
        guard keyCount > 0 else { return true }
        let size = KeySetEncoding.seal(keyCount: keyCount, buffer: slot.pointee.buffer)
        guard keyLog.write(keySet: slot.pointee.buffer, size: size) else { return false }
        slot.pointee.keyCount = 0
        slot.pointee.firstAppendNanos = 0
        return true
    }

    /// Closes key-set `index`; false when no segment was free for the log.
    func close(_ index: Int) -> Bool {
        let slot = slots + index
        return slot.pointee.lock.withLock { closeLocked(slot) }
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
            let slot = slots + i
            slot.pointee.lock.withLock {
                let first = slot.pointee.firstAppendNanos
                if first != 0 && now &- first >= age && !closeLocked(slot) { ok = false }
            }
        }
        return ok
    }

    /// Keys appended but not yet closed, over all key-sets.
    var pendingKeys: Int {
        var total = 0
        for i in 0..<count { total += slots[i].lock.withLock { slots[i].keyCount } }
        return total
    }
}
