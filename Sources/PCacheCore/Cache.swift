import CSupport
import Glibc
import Synchronization

/// Options a cache is started with (the table's optional arguments and ours).
public struct CacheConfiguration: Sendable {
    public var dataCRC = false
    public var cacheMode: CacheMode = .writeback
    /// Key-sets being filled at once; the kernel uses one per CPU. One per
    /// ublk queue keeps FLUSH cheap and appends uncontended.
    public var keySetCount = 1
    /// Bytes the device exposes; must equal the backing size (nil: take it).
    public var logicalBytes: UInt64? = nil
    /// Start the writeback and housekeeping threads. Tests turn this off and
    /// drive `runWriteback()` / `runGarbageCollection()` themselves.
    public var startWorkers = true
    /// Keep the open key-sets in a shared-memory file in this directory
    /// (e.g. /run/pcache-ublk), so a crashed server loses no acknowledged
    /// write: the next start logs them (see `KeySetStash`). nil: in memory.
    public var keySetStashDirectory: String? = nil
    /// Told, from the writeback thread, when writeback starts failing, when it
    /// resumes and when it halts for good (the server logs it, like the
    /// kernel's "writeback error: %d"). Once per change, not per attempt.
    public var events: (@Sendable (String) -> Void)? = nil
    /// Smallest cache device accepted; lowered only by tests.
    var minimumCacheBytes = PCacheLayout.minimumDeviceSize
    /// Tests only: a new cache starts its key log this many bytes before the
    /// end of segment 0, so key-set chaining across segments comes soon.
    var keyLogStartsBeforeSegmentEnd: Int? = nil
    /// Write every version of the data back, as dm-pcache does, so the
    /// backing device on its own always holds a prefix of the write history
    /// (a consistent past state, should the cache device be lost). By
    /// default writeback skips data a newer logged write has overwritten.
    public var writebackKeepsHistory = false
    /// Tests only: starting fails (as a crash would end it) after logging
    /// this many key-sets left by a crashed server.
    var failAfterAdoptingKeySets: Int? = nil
    /// Tests only: writeback stages data in its bounce area, as it does when
    /// the pmem mapping refuses direct I/O (device DAX).
    var writebackStagesData = false

    public init() {}
}

/// A running pcache: the cache device, the backing device, the index and the
/// background work (dm-pcache's `pcache_cache`). Queues get a `CacheQueue`
/// each from `makeQueue`; everything here is shared between them.
public final class Cache: @unchecked Sendable {
    public let memory: PersistentMemory
    public let device: CacheDevice
    public let metadata: CacheMetadata
    public let backing: BackingDevice
    public let dataCRC: Bool
    let writebackStagesData: Bool
    let writebackKeepsHistory: Bool
    public let logicalBytes: UInt64
    public let replayOutcome: (keySets: Int, keys: Int, staleKeys: Int)
    /// Keys a crashed server left in its open key-sets, logged at start;
    /// nil when there were none, a negative count when they had to be
    /// dropped (the log moved on without them).
    public private(set) var adoptedKeys: Int? = nil
    private let stash: KeySetStash?

    let pool: SegmentPool
    let index: CacheIndex
    let keyLog: KeyLog
    let keySets: OpenKeySets
    let reader: KeyLogReader
    private let events: (@Sendable (String) -> Void)?
    private let dataAreaOffsets: UnsafeMutablePointer<Int>
    private var writeback: Writeback!
    private var collector: GarbageCollector!
    /// Backing writes writeback has issued (tests: merged keys make fewer).
    var writebackRequests: UInt64 { writeback.writeRequests }

    public static let zeroBufferSize = 1 << 20
    let zeroBuffer: UnsafeMutableRawPointer

    private let gcPercentValue: UnsafeMutablePointer<UInt32>
    var gcPercent: UInt8 { UInt8(pcs_atomic_load_u32(gcPercentValue)) }

    // Wake-ups for queues with deferred requests, by queue id.
    private let wakeLock = PThreadMutex()
    private var deferredWakers: [Int: QueueWaker] = [:]
    private var queueCounters: [QueueCounters] = []
    private let invalidationsSinceClean: UnsafeMutablePointer<UInt32>
    /// Where the stale-key sweep resumes; housekeeping thread only (or the
    /// test caller of `runGarbageCollection`, which runs without it).
    private var cleanerCursor = 0
    private var lastSweepStart: UInt64 = 0
    /// Nanoseconds between the starts of two sweeps (tests change it).
    var staleKeySweepInterval: UInt64 = 1_000_000_000

    // Background threads.
    private let workerLock = PThreadMutex()
    private let workerCondition = PThreadCondition()
    private var workersStopping = false
    private var writebackKicked = false
    /// Set by `stop(writeBackAll:)`: write back everything now, busy or not.
    private var writeBackAllRequested = false
    // Reads + writes as the writeback thread last saw them, and when.
    private var requestsSeen: UInt64 = 0
    private var requestsSeenChangedAt: UInt64 = 0
    private var housekeepingKicked = false
    private var threads: [OSThread] = []

    /// Held for the cache's lifetime: no second server on the same devices.
    private var claims: [DeviceClaim] = []

    /// Opens (formatting on first use, as the kernel does) and starts a cache.
    /// Both devices are claimed exclusively first, so a second server on
    /// either is refused before anything is read or written.
    public convenience init(cachePath: String, backingPath: String, configuration: CacheConfiguration) throws {
        let claims = [
            try DeviceClaim(path: cachePath, role: "cache device"),
            try DeviceClaim(path: backingPath, role: "backing device"),
        ]
        let memory = try MappedPersistentMemory(path: cachePath)
        let backing = try BackingDevice(path: backingPath)
        try self.init(memory: memory, backing: backing, configuration: configuration)
        self.claims = claims
    }

    public init(memory: PersistentMemory, backing: BackingDevice, configuration: CacheConfiguration) throws {
        let logical = configuration.logicalBytes ?? backing.size
        guard logical == backing.size else {
            throw CacheError.sizeMismatch(tableBytes: logical, backingPath: backing.path, backingBytes: backing.size)
        }
        self.memory = memory
        self.backing = backing
        events = configuration.events
        logicalBytes = logical
        device = try CacheDevice.open(memory: memory, minimumSize: configuration.minimumCacheBytes)
        metadata = try CacheMetadata.open(device: device, dataCRC: configuration.dataCRC, cacheMode: configuration.cacheMode)
        dataCRC = metadata.info.dataCRC
        writebackStagesData = configuration.writebackStagesData
        writebackKeepsHistory = configuration.writebackKeepsHistory

        let segments = metadata.segmentCount
        dataAreaOffsets = .allocate(capacity: Int(segments))
        for id in 0..<segments { dataAreaOffsets[Int(id)] = metadata.dataAreaOffset(id) }
        let metadata = self.metadata
        pool = SegmentPool(count: segments) { metadata.segmentGeneration($0) }
        index = CacheIndex(backingBytes: logical)
        reader = KeyLogReader(memory: memory, segmentCount: segments, dataAreaOffsets: dataAreaOffsets, backingBytes: logical)

        if metadata.isNewCache, let distance = configuration.keyLogStartsBeforeSegmentEnd {
            let start = CachePosition(cacheSegID: 0, segOff: UInt32(PCacheLayout.segmentDataSize - distance))
            memory.persistZero(at: metadata.deviceOffset(of: start), count: PCacheLayout.ksetHeaderSize)
            metadata.persistDirtyTail(start)
            metadata.persistKeyTail(start)
        }
        // A crashed server's open key-sets, if its stash matches this cache.
        var stashPath: String? = nil
        var leftover: KeySetStash.Leftover? = nil
        let identity = KeySetStash.Identity(cacheDevicePath: memory.label, superblock: device.superblock)
        if let directory = configuration.keySetStashDirectory {
            stashPath = KeySetStash.path(directory: directory, identity: identity)
            leftover = KeySetStash.leftover(at: stashPath!, identity: identity)
        }

        let replay = Replay(reader: reader, pool: pool, index: index, dataCRC: dataCRC)
        let outcome = try replay.run(from: metadata.keyTail)
        replayOutcome = (outcome.keySets, outcome.keys, outcome.staleKeys)
        let offsets = dataAreaOffsets
        let keyLog = KeyLog(memory: memory, pool: pool, head: outcome.keyHead) { offsets[Int($0)] }
        self.keyLog = keyLog

        // Keys of a crashed server: newer than every logged key for the same
        // bytes (all unclosed keys covering a byte are in one key-set, in
        // write order: see OpenKeySets), so they go into the index after
        // replay and into the log before anything new.
        if var leftover {
            if Self.logEndsAtStash(&leftover, head: outcome.keyHead, reader: reader) {
                // Every key first: that marks the segments holding their data
                // used, so logging them cannot take one of those segments for
                // the key log. (Logging each key-set right after its own keys
                // could: the data of the key-sets after it was not yet known
                // to the pool.) A key that fails validation or its data CRC
                // stops the start before anything is written.
                var counts: [Int] = []
                for keySet in leftover.keySets {
                    let count = try keySet.withUnsafeBytes { raw in
                        let buffer = raw.baseAddress!
                        let count = Int(KeySetHeader(decoding: buffer).keyNumOrNext)
                        for i in 0..<count {
                            let key = KeyOnMedia(decoding: buffer + KeySetHeader.encodedSize + i * KeyOnMedia.encodedSize)
                            _ = try replay.insert(key, index: i, at: keyLog.currentHead)
                        }
                        return count
                    }
                    counts.append(count)
                }
                var adopted = 0
                for (number, (keySet, count)) in zip(leftover.keySets, counts).enumerated() {
                    if number == configuration.failAfterAdoptingKeySets {
                        throw CacheError.corruptKeyLog(at: keyLog.currentHead, reason: "test: start cut short")
                    }
                    let at = keyLog.currentHead
                    // Sealed already (`KeySetStash.Leftover`).
                    guard keySet.withUnsafeBytes({ keyLog.write(keySet: $0.baseAddress!, size: $0.count) }) else {
                        throw CacheError.corruptKeyLog(
                            at: at, reason: "no free segment to log \(count) keys left by the previous server")
                    }
                    adopted += count
                }
                adoptedKeys = adopted
            } else {
                adoptedKeys = -leftover.keyCount
            }
        }
        if let stashPath {
            let stash = try KeySetStash(path: stashPath, identity: identity, slots: max(configuration.keySetCount, 1),
                                        keyHead: keyLog.currentHead)
            keyLog.onHeadMoved = { stash.setKeyHead($0) }
            self.stash = stash
        } else {
            stash = nil
        }
        keySets = OpenKeySets(count: configuration.keySetCount, keyLog: keyLog, dataCRC: dataCRC, stash: stash)

        zeroBuffer = .allocate(byteCount: Self.zeroBufferSize, alignment: 4096)
        zeroBuffer.initializeMemory(as: UInt8.self, repeating: 0, count: Self.zeroBufferSize)
        gcPercentValue = .allocate(capacity: 1)
        gcPercentValue.initialize(to: UInt32(metadata.info.gcPercent))
        invalidationsSinceClean = .allocate(capacity: 1)
        invalidationsSinceClean.initialize(to: 0)

        writeback = try Writeback(cache: self)
        collector = GarbageCollector(cache: self)
        pool.onSegmentFreed = { [unowned self] in self.segmentFreed() }

        // Every start rewrites cache_info, with INIT_DONE from the first on.
        metadata.persistCacheInfo(setInitDone: true)
        if configuration.startWorkers { try startWorkers() }
    }

    /// Whether a stash belongs to the log as replayed: the log must end where
    /// the stash last saw it end, or past it only by key-sets that are, byte
    /// for byte, the stash's own (after LAST links, maybe), which are then
    /// not logged again. That happens when a server died after writing a
    /// key-set but before noting the new end, and when a start died while
    /// logging the stash of the server before it (the stash is replaced only
    /// once all of it is logged). Anything else means another server wrote
    /// the log since, and the stash's keys are older than what it wrote:
    /// they are dropped.
    private static func logEndsAtStash(
        _ leftover: inout KeySetStash.Leftover, head: CachePosition, reader: KeyLogReader
    ) -> Bool {
        var position = leftover.keyHead
        var matched: [Int] = []
        // Every step logs one of the stash's key-sets or follows a LAST link
        // to one: a walk longer than that has left the log.
        var steps = 2 * leftover.keySets.count + 1
        while position != head {
            guard steps > 0, case let .success(keySet) = reader.keySet(at: position) else { return false }
            steps -= 1
            if keySet.isLast {
                guard let next = keySet.nextCacheSegID, next < reader.segmentCount else { return false }
                position = CachePosition(cacheSegID: next, segOff: 0)
                continue
            }
            let logged = Array(UnsafeRawBufferPointer(start: keySet.pointer, count: keySet.size))
            guard let index = leftover.keySets.indices.first(where: {
                !matched.contains($0) && leftover.keySets[$0] == logged
            }) else { return false }
            matched.append(index)
            position = position.advanced(by: keySet.size)
        }
        for index in matched.sorted(by: >) { leftover.keySets.remove(at: index) }
        return true
    }

    deinit {
        stopWorkers()
        dataAreaOffsets.deallocate()
        zeroBuffer.deallocate()
        gcPercentValue.deallocate()
        invalidationsSinceClean.deallocate()
    }

    // MARK: Queues

    /// The per-queue front end for queue `id` with `depth` tags.
    public func makeQueue(id: Int, depth: Int, io: QueueIO, waker: QueueWaker) -> CacheQueue {
        let queue = CacheQueue(cache: self, id: id, depth: depth, io: io, waker: waker)
        wakeLock.withLock { queueCounters.append(queue.counters) }
        return queue
    }

    func queueHasDeferred(_ queue: CacheQueue, _ has: Bool) {
        wakeLock.withLock { deferredWakers[queue.id] = has ? queue.waker : nil }
    }

    private func segmentFreed() {
        let wakers = wakeLock.withLock { Array(deferredWakers.values) }
        for waker in wakers { waker.wake() }
    }

    /// Something waits for space: make sure GC looks now.
    func kickReclaim() {
        workerLock.withLock { housekeepingKicked = true }
        workerCondition.broadcast()
    }

    func kickWriteback() {
        workerLock.withLock { writebackKicked = true }
        workerCondition.broadcast()
    }

    // MARK: Segments

    /// Byte offset on the cache device of `offset` in cache segment `segment`'s data area.
    @inline(__always)
    func dataOffset(_ segment: UInt32, _ offset: UInt32) -> Int {
        dataAreaOffsets[Int(segment)] + Int(offset)
    }

    /// A data segment lost its last reference: bump and persist its
    /// generation (every key still pointing at it is now stale), then free it.
    func invalidate(_ segment: UInt32) {
        let generation = pool.bumpGeneration(segment)
        metadata.persistSegmentGeneration(segment, generation)
        _ = pcs_atomic_add_u32(invalidationsSinceClean, 1)
        pool.release(segment)
    }

    /// Removes stale keys from the index, a few at a time per lock hold
    /// (dm-pcache's key cleaner). Reads also drop stale keys on contact, so
    /// stale keys cost only memory and search time until the cleaner comes.
    ///
    /// A sweep over the whole index starts when segments were invalidated
    /// since the last one began, at most once a second, and each call
    /// advances it by at most `cleanerSubtreesPerCall` stripes (`all`: a whole
    /// sweep now). Sweeping every stripe at each housekeeping pass, which GC
    /// kicks many times a second under sustained writes, kept the GC thread
    /// busy sweeping (over 90% of its samples with 460k keys cached, native
    /// bench).
    func cleanStaleKeys(all: Bool = false) {
        if cleanerCursor == 0 {
            guard pcs_atomic_load_u32(invalidationsSinceClean) > 0 else { return }
            let now = monotonicNanoseconds()
            guard all || now &- lastSweepStart >= staleKeySweepInterval else { return }
            lastSweepStart = now
            pcs_atomic_store_u32(invalidationsSinceClean, 0)
        }
        let pool = self.pool
        let end = all ? index.count : min(index.count, cleanerCursor + Self.cleanerSubtreesPerCall)
        for subtree in cleanerCursor..<end {
            while index.withShard(subtree, { keys in
                keys.removeStale(limit: 64) { !pool.isCurrent(segment: $0.segment, keyGeneration: $0.generation) }
            }) == 64 {}
        }
        cleanerCursor = end == index.count ? 0 : end
    }

    /// Stripes one `cleanStaleKeys` call visits (a 4 TiB backing device has a
    /// million; a full sweep then takes many housekeeping passes).
    static let cleanerSubtreesPerCall = 256

    // MARK: Background work

    /// Writes back one key-set; for tests that run without worker threads.
    @discardableResult
    public func runWriteback() -> Bool { writebackStep() == .progressed }

    /// Tests: makes writeback's next ring submissions fail with `errnos`.
    func injectWritebackRingErrors(_ errnos: [Int32]) { writeback.injectedRingErrors = errnos }

    /// Collects one key-set; for tests that run without worker threads.
    @discardableResult
    public func runGarbageCollection() -> Bool {
        let progressed = collectOneKeySet()
        cleanStaleKeys(all: true)
        return progressed
    }

    /// One GC step without the stale-key sweep (tests of the sweep).
    func collectOneKeySet() -> Bool { collector.step() }

    /// Closes every key-set now (FLUSH from outside a queue).
    public func closeKeySets() -> Bool { keySets.closeAll() }

    private func startWorkers() throws {
        let writebackThread = OSThread(name: "pcache-wb") { [unowned self] in
            becomeIOFlusher("writeback")
            writebackLoop()
        }
        let housekeepingThread = OSThread(name: "pcache-gc") { [unowned self] in
            becomeIOFlusher("gc")
            housekeepingLoop()
        }
        try writebackThread.start()
        try housekeepingThread.start()
        threads = [writebackThread, housekeepingThread]
    }

    /// Worker threads that have tried to mark themselves PR_SET_IO_FLUSHER,
    /// and those that did (tests).
    let ioFlusherAttempts = Atomic<Int>(0)
    let ioFlusherWorkers = Atomic<Int>(0)

    /// Writeback and GC free the space a full cache's writers wait for, and
    /// the device they serve may be where the kernel's reclaim writes dirty
    /// pages: like the queue threads, they must not have their allocations
    /// wait on reclaim that waits on them (PR_SET_IO_FLUSHER, as loop and
    /// nbd do in the kernel). Needs CAP_SYS_RESOURCE; without it they run
    /// as before, and the events say so.
    private func becomeIOFlusher(_ name: String) {
        let rc = pcs_set_io_flusher()
        if rc == 0 {
            ioFlusherWorkers.add(1, ordering: .relaxed)
        } else {
            events?("\(name) thread: PR_SET_IO_FLUSHER failed: \(PCacheError.errnoText(-rc))")
        }
        ioFlusherAttempts.add(1, ordering: .relaxed)
    }

    private func stopWorkers() {
        workerLock.withLock { workersStopping = true }
        workerCondition.broadcast()
        for thread in threads { thread.join() }
        threads = []
    }

    /// Sleeps until kicked, stopping, or `nanoseconds` pass; returns false when stopping.
    private func sleep(_ nanoseconds: UInt64, kicked flag: ReferenceWritableKeyPath<Cache, Bool>) -> Bool {
        workerLock.withLock {
            if !workersStopping && !self[keyPath: flag] {
                workerCondition.wait(workerLock, nanoseconds: nanoseconds)
            }
            self[keyPath: flag] = false
            return !workersStopping
        }
    }

    /// Waits the whole time unless the cache stops: kicks do not cut it
    /// short. False when stopping.
    private func pause(_ nanoseconds: UInt64) -> Bool {
        let deadline = monotonicNanoseconds() &+ nanoseconds
        return workerLock.withLock {
            while !workersStopping {
                let now = monotonicNanoseconds()
                guard now < deadline else { break }
                workerCondition.wait(workerLock, nanoseconds: deadline - now)
            }
            return !workersStopping
        }
    }

    private var isStopping: Bool { workerLock.withLock { workersStopping } }

    /// Failed attempts before the current run of writeback failures; nil
    /// while writeback succeeds. Writeback thread (or a test) only.
    private var writebackFailingSince: UInt64? = nil

    /// One writeback step, telling `events` when writeback starts failing,
    /// resumes, or halts.
    private func writebackStep() -> Writeback.StepResult {
        let result = writeback.step()
        if result == .failed {
            if let fatal = writeback.fatalError {
                events?("writeback halted: \(fatal)")
            } else if writebackFailingSince == nil {
                writebackFailingSince = writeback.failedAttempts - 1
                let errno = writeback.lastError
                events?("writeback error: \(PCacheError.errnoText(-errno)) (errno \(-errno)) at dirty tail "
                    + "\(metadata.dirtyTail); retrying the key-set until the backing device accepts it")
            }
        } else if let since = writebackFailingSince, result == .progressed {
            events?("writeback resumed after \(writeback.failedAttempts - since) failed attempt(s)")
            writebackFailingSince = nil
        }
        return result
    }

    /// How long the cache must see no reads or writes before writeback runs
    /// while the cache still has room.
    static let writebackIdleNanoseconds: UInt64 = 1_000_000_000

    /// Whether writeback should run now. dm-pcache writes back at once,
    /// competing with the writes it is absorbing for CPU and for the backing
    /// device. Here, as with dm-writecache's watermarks or Open CAS's cleaning
    /// policy, a burst stays in pmem (which is persistent: nothing is at risk)
    /// while the cache has room, and is written back when the cache has been
    /// idle (no reads or writes) for a second, when usage reaches gc_percent
    /// (GC then needs clean segments, so writeback runs as long as usage
    /// stays there), or when everything is to be written back (`del
    /// --flush`). gc_percent 0 gives dm-pcache's eager writeback. Writeback
    /// thread only.
    private func writebackIsDue() -> Bool {
        if workerLock.withLock({ writeBackAllRequested }) { return true }
        let percent = gcPercent
        if percent == 0 { return true }
        if UInt64(pool.usedSegments) >= UInt64(metadata.segmentCount) * UInt64(percent) / 100 { return true }
        let requests = wakeLock.withLock { queueCounters.reduce(0) { $0 &+ $1[.writes] &+ $1[.reads] } }
        let now = monotonicNanoseconds()
        if requests != requestsSeen || requestsSeenChangedAt == 0 {
            requestsSeen = requests
            requestsSeenChangedAt = now
            return false
        }
        return now - requestsSeenChangedAt >= Self.writebackIdleNanoseconds
    }

    private func writebackLoop() {
        var backoff: UInt64 = 100_000_000
        while !isStopping {
            guard writebackIsDue() else {
                // Looks again every 100 ms: idle is measured at that grain.
                if !pause(100_000_000) { return }
                continue
            }
            let result = writebackStep()
            switch result {
            case .progressed:
                backoff = 100_000_000
                kickReclaim()
            case .clean:
                // The kernel polls every 5 s; closes kick us sooner.
                if !sleep(1_000_000_000, kicked: \.writebackKicked) { return }
            case .failed:
                // The backing device failed: retry the same key-set after the
                // back-off. Not sooner: housekeeping and key-set closes kick
                // writeback every 100 ms while anything is dirty.
                if !pause(backoff) { return }
                backoff = min(backoff * 2, 5_000_000_000)
            }
        }
    }

    private func housekeepingLoop() {
        while !isStopping {
            // Key-sets are closed at most about 1 s after their first key.
            if !keySets.closeExpired(olderThan: 1_000_000_000) { kickReclaim() }
            var collected = 0
            while collector.step() {
                collected += 1
                if collected % 64 == 0 && isStopping { return }
            }
            cleanStaleKeys()
            if keyLog.currentHead != metadata.dirtyTail { kickWriteback() }
            if !sleep(100_000_000, kicked: \.housekeepingKicked) { return }
        }
    }

    // MARK: Control

    /// Sets gc_percent (0…90) and persists it in cache_info.
    public func setGCPercent(_ percent: UInt8) throws {
        guard percent <= PCacheLayout.gcPercentMax else {
            throw PCacheError.usage("gc_percent must be between 0 and \(PCacheLayout.gcPercentMax), got \(percent)")
        }
        metadata.persistCacheInfo(gcPercent: percent)
        pcs_atomic_store_u32(gcPercentValue, UInt32(percent))
        kickReclaim()
    }

    /// Stops the cache. Queues must be stopped first. Every key-set is closed
    /// so all completed writes survive; with `writeBackAll` every dirty byte is
    /// written to the backing device before returning (`progress` is called
    /// with the bytes of log still dirty). Dirty data otherwise stays in pmem,
    /// as with dm-pcache, and is replayed on the next start.
    public func stop(writeBackAll: Bool = false, progress: ((UInt64) -> Void)? = nil) throws {
        var attempts = 0
        while !keySets.closeAll() {
            attempts += 1
            guard attempts < 100 else { throw CacheError.stopped }
            kickReclaim()
            usleep(100_000)
        }
        if writeBackAll {
            workerLock.withLock { writeBackAllRequested = true }
            kickWriteback()
            var lastReport: UInt64 = 0
            while metadata.dirtyTail != keyLog.currentHead {
                if threads.isEmpty {
                    if writeback.step() != .progressed {
                        throw writeback.fatalError ?? CacheError.writebackStalled(writeback.lastError)
                    }
                    continue
                }
                let now = monotonicNanoseconds()
                if let progress, now - lastReport > 1_000_000_000 {
                    progress(dirtyLogBytes())
                    lastReport = now
                }
                if let fatal = writeback.fatalError { throw fatal }
                usleep(20_000)
            }
            progress?(0)
        }
        stopWorkers()
        fsync(backing.bufferedFD)
        // Every key is in the log now: nothing for a next server to adopt.
        stash?.remove()
    }

    /// Bytes of key log between the dirty tail and the head (an estimate of
    /// what writeback still has to read).
    func dirtyLogBytes() -> UInt64 {
        logDistance(from: metadata.dirtyTail, to: keyLog.currentHead)
    }

    private func logDistance(from tail: CachePosition, to head: CachePosition) -> UInt64 {
        if tail.cacheSegID == head.cacheSegID && tail.segOff <= head.segOff {
            return UInt64(head.segOff - tail.segOff)
        }
        // Different segments: the rest of the tail's segment plus the head's part.
        return UInt64(tail.remaining) + UInt64(head.segOff)
    }

    // MARK: Status

    public func status() -> CacheStatus {
        let counters = wakeLock.withLock { queueCounters }
        var totals = [QueueCounters.Name: UInt64]()
        for name in QueueCounters.Name.allCases {
            totals[name] = counters.reduce(0) { $0 + $1[name] }
        }
        let usage = index.usage()
        return CacheStatus(
            superblockFlags: device.superblock.flags, physicalSegments: device.segmentCount,
            cacheSegments: metadata.segmentCount, usedSegments: pool.usedSegments, gcPercent: gcPercent,
            cacheFlags: metadata.info.flags, keyHead: keyLog.currentHead, dirtyTail: metadata.dirtyTail,
            keyTail: metadata.keyTail, persistence: memory.mode, counters: totals,
            indexKeys: usage.keys, indexBytes: usage.bytes,
            writebackKeySets: writeback.keySetsWritten, writebackBytes: writeback.bytesWritten,
            writebackRequests: writeback.writeRequests, writebackSkippedBytes: writeback.bytesSkipped,
            writebackKeepsHistory: writebackKeepsHistory,
            writebackFailures: writeback.failedAttempts, writebackLastError: writeback.lastError,
            writebackHalted: writeback.fatalError?.description, gcKeySets: collector.keySetsCollected,
            gcSegmentsFreed: collector.segmentsFreed, gcHalted: collector.fatalError?.description)
    }
}

/// A snapshot of a cache's state: the dmsetup INFO fields plus our counters.
public struct CacheStatus: Sendable {
    public var superblockFlags: UInt32
    public var physicalSegments: UInt32
    public var cacheSegments: UInt32
    public var usedSegments: UInt32
    public var gcPercent: UInt8
    public var cacheFlags: UInt32
    public var keyHead: CachePosition
    public var dirtyTail: CachePosition
    public var keyTail: CachePosition
    public var persistence: PersistenceMode
    public var counters: [QueueCounters.Name: UInt64]
    public var indexKeys: Int
    public var indexBytes: Int
    public var writebackKeySets: UInt64
    public var writebackBytes: UInt64
    /// Backing writes issued by writeback: fewer than keys when neighbours merge.
    public var writebackRequests: UInt64
    /// Dirty bytes writeback did not write because newer logged data had
    /// overwritten them (0 with `writebackKeepsHistory`).
    public var writebackSkippedBytes: UInt64
    /// Writeback writes every version (`CacheConfiguration.writebackKeepsHistory`).
    public var writebackKeepsHistory: Bool
    public var writebackFailures: UInt64
    public var writebackLastError: Int32
    public var writebackHalted: String?
    public var gcKeySets: UInt64
    public var gcSegmentsFreed: UInt64
    public var gcHalted: String?

    /// The line `dmsetup status` prints for dm-pcache after `<start> <len> pcache `:
    /// `%x %u %u %u %u %x %u:%u %u:%u %u:%u`.
    public var infoLine: String {
        "\(String(superblockFlags, radix: 16)) \(physicalSegments) \(cacheSegments) \(usedSegments) \(gcPercent) "
            + "\(String(cacheFlags, radix: 16)) \(keyHead) \(dirtyTail) \(keyTail)"
    }

    /// Is every written byte on the backing device and collected?
    public var isClean: Bool { keyHead == dirtyTail }
}
