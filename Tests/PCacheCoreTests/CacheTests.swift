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
        #expect(h.backingBytes(4096, 8192) == [UInt8](repeating: 0, count: 8192))
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
        #expect(h.read(40960, 12288).1 == data)
        while h.cache.runWriteback() {}
        #expect(h.backingBytes(40960, 12288) == data)
        #expect(h.cache.status().isClean)
    }

    @Test func fuaWriteIsDurableWithoutFlush() throws {
        let h = try CacheHarness()
        let data = pattern(6, 4096)
        #expect(h.write(0, data, fua: true) == 4096)
        try h.crashAndRestart()
        #expect(h.read(0, 4096).1 == data)
    }

    @Test func unflushedWriteMayBeLostButNothingIsInvented() throws {
        let h = try CacheHarness()
        #expect(h.write(0, pattern(7, 4096)) == 4096)
        try h.crashAndRestart()
        // The key-set was never closed: the backing device's zeros come back.
        #expect(h.read(0, 4096).1 == [UInt8](repeating: 0, count: 4096))
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
        #expect(h.read(0, 4096).1 == data)
        // Corrupt the cached copy behind the cache's back.
        let key = h.cache.index.withShard(0) { $0[0] }
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
