import Synchronization
import Glibc
import Testing

@testable import PCacheCore

@Suite(.serialized) struct CacheTests {
    @Test func writeThenReadHitsTheCache() throws {
        let h = try CacheHarness()
        let data = pattern(1, 8192)
        #expect(h.write(4096, data) == 8192)
        let (result, bytes) = h.read(4096, 8192)
        #expect(result == 8192)
        #expect(bytes == data)
        #expect(h.cache.status().counters[.hitBytes] == 8192)
        // Nothing reached the backing device yet: write-back.
        #expect((h.backingBytes(4096, 8192) == [UInt8](repeating: 0, count: 8192)) == true)
    }

    @Test func missReadsBackingAndFillsTheCacheAsClean() throws {
        let h = try CacheHarness()
        let data = pattern(2, 16384)
        let fd = open(h.backingPath, O_WRONLY)
        _ = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 1 << 20) }
        close(fd)
        let (first, bytes) = h.read(1 << 20, 16384)
        #expect(first == 16384 && bytes == data)
        #expect(h.cache.status().counters[.missBytes] == 16384)
        let (second, again) = h.read(1 << 20, 16384)
        #expect(second == 16384 && again == data)
        #expect(h.cache.status().counters[.hitBytes] == 16384)
        // A clean fill is never written back.
        _ = h.flush()
        while h.cache.runWriteback() {}
        #expect(h.cache.status().writebackBytes == 0)
    }

    @Test func partialHitMergesCacheAndBacking() throws {
        let h = try CacheHarness()
        let old = pattern(3, 65536)
        let fd = open(h.backingPath, O_WRONLY)
        _ = old.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        close(fd)
        let middle = pattern(4, 4096)
        #expect(h.write(8192, middle) == 4096)
        var expected = old
        expected.replaceSubrange(8192..<12288, with: middle)
        let (result, bytes) = h.read(0, 65536)
        #expect(result == 65536 && bytes == expected)
    }

    @Test func flushedWritesSurviveRestartAndWriteback() throws {
        let h = try CacheHarness()
        let data = pattern(5, 12288)
        #expect(h.write(40960, data) == 12288)
        #expect(h.flush() == 0)
        try h.crashAndRestart()
        #expect(h.cache.replayOutcome.keys == 1)
        #expect((h.read(40960, 12288).1 == data) == true)
        while h.cache.runWriteback() {}
        #expect((h.backingBytes(40960, 12288) == data) == true)
        #expect(h.cache.status().isClean)
    }

    @Test func fuaWriteIsDurableWithoutFlush() throws {
        let h = try CacheHarness()
        let data = pattern(6, 4096)
        #expect(h.write(0, data, fua: true) == 4096)
        try h.crashAndRestart()
        #expect((h.read(0, 4096).1 == data) == true)
    }

    @Test func unflushedWriteMayBeLostButNothingIsInvented() throws {
        let h = try CacheHarness()
        #expect(h.write(0, pattern(7, 4096)) == 4096)
        try h.crashAndRestart()
        // The key-set was never closed: the backing device's zeros come back.
        #expect((h.read(0, 4096).1 == [UInt8](repeating: 0, count: 4096)) == true)
    }

    @Test func statusLineHasTheKernelFormat() throws {
        let h = try CacheHarness(cacheMiB: 160)
        let status = h.cache.status()
        // 160 MiB: (160 MiB - 20480) / 16 MiB = 9 segments; segment 0 holds the key log.
        #expect(status.infoLine == "0 9 9 1 70 1182 0:0 0:0 0:0")
        #expect(h.write(0, pattern(8, 4096)) == 4096)
        #expect(h.flush() == 0)
        let after = h.cache.status()
        #expect(after.keyHead == CachePosition(cacheSegID: 0, segOff: 64))
        #expect(after.usedSegments == 2)
    }

    @Test func dataCRCDetectsCorruptionOnReadHit() throws {
        let h = try CacheHarness(dataCRC: true)
        let data = pattern(9, 4096)
        #expect(h.write(0, data) == 4096)
        #expect((h.read(0, 4096).1 == data) == true)
        // Corrupt the cached copy behind the cache's back.
        let key = h.cache.index.withShard(0) { $0.allKeys[0] }
        let at = h.cache.dataOffset(key.segment, key.segmentOffset) + 100
        h.cache.memory.base.storeBytes(of: ~h.cache.memory.base.load(fromByteOffset: at, as: UInt8.self),
                                       toByteOffset: at, as: UInt8.self)
        let (result, _) = h.read(0, 4096)
        #expect(result == -EIO)
        #expect(h.cache.status().counters[.crcErrors] == 1)
    }

    @Test func gcPercentPersistsAcrossRestart() throws {
        let h = try CacheHarness()
        try h.cache.setGCPercent(10)
        try h.restart()
        #expect(h.cache.status().gcPercent == 10)
        #expect(throws: PCacheError.self) { try h.cache.setGCPercent(91) }
    }
}

/// A cache full of dirty data whose writeback cannot run: writes wait; a
/// device being stopped fails them, and any that would wait after them.
@Suite(.serialized) struct WaitingRequestTests {
    @Test func failWaitingRequestsEndsWritesThatWaitForSpace() throws {
        let h = try CacheHarness(cacheMiB: 64, backingMiB: 256)
        let q = h.queues[0], io = h.ios[0]
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xA5, count: 1 << 20)
        // No writeback or GC runs here (no workers, nobody pumps): 1 MiB
        // writes fill the cache until one has to wait.
        var written = 0
        var waiting: UInt16? = nil
        for i in 0..<256 {
            let tag = UInt16(i % h.depth)
            if let result = q.write(tag: tag, offset: UInt64(i) << 20, length: 1 << 20, buffer: buffer, fua: false) {
                #expect(result == 1 << 20)
                written += 1
            } else {
                waiting = tag
                break
            }
        }
        let tag = try #require(waiting, "a 64 MiB cache took 256 MiB of writes without waiting")
        #expect(written > 0 && q.deferredCount == 1 && io.completed.isEmpty)
        // Nothing changes by itself: the write keeps waiting.
        q.resumeDeferred()
        #expect(q.deferredCount == 1 && io.completed.isEmpty)

        #expect(q.failWaitingRequests() == 1)
        #expect(io.completed[tag] == -EIO && q.deferredCount == 0)
        // A write that would wait now fails at once; reads still work.
        let again = q.write(tag: tag, offset: UInt64(written) << 20, length: 1 << 20, buffer: buffer, fua: false)
        #expect(again == -EIO)
        #expect(q.deferredCount == 0)
        let out = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { out.deallocate() }
        let read = q.read(tag: 1, offset: 0, length: 4096, buffer: out)
        #expect(read == 4096 && out.load(as: UInt8.self) == 0xA5)
    }
}

@Suite(.serialized) struct BackingFailureTests {
    /// Writeback against a failing backing device keeps the data dirty in
    /// the cache, reports the errors, and catches up once the device heals.
    @Test func writebackRetriesUntilTheBackingDeviceHeals() throws {
        let events = EventLog()
        let h = try CacheHarness(events: { events.append($0) })
        let data = pattern(21, 65536)
        #expect(h.write(1 << 20, data) == 65536)
        #expect(h.flush() == 0)
        let dirtyBefore = h.cache.status().dirtyTail

        // Swap the backing descriptors for read-only ones: every write fails.
        let descriptors = Set([h.cache.backing.fd, h.cache.backing.bufferedFD])
        let saved = descriptors.map { ($0, dup($0)) }
        let readOnly = open(h.backingPath, O_RDONLY)
        for fd in descriptors { #expect(dup2(readOnly, fd) == fd) }
        close(readOnly)

        #expect(h.cache.runWriteback() == false)
        #expect(h.cache.runWriteback() == false)
        let failing = h.cache.status()
        #expect(failing.writebackFailures == 2)
        #expect(failing.writebackLastError == -EBADF)
        #expect(failing.dirtyTail == dirtyBefore, "the dirty tail must not move past data the device did not take")
        #expect((h.read(1 << 20, 65536).1 == data) == true, "dirty data stays readable from the cache")
        #expect((h.backingBytes(1 << 20, 65536) == [UInt8](repeating: 0, count: 65536)) == true)
        let told = events.lines
        #expect(told.count == 1, "one event for a run of failures, not one per attempt: \(told)")
        #expect(told.first?.hasPrefix("writeback error: Bad file descriptor (errno 9) at dirty tail") == true)

        // Heal: writeback resumes from the same key-set.
        for (fd, copy) in saved {
            #expect(dup2(copy, fd) == fd)
            close(copy)
        }
        while h.cache.runWriteback() {}
        #expect(h.cache.status().isClean)
        #expect((h.backingBytes(1 << 20, 65536) == data) == true)
        #expect(events.lines.last == "writeback resumed after 2 failed attempt(s)")
    }

    /// A miss's placeholder token is unique across every queue ublk allows
    /// (4096) and never 0; with seven bits of queue id, queues q and q + 128
    /// made the same tokens and could fill each other's placeholders.
    @Test func placeholderTokensKeepAll4096QueuesApart() {
        for counter: UInt32 in [1, 0x3_FFFF, CacheQueue.tokenCounterMask] {
            let tokens = Set((0..<4096).map { CacheQueue.placeholderToken(queue: $0, counter: counter) })
            #expect(tokens.count == 4096)
            #expect(!tokens.contains(0))
        }
        #expect(CacheQueue.placeholderToken(queue: 0, counter: 5) != CacheQueue.placeholderToken(queue: 128, counter: 5))
        #expect(CacheQueue.placeholderToken(queue: 3, counter: 1) != CacheQueue.placeholderToken(queue: 3, counter: 2))
    }

    @Test func failedMissReadReturnsTheErrorAndCachesNothing() throws {
        let h = try CacheHarness()
        h.ios[0].failReads = EIO
        #expect(h.read(0, 8192).0 == -EIO)
        #expect(h.cache.index.withShard(0) { $0.count } == 0, "the placeholder must be gone")
        h.ios[0].failReads = nil
        #expect(h.read(0, 8192).0 == 8192)
        #expect(h.cache.status().counters[.backingErrors] == 1)
    }

    @Test func writeZeroesWinsOverOlderDirtyData() throws {
        let h = try CacheHarness()
        #expect(h.write(0, pattern(22, 16384)) == 16384)
        #expect(h.run { $0.writeZeroes(tag: 0, offset: 4096, length: 8192, fua: false) } == 0)
        var expected = pattern(22, 16384)
        expected.replaceSubrange(4096..<12288, with: [UInt8](repeating: 0, count: 8192))
        #expect((h.read(0, 16384).1 == expected) == true)
        #expect(h.flush() == 0)
        try h.crashAndRestart()
        #expect((h.read(0, 16384).1 == expected) == true)
        while h.cache.runWriteback() {}
        #expect((h.backingBytes(0, 16384) == expected) == true)
    }

    @Test func discardDropsCachedDataAndReachesTheBackingDevice() throws {
        let h = try CacheHarness()
        #expect(h.write(0, pattern(23, 8192)) == 8192)
        #expect(h.flush() == 0)
        while h.cache.runWriteback() {}
        #expect(h.run { $0.discard(tag: 0, offset: 0, length: 8192) } == 0)
        #expect(h.cache.index.withShard(0) { $0.count } == 0)
        // The backing file's hole reads as zeros.
        #expect((h.read(0, 8192).1 == [UInt8](repeating: 0, count: 8192)) == true)
    }

    @Test func requestBeyondTheDeviceFails() throws {
        let h = try CacheHarness(backingMiB: 64)
        #expect(h.read(64 << 20, 4096).0 == -EIO)
        #expect(h.write((64 << 20) - 2048, pattern(24, 4096)) == -EIO)
    }
}

@Suite struct DeviceClaimTests {
    @Test func aSecondCacheOnTheSameDevicesIsRefused() throws {
        let h = try CacheHarness()
        var configuration = h.configuration
        configuration.minimumCacheBytes = 64 << 20
        let first = try Cache(cachePath: h.cachePath, backingPath: h.backingPath, configuration: configuration)
        let before = h.backingBytes(0, 4096)
        #expect {
            _ = try Cache(cachePath: h.cachePath, backingPath: h.backingPath, configuration: configuration)
        } throws: { error in
            "\(error)" == "cache device \(h.cachePath) is busy: another pcache-ublk process is serving it"
        }
        #expect((h.backingBytes(0, 4096) == before) == true)
        try first.stop()
    }
}

/// A crashed server (not a power cut) loses no acknowledged write: its open
/// key-sets live in a shared-memory stash the next start logs.
@Suite(.serialized) struct KeySetStashTests {
    @Test func unflushedWritesSurviveAServerCrash() throws {
        let h = try CacheHarness(queues: 2, stashOpenKeySets: true)
        let a = pattern(31, 8192), b = pattern(32, 4096), c = pattern(33, 4096)
        #expect(h.write(0, a, queue: 0) == 8192)
        #expect(h.write(5 << 20, b, queue: 1) == 4096)
        #expect(h.write(4096, c, queue: 1) == 4096)  // same stripe as a: joins a's key-set
        try h.crashAndRestart()
        #expect(h.cache.adoptedKeys == 3)
        var expected = a
        expected.replaceSubrange(4096..<8192, with: c)
        #expect((h.read(0, 8192).1 == expected) == true)
        #expect((h.read(5 << 20, 4096).1 == b) == true)
        // Logged now: a power cut from here on keeps them too.
        try h.crashAndRestart()
        #expect(h.cache.adoptedKeys == 0)
        #expect((h.read(0, 8192).1 == expected) == true)
        while h.cache.runWriteback() {}
        #expect((h.backingBytes(0, 8192) == expected) == true)
    }

    /// A start that dies while logging a crashed server's key-sets leaves
    /// the old stash in place and part of it logged; the next start logs
    /// the rest. (It used to accept at most one logged key-set past the
    /// stash's key head and dropped the others' keys.)
    @Test func aStartCutShortWhileLoggingAStashLosesNothing() throws {
        let h = try CacheHarness(queues: 3, stashOpenKeySets: true)
        let writes = (0..<3).map { (offset: UInt64($0) << 23, data: pattern(UInt64(40 + $0), 4096)) }
        for (q, write) in writes.enumerated() { #expect(h.write(write.offset, write.data, queue: q) == 4096) }
        h.configuration.failAfterAdoptingKeySets = 2
        #expect { try h.crashAndRestart() } throws: { "\($0)".contains("test: start cut short") }
        h.configuration.failAfterAdoptingKeySets = nil
        try h.crashAndRestart()
        #expect(h.cache.adoptedKeys == 1, "the key-set the cut-short start did not log")
        for write in writes {
            #expect((h.read(write.offset, 4096).1 == write.data) == true, "data at \(write.offset)")
        }
        // All logged now: the next start has nothing left to adopt.
        try h.crashAndRestart()
        #expect(h.cache.adoptedKeys == 0)
        for write in writes { #expect((h.read(write.offset, 4096).1 == write.data) == true) }
    }

    /// Logging a crashed server's key-sets may need a new key-log segment.
    /// It must not take a segment that holds the data of key-sets still to
    /// be logged: here each queue's data lies in a segment of its own, and
    /// the key log has room for the first adopted key-set only.
    @Test func adoptedKeySetsAreNeverLoggedOverTheirOwnData() throws {
        let keySet = KeySetCodec.size(keyCount: 1)
        let h = try CacheHarness(queues: 3, keyLogStartsBeforeSegmentEnd: keySet + PCacheLayout.ksetHeaderSize + keySet / 2,
                                 stashOpenKeySets: true)
        let writes = (0..<3).map { (offset: UInt64($0) << 23, data: pattern(UInt64(50 + $0), 4096)) }
        for (q, write) in writes.enumerated() { #expect(h.write(write.offset, write.data, queue: q) == 4096) }
        let segmentsBefore = h.cache.status().usedSegments
        try h.crashAndRestart()
        #expect(h.cache.adoptedKeys == 3)
        #expect(h.cache.status().usedSegments == segmentsBefore + 1, "a new key-log segment")
        for write in writes {
            #expect((h.read(write.offset, 4096).1 == write.data) == true, "data at \(write.offset)")
        }
    }

    @Test func aCleanStopLeavesNothingToAdopt() throws {
        let h = try CacheHarness(stashOpenKeySets: true)
        #expect(h.write(0, pattern(34, 4096)) == 4096)
        try h.restart()
        #expect(h.cache.adoptedKeys == nil)
        #expect((h.read(0, 4096).1 == pattern(34, 4096)) == true)
    }

    @Test func aStashForAnotherLogIsDropped() throws {
        let h = try CacheHarness(stashOpenKeySets: true)
        #expect(h.write(0, pattern(35, 4096)) == 4096)
        // Crash, but first let the log move on without the stash knowing:
        // another server's close (simulated by closing with a stash-less cache).
        let stashed = h.configuration
        h.configuration.keySetStashDirectory = nil
        try h.crashAndRestart()            // no stash in use: the old file stays
        #expect(h.write(1 << 20, pattern(36, 4096)) == 4096)
        #expect(h.flush() == 0)            // the log moves past the stash's key head
        h.configuration = stashed
        try h.crashAndRestart()
        #expect(h.cache.adoptedKeys == -1)
        #expect((h.read(0, 4096).1 == [UInt8](repeating: 0, count: 4096)) == true)
        #expect((h.read(1 << 20, 4096).1 == pattern(36, 4096)) == true)
    }
}

/// Lines a cache told through `CacheConfiguration.events`.
final class EventLog: Sendable {
    private let mutex = Mutex<[String]>([])
    func append(_ line: String) { mutex.withLock { $0.append(line) } }
    var lines: [String] { mutex.withLock { $0 } }
}

/// The stale-key sweep: keys whose segment GC recycled leave the index a few
/// hundred stripes per housekeeping pass, and a new sweep starts at most once
/// per interval (a second).
@Suite struct StaleKeySweepTests {
    /// Writes 4 KiB at stripe `far`, then 17 MiB from offset `near` on, so the
    /// first data segment fills with keys and retires; writes back and
    /// collects until GC has freed it. Its keys stay in the index, stale.
    func makeStaleKeys(_ h: CacheHarness, near: UInt64, far: Int) throws {
        #expect(h.write(UInt64(far) << 22, pattern(UInt64(far), 4096)) == 4096)
        for mib in 0..<17 { #expect(h.write(near + UInt64(mib) << 20, pattern(UInt64(mib), 1 << 20)) == 1 << 20) }
        #expect(h.flush() == 0)
        while h.cache.runWriteback() {}
        try h.cache.setGCPercent(0)
        let freed = h.cache.status().gcSegmentsFreed
        while h.cache.collectOneKeySet() {}
        try #require(h.cache.status().gcSegmentsFreed > freed, "GC freed no segment")
    }

    func keys(_ h: CacheHarness, stripe: Int) -> Int { h.cache.index.withShard(stripe) { $0.count } }

    @Test func aSweepAdvancesAFewStripesPerCallAndStartsAtMostOnceASecond() throws {
        let h = try CacheHarness(cacheMiB: 160, backingMiB: 4096)
        let far = 1000
        try #require(h.cache.index.count == 1024 && far >= Cache.cleanerSubtreesPerCall)
        try makeStaleKeys(h, near: 0, far: far)
        #expect(keys(h, stripe: far) == 1, "the far key is stale but still indexed")

        h.cache.cleanStaleKeys()
        #expect(keys(h, stripe: far) == 1, "the first call must not reach stripe \(far)")
        var calls = 1
        while keys(h, stripe: far) == 1 && calls < 10 {
            h.cache.cleanStaleKeys()
            calls += 1
        }
        #expect(keys(h, stripe: far) == 0)
        #expect(calls == (far / Cache.cleanerSubtreesPerCall) + 1, "the sweep took \(calls) calls")
        // Every key left in the index is current: reads of the first MiB come
        // from the second segment or the backing device, and are right.
        #expect((h.read(0, 1 << 20).1 == pattern(0, 1 << 20)) == true)

        // New stale keys before the interval since that sweep's start has
        // passed (made an hour, so the test does not depend on its speed):
        // no sweep yet.
        h.cache.staleKeySweepInterval = 3600 * 1_000_000_000
        try makeStaleKeys(h, near: 64 << 20, far: far - 1)
        #expect(keys(h, stripe: far - 1) == 1)
        for _ in 0..<10 { h.cache.cleanStaleKeys() }
        #expect(keys(h, stripe: far - 1) == 1, "a second sweep started within a second")
        _ = h.cache.runGarbageCollection()  // sweeps everything now
        #expect(keys(h, stripe: far - 1) == 0)
    }
}
