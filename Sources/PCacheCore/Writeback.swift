import Glibc

/// Writes dirty data back to the backing device (dm-pcache's
/// `cache_writeback.c`): in log order, a few key-sets per batch, with a
/// backing flush before the dirty tail moves past them, so the backing device
/// and the log after the dirty tail together always hold every acknowledged
/// write.
///
/// Data a newer, already logged write has overwritten is skipped (see
/// `liveParts`): the newer key lies later in the log, so it is written back
/// after this one, and replay finds it if power fails first. With
/// `keepsHistory`, every version is written, as dm-pcache does, and the
/// backing device on its own always holds a prefix of the write history.
///
/// Runs on its own thread with its own io_uring. A failed write or flush
/// leaves the dirty tail where it is; the same key-sets are retried after a
/// back-off, so writeback resumes by itself when the device heals.
final class Writeback: @unchecked Sendable {
    /// Unowned and unchecked: the cache owns this object and joins the
    /// thread that drives it before it goes, and a checked reference costs
    /// an atomic retain and release on every use in the loops below.
    private unowned(unsafe) let cache: Cache
    /// The cache's, looked at for every key by `liveParts`. Held strongly
    /// here: reached through `cache`, or as unowned references, each use
    /// cost a retain and release per key.
    private let index: CacheIndex
    private let pool: SegmentPool
    private let keySets: OpenKeySets
    private let ring: IOURing
    private var batch: WritebackBatch
    /// Write every version back, never skipping overwritten data.
    private let keepsHistory: Bool

    // Counters for status; written by the writeback thread only.
    private(set) var keySetsWritten: UInt64 = 0
    private(set) var bytesWritten: UInt64 = 0
    private(set) var writeRequests: UInt64 = 0
    /// Dirty bytes not written because a newer logged write overwrote them.
    private(set) var bytesSkipped: UInt64 = 0
    private(set) var failedAttempts: UInt64 = 0
    private(set) var lastError: Int32 = 0
    /// A key-set that cannot be decoded stops writeback for good (the Hardened
    /// kernel's latch); retrying would loop forever.
    private(set) var fatalError: CacheError?
    /// The ring failed for good (`fatalError` says how). Writes it had taken
    /// may still be running and reading their buffers (the bounce area), and
    /// their completions may still come, so nothing touches the ring or the
    /// bounce area again.
    private var ringFailed = false
    /// How long the ring's refusals for want of resources (EAGAIN, EBUSY,
    /// ENOMEM) are waited out, in 1 ms steps, before writeback stops.
    static let ringRetryMilliseconds = 30_000
    /// Tests: errors the next ring submissions fail with, before the real call.
    var injectedRingErrors: [Int32] = []
    /// Where writeback writes come from. Direct I/O straight from the pmem
    /// mapping is tried first (device DAX on 6.12 allows it); where the
    /// kernel refuses it, the data is staged in an aligned bounce area and
    /// still written with O_DIRECT: a 4 KiB copy is far cheaper than the page
    /// cache, whose dirty pages the flush would have to write out.
    private enum SourceMode { case directFromCache, bounce, buffered }
    private var sourceMode: SourceMode
    /// The bounce area (`bounceBytes`, page aligned).
    private let bounce: UnsafeMutableRawPointer
    static let bounceBytes = 4 << 20
    /// Writes in flight at most. Below the backing device's queue depth, so
    /// io_uring issues them inline instead of punting them to io-wq workers.
    static let maxInFlight = 128
    /// Per in-flight slot (the write's userData): its length.
    private let writeLengths: UnsafeMutablePointer<Int>
    /// Per in-flight slot: whether the write is direct I/O from the pmem
    /// mapping, the only kind whose EINVAL or EFAULT means "refused".
    private let writeFromMapping: UnsafeMutablePointer<Bool>
    /// Pieces of pmem one gathered write takes at most (one `writev`).
    static let maxPieces = 64
    /// Bytes one merged write carries at most, staged or gathered.
    static let maxRunBytes = 1 << 20
    /// Memory pages one write's buffers may span at most: the block layer's
    /// `BIO_MAX_VECS`. Up to that, a direct write is one bio: io_uring issues
    /// it inline, and a mapping whose pages cannot be pinned fails it with
    /// EFAULT. Past it, the kernel splits the write into several bios, which
    /// io_uring punts to an io-wq worker, and a pinning failure then comes
    /// back as EIO, which would read as a backing error and retry forever
    /// instead of switching to staging.
    static let maxRunPages = 256
    /// Per in-flight slot, `maxPieces` iovecs: the kernel may read a
    /// vectored write's array until it completes.
    private let slotPieces: UnsafeMutablePointer<iovec>
    /// The gathered run being built, copied into its slot when queued.
    private let runPieces: UnsafeMutablePointer<iovec>
    private let freeSlots: UnsafeMutablePointer<Int>
    private var freeSlotCount = 0
    /// The parts of one logged key still to write, [start, end) on the
    /// backing device (`liveParts`).
    private let parts: UnsafeMutablePointer<(start: UInt64, end: UInt64)>
    /// Parts one key is split into at most; past that, the rest of the key
    /// is written whole (writing overwritten data is only wasted work).
    static let maxParts = 16

    enum StepResult { case clean, progressed, failed }

    init(cache: Cache) throws {
        self.cache = cache
        index = cache.index
        pool = cache.pool
        keySets = cache.keySets
        ring = try IOURing(entries: UInt32(Self.maxInFlight))
        writeLengths = .allocate(capacity: Self.maxInFlight)
        writeFromMapping = .allocate(capacity: Self.maxInFlight)
        slotPieces = .allocate(capacity: Self.maxInFlight * Self.maxPieces)
        runPieces = .allocate(capacity: Self.maxPieces)
        freeSlots = .allocate(capacity: Self.maxInFlight)
        parts = .allocate(capacity: Self.maxParts)
        keepsHistory = cache.writebackKeepsHistory
        batch = WritebackBatch(expectedKeys: PCacheLayout.ksetMaxKeys * Self.maxKeySetsPerBatch)
        sourceMode = cache.writebackStagesData ? .bounce
            : cache.backing.isDirect ? .directFromCache : .buffered
        bounce = UnsafeMutableRawPointer.allocate(byteCount: Self.bounceBytes, alignment: 4096)
        resetSlots()
    }

    deinit {
        batch.deallocate()
        bounce.deallocate()
        writeLengths.deallocate()
        writeFromMapping.deallocate()
        slotPieces.deallocate()
        runPieces.deallocate()
        freeSlots.deallocate()
        parts.deallocate()
    }

    /// Key-sets gathered into one batch at most: one backing flush then
    /// covers up to this many key-sets instead of one each (the kernel's
    /// order, coarser grain; see `step`).
    static let maxKeySetsPerBatch = 32

    /// Writes back the key-sets from the dirty tail on, up to
    /// `maxKeySetsPerBatch` of them in one batch, if there are any.
    ///
    /// dm-pcache flushes the backing device after every key-set. Here a batch
    /// of consecutive key-sets (never across a LAST one) shares one flush: a
    /// later key wins over an earlier one across the whole batch, and the
    /// dirty tail moves past all of them only after that flush: fewer flushes,
    /// and no writes of data the same batch overwrites. With `keepsHistory`
    /// the backing device so still holds, at each flush, a prefix of the
    /// write history, as with the kernel's one key-set per flush.
    func step() -> StepResult {
        guard fatalError == nil else { return .clean }
        let start = cache.metadata.dirtyTail
        let head = cache.keyLog.currentHead
        guard start != head else { return .clean }

        batch.removeAll()
        var position = start
        var gathered = 0
        var skipped: UInt64 = 0
        while gathered < Self.maxKeySetsPerBatch && position != head {
            guard case .success(let keySet) = cache.reader.keySet(at: position) else {
                if gathered == 0 { return .clean }
                break
            }
            if keySet.isLast {
                // A LAST key-set ends the batch; on its own it only moves the
                // dirty tail to the next key-log segment.
                guard gathered == 0 else { break }
                do {
                    let next = try cache.reader.nextSegment(of: keySet, at: position)
                    cache.metadata.persistDirtyTail(CachePosition(cacheSegID: next, segOff: 0))
                    return .progressed
                } catch {
                    fatalError = error as? CacheError
                    return .failed
                }
            }
            do {
                // Every key is checked before any joins the batch, so a bad
                // key-set adds nothing.
                for i in 0..<keySet.keyCount {
                    let key = keySet.key(at: i)
                    try cache.reader.validate(key, index: i, at: position)
                    if cache.dataCRC { try cache.reader.checkDataCRC(key, at: position) }
                }
            } catch {
                // Write back the key-sets before it first; the next step
                // stops on this one for good.
                if gathered > 0 { break }
                fatalError = error as? CacheError
                return .failed
            }
            for i in 0..<keySet.keyCount {
                let key = keySet.key(at: i)
                skipped += addToBatch(Extent(
                    start: key.off, length: key.len, flags: key.isClean ? .clean : [],
                    segment: key.cacheSegID, segmentOffset: key.cacheSegOff, generation: key.segGen))
            }
            position = position.advanced(by: keySet.size)
            gathered += 1
        }

        if writeBatch() && !ringFailed && flushBacking() {
            cache.metadata.persistDirtyTail(position)
            keySetsWritten += UInt64(gathered)
            bytesSkipped += skipped
            return .progressed
        }
        failedAttempts += 1
        return .failed
    }

    /// Writes every dirty key of the batch; true when all succeeded.
    ///
    /// The batch is visited in backing-device order, so keys that follow each
    /// other on the backing device go out as one write of up to
    /// `maxRunBytes`: copied one after the other into the bounce area when
    /// data is staged, or else gathered straight from pmem into one vectored
    /// write (`maxPieces` separate pieces at most; data that also follows on
    /// in pmem, as sequential writes leave it, is one piece). Sequential data
    /// is so written back in large requests either way.
    private func writeBatch() -> Bool {
        let backing = cache.backing
        var writes = Writes()
        // Once per batch: `memory` is an existential, and reading it per key
        // cost a retain and release.
        let base = UnsafeRawPointer(cache.memory.base)
        batch.forEach { key in
            guard !key.flags.contains(.clean), !ringFailed else { return }
            let source = base + cache.dataOffset(key.segment, key.segmentOffset)
            let length = Int(key.length)
            if sourceMode == .bounce && length <= Self.bounceBytes {
                stage(&writes, from: source, count: length, offset: key.start)
            } else {
                let fd = sourceMode == .directFromCache
                    ? backing.descriptor(buffer: source, count: length, offset: key.start) : backing.bufferedFD
                gather(&writes, from: source, count: length, offset: key.start, fd: fd)
            }
        }
        endRun(&writes)
        collect(&writes)
        if ringFailed { return false }
        if writes.refused && writes.ok && sourceMode == .directFromCache {
            sourceMode = .bounce
            return writeBatch()
        }
        // Counted once the batch is written: a failed one is written again.
        if writes.ok { bytesWritten += writes.bytes }
        return writes.ok
    }

    /// Adds a key of the log to the batch: a clean key whole, a dirty key
    /// only where no newer logged write has overwritten it (`liveParts`).
    /// Returns the dirty bytes left out.
    ///
    /// Deciding this as keys are gathered, not when the batch is written,
    /// keeps dead keys out of the batch altogether: under overwrites most
    /// keys are dead, and each insert into the batch costs a search (and
    /// moves keys). It stays right until the batch is written: the newer key
    /// is logged and lies after the dirty tail, so nothing undoes that.
    private func addToBatch(_ key: Extent) -> UInt64 {
        guard !key.flags.contains(.clean) else {
            batch.insert(key)
            return 0
        }
        // One stripe, as `liveParts` needs: `step` validated the key, and
        // validation refuses a key that crosses a stripe.
        var live: UInt64 = 0
        for i in 0..<liveParts(of: key) {
            let (start, end) = parts[i]
            var part = key
            part.cutFront(UInt32(start - key.start))
            part.cutBack(UInt32(key.end - end))
            batch.insert(part)
            live += end - start
        }
        return UInt64(key.length) - live
    }

    /// Splits dirty key `key`, which lies in one stripe, into the parts to
    /// write, in `parts`, and returns how many there are (0 when nothing is
    /// left).
    ///
    /// A part is skipped where the index maps its bytes to other, current
    /// dirty data whose key is logged. That key was written later (the index
    /// keeps the newest data, and a read fill only fills holes), so it lies
    /// later in the log than this one: it is written back in this batch or a
    /// later one, and a replay after a power cut finds it. A newer key still in an open
    /// key-set could be lost with the power (it was never flushed), so its
    /// bytes are written like any others. Clean keys and placeholders never
    /// stand in for dirty data. In any doubt the data is written: a write too
    /// many only costs time.
    private func liveParts(of key: Extent) -> Int {
        guard !keepsHistory else {
            parts[0] = (key.start, key.end)
            return 1
        }
        return index.withShard(CacheIndex.subtree(of: key.start)) { keys in
            var count = 0
            var undecided = key.start
            var cursor = keys.first(endingAfter: key.start)
            while let entry = keys.key(at: cursor), entry.start < key.end {
                cursor = keys.next(after: cursor)
                guard supersedes(entry, key) else { continue }
                let skipFrom = max(entry.start, key.start)
                if skipFrom > undecided {
                    // The last part is kept for the rest of the key.
                    if count == Self.maxParts - 1 { break }
                    parts[count] = (undecided, skipFrom)
                    count += 1
                }
                undecided = min(entry.end, key.end)
            }
            if undecided < key.end {
                parts[count] = (undecided, key.end)
                count += 1
            }
            return count
        }
    }

    /// Whether index key `entry` holds newer, logged data for bytes of
    /// logged key `key` (see `liveParts`).
    @inline(__always)
    private func supersedes(_ entry: Extent, _ key: Extent) -> Bool {
        guard !entry.isPlaceholder && !entry.flags.contains(.clean) else { return false }
        // The same data: the logged key itself, or a piece of it.
        if entry.segment == key.segment && entry.generation == key.generation
            && entry.start &- UInt64(entry.segmentOffset) == key.start &- UInt64(key.segmentOffset) {
            return false
        }
        return keySets.isLogged(tag: entry.keySetTag)
            && pool.isCurrent(segment: entry.segment, keyGeneration: entry.generation)
    }

    /// One `writeBatch` call's progress.
    private struct Writes {
        var ok = true
        /// Bytes the backing device took. Counted once the batch is final: a
        /// batch retried through the bounce area, or after a failure, writes
        /// some of them again.
        var bytes: UInt64 = 0
        /// A direct write from the pmem mapping was refused.
        var refused = false
        var inFlight = 0
        /// Bounce bytes taken by queued writes (runs start page aligned).
        var bounceUsed = 0
        /// The run being built: staged at `bounce + bounceUsed`, or gathered
        /// in `runPieces` for `runFD`.
        var run = Run.none
        var runOffset: UInt64 = 0
        var runLength = 0
        var runPieceCount = 0
        /// Pages the gathered run's pieces span.
        var runPages = 0
        var runFD: Int32 = -1

        enum Run { case none, staged, gathered }
    }

    /// Adds a key to the staged run, copying its data into the bounce area.
    private func stage(_ writes: inout Writes, from source: UnsafeRawPointer, count: Int, offset: UInt64) {
        if writes.run == .staged && writes.runOffset + UInt64(writes.runLength) == offset
            && writes.runLength + count <= Self.maxRunBytes
            && writes.bounceUsed + writes.runLength + count <= Self.bounceBytes {
            (bounce + writes.bounceUsed + writes.runLength).copyMemory(from: source, byteCount: count)
            writes.runLength += count
            return
        }
        endRun(&writes)
        if writes.bounceUsed + count > Self.bounceBytes {
            // The bounce area is full: its writes must finish before it is reused.
            collect(&writes)
            guard !ringFailed else { return }
            writes.bounceUsed = 0
        }
        (bounce + writes.bounceUsed).copyMemory(from: source, byteCount: count)
        writes.run = .staged
        writes.runOffset = offset
        writes.runLength = count
    }

    /// Adds a key to the gathered run: a piece of one vectored write from pmem.
    private func gather(_ writes: inout Writes, from source: UnsafeRawPointer, count: Int, offset: UInt64, fd: Int32) {
        if writes.run == .gathered && writes.runFD == fd && writes.runOffset + UInt64(writes.runLength) == offset
            && writes.runLength + count <= Self.maxRunBytes {
            let last = runPieces + (writes.runPieceCount - 1)
            let lastBase = UnsafeRawPointer(last.pointee.iov_base!)
            if lastBase + last.pointee.iov_len == source {
                let morePages = Self.pages(lastBase, last.pointee.iov_len + count)
                    - Self.pages(lastBase, last.pointee.iov_len)
                if writes.runPages + morePages <= Self.maxRunPages {
                    last.pointee.iov_len += count
                    writes.runLength += count
                    writes.runPages += morePages
                    return
                }
            } else if writes.runPieceCount < Self.maxPieces {
                let piecePages = Self.pages(source, count)
                if writes.runPages + piecePages <= Self.maxRunPages {
                    runPieces[writes.runPieceCount] = iovec(iov_base: UnsafeMutableRawPointer(mutating: source), iov_len: count)
                    writes.runPieceCount += 1
                    writes.runLength += count
                    writes.runPages += piecePages
                    return
                }
            }
        }
        endRun(&writes)
        runPieces[0] = iovec(iov_base: UnsafeMutableRawPointer(mutating: source), iov_len: count)
        writes.run = .gathered
        writes.runPieceCount = 1
        writes.runFD = fd
        writes.runOffset = offset
        writes.runLength = count
        writes.runPages = Self.pages(source, count)
    }

    /// Memory pages [base, base + count) touches.
    static func pages(_ base: UnsafeRawPointer, _ count: Int) -> Int {
        let address = UInt(bitPattern: base)
        return Int(((address + UInt(count) + 4095) >> 12) - (address >> 12))
    }

    /// Queues the run being built, if any, as one write.
    private func endRun(_ writes: inout Writes) {
        switch writes.run {
        case .none:
            return
        case .staged:
            let source = UnsafeRawPointer(bounce + writes.bounceUsed)
            let fd = cache.backing.descriptor(buffer: source, count: writes.runLength, offset: writes.runOffset)
            queue(&writes, from: source, count: writes.runLength, offset: writes.runOffset, fd: fd)
            writes.bounceUsed += (writes.runLength + 4095) & ~4095
        case .gathered:
            if writes.runPieceCount == 1 {
                queue(&writes, from: UnsafeRawPointer(runPieces[0].iov_base!), count: writes.runLength,
                      offset: writes.runOffset, fd: writes.runFD)
            } else {
                queueGathered(&writes)
            }
        }
        writes.run = .none
        writes.runLength = 0
        writes.runPieceCount = 0
        writes.runPages = 0
    }

    private func queue(_ writes: inout Writes, from source: UnsafeRawPointer, count: Int, offset: UInt64, fd: Int32) {
        guard let slot = takeSlot(&writes, count: count, source: source, fd: fd) else { return }
        ring.prepareWrite(fd: fd, from: source, count: count, offset: offset, userData: UInt64(slot))
    }

    /// Queues the gathered run (two pieces or more) as one `writev`.
    private func queueGathered(_ writes: inout Writes) {
        guard let slot = takeSlot(&writes, count: writes.runLength, source: UnsafeRawPointer(runPieces[0].iov_base!), fd: writes.runFD)
        else { return }
        let pieces = slotPieces + slot * Self.maxPieces
        pieces.update(from: runPieces, count: writes.runPieceCount)
        ring.prepareWritev(fd: writes.runFD, pieces: pieces, count: writes.runPieceCount,
                           offset: writes.runOffset, userData: UInt64(slot))
    }

    /// A free in-flight slot for a write of `count` bytes, reaping first
    /// when every slot is taken; nil once the ring has failed.
    private func takeSlot(_ writes: inout Writes, count: Int, source: UnsafeRawPointer, fd: Int32) -> Int? {
        if writes.inFlight == Self.maxInFlight { reap(&writes, all: false) }
        guard !ringFailed else { return nil }
        freeSlotCount -= 1
        let slot = freeSlots[freeSlotCount]
        writeLengths[slot] = count
        let memory = cache.memory
        writeFromMapping[slot] = fd != cache.backing.bufferedFD
            && source >= UnsafeRawPointer(memory.base) && source < UnsafeRawPointer(memory.base + memory.size)
        writes.inFlight += 1
        writeRequests += 1
        return slot
    }

    /// Submits what is queued and waits for every write in flight.
    private func collect(_ writes: inout Writes) {
        reap(&writes, all: true)
    }

    /// Submits what is queued, waits for at least one completion (or for
    /// all with `all`), and takes every completion that is ready.
    private func reap(_ writes: inout Writes, all: Bool) {
        while writes.inFlight > 0 {
            guard submitAndWait() else {
                writes.ok = false
                lastError = -EIO
                return
            }
            let reaped = ring.forEachCompletion { userData, result, _ in
                guard userData < UInt64(Self.maxInFlight) else {  // not a write's: counted as a failure
                    writes.ok = false
                    return
                }
                let slot = Int(userData)
                let expected = writeLengths[slot]
                freeSlots[freeSlotCount] = slot
                freeSlotCount += 1
                writes.inFlight -= 1
                if result == Int32(expected) {
                    writes.bytes += UInt64(expected)
                } else if (result == -EINVAL || result == -EFAULT) && writeFromMapping[slot] {
                    writes.refused = true
                } else {
                    writes.ok = false
                    lastError = result < 0 ? result : -EIO
                }
            }
            if !all && reaped > 0 { return }
        }
    }

    private func resetSlots() {
        for slot in 0..<Self.maxInFlight { freeSlots[slot] = slot }
        freeSlotCount = Self.maxInFlight
    }

    /// Submits what is queued and waits for a completion. The ring's
    /// refusals for want of resources are waited out (reaping what has
    /// completed makes room); any other failure, or one that lasts, stops
    /// writeback for good (`ringFailed`). False then.
    private func submitAndWait() -> Bool {
        guard !ringFailed else { return false }
        var waited = 0
        while true {
            do {
                if !injectedRingErrors.isEmpty {
                    throw SystemError(errno: injectedRingErrors.removeFirst(), "injected")
                }
                try ring.submitAndWait(1)
                return true
            } catch {
                let code = (error as? SystemError)?.errno ?? EIO
                if code == EAGAIN || code == EBUSY || code == ENOMEM, waited < Self.ringRetryMilliseconds {
                    if ring.hasCompletion { return true }
                    usleep(1000)
                    waited += 1
                    continue
                }
                ringFailed = true
                fatalError = .writebackRingFailed(operation: "io_uring_submit_and_wait", errno: code)
                return false
            }
        }
    }

    /// fsync of the backing device, through the ring: true when it succeeded.
    /// Every write has completed by now (`collect`), so the fsync's is the
    /// only completion to come; anything else is counted as a failure.
    private func flushBacking() -> Bool {
        ring.prepareFsync(fd: cache.backing.bufferedFD, userData: Self.fsyncUserData)
        var result: Int32? = nil
        var strays = 0
        while result == nil {
            guard submitAndWait() else {
                lastError = -EIO
                return false
            }
            ring.forEachCompletion { userData, res, _ in
                if userData == Self.fsyncUserData { result = res } else { strays += 1 }
            }
        }
        if strays > 0 {
            lastError = -EIO
            return false
        }
        if let result, result < 0 {
            lastError = result
            return false
        }
        return true
    }

    /// The fsync's userData: no write slot has it.
    static let fsyncUserData = UInt64.max
}
