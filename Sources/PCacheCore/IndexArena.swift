import CSupport
import Glibc

/// The memory an index keeps its leaves and directories in: chunks of 2 MiB,
/// aligned, asked for in transparent huge pages and faulted in when they are
/// mapped, handed out by moving a cursor. Nothing is given back until the
/// arena is destroyed, which suits the index: its leaves are never freed
/// while the index lives (emptied ones are kept as spares), and the
/// directories a larger one replaced are kept for the prefetch hints.
///
/// Why not malloc, which the index used before: a new leaf came from memory
/// the process had never touched, so about one leaf in three cost the write
/// that split a leaf a page fault, with the stripe's lock held. And the leaves
/// of a large index spread over thousands of 4 KiB pages, so a write's search
/// (a random stripe, a random leaf) usually missed the TLB as well as the
/// cache. Here the whole index needs a few dozen TLB entries where the kernel
/// gives huge pages, and page faults happen on a thread of the arena's own:
/// it maps and faults in the next chunk while the current one fills, so the
/// I/O path only moves a pointer. Only an index growing faster than that
/// thread maps (or the first chunk) maps inline.
///
/// A handle: copies refer to the same arena. Allocation takes the arena's own
/// lock, briefly; it happens only when a leaf splits or a directory grows
/// (one write in 20 to 30 of random 4 KiB writes to a growing index).
struct IndexArena {
    static let chunkBytes = 2 << 20
    /// Every block starts on a cache line of its own.
    static let blockAlignment = 64

    private final class State {
        /// Guards the fields below except the refill thread's own.
        var lock: UInt32 = 0
        var cursor: UnsafeMutableRawPointer?
        var remaining = 0
        var chunks: [(base: UnsafeMutableRawPointer, bytes: Int)] = []
        var mappedBytes = 0
        /// A chunk mapped and faulted in ahead of need, nil while the refill
        /// thread is making one.
        var spare: UnsafeMutableRawPointer?

        // The refill thread: started with the first chunk, woken when the
        // spare is taken.
        let refillMutex = PThreadMutex()
        let refillWanted = PThreadCondition()
        var refillRequested = false
        var stopping = false
        var refillThread: OSThread?
    }

    /// Not reference counted: the arena is a plain value inside every
    /// subtree header, and its owner destroys it once.
    private let unmanagedState: Unmanaged<State>
    private var state: State { unmanagedState.takeUnretainedValue() }

    init() {
        unmanagedState = .passRetained(State())
    }

    /// Stops the refill thread and unmaps every chunk. Nothing allocated from
    /// the arena may be used after.
    func destroy() {
        let s = state
        s.refillMutex.withLock {
            s.stopping = true
            s.refillWanted.broadcast()
        }
        s.refillThread?.join()
        for chunk in s.chunks { munmap(chunk.base, chunk.bytes) }
        s.refillMutex.destroy()
        s.refillWanted.destroy()
        unmanagedState.release()
    }

    /// Bytes mapped, the spare chunk included: what the arena holds, used or not.
    var mappedBytes: Int { locked { $0.mappedBytes } }

    /// The spare chunk, if one is ready (for tests).
    var spareChunk: UnsafeMutableRawPointer? { locked { $0.spare } }

    /// `bytes` of zeroed memory on a cache line of its own. Stops the process
    /// when no memory can be mapped, as a failed malloc in Swift does.
    func allocate(bytes: Int) -> UnsafeMutableRawPointer {
        let size = (max(bytes, 1) + Self.blockAlignment - 1) & ~(Self.blockAlignment - 1)
        let s = state
        pcs_word_lock(&s.lock)
        var switchedChunk = false
        if size > s.remaining {
            if size > Self.chunkBytes {
                // A block larger than a chunk (the directory of a stripe with
                // tens of thousands of keys) gets a mapping of its own; the
                // current chunk stays current.
                let bytes = (size + Self.chunkBytes - 1) & ~(Self.chunkBytes - 1)
                let block = Self.map(bytes)
                s.chunks.append((block, bytes))
                s.mappedBytes += bytes
                pcs_word_unlock(&s.lock)
                return block
            }
            switchedChunk = true
            if let spare = s.spare {
                s.spare = nil
                s.cursor = spare
                s.remaining = Self.chunkBytes
            } else {
                // No spare ready: map one here, without the lock, so other
                // threads' allocations do not wait for its page faults.
                pcs_word_unlock(&s.lock)
                let chunk = Self.map(Self.chunkBytes)
                pcs_word_lock(&s.lock)
                if s.remaining < size {
                    s.cursor = chunk
                    s.remaining = Self.chunkBytes
                    s.chunks.append((chunk, Self.chunkBytes))
                    s.mappedBytes += Self.chunkBytes
                } else {
                    // Another thread switched chunks meanwhile, and the new
                    // one has room: keep this chunk as the spare, if none is.
                    offerSpare(chunk, to: s)
                }
            }
        }
        let block = s.cursor!
        s.cursor = block + size
        s.remaining -= size
        pcs_word_unlock(&s.lock)
        if switchedChunk { requestRefill() }
        return block
    }

    /// Makes `chunk` the spare, or unmaps it when there is one already.
    /// Called with the lock held.
    private func offerSpare(_ chunk: UnsafeMutableRawPointer, to s: State) {
        guard s.spare == nil else {
            munmap(chunk, Self.chunkBytes)
            return
        }
        s.spare = chunk
        s.chunks.append((chunk, Self.chunkBytes))
        s.mappedBytes += Self.chunkBytes
    }

    private func locked<R>(_ body: (State) -> R) -> R {
        let s = state
        pcs_word_lock(&s.lock)
        defer { pcs_word_unlock(&s.lock) }
        return body(s)
    }

    private static func map(_ bytes: Int) -> UnsafeMutableRawPointer {
        guard let chunk = pcs_map_prefaulted(bytes, chunkBytes) else {
            fatalError("index: cannot map \(bytes >> 10) KiB for the cache index: \(String(cString: strerror(errno)))")
        }
        return chunk
    }

    /// Wakes the refill thread, starting it the first time.
    private func requestRefill() {
        let s = state
        s.refillMutex.withLock {
            s.refillRequested = true
            s.refillWanted.broadcast()
            guard s.refillThread == nil, !s.stopping else { return }
            let thread = OSThread(name: "pcache-index") { [self] in refillLoop() }
            do {
                try thread.start()
                s.refillThread = thread
            } catch {
                // No thread: chunks are then mapped inline, as the first one is.
            }
        }
    }

    /// Maps a spare whenever there is none, until the arena is destroyed.
    private func refillLoop() {
        let s = state
        while true {
            let stop = s.refillMutex.withLock { () -> Bool in
                while !s.refillRequested && !s.stopping { s.refillWanted.wait(s.refillMutex, nanoseconds: 1_000_000_000) }
                s.refillRequested = false
                return s.stopping
            }
            if stop { return }
            guard spareChunk == nil, let chunk = pcs_map_prefaulted(Self.chunkBytes, Self.chunkBytes) else { continue }
            locked { offerSpare(chunk, to: $0) }
        }
    }
}
