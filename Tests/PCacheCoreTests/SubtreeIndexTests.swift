import Testing

@testable import PCacheCore

/// Checks the sorted-array index against a model that records, for every
/// sector, which write owns it and where in that write's data it lies.
@Suite struct SubtreeIndexTests {
    struct SectorOwner: Equatable {
        var segment: UInt32
        var segmentOffset: UInt32
    }

    static let sector: UInt64 = 512
    static let span: UInt64 = 256  // sectors in the test range

    func sectors(of index: SubtreeIndex) -> [SectorOwner?] {
        var model = [SectorOwner?](repeating: nil, count: Int(Self.span))
        var previousEnd: UInt64 = 0
        for i in 0..<index.count {
            let key = index[i]
            #expect(key.length > 0, "zero-length key left in the index")
            #expect(key.start >= previousEnd, "keys overlap or are out of order")
            previousEnd = key.end
            var s = key.start
            while s < key.end {
                let delta = UInt32(s - key.start)
                model[Int(s / Self.sector)] = SectorOwner(segment: key.segment, segmentOffset: key.segmentOffset + delta)
                s += Self.sector
            }
        }
        return model
    }

    @Test func randomOverwritesMatchTheModel() {
        var rng = SeededGenerator(seed: 42)
        for _ in 0..<200 {
            var index = SubtreeIndex(initialCapacity: 1)
            defer { index.deallocate() }
            var model = [SectorOwner?](repeating: nil, count: Int(Self.span))
            for write in 0..<300 {
                let startSector = UInt64.random(in: 0..<Self.span, using: &rng)
                let lengthSectors = UInt64.random(in: 1...min(32, Self.span - startSector), using: &rng)
                let key = Extent(
                    start: startSector * Self.sector, length: UInt32(lengthSectors * Self.sector),
                    segment: UInt32(write), segmentOffset: UInt32.random(in: 0..<1_000_000, using: &rng) & ~511)
                index.insert(key)
                for s in 0..<lengthSectors {
                    model[Int(startSector + s)] = SectorOwner(
                        segment: key.segment, segmentOffset: key.segmentOffset + UInt32(s * Self.sector))
                }
                if write % 25 == 0 || write == 299 {
                    #expect(sectors(of: index) == model)
                }
            }
        }
    }

    @Test func splitKeepsBothEndsOfTheContainingKey() {
        var index = SubtreeIndex()
        defer { index.deallocate() }
        index.insert(Extent(start: 0, length: 8192, segment: 1, segmentOffset: 0))
        index.insert(Extent(start: 4096, length: 1024, segment: 2, segmentOffset: 0))
        #expect(index.count == 3)
        #expect(index[0] == Extent(start: 0, length: 4096, segment: 1, segmentOffset: 0))
        #expect(index[1].segment == 2)
        #expect(index[2] == Extent(start: 5120, length: 3072, segment: 1, segmentOffset: 5120))
    }

    @Test func placeholderIsShortenedNotSplitAndDroppedOnTailOverlap() {
        var index = SubtreeIndex()
        defer { index.deallocate() }
        index.insert(.placeholder(start: 0, length: 8192, token: 7))
        index.insert(Extent(start: 4096, length: 512, segment: 3))
        #expect(index.count == 2)
        #expect(index[0].isPlaceholder && index[0].length == 4096)
        #expect(index[1].segment == 3)
        #expect(index.placeholderIndex(token: 7, start: 0, end: 8192) == 0)

        index.insert(.placeholder(start: 16384, length: 4096, token: 9))
        index.insert(Extent(start: 12288, length: 6144, segment: 4))  // covers the placeholder's head
        #expect(index.placeholderIndex(token: 9, start: 16384, end: 20480) == nil)
    }

    @Test func removeRangeCutsAndSplits() {
        var index = SubtreeIndex()
        defer { index.deallocate() }
        index.insert(Extent(start: 0, length: 4096, segment: 1))
        index.insert(Extent(start: 4096, length: 4096, segment: 2))
        index.insert(Extent(start: 8192, length: 8192, segment: 3))
        index.removeRange(start: 2048, end: 10240)
        #expect(index.count == 2)
        #expect(index[0] == Extent(start: 0, length: 2048, segment: 1))
        #expect(index[1] == Extent(start: 10240, length: 6144, segment: 3, segmentOffset: 2048))
        index.removeRange(start: 11264, end: 12288)
        #expect(index.count == 3)
    }

    @Test func removeStaleHonoursTheBatchLimit() {
        var index = SubtreeIndex()
        defer { index.deallocate() }
        for i in 0..<30 { index.insert(Extent(start: UInt64(i) * 512, length: 512, segment: UInt32(i % 2))) }
        let removed = index.removeStale(limit: 10) { $0.segment == 1 }
        #expect(removed == 10)
        #expect(index.count == 20)
        #expect(index.removeStale(limit: 100) { $0.segment == 1 } == 5)
    }
}

typealias SeededGenerator = SplitMix64

@Suite struct CacheLineLayoutTests {
    /// Per-stripe and per-queue shared structures are one cache line each.
    @Test func sharedStructuresFillWholeCacheLines() {
        #expect(MemoryLayout<CacheIndex.Shard>.stride == 64)
        #expect(MemoryLayout<OpenKeySets.Slot>.stride == 64)
    }
}
