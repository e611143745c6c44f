import Synchronization
import Testing

@testable import PCacheCore

/// Checks the two-level index against a model that records, for every
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
        let keys = index.allKeys
        #expect(keys.count == index.count, "count disagrees with the keys held")
        for key in keys {
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
            var index = SubtreeIndex()
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
        #expect(index.allKeys[0] == Extent(start: 0, length: 4096, segment: 1, segmentOffset: 0))
        #expect(index.allKeys[1].segment == 2)
        #expect(index.allKeys[2] == Extent(start: 5120, length: 3072, segment: 1, segmentOffset: 5120))
    }

    @Test func placeholderIsShortenedNotSplitAndDroppedOnTailOverlap() {
        var index = SubtreeIndex()
        defer { index.deallocate() }
        index.insert(.placeholder(start: 0, length: 8192, token: 7))
        index.insert(Extent(start: 4096, length: 512, segment: 3))
        #expect(index.count == 2)
        #expect(index.allKeys[0].isPlaceholder && index.allKeys[0].length == 4096)
        #expect(index.allKeys[1].segment == 3)
        #expect(index.placeholder(token: 7, start: 0, end: 8192) == index.first(endingAfter: 0))

        index.insert(.placeholder(start: 16384, length: 4096, token: 9))
        index.insert(Extent(start: 12288, length: 6144, segment: 4))  // covers the placeholder's head
        #expect(index.placeholder(token: 9, start: 16384, end: 20480) == nil)
    }

    @Test func removeRangeCutsAndSplits() {
        var index = SubtreeIndex()
        defer { index.deallocate() }
        index.insert(Extent(start: 0, length: 4096, segment: 1))
        index.insert(Extent(start: 4096, length: 4096, segment: 2))
        index.insert(Extent(start: 8192, length: 8192, segment: 3))
        index.removeRange(start: 2048, end: 10240)
        #expect(index.count == 2)
        #expect(index.allKeys[0] == Extent(start: 0, length: 2048, segment: 1))
        #expect(index.allKeys[1] == Extent(start: 10240, length: 6144, segment: 3, segmentOffset: 2048))
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

/// The two-level index against the plainest possible one: a sorted Swift
/// array edited with the same overlap rules, over a whole 4 MiB stripe, so
/// leaves split, merge and empty all the time.
@Suite struct SubtreeIndexLeafTests {
    /// One sorted array, the rules of `SubtreeIndex.insert`/`removeRange`
    /// written out directly.
    struct ReferenceIndex {
        var keys: [Extent] = []

        mutating func removeRange(start: UInt64, end: UInt64) {
            var result: [Extent] = []
            for key in keys {
                if key.end <= start || key.start >= end {
                    result.append(key)
                    continue
                }
                if key.start < start {
                    var head = key
                    head.cutBack(UInt32(key.end - start))
                    result.append(head)
                }
                if key.end > end && !key.isPlaceholder {
                    var tail = key
                    tail.cutFront(UInt32(end - key.start))
                    result.append(tail)
                }
            }
            keys = result
        }

        mutating func insert(_ key: Extent) {
            removeRange(start: key.start, end: key.end)
            keys.append(key)
            keys.sort { $0.start < $1.start }
        }
    }

    static let sector: UInt64 = 512
    static let sectors: UInt64 = 8192  // one 4 MiB stripe

    func randomKey(_ rng: inout SeededGenerator, serial: Int) -> Extent {
        let start = UInt64.random(in: 0..<Self.sectors, using: &rng)
        let length = UInt64.random(in: 1...min(Self.sectors - start, rng.next() % 64 == 0 ? 256 : 4), using: &rng)
        if rng.next() % 10 == 0 {
            return .placeholder(start: start * Self.sector, length: UInt32(length * Self.sector), token: UInt32(serial))
        }
        return Extent(start: start * Self.sector, length: UInt32(length * Self.sector),
                      segment: UInt32(serial), segmentOffset: UInt32(serial % 1000) * 4096)
    }

    /// With leaves and directories from malloc, and from an arena (the cache's index).
    @Test(arguments: [false, true]) func randomEditsMatchASortedArray(inArena: Bool) {
        var rng = SeededGenerator(seed: 7)
        let arena = inArena ? IndexArena() : nil
        var index = SubtreeIndex(arena: arena)
        defer {
            index.deallocate()
            arena?.destroy()
        }
        var reference = ReferenceIndex()
        var mostLeaves = 0
        for serial in 1...20_000 {
            switch rng.next() % 200 {
            case 1...5:
                let a = UInt64.random(in: 0..<Self.sectors, using: &rng) * Self.sector
                let b = min(a + UInt64.random(in: 1...64, using: &rng) * Self.sector, Self.sectors * Self.sector)
                index.removeRange(start: a, end: b)
                reference.removeRange(start: a, end: b)
            case 6...15:
                // Remove one key through a cursor; the returned cursor must
                // be on the key that followed it.
                guard !reference.keys.isEmpty else { continue }
                let victim = reference.keys[Int(rng.next() % UInt64(reference.keys.count))]
                let at = index.first(endingAfter: victim.start)
                #expect(index.key(at: at) == victim)
                let after = index.remove(at: at)
                let position = reference.keys.firstIndex(of: victim)!
                reference.keys.remove(at: position)
                #expect(index.key(at: after) == (position < reference.keys.count ? reference.keys[position] : nil))
            case 0:
                let odd = rng.next() % 2
                let limit = Int(rng.next() % 100)
                let removed = index.removeStale(limit: limit) { UInt64($0.segment) % 2 == odd }
                var left = limit
                reference.keys.removeAll {
                    guard left > 0 && !$0.isPlaceholder && UInt64($0.segment) % 2 == odd else { return false }
                    left -= 1
                    return true
                }
                #expect(removed == limit - left)
            default:
                let key = randomKey(&rng, serial: serial)
                index.insert(key)
                reference.insert(key)
            }
            if let problem = index.structuralProblem() {
                Issue.record("after operation \(serial): \(problem)")
                return
            }
            mostLeaves = max(mostLeaves, index.leavesInUse)
            if serial % 500 == 0 || index.count != reference.keys.count {
                #expect(index.allKeys == reference.keys, "after operation \(serial)")
                if index.allKeys != reference.keys { return }
            }
        }
        #expect(mostLeaves > 20, "the workload must spread over many leaves")
    }

    /// Block-aligned writes over a few blocks: most inserts rewrite exactly
    /// one cached key (replaced in its slot), the rest cut, split or cover.
    @Test func exactRewritesMatchASortedArray() {
        var rng = SeededGenerator(seed: 11)
        var index = SubtreeIndex()
        defer { index.deallocate() }
        var reference = ReferenceIndex()
        let blocks: UInt64 = 96  // 8 sectors each: spans three leaves when full
        var exactRewrites = 0
        for serial in 1...20_000 {
            let start = UInt64.random(in: 0..<blocks, using: &rng)
            let length = rng.next() % 8 == 0 ? min(UInt64.random(in: 1...3, using: &rng), blocks - start) : 1
            let bytes = UInt32(length * 8 * Self.sector)
            let key = rng.next() % 10 == 0
                ? Extent.placeholder(start: start * 8 * Self.sector, length: bytes, token: UInt32(serial))
                : Extent(start: start * 8 * Self.sector, length: bytes,
                         segment: UInt32(serial), segmentOffset: UInt32(serial % 1000) * 4096)
            if let old = index.key(at: index.first(endingAfter: key.start)),
               old.start == key.start && old.length == key.length {
                exactRewrites += 1
            }
            index.insert(key)
            reference.insert(key)
            if let problem = index.structuralProblem() {
                Issue.record("after insert \(serial): \(problem)")
                return
            }
            if index.allKeys != reference.keys {
                Issue.record("after insert \(serial): the index differs from the sorted array")
                return
            }
        }
        #expect(exactRewrites > 10_000, "the workload must mostly rewrite cached keys exactly")
        #expect(index.leavesInUse >= 3)
    }

    @Test func walkingWithCursorsVisitsEveryKeyInOrder() {
        var index = SubtreeIndex()
        defer { index.deallocate() }
        for i in stride(from: 999, through: 0, by: -1) {
            index.insert(Extent(start: UInt64(i) * 4096, length: 4096, segment: UInt32(i)))
        }
        var cursor = index.first(endingAfter: 0)
        var seen: [UInt32] = []
        while let key = index.key(at: cursor) {
            seen.append(key.segment)
            cursor = index.next(after: cursor)
        }
        #expect(seen == Array(0..<1000))
        #expect(cursor == index.endCursor)
        #expect(index.first(endingAfter: 1000 * 4096) == index.endCursor)
        #expect(index.key(at: index.first(endingAfter: 4096 * 500 + 100))?.segment == 500)
    }

    @Test func sequentialWritesFillLeavesAndRemovalsMergeThem() {
        var index = SubtreeIndex()
        defer { index.deallocate() }
        let keys = 1024
        for i in 0..<keys { index.insert(Extent(start: UInt64(i) * 4096, length: 4096, segment: UInt32(i))) }
        #expect(index.leavesInUse == keys / SubtreeIndex.leafCapacity, "ascending writes fill every leaf")
        let leaves = index.leavesInUse
        // Stale-key cleaning takes 7 of every 8 keys: leaves must merge, not
        // linger nearly empty.
        while index.removeStale(limit: 64, { $0.segment % 8 != 0 }) == 64 {}
        #expect(index.count == keys / 8)
        #expect(index.structuralProblem() == nil)
        #expect(index.leavesInUse <= leaves / 2, "\(index.leavesInUse) leaves left for \(index.count) keys")
        index.removeAll()
        #expect(index.count == 0 && index.leavesInUse == 0)
        let bytes = index.memoryBytes
        for i in 0..<keys { index.insert(Extent(start: UInt64(i) * 4096, length: 4096, segment: UInt32(i))) }
        #expect(index.memoryBytes == bytes, "refilling reuses the spare leaves")
    }
}

/// The prefetch hints a write reads before it takes the stripe's lock.
@Suite struct SubtreeIndexHintTests {
    static func key(_ block: Int, _ serial: Int) -> Extent {
        Extent(start: UInt64(block) * 4096, length: 4096, segment: UInt32(serial))
    }

    /// Without a racing editor, the hint names the very leaf a search reads.
    @Test func leafHintNamesTheLeafASearchReads() {
        var index = SubtreeIndex()
        defer { index.deallocate() }
        var rng = SeededGenerator(seed: 11)
        #expect(withUnsafePointer(to: &index) { SubtreeIndex.leafHint(of: $0, endingAfter: 0) } == nil)
        for serial in 0..<3000 {
            index.insert(Self.key(Int(rng.next() % 1024), serial))
            let offset = rng.next() % (1100 * 4096)
            let hint = withUnsafePointer(to: &index) { SubtreeIndex.leafHint(of: $0, endingAfter: offset) }
            let searched = index.leafKeys(at: index.first(endingAfter: offset))
            #expect(hint?.keys == searched?.keys && hint?.count == searched?.count, "offset \(offset) after \(serial) inserts")
            if hint?.keys != searched?.keys { return }
        }
        #expect(index.leavesInUse > 20)
    }

    /// A directory replaced by a larger one stays allocated and unchanged
    /// (a hint may still be reading it), and is counted in the memory figure.
    @Test func replacedDirectoriesAreKeptUntilDeallocation() throws {
        var index = SubtreeIndex()
        defer { index.deallocate() }
        for block in 0..<(3 * SubtreeIndex.leafCapacity) { index.insert(Self.key(block, block)) }
        let before = try #require(withUnsafePointer(to: &index) { SubtreeIndex.racyDirectory(of: $0) })
        #expect(before.leaves == 3)
        let entryBytes = 3 * 24
        let saved = Array(UnsafeRawBufferPointer(start: before.directory, count: entryBytes))
        let leafBytes = SubtreeIndex.leafCapacity * MemoryLayout<Extent>.stride
        #expect(index.memoryBytes == 3 * leafBytes + 4 * 24, "3 leaves, a directory of 4")

        for block in (3 * SubtreeIndex.leafCapacity)..<(20 * SubtreeIndex.leafCapacity) { index.insert(Self.key(block, block)) }
        let after = try #require(withUnsafePointer(to: &index) { SubtreeIndex.racyDirectory(of: $0) })
        #expect(after.leaves == 20 && after.directory != before.directory)
        // Blocks of the old directory's size, allocated and scribbled on:
        // had it been freed, one of them would likely take its place.
        let scribbles = (0..<256).map { _ in
            let block = UnsafeMutableRawPointer.allocate(byteCount: 16 + 4 * 24, alignment: 16)
            block.initializeMemory(as: UInt8.self, repeating: 0xEE, count: 16 + 4 * 24)
            return block
        }
        defer { scribbles.forEach { $0.deallocate() } }
        #expect(Array(UnsafeRawBufferPointer(start: before.directory, count: entryBytes)) == saved)
        // Directories of 4, 8, 16 and 32 leaves, the last one in use.
        #expect(index.memoryBytes == 20 * leafBytes + (4 + 8 + 16 + 32) * 24)
    }

    /// Hints read while another thread edits the index: every leaf they
    /// name is one of the index's own leaf arrays, with a count in range.
    @Test func hintsRacingEditsOnlyNameRealLeaves() throws {
        final class Shared: @unchecked Sendable {
            var index = SubtreeIndex()
            let done = Atomic<Bool>(false)
            var seen: Set<UnsafeRawPointer> = []
            var badCounts = 0
            var hints = 0
        }
        let shared = Shared()
        defer { shared.index.deallocate() }
        let indexPointer = withUnsafeMutablePointer(to: &shared.index) { UnsafeRawPointer($0) }
        let reader = OSThread(name: "hint-reader") {
            var rng = SeededGenerator(seed: 5)
            while !shared.done.load(ordering: .acquiring) {
                let offset = rng.next() % (4 << 20)
                SubtreeIndex.prefetchDirectory(of: indexPointer)
                if let hint = SubtreeIndex.leafHint(of: indexPointer, endingAfter: offset) {
                    shared.seen.insert(hint.keys)
                    if hint.count < 0 || hint.count > SubtreeIndex.leafCapacity { shared.badCounts += 1 }
                }
                shared.hints += 1
            }
        }
        try reader.start()
        var rng = SeededGenerator(seed: 9)
        for serial in 0..<60_000 {
            let block = Int(rng.next() % 1024)
            switch rng.next() % 8 {
            case 0: shared.index.removeRange(start: UInt64(block) * 4096, end: UInt64(block + 64) * 4096)
            case 1 where serial % 5000 == 0: shared.index.removeAll()
            default: shared.index.insert(Self.key(block, serial))
            }
        }
        shared.done.store(true, ordering: .releasing)
        reader.join()
        #expect(shared.hints > 1000)
        #expect(shared.badCounts == 0)
        let leaves = Set(shared.index.allLeafKeyArrays)
        #expect(shared.seen.isSubset(of: leaves), "\(shared.seen.subtracting(leaves).count) hints named no leaf")
        #expect(shared.index.structuralProblem() == nil)
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
