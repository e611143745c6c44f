import CSupport

/// The request index: one `SubtreeIndex` per 4 MiB stripe of the backing
/// device, each behind its own lock (dm-pcache's `req_key_tree`). Requests on
/// different stripes never share a lock. Leaves and directories come from one
/// `IndexArena`.
final class CacheIndex: @unchecked Sendable {
    /// One stripe: lock and index header on one cache line, so a request on
    /// the stripe misses on one line, not one per field.
    struct Shard {
        /// The stripe's lock (`pcs_word_lock`).
        var lockWord: UInt32 = 0
        var keys: SubtreeIndex
        /// To 64 bytes: neighbouring stripes on separate cache lines.
        var padding: UInt64 = 0
    }

    let count: Int
    private let shards: UnsafeMutablePointer<Shard>
    private let arena = IndexArena()

    init(backingBytes: UInt64) {
        count = Int((backingBytes + UInt64(PCacheLayout.subtreeSize) - 1) >> UInt64(PCacheLayout.subtreeShift))
        shards = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Shard>.stride, alignment: 64)
            .bindMemory(to: Shard.self, capacity: max(count, 1))
        for i in 0..<count { (shards + i).initialize(to: Shard(keys: SubtreeIndex(arena: arena))) }
    }

    deinit {
        shards.deinitialize(count: count)
        UnsafeMutableRawPointer(shards).deallocate()
        arena.destroy()
    }

    @inline(__always)
    static func subtree(of offset: UInt64) -> Int { Int(offset >> UInt64(PCacheLayout.subtreeShift)) }

    /// Starts loading stripe `index`'s lock and header line, for writing
    /// (see `SubtreeIndex`'s prefetch hints).
    @inline(__always)
    func prefetch(_ index: Int) {
        pcs_prefetch_for_write(shards + index)
    }

    /// Starts loading stripe `index`'s directory, without its lock; reads
    /// the header, so best asked once `prefetch(index)` has brought it.
    @inline(__always)
    func prefetchDirectory(_ index: Int) {
        SubtreeIndex.prefetchDirectory(of: keys(of: index))
    }

    /// Starts loading the leaf of stripe `index` that a search for `offset`
    /// will read, without the lock; searches the directory, so best asked
    /// once `prefetchDirectory(index)` has brought it.
    @inline(__always)
    func prefetchLeaf(_ index: Int, endingAfter offset: UInt64) {
        SubtreeIndex.prefetchLeaf(of: keys(of: index), endingAfter: offset)
    }

    @inline(__always)
    private func keys(of index: Int) -> UnsafeRawPointer {
        UnsafeRawPointer(shards + index) + MemoryLayout<Shard>.offset(of: \Shard.keys)!
    }

    /// Runs `body` with subtree `index` locked.
    @inline(__always)
    func withShard<R>(_ index: Int, _ body: (inout SubtreeIndex) throws -> R) rethrows -> R {
        let shard = shards + index
        pcs_word_lock(&shard.pointee.lockWord)
        defer { pcs_word_unlock(&shard.pointee.lockWord) }
        return try body(&shard.pointee.keys)
    }

    /// Keys over all subtrees (takes every lock in turn), and the bytes the
    /// index holds: the stripes' entries and the arena's chunks, used or not.
    func usage() -> (keys: Int, bytes: Int) {
        var keys = 0
        for i in 0..<count { withShard(i) { keys += $0.count } }
        return (keys, count * MemoryLayout<Shard>.stride + arena.mappedBytes)
    }
}
