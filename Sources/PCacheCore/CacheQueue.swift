import CSupport
import Glibc

/// The cache as one ublk queue sees it: serves READ, WRITE, FLUSH, DISCARD
/// and WRITE_ZEROES for that queue's tags (dm-pcache's `cache_req.c`).
///
/// Used by exactly one thread. It owns the queue's data head and per-tag
/// request state, preallocated for the queue depth, so serving a request
/// allocates nothing. Shared state is reached through `Cache`: a subtree lock
/// per 4 MiB stripe, a key-set lock per key-set, and the segment pool.
///
/// A request either completes at once (the handler returns its result) or is
/// left pending: a read waiting for backing reads, or a request deferred
/// because the cache is full. Pending requests complete through
/// `QueueIO.completeRequest`.
public final class CacheQueue {
    public let id: Int
    public let depth: Int
    private let cache: Cache
    /// Parts of `cache` the write path uses, in stored `let`s of their own
    /// so reaching them takes no retain: a retain or release is an atomic
    /// read-modify-write, and one issued after the data copy waits for the
    /// copy's stores to reach memory.
    private let dataWriter: DataWriter
    private let index: CacheIndex
    private let keySets: OpenKeySets
    private let io: QueueIO
    let waker: QueueWaker
    /// The queue's data head. Behind a pointer, not a stored `var`: every
    /// mutation of a class's stored property goes through a run-time
    /// exclusivity check (swift_beginAccess/endAccess), which the write path
    /// would pay on each allocation.
    private let head: UnsafeMutablePointer<DataHead>
    /// The offsets of the last two leaves `lookAhead` asked for, newest
    /// first (behind a pointer for the same reason as `head`): a write to
    /// one finds its index lines loaded, and copies its data under the locks
    /// (see `continueWrite`). Two, because the hint for the request after
    /// this one comes before this one is served.
    private let hintedLeaves: UnsafeMutablePointer<UInt64>
    private var nextToken: UInt32 = 0

    /// The largest write whose data is copied with the stripe's lock held.
    static let largestCopyUnderLocks: UInt32 = 16 << 10

    /// Backing reads one request may have in flight before its walk pauses.
    static let readSlotsPerTag = 16
    /// Backing I/O one request can have in flight: a read's backing reads
    /// (at most `readSlotsPerTag`; it goes on when some complete), or a
    /// discard's one.
    public static var maxBackingIOPerRequest: Int { readSlotsPerTag }

    private enum Kind: UInt8 { case idle, read, write, writeZeroes, flush, discard }

    private struct Request {
        var kind: Kind = .idle
        var offset: UInt64 = 0
        var length: UInt32 = 0
        var buffer: UnsafeMutableRawPointer? = nil
        var fua = false
        /// Bytes of the request handled so far (written, or walked for reads).
        var cursor: UInt32 = 0
        /// Backing reads in flight.
        var outstanding: Int = 0
        /// First error seen (-errno), 0 if none.
        var error: Int32 = 0
        var isDeferred = false
        /// A key-set this request appended to but could not close (FUA or full).
        var unclosedKeySet: Int = -1
    }

    private struct ReadSlot {
        var start: UInt64 = 0
        var length: UInt32 = 0
        /// Token of the placeholder to fill, or 0 for a plain backing read.
        var token: UInt32 = 0
        var inUse = false
    }

    private let requests: UnsafeMutablePointer<Request>
    private let slots: UnsafeMutablePointer<ReadSlot>
    private var deferred: [UInt16]
    /// Set by `failWaitingRequests`: what would wait for space fails instead.
    private var waitingFails = false
    let counters: QueueCounters

    init(cache: Cache, id: Int, depth: Int, io: QueueIO, waker: QueueWaker) {
        self.cache = cache
        dataWriter = DataWriter(cache.memory)
        index = cache.index
        keySets = cache.keySets
        self.id = id
        self.depth = depth
        self.io = io
        self.waker = waker
        head = .allocate(capacity: 1)
        head.initialize(to: DataHead())
        hintedLeaves = .allocate(capacity: 2)
        hintedLeaves.initialize(repeating: .max, count: 2)
        requests = .allocate(capacity: depth)
        requests.initialize(repeating: Request(), count: depth)
        slots = .allocate(capacity: depth * Self.readSlotsPerTag)
        slots.initialize(repeating: ReadSlot(), count: depth * Self.readSlotsPerTag)
        deferred = []
        deferred.reserveCapacity(depth)
        counters = QueueCounters()
    }

    deinit {
        head.deallocate()
        hintedLeaves.deallocate()
        requests.deallocate()
        slots.deallocate()
    }

    // MARK: Look-ahead

    /// How many requests ahead `lookAhead` is useful: one step per index
    /// level (stripe header, directory, leaf).
    public static let lookAheadDistance = 3

    /// Loads part of the index lines a read or write at `offset` will
    /// search, for a caller that knows its next requests (a ublk queue
    /// handed a batch of them): called for each of the next
    /// `lookAheadDistance` requests before serving one, each request gets
    /// one step per request served before it. Each step reads what the one
    /// before it loaded: the stripe's header (3 away), then its directory
    /// (2), then the leaf (1). The misses are then served while earlier
    /// requests run, instead of stalling the search under the stripe's
    /// lock. Reads nothing it could fault on, and changes nothing a request
    /// sees: besides the loads, it only notes which leaf was asked for
    /// (`hintedLeaves`), which decides where a write copies its data.
    @inline(__always)
    public func lookAhead(offset: UInt64, requestsAway: Int) {
        let subtree = CacheIndex.subtree(of: offset)
        guard subtree < index.count else { return }
        switch requestsAway {
        case 1:
            index.prefetchLeaf(subtree, endingAfter: offset)
            hintedLeaves[1] = hintedLeaves[0]
            hintedLeaves[0] = offset
        case 2: index.prefetchDirectory(subtree)
        default: index.prefetch(subtree)
        }
    }

    // MARK: Entry points

    /// READ of `length` bytes at byte `offset` into `buffer`.
    public func read(tag: UInt16, offset: UInt64, length: UInt32, buffer: UnsafeMutableRawPointer) -> Int32? {
        if let error = checkRange(offset, length) { return error }
        counters.add(.reads)
        counters.add(.readBytes, UInt64(length))
        let r = requests + Int(tag)
        r.pointee = Request(kind: .read, offset: offset, length: length, buffer: buffer)
        return continueRead(tag)
    }

    /// WRITE of `length` bytes at byte `offset` from `buffer`; `fua` asks for
    /// the key to be durable before completion.
    public func write(tag: UInt16, offset: UInt64, length: UInt32, buffer: UnsafeMutableRawPointer, fua: Bool) -> Int32? {
        if let error = checkRange(offset, length) { return error }
        counters.add(.writes)
        counters.add(.writeBytes, UInt64(length))
        let r = requests + Int(tag)
        r.pointee = Request(kind: .write, offset: offset, length: length, buffer: buffer, fua: fua)
        return continueWrite(tag)
    }

    /// WRITE_ZEROES: cached like a write of zeros, so the zeros win over any
    /// older dirty data for the range, now and after replay.
    public func writeZeroes(tag: UInt16, offset: UInt64, length: UInt32, fua: Bool) -> Int32? {
        if let error = checkRange(offset, length) { return error }
        counters.add(.writes)
        let r = requests + Int(tag)
        r.pointee = Request(kind: .writeZeroes, offset: offset, length: length, buffer: nil, fua: fua)
        return continueWrite(tag)
    }

    /// FLUSH: every write completed before it becomes durable (all key-sets
    /// are closed). Data is already durable in pmem since its copy.
    public func flush(tag: UInt16) -> Int32? {
        counters.add(.flushes)
        let r = requests + Int(tag)
        r.pointee = Request(kind: .flush)
        return continueFlush(tag)
    }

    /// DISCARD: drops the range from the index and passes the discard to the
    /// backing device. Contents of a discarded range are undefined, so older
    /// dirty data reaching the backing device later is allowed.
    public func discard(tag: UInt16, offset: UInt64, length: UInt32) -> Int32? {
        if let error = checkRange(offset, length) { return error }
        var position = offset
        let end = offset + UInt64(length)
        while position < end {
            let subtree = CacheIndex.subtree(of: position)
            let chunkEnd = min(end, UInt64(subtree + 1) << UInt64(PCacheLayout.subtreeShift))
            cache.index.withShard(subtree) { keys in
                // Unclosed keys leaving the index are logged first: a later
                // write to the range overlaps nothing, so nothing else would
                // keep them from closing after it and winning at replay. If
                // the log has no room, they stay (discarded contents are
                // undefined, so keeping them is allowed).
                if cache.keySets.closeKeySets(holding: position, chunkEnd, in: keys) {
                    keys.removeRange(start: position, end: chunkEnd)
                }
            }
            position = chunkEnd
        }
        let r = requests + Int(tag)
        r.pointee = Request(kind: .discard, offset: offset, length: length)
        r.pointee.outstanding = 1
        io.submitDiscard(fd: cache.backing.bufferedFD, offset: offset, length: UInt64(length),
                         userData: Self.userData(tag: tag, slot: Self.readSlotsPerTag))
        return nil
    }

    /// A completion for backing I/O this queue submitted.
    public func backingIOCompleted(userData: UInt64, result: Int32) {
        let tag = UInt16(truncatingIfNeeded: userData >> 8)
        let slotIndex = Int(userData & 0xFF)
        let r = requests + Int(tag)
        if r.pointee.kind == .discard {
            // Backing devices without discard support still answer correctly.
            if result < 0 && result != -EOPNOTSUPP && result != -EINVAL { r.pointee.error = result }
            finish(tag, r.pointee.error == 0 ? 0 : r.pointee.error)
            return
        }
        let slot = slots + (Int(tag) * Self.readSlotsPerTag + slotIndex)
        r.pointee.outstanding -= 1
        if result != Int32(slot.pointee.length) {
            counters.add(.backingErrors)
            if r.pointee.error == 0 { r.pointee.error = result < 0 ? result : -EIO }
            if slot.pointee.token != 0 { dropPlaceholder(slot.pointee) }
        } else if slot.pointee.token != 0 {
            fillCache(from: slot.pointee, request: r.pointee)
        }
        slot.pointee.inUse = false
        if r.pointee.outstanding == 0 {
            if r.pointee.error != 0 {
                finish(tag, r.pointee.error)
            } else if let result = continueRead(tag) {
                finish(tag, result)
            }
        }
    }

    /// Retries requests deferred while the cache was full.
    public func resumeDeferred() {
        guard !deferred.isEmpty else { return }
        let waiting = deferred
        deferred.removeAll(keepingCapacity: true)
        for tag in waiting {
            let r = requests + Int(tag)
            r.pointee.isDeferred = false
            let result: Int32?
            switch r.pointee.kind {
            case .write, .writeZeroes: result = continueWrite(tag)
            case .flush: result = continueFlush(tag)
            default: result = nil
            }
            if let result { finish(tag, result) }
        }
        if deferred.isEmpty { cache.queueHasDeferred(self, false) }
    }

    /// The queue is going away: requests still deferred fail with EIO, and
    /// the data head gives its segment back.
    public func stop() {
        _ = failWaitingRequests()
        head.pointee.retire(pool: cache.pool, invalidate: cache.invalidate)
    }

    public var deferredCount: Int { deferred.count }

    /// Fails every request waiting for cache space with EIO, and from now on
    /// any that would wait; returns how many were waiting. For a device being
    /// stopped while room may never come (writeback halted, or failing on a
    /// dead backing device): the kernel's STOP_DEV waits for every request
    /// it has handed out, so waiting ones would hold it up for good. None of
    /// them was acknowledged, so an error is what they may end with.
    public func failWaitingRequests() -> Int {
        waitingFails = true
        let waiting = deferred.count
        for tag in deferred {
            requests[Int(tag)].isDeferred = false
            finish(tag, -EIO)
        }
        deferred.removeAll()
        cache.queueHasDeferred(self, false)
        return waiting
    }

    // MARK: Writes

    private func continueWrite(_ tag: UInt16) -> Int32? {
        let r = requests + Int(tag)
        if r.pointee.unclosedKeySet >= 0 {
            guard keySets.close(r.pointee.unclosedKeySet) else { return deferRequest(tag) }
            r.pointee.unclosedKeySet = -1
        }
        let zeroes = r.pointee.kind == .writeZeroes
        while r.pointee.cursor < r.pointee.length {
            let offset = r.pointee.offset + UInt64(r.pointee.cursor)
            let subtree = CacheIndex.subtree(of: offset)
            let toStripeEnd = UInt32(PCacheLayout.subtreeSize - Int(offset & UInt64(PCacheLayout.subtreeMask)))
            var want = min(r.pointee.length - r.pointee.cursor, toStripeEnd)
            if zeroes { want = min(want, UInt32(Cache.zeroBufferSize)) }
            index.prefetch(subtree)
            index.prefetchDirectory(subtree)
            guard let space = head.pointee.allocate(want, pool: cache.pool) else {
                return deferRequest(tag)
            }
            let source: UnsafeRawPointer =
                zeroes ? UnsafeRawPointer(cache.zeroBuffer) : UnsafeRawPointer(r.pointee.buffer! + Int(r.pointee.cursor))
            let crc = cache.dataCRC ? CRC32C.checksum(source, count: Int(space.length)) : 0
            let key = Extent(
                start: offset, length: space.length, segment: space.segment, segmentOffset: space.offset,
                generation: space.generation, crc: crc, crcSpanOffset: space.offset, crcSpanLength: space.length)
            let fua = r.pointee.fua
            let destination = cache.dataOffset(space.segment, space.offset)
            // Where the copy goes depends on whether the index lines are
            // loaded. Any atomic read-modify-write after the copy (taking a
            // lock) waits for the copy's non-temporal stores to reach memory,
            // so the copy is best made under the locks, after the search.
            // But a search of cold lines stalls on a leaf miss; then it is
            // better to copy first and overlap the miss with the copy's drain.
            // A looked-ahead write has its lines loaded. Large copies go
            // first anyway: the wait is small next to them, and holding the
            // stripe's lock through one would hold up its readers.
            let copyUnderLocks = (hintedLeaves[0] == offset || hintedLeaves[1] == offset)
                && space.length <= Self.largestCopyUnderLocks
            if !copyUnderLocks {
                dataWriter.storeAndFlush(at: destination, from: source, count: Int(key.length))
                index.prefetchLeaf(subtree, endingAfter: offset)
                // The data must be durable before a key that points at it can be.
                dataWriter.drain()
            }
            var keySet = 0
            let outcome = index.withShard(subtree) { keys -> OpenKeySets.AppendResult in
                let first = keys.first(endingAfter: key.start)
                guard let target = keySets.keySet(for: key.start, key.end, in: keys, first: first, own: id) else {
                    return .full
                }
                keySet = target
                return keySets.append(key, to: target, forceClose: fua) { tag in
                    if copyUnderLocks {
                        // Readers wait for the stripe's lock, so none sees
                        // the key before its data.
                        dataWriter.storeAndFlush(at: destination, from: source, count: Int(key.length))
                        dataWriter.drain()
                    }
                    var tagged = key
                    tagged.keySetTag = tag
                    keys.insert(tagged, at: first)
                }
            }
            switch outcome {
            case .appended:
                r.pointee.cursor += space.length
            case .appendedCloseFailed:
                r.pointee.cursor += space.length
                r.pointee.unclosedKeySet = keySet
                return deferRequest(tag)
            case .full:
                // Nothing was logged: give the space back and wait for GC.
                if cache.pool.dropReference(space.segment) { cache.invalidate(space.segment) }
                return deferRequest(tag)
            }
        }
        return Int32(r.pointee.kind == .writeZeroes ? 0 : r.pointee.length)
    }

    private func continueFlush(_ tag: UInt16) -> Int32? {
        cache.keySets.closeAll() ? 0 : deferRequest(tag)
    }

    private func deferRequest(_ tag: UInt16) -> Int32? {
        if waitingFails { return -EIO }
        let r = requests + Int(tag)
        if !r.pointee.isDeferred {
            r.pointee.isDeferred = true
            deferred.append(tag)
            counters.add(.deferrals)
            cache.queueHasDeferred(self, true)
        }
        cache.kickReclaim()
        return nil
    }

    // MARK: Reads

    /// Walks the index from the request's cursor: hits are copied from pmem,
    /// gaps become backing reads (with a placeholder so the data can be
    /// cached when it arrives), ranges already being read by another miss are
    /// read again without a placeholder. Returns the result when the request
    /// is done, nil while backing reads are in flight.
    private func continueRead(_ tag: UInt16) -> Int32? {
        let r = requests + Int(tag)
        let base = slots + Int(tag) * Self.readSlotsPerTag
        var used = 0
        let requestStart = r.pointee.offset
        let requestEnd = requestStart + UInt64(r.pointee.length)
        let buffer = r.pointee.buffer!

        var position = requestStart + UInt64(r.pointee.cursor)
        walk: while position < requestEnd {
            let subtree = CacheIndex.subtree(of: position)
            let chunkEnd = min(requestEnd, UInt64(subtree + 1) << UInt64(PCacheLayout.subtreeShift))
            var crcFailed = false
            cache.index.withShard(subtree) { keys in
                var cursor = keys.first(endingAfter: position)
                while position < chunkEnd && used < Self.readSlotsPerTag {
                    guard let key = keys.key(at: cursor), key.start < chunkEnd else {
                        startMiss(&keys, start: position, end: chunkEnd, slot: base + used, requestStart)
                        used += 1
                        position = chunkEnd
                        break
                    }
                    if key.start > position {
                        startMiss(&keys, start: position, end: key.start, slot: base + used, requestStart)
                        used += 1
                        position = key.start
                        cursor = keys.first(endingAfter: position)  // the placeholder's insert may move keys
                        continue
                    }
                    let pieceEnd = min(key.end, chunkEnd)
                    if key.isPlaceholder {
                        // Another read is already fetching this range: read it too.
                        startBackingRead(start: position, end: pieceEnd, token: 0, slot: base + used, requestStart)
                        used += 1
                    } else {
                        switch copyHit(key, from: position, to: pieceEnd, into: buffer + Int(position - requestStart)) {
                        case .copied:
                            counters.add(.hitBytes, pieceEnd - position)
                        case .stale:
                            cursor = keys.remove(at: cursor)
                            continue  // re-examine the same position as a miss
                        case .crcMismatch:
                            crcFailed = true
                            return
                        }
                    }
                    position = pieceEnd
                    cursor = keys.next(after: cursor)
                }
            }
            if crcFailed {
                r.pointee.error = -EIO
                break walk
            }
            if used == Self.readSlotsPerTag { break }
        }
        r.pointee.cursor = UInt32(position - requestStart)
        r.pointee.outstanding += used
        if used == 0 {
            if r.pointee.error != 0 { return r.pointee.error }
            return Int32(r.pointee.length)
        }
        return nil
    }

    private enum HitOutcome { case copied, stale, crcMismatch }

    /// Copies [from, to) of `key` out of pmem. The segment generation is
    /// read before and after the copy: if GC recycled the segment meanwhile,
    /// the copy is thrown away and the key treated as stale.
    private func copyHit(_ key: Extent, from: UInt64, to: UInt64, into destination: UnsafeMutableRawPointer) -> HitOutcome {
        let pool = cache.pool
        let before = pool.generation(key.segment)
        guard key.generation >= before else { return .stale }
        let source = cache.memory.base + cache.dataOffset(key.segment, key.segmentOffset + UInt32(from - key.start))
        destination.copyMemory(from: source, byteCount: Int(to - from))
        if cache.dataCRC {
            let span = cache.memory.base + cache.dataOffset(key.segment, key.crcSpanOffset)
            if CRC32C.checksum(span, count: Int(key.crcSpanLength)) != key.crc {
                pcs_load_fence()
                if pool.generation(key.segment) != before { return .stale }
                counters.add(.crcErrors)
                return .crcMismatch
            }
        }
        pcs_load_fence()
        return pool.generation(key.segment) == before ? .copied : .stale
    }

    private func startMiss(
        _ keys: inout SubtreeIndex, start: UInt64, end: UInt64,
        slot: UnsafeMutablePointer<ReadSlot>, _ requestStart: UInt64
    ) {
        // Unique among this queue's misses in flight (19 bits: more than the
        // 4096 tags' read slots can hold); the queue id (12 bits, as ublk has
        // at most 4096 queues) keeps queues apart, and the top bit keeps the
        // token from 0 ("no placeholder"). Seven bits of queue id, as before,
        // let queues q and q + 128 take each other's placeholders.
        nextToken = (nextToken &+ 1) & Self.tokenCounterMask
        let token = Self.placeholderToken(queue: id, counter: nextToken)
        keys.insert(.placeholder(start: start, length: UInt32(end - start), token: token))
        counters.add(.missBytes, end - start)
        startBackingRead(start: start, end: end, token: token, slot: slot, requestStart)
    }

    private func startBackingRead(
        start: UInt64, end: UInt64, token: UInt32, slot: UnsafeMutablePointer<ReadSlot>, _ requestStart: UInt64
    ) {
        let tagIndex = (slot - slots) / Self.readSlotsPerTag
        let slotIndex = (slot - slots) % Self.readSlotsPerTag
        let r = requests + tagIndex
        slot.pointee = ReadSlot(start: start, length: UInt32(end - start), token: token, inUse: true)
        let destination = r.pointee.buffer! + Int(start - requestStart)
        let backing = cache.backing
        io.submitRead(
            fd: backing.descriptor(buffer: destination, count: Int(end - start), offset: start),
            into: destination, count: Int(end - start), offset: start,
            userData: Self.userData(tag: UInt16(tagIndex), slot: slotIndex))
    }

    /// Caches the data a miss brought in, if its placeholder is still there
    /// (a write to the range deletes or cuts it). Only what fits in the
    /// current data segment is cached; a full cache just skips caching.
    private func fillCache(from slot: ReadSlot, request: Request) {
        let subtree = CacheIndex.subtree(of: slot.start)
        cache.index.withShard(subtree) { keys in
            guard let at = keys.placeholder(token: slot.token, start: slot.start, end: slot.start + UInt64(slot.length)),
                  let placeholder = keys.key(at: at)
            else { return }
            guard let space = head.pointee.allocate(placeholder.length, pool: cache.pool) else {
                keys.remove(at: at)
                return
            }
            let source = UnsafeRawPointer(request.buffer! + Int(placeholder.start - request.offset))
            cache.memory.storeAndFlush(at: cache.dataOffset(space.segment, space.offset), from: source, count: Int(space.length))
            cache.memory.drain()
            let crc = cache.dataCRC ? CRC32C.checksum(source, count: Int(space.length)) : 0
            let key = Extent(
                start: placeholder.start, length: space.length, flags: .clean, segment: space.segment,
                segmentOffset: space.offset, generation: space.generation, crc: crc,
                crcSpanOffset: space.offset, crcSpanLength: space.length)
            let outcome: OpenKeySets.AppendResult
            let first = keys.first(endingAfter: key.start)
            if let keySet = cache.keySets.keySet(for: key.start, key.end, in: keys, first: first, own: id) {
                outcome = cache.keySets.append(key, to: keySet, forceClose: false) { tag in
                    // Replaces the placeholder; a part the key does not cover
                    // (the head's segment ran out) goes too, as a placeholder
                    // overlapped at its front always does.
                    var tagged = key
                    tagged.keySetTag = tag
                    keys.insert(tagged)
                }
            } else {
                outcome = .full
            }
            if case .full = outcome {
                keys.remove(at: at)
                if cache.pool.dropReference(space.segment) { cache.invalidate(space.segment) }
            }
        }
    }

    private func dropPlaceholder(_ slot: ReadSlot) {
        let subtree = CacheIndex.subtree(of: slot.start)
        cache.index.withShard(subtree) { keys in
            if let at = keys.placeholder(token: slot.token, start: slot.start, end: slot.start + UInt64(slot.length)) {
                keys.remove(at: at)
            }
        }
    }

    // MARK: Helpers

    private func finish(_ tag: UInt16, _ result: Int32) {
        requests[Int(tag)].kind = .idle
        io.completeRequest(tag: tag, result: result)
    }

    private func checkRange(_ offset: UInt64, _ length: UInt32) -> Int32? {
        let end = offset.addingReportingOverflow(UInt64(length))
        return end.overflow || end.partialValue > cache.logicalBytes ? -EIO : nil
    }

    static let tokenCounterMask: UInt32 = (1 << 19) - 1

    /// The token of queue `queue`'s miss number `counter` (see `startMiss`).
    @inline(__always)
    static func placeholderToken(queue: Int, counter: UInt32) -> UInt32 {
        0x8000_0000 | UInt32(truncatingIfNeeded: queue & 0xFFF) << 19 | (counter & tokenCounterMask)
    }

    @inline(__always)
    static func userData(tag: UInt16, slot: Int) -> UInt64 {
        UInt64(tag) << 8 | UInt64(slot)
    }
}
