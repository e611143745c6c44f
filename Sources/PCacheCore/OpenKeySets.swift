import CSupport

/// The key-sets being filled (dm-pcache's per-CPU `pcache_cache_kset`), one
/// per queue.
///
/// Replay inserts keys in log order, so two keys for the same range must
/// reach the log in the order they entered the index. The kernel gets that by
/// sending every key of a 4 MiB stripe to key-set `stripe mod count`, which
/// makes queues share key-sets (and their cache lines) all the time. Here a
/// key goes to its own queue's key-set, except while its stripe still has an
/// unclosed key in another key-set: then it joins that one. All unclosed
/// keys of a stripe are so always in a single key-set, behind each other, and
/// every key-set closed earlier is earlier in the log. The stripe remembers
/// where its unclosed keys are (`KeySetAffinity`, under the subtree lock);
/// each key-set counts its closes (its epoch), which makes a remembered
/// key-set that has closed since recognisably out of date.
///
/// Each key-set has its own lock, taken inside the subtree lock.
final class OpenKeySets: @unchecked Sendable {
    struct Slot {
        var lock: PThreadMutex
        var buffer: UnsafeMutableRawPointer
        var keyCount: Int
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
        self.keyLog = keyLog
        self.dataCRC = dataCRC
        slots = UnsafeMutableRawPointer.allocate(byteCount: self.count * MemoryLayout<Slot>.stride, alignment: 64)
            .bindMemory(to: Slot.self, capacity: self.count)
        epochs = .allocate(capacity: self.count * Self.epochStride)
        epochs.initialize(repeating: 0, count: self.count * Self.epochStride)
        for i in 0..<self.count {
            let buffer: UnsafeMutableRawPointer
            if let stash {
                buffer = stash.slot(i)
            } else {
                buffer = .allocate(byteCount: PCacheLayout.ksetMaxSize, alignment: 64)
                buffer.initializeMemory(as: UInt8.self, repeating: 0, count: PCacheLayout.ksetMaxSize)
            }
            (slots + i).initialize(to: Slot(lock: PThreadMutex(), buffer: buffer, keyCount: 0, firstAppendNanos: 0))
        }
    }

    deinit {
        for i in 0..<count {
            if stash == nil { slots[i].buffer.deallocate() }
            slots[i].lock.destroy()
        }
        UnsafeMutableRawPointer(slots).deallocate()
        epochs.deallocate()
    }

    /// The key-set a key of a stripe must go to: where the stripe's unclosed
    /// keys are, or else the appending queue's own.
    @inline(__always)
    func route(_ affinity: KeySetAffinity, own: Int) -> Int {
        if affinity.keySet >= 0 && pcs_atomic_load_u32(epochs + Int(affinity.keySet) * Self.epochStride) == affinity.epoch {
            return Int(affinity.keySet)
        }
        return own % count
    }

    /// Appends `key` to key-set `index`, closing it when full or when `forceClose`.
    /// `insertIntoIndex` runs once room is certain, under the key-set lock, so
    /// the index never holds a key that could not be logged (a key inserted
    /// and then withdrawn would already have cut older keys out of the index).
    /// On return `affinity` names the key-set and epoch the key went into.
    func append(
        _ key: Extent, to index: Int, forceClose: Bool, affinity: inout KeySetAffinity, insertIntoIndex: () -> Void
    ) -> AppendResult {
        let slot = slots + index
        slot.pointee.lock.lock()
        defer { slot.pointee.lock.unlock() }
        if slot.pointee.keyCount == PCacheLayout.ksetMaxKeys {
            guard closeLocked(index) else { return .full }
        }
        insertIntoIndex()
        affinity = KeySetAffinity(keySet: Int32(index), epoch: epochs[index * Self.epochStride])
        KeySetEncoding.encode(key, dataCRC: dataCRC, slot: slot.pointee.keyCount, into: slot.pointee.buffer)
        slot.pointee.keyCount += 1
        // After the key itself: a crash between the two leaves the key uncounted
        // (and the write it belongs to unacknowledged).
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

    /// Closes key-set `index`; false when no segment was free for the log.
    func close(_ index: Int) -> Bool {
        let slot = slots + index
        return slot.pointee.lock.withLock { closeLocked(index) }
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
                if first != 0 && now &- first >= age && !closeLocked(i) { ok = false }
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

/// Where a stripe's unclosed keys are: a key-set and the epoch it was in.
struct KeySetAffinity {
    var keySet: Int32 = -1
    var epoch: UInt32 = 0
}
