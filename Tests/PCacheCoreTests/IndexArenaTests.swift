import Glibc
import Testing

@testable import PCacheCore

@Suite struct IndexArenaTests {
    /// Blocks are zeroed, start on cache lines of their own, do not overlap,
    /// and fill a chunk before the next one is mapped.
    @Test func blocksAreAlignedDisjointAndZeroed() {
        let arena = IndexArena()
        defer { arena.destroy() }
        #expect(arena.mappedBytes == 0, "nothing is mapped before the first block")
        var blocks: [(start: UInt, end: UInt)] = []
        var rng = SeededGenerator(seed: 11)
        var asked = 0
        while asked < 3 * IndexArena.chunkBytes {
            let bytes = Int(rng.next() % 4000) + 1
            let block = arena.allocate(bytes: bytes)
            let start = UInt(bitPattern: block)
            #expect(start % UInt(IndexArena.blockAlignment) == 0)
            #expect(UnsafeRawBufferPointer(start: block, count: bytes).allSatisfy { $0 == 0 }, "a new block is zeroed")
            block.initializeMemory(as: UInt8.self, repeating: 0xA5, count: bytes)
            blocks.append((start, start + UInt(bytes)))
            asked += bytes
        }
        blocks.sort { $0.start < $1.start }
        for (a, b) in zip(blocks, blocks.dropFirst()) { #expect(a.end <= b.start, "blocks overlap") }
        #expect(arena.mappedBytes % IndexArena.chunkBytes == 0)
        #expect(arena.mappedBytes >= asked
                && arena.mappedBytes <= asked + (2 + IndexArena.minimumReadyChunks) * IndexArena.chunkBytes,
                "chunks are filled before new ones are mapped (beyond the ready ones and a leftover)")
    }

    /// A block larger than a chunk gets a mapping of its own, and the chunk
    /// being filled stays the one small blocks come from.
    @Test func aBlockLargerThanAChunkIsMappedApart() throws {
        let arena = IndexArena()
        defer { arena.destroy() }
        let first = arena.allocate(bytes: 64)
        try waitFor { arena.readyChunks == IndexArena.minimumReadyChunks }
        let large = arena.allocate(bytes: IndexArena.chunkBytes + 1)
        #expect(arena.mappedBytes == (3 + IndexArena.minimumReadyChunks) * IndexArena.chunkBytes,
                "one chunk, the ready ones, and two for the large block")
        large.storeBytes(of: 1, toByteOffset: IndexArena.chunkBytes, as: UInt8.self)
        let next = arena.allocate(bytes: 64)
        #expect(next == first + 64, "small blocks still come from the first chunk")
    }

    /// Once the first chunk is in use, the arena's thread maps the next ones
    /// ahead; when the current chunk is full, the next block comes from the
    /// oldest ready chunk, and the thread maps another.
    @Test func theNextChunksAreMappedAhead() throws {
        let arena = IndexArena()
        defer { arena.destroy() }
        _ = arena.allocate(bytes: IndexArena.chunkBytes)
        let ready = IndexArena.minimumReadyChunks
        try waitFor { arena.readyChunks == ready }
        #expect(arena.mappedBytes == (1 + ready) * IndexArena.chunkBytes, "the chunk in use and the ready ones")
        let oldest = arena.nextReadyChunk
        #expect(oldest != nil)
        let next = arena.allocate(bytes: 64)
        #expect(next == oldest, "the full chunk's successor is the oldest ready chunk")
        try waitFor { arena.readyChunks == ready }
        #expect(arena.mappedBytes == (2 + ready) * IndexArena.chunkBytes, "the used ready chunk was replaced")
        #expect(arena.nextReadyChunk != oldest)
    }

    /// The ready chunks grow with the index: a sixteenth of what is mapped,
    /// within bounds.
    @Test func readyChunksFollowTheIndexSize() throws {
        let arena = IndexArena()
        defer { arena.destroy() }
        // 64 chunks in use: a sixteenth of what is then mapped is 4.
        for _ in 0..<64 { _ = arena.allocate(bytes: IndexArena.chunkBytes) }
        try waitFor { arena.readyChunks >= 4 }
        let mapped = arena.mappedBytes / IndexArena.chunkBytes
        #expect(arena.readyChunks == mapped / 16 || arena.readyChunks == mapped / 16 - 1,
                "\(arena.readyChunks) ready of \(mapped) mapped")
        #expect(arena.readyChunks <= IndexArena.maximumReadyChunks)
    }

    /// Threads allocating at once get disjoint blocks, across chunk switches.
    @Test func concurrentAllocationsAreDisjoint() throws {
        let arena = IndexArena()
        defer { arena.destroy() }
        let perThread = 3_000
        let results = (0..<4).map { _ in UnsafeMutablePointer<UInt>.allocate(capacity: perThread) }
        defer { results.forEach { $0.deallocate() } }
        let threads = (0..<4).map { t in
            OSThread(name: "arena-\(t)") {
                for i in 0..<perThread {
                    let block = arena.allocate(bytes: 1536)
                    block.storeBytes(of: UInt64(t), as: UInt64.self)
                    results[t][i] = UInt(bitPattern: block)
                }
            }
        }
        for thread in threads { try thread.start() }
        for thread in threads { thread.join() }
        let starts = results.flatMap { Array(UnsafeBufferPointer(start: $0, count: perThread)) }.sorted()
        #expect(Set(starts).count == starts.count, "a block was handed out twice")
        for (a, b) in zip(starts, starts.dropFirst()) { #expect(b - a >= 1536, "blocks overlap") }
    }

    struct Timeout: Error, CustomStringConvertible {
        var description: String { "timed out waiting for the arena's refill thread" }
    }

    private func waitFor(_ condition: () -> Bool) throws {
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while !condition() {
            guard monotonicNanoseconds() < deadline else { throw Timeout() }
            usleep(1000)
        }
    }

    /// The cache's index takes its leaves from its arena: memory grows by
    /// whole chunks, and a subtree's own figure counts only what it holds.
    @Test func cacheIndexCountsItsArena() {
        let index = CacheIndex(backingBytes: 64 << 20)
        var held = 0
        for i in 0..<500 {
            let offset = UInt64(i) * 131_072
            let subtree = CacheIndex.subtree(of: offset)
            index.withShard(subtree) { $0.insert(Extent(start: offset, length: 4096, segment: 1, segmentOffset: UInt32(i) * 4096)) }
        }
        for i in 0..<index.count { index.withShard(i) { held += $0.memoryBytes } }
        let usage = index.usage()
        #expect(usage.keys == 500)
        let stripes = index.count * MemoryLayout<CacheIndex.Shard>.stride
        #expect((usage.bytes - stripes) % IndexArena.chunkBytes == 0, "the arena maps whole chunks")
        #expect(usage.bytes - stripes >= held, "the arena holds every leaf and directory")
    }
}
