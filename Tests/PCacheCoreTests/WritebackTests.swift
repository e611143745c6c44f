import CSupport
import Glibc
import Synchronization
import Testing

@testable import PCacheCore

/// Writeback batches, staging and pacing (Writeback.swift, Cache.writebackIsDue).
@Suite struct WritebackTests {
    /// Consecutive key-sets share one batch and one backing flush; across the
    /// batch a later key wins, so overwritten data is never written back.
    @Test func oneBatchCoversSeveralKeySetsAndTheLaterKeyWins() throws {
        let h = try CacheHarness()
        let old = pattern(1, 4096), new = pattern(2, 4096), other = pattern(3, 8192)
        #expect(h.write(8192, old) == 4096)
        #expect(h.flush() == 0)  // closes the first key-set
        #expect(h.write(8192, new) == 4096)
        #expect(h.write(65536, other) == 8192)
        #expect(h.flush() == 0)  // and the second
        #expect(h.cache.runWriteback())
        let status = h.cache.status()
        #expect(status.isClean, "one step writes back both key-sets")
        #expect(status.writebackKeySets == 2)
        #expect(h.backingBytes(8192, 4096) == new)
        #expect(h.backingBytes(65536, 8192) == other)
        #expect(h.cache.writebackRequests == 2, "the overwritten 4 KiB is not written")
        #expect(h.cache.status().writebackRequests == 2, "status reports the requests")
        #expect(status.writebackSkippedBytes == 4096, "the newer key is logged: the older one never joins the batch")
        #expect(h.cache.runWriteback() == false)
    }

    /// The ring refusing a submission for want of resources is waited out;
    /// any other failure stops writeback for good, the dirty tail where it
    /// was: writes the ring took may still be running, and the fsync's
    /// completion was never seen, so nothing may count as written back.
    @Test func ringFailuresAreWaitedOutOrStopWriteback() throws {
        let h = try CacheHarness()
        let data = pattern(7, 8192)
        #expect(h.write(4096, data) == 8192)
        #expect(h.flush() == 0)
        h.cache.injectWritebackRingErrors([EAGAIN, EBUSY, ENOMEM])
        #expect(h.cache.runWriteback())
        #expect(h.cache.status().isClean)
        #expect(h.backingBytes(4096, 8192) == data)

        let later = pattern(8, 4096)
        #expect(h.write(65536, later) == 4096)
        #expect(h.flush() == 0)
        let tail = h.cache.metadata.dirtyTail
        h.cache.injectWritebackRingErrors([EBADF])
        #expect(h.cache.runWriteback() == false)
        #expect(h.cache.metadata.dirtyTail == tail)
        let halted = h.cache.status().writebackHalted ?? ""
        #expect(halted.contains("writeback's io_uring failed (io_uring_submit_and_wait: "), "\(halted)")
        #expect(h.cache.runWriteback() == false, "stopped for good")
        #expect(h.read(65536, 4096).1 == later, "the data is still served from the cache")
    }

    /// Fills one writeback batch: `maxKeySetsPerBatch` key-sets, one 4 KiB
    /// write each at 1 MiB + i * 8 KiB. Key-sets written after it are in
    /// the next batch.
    private func fillOneBatch(_ h: CacheHarness) {
        for i in 0..<Writeback.maxKeySetsPerBatch {
            #expect(h.write(UInt64(1 << 20 + i * 8192), pattern(UInt64(500 + i), 4096)) == 4096)
            #expect(h.flush() == 0)
        }
    }

    /// Data a newer write has overwritten is not written back when that write
    /// is logged: it lies later in the log, so it goes back in a later batch
    /// (and a replay finds it if power fails first). Only the overwritten
    /// bytes are skipped; the rest of the key is written.
    @Test(arguments: [false, true])
    func overwrittenDataIsSkippedOnceTheNewerKeyIsLogged(keepsHistory: Bool) throws {
        let h = try CacheHarness()
        h.configuration.writebackKeepsHistory = keepsHistory
        try h.restart()
        let old = pattern(1, 16384), middle = pattern(2, 4096)
        #expect(h.write(65536, old) == 16384)
        #expect(h.flush() == 0)
        fillOneBatch(h)  // the first key-set and 31 more
        #expect(h.write(65536 + 4096, middle) == 4096)
        #expect(h.flush() == 0)  // logged, in the next batch

        let requestsBefore = h.cache.writebackRequests
        #expect(h.cache.runWriteback())
        let status = h.cache.status()
        #expect(status.writebackKeySets == UInt64(Writeback.maxKeySetsPerBatch), "one batch")
        let expected: [UInt8]
        if keepsHistory {
            #expect(status.writebackSkippedBytes == 0)
            expected = old
        } else {
            #expect(status.writebackSkippedBytes == 4096)
            #expect(h.cache.writebackRequests - requestsBefore == UInt64(Writeback.maxKeySetsPerBatch - 1 + 2),
                    "the old key goes out as two writes around the overwritten part")
            expected = Array(old[0..<4096]) + [UInt8](repeating: 0, count: 4096) + Array(old[8192...])
        }
        #expect(h.backingBytes(65536, 16384) == expected ? true : false, "backing data after the first batch")

        while h.cache.runWriteback() {}
        #expect(h.cache.status().isClean)
        #expect(h.backingBytes(65536, 16384) == Array(old[0..<4096]) + middle + Array(old[8192...]) ? true : false,
                "backing data once clean")
        #expect(h.read(65536, 16384).1 == Array(old[0..<4096]) + middle + Array(old[8192...]) ? true : false, "read back")
    }

    /// A newer write whose key is still in an open key-set was never flushed
    /// and is lost if power fails before its key-set closes. The data it
    /// overwrote must then be on the backing device, so it is written back.
    @Test func overwrittenDataIsWrittenWhileTheNewerKeyIsUnlogged() throws {
        let h = try CacheHarness()
        let old = pattern(1, 4096), new = pattern(2, 4096)
        #expect(h.write(65536, old) == 4096)
        #expect(h.flush() == 0)
        #expect(h.write(65536, new) == 4096)  // acknowledged, not flushed: its key-set stays open
        #expect(h.cache.runWriteback())
        #expect(h.cache.status().writebackSkippedBytes == 0)
        #expect(h.backingBytes(65536, 4096) == old ? true : false, "the old data is on the backing device")
        #expect(h.cache.runWriteback() == false, "the open key-set is not written back")
    }

    /// Keys that follow each other on the backing device go out as one write
    /// of at most 1 MiB: staged in the bounce area, or gathered straight from
    /// pmem (sequential writes lie one after the other there too).
    @Test(arguments: [false, true])
    func writebackMergesNeighbouringKeys(staged: Bool) throws {
        let h = try CacheHarness()
        h.configuration.writebackStagesData = staged
        try h.restart()
        var expected: [(offset: UInt64, data: [UInt8])] = []
        // 6 MiB of sequential 4 KiB writes (12 key-sets): six writes of 1 MiB.
        let run = 6 << 20
        for i in 0..<(run / 4096) {
            let offset = UInt64(16 << 20) + UInt64(i * 4096)
            let data = pattern(UInt64(1000 + i), 4096)
            #expect(h.write(offset, data) == 4096)
            expected.append((offset, data))
        }
        // Three scattered writes, each its own request.
        for (k, offset) in [UInt64(40960), 9 << 20, 40 << 20].enumerated() {
            let data = pattern(UInt64(k), 12288)
            #expect(h.write(offset, data) == 12288)
            expected.append((offset, data))
        }
        #expect(h.flush() == 0)
        let requestsBefore = h.cache.writebackRequests
        while h.cache.runWriteback() {}
        #expect(h.cache.status().isClean)
        for (offset, data) in expected {
            #expect(h.backingBytes(offset, data.count) == data, "backing data at \(offset)")
        }
        // Staged, the two scattered writes that come first on the backing
        // device take the first 24 KiB of the 4 MiB bounce area, so the
        // run's fourth MiB is cut where the area ends: one write more.
        #expect(h.cache.writebackRequests - requestsBefore == (staged ? 10 : 9))
    }

    /// A gathered write spans at most `Writeback.maxRunPages` pages of pmem
    /// (one bio), even when its bytes would fit: pieces that start inside a
    /// page span one page more than their length. Here 64 neighbouring 16 KiB
    /// keys lie apart in pmem (written in reverse order), each starting 512
    /// bytes into a page, so each spans 5 pages: 1 MiB in 320 pages, which
    /// takes two gathered writes, while staged it is one.
    @Test(arguments: [false, true])
    func gatheredWritesSpanAtMostOneBioOfPages(staged: Bool) throws {
        let h = try CacheHarness()
        h.configuration.writebackStagesData = staged
        try h.restart()
        // Moves the data head 512 bytes into a page.
        #expect(h.write(1 << 20, pattern(1, 512)) == 512)
        let chunk = 16384, chunks = 64, base = UInt64(8 << 20)
        for i in (0..<chunks).reversed() {
            #expect(h.write(base + UInt64(i * chunk), pattern(UInt64(300 + i), chunk)) == Int32(chunk))
        }
        #expect(h.flush() == 0)
        let requestsBefore = h.cache.writebackRequests
        while h.cache.runWriteback() {}
        #expect(h.cache.status().isClean)
        let piecesPerWrite = Writeback.maxRunPages / 5
        let gatheredWrites = (chunks + piecesPerWrite - 1) / piecesPerWrite
        #expect(h.cache.writebackRequests - requestsBefore == UInt64(1 + (staged ? 1 : gatheredWrites)))
        #expect(h.backingBytes(1 << 20, 512) == pattern(1, 512))
        for i in 0..<chunks {
            #expect(h.backingBytes(base + UInt64(i * chunk), chunk) == pattern(UInt64(300 + i), chunk), "chunk \(i)")
        }
    }

    /// Neighbours on the backing device whose data lies apart in pmem
    /// (written in reverse order) are gathered as separate pieces of one
    /// vectored write, at most `Writeback.maxPieces` each; staged, they are
    /// one write.
    @Test(arguments: [false, true])
    func neighboursApartInPmemAreGathered(staged: Bool) throws {
        let h = try CacheHarness()
        h.configuration.writebackStagesData = staged
        try h.restart()
        let blocks = Writeback.maxPieces * 3 + 10
        let base = UInt64(8 << 20)
        for i in (0..<blocks).reversed() {
            #expect(h.write(base + UInt64(i) * 4096, pattern(UInt64(7000 + i), 4096)) == 4096)
        }
        #expect(h.flush() == 0)
        let requestsBefore = h.cache.writebackRequests
        while h.cache.runWriteback() {}
        #expect(h.cache.status().isClean)
        let expectedRequests = staged ? 1 : (blocks + Writeback.maxPieces - 1) / Writeback.maxPieces
        #expect(h.cache.writebackRequests - requestsBefore == UInt64(expectedRequests))
        for i in 0..<blocks {
            #expect(h.backingBytes(base + UInt64(i) * 4096, 4096) == pattern(UInt64(7000 + i), 4096), "block \(i)")
        }
    }

    /// More separate writes than fit in flight at once (Writeback.maxInFlight)
    /// go back through the sliding window, each one intact.
    @Test(arguments: [false, true])
    func manyScatteredKeysPassTheInFlightWindow(staged: Bool) throws {
        let h = try CacheHarness()
        h.configuration.writebackStagesData = staged
        try h.restart()
        let count = Writeback.maxInFlight * 3 + 7
        for i in 0..<count {
            // Every other 4 KiB block: no two keys are neighbours.
            #expect(h.write(UInt64(i) * 8192, pattern(UInt64(5000 + i), 4096)) == 4096)
        }
        #expect(h.flush() == 0)
        let requestsBefore = h.cache.writebackRequests
        while h.cache.runWriteback() {}
        #expect(h.cache.status().isClean)
        #expect(h.cache.writebackRequests - requestsBefore == UInt64(count))
        for i in 0..<count {
            #expect(h.backingBytes(UInt64(i) * 8192, 4096) == pattern(UInt64(5000 + i), 4096), "block \(i)")
        }
    }

    /// While requests keep coming and the cache has room, writeback waits;
    /// a second after they stop it writes everything back by itself.
    @Test func writebackWaitsWhileBusyAndRunsOnceIdle() throws {
        let h = try CacheHarness()
        h.configuration.startWorkers = true
        try h.restart()
        let start = h.cache.status().dirtyTail
        // 2 s of activity, a request every 100 ms: never a second idle.
        for i in 0..<20 {
            #expect(h.write(UInt64(i) * 4096, pattern(UInt64(i), 4096)) == 4096)
            #expect(h.flush() == 0)
            usleep(100_000)
        }
        let busy = h.cache.status()
        #expect(busy.dirtyTail == start, "nothing is written back while busy and below gc_percent")
        #expect(busy.keyHead != start)
        var waited = 0
        while !h.cache.status().isClean && waited < 100 {
            usleep(100_000)
            waited += 1
        }
        #expect(h.cache.status().isClean, "written back within 10 s of going idle")
        for i in 0..<20 {
            #expect(h.backingBytes(UInt64(i) * 4096, 4096) == pattern(UInt64(i), 4096))
        }
    }

    /// Writeback and GC threads mark themselves PR_SET_IO_FLUSHER, as the
    /// queue threads do, where this process may (CAP_SYS_RESOURCE; a
    /// container may lack it even as root).
    @Test func workerThreadsAreIOFlushers() throws {
        let h = try CacheHarness()
        h.configuration.startWorkers = true
        try h.restart()
        var waited = 0
        while h.cache.ioFlusherAttempts.load(ordering: .relaxed) < 2 && waited < 100 {
            usleep(10_000)
            waited += 1
        }
        #expect(h.cache.ioFlusherAttempts.load(ordering: .relaxed) == 2)
        // Whether a thread of this process may: try on one of our own.
        let allowed = Mutex<Int32>(-1)
        let probe = OSThread(name: "io-flusher-probe") { allowed.withLock { $0 = pcs_set_io_flusher() } }
        try probe.start()
        probe.join()
        #expect(h.cache.ioFlusherWorkers.load(ordering: .relaxed) == (allowed.withLock { $0 } == 0 ? 2 : 0))
    }

    /// gc_percent 0 keeps dm-pcache's eager writeback, busy or not.
    @Test func gcPercentZeroWritesBackAtOnce() throws {
        let h = try CacheHarness()
        h.configuration.startWorkers = true
        try h.restart()
        try h.cache.setGCPercent(0)
        let start = h.cache.status().dirtyTail
        var movedWhileBusy = false
        for i in 0..<20 {
            #expect(h.write(UInt64(i) * 4096, pattern(UInt64(i), 4096)) == 4096)
            #expect(h.flush() == 0)
            usleep(100_000)
            if h.cache.status().dirtyTail != start { movedWhileBusy = true }
        }
        #expect(movedWhileBusy, "the dirty tail moves while requests keep coming")
    }
}

/// The batch's own index: per-stripe arrays, walked in offset order.
@Suite struct WritebackBatchTests {
    @Test func laterKeysWinAcrossStripesAndKeysComeOutInOrder() {
        var batch = WritebackBatch(expectedKeys: 8)
        defer { batch.deallocate() }
        let stripe = UInt64(PCacheLayout.subtreeSize)
        // Inserted out of order; the first one crosses a stripe boundary.
        batch.insert(Extent(start: stripe - 8192, length: 16384, segment: 1, segmentOffset: 0, generation: 1))
        batch.insert(Extent(start: 5 * stripe, length: 4096, segment: 2, segmentOffset: 0, generation: 1))
        batch.insert(Extent(start: 4096, length: 4096, segment: 3, segmentOffset: 0, generation: 1))
        // A later key over the middle of the first: it wins there.
        batch.insert(Extent(start: stripe - 4096, length: 8192, segment: 4, segmentOffset: 100 * 4096, generation: 1))
        var seen: [(UInt64, UInt32, UInt32, UInt32)] = []
        batch.forEach { seen.append(($0.start, $0.length, $0.segment, $0.segmentOffset)) }
        let expected: [(UInt64, UInt32, UInt32, UInt32)] = [
            (4096, 4096, 3, 0),
            (stripe - 8192, 4096, 1, 0),
            (stripe - 4096, 4096, 4, 100 * 4096),  // the later key, split at the stripe
            (stripe, 4096, 4, 101 * 4096),
            (stripe + 4096, 4096, 1, 3 * 4096),  // what is left of the first key
            (5 * stripe, 4096, 2, 0),
        ]
        #expect(seen.count == expected.count)
        for (a, b) in zip(seen, expected) {
            #expect(a == b)
        }
        batch.removeAll()
        #expect(batch.isEmpty)
        var after = 0
        batch.forEach { _ in after += 1 }
        #expect(after == 0)
    }
}
