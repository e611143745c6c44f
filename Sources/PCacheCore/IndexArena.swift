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
/// gives huge pages, and page faults happen on a thread of the arena's own,
/// which keeps a few chunks mapped and faulted in ahead of need, so the I/O
/// path only moves a pointer. Only an index growing faster than that thread
/// maps (or the first chunk) maps inline.
///
/// The refill thread runs at `SCHED_IDLE`: it maps on CPU time no queue
/// thread wants, and the chunks it keeps ready (1/16 of what is mapped, at
/// least two) cover the growth between such moments. Faulting in a chunk
/// took 0.3-11 ms on this project's VMs (the hypervisor's faults on fresh
/// memory), which at normal priority came out of a queue thread's CPU
/// whenever both CPUs were busy. It hands chunks over through a ring of its
/// own, without the arena's lock, so a thread that rarely runs never holds a
/// lock a queue thread waits for.
///
/// A handle: copies refer to the same arena. Allocation takes the arena's own
/// lock, briefly; it happens only when a leaf splits or a directory grows
/// (one write in 20 to 30 of random 4 KiB writes to a growing index).
struct IndexArena {
    static let chunkBytes = 2 << 20
    /// Every block starts on a cache line of its own.
    static let blockAlignment = 64
    /// Chunks the refill thread keeps ready: a sixteenth of what is mapped,
    /// within these bounds.
    static let minimumReadyChunks = 2
    static let maximumReadyChunks = 16

    private final class State {
        /// Guards the fields below up to the ring.
        var lock: UInt32 = 0
        var cursor: UnsafeMutableRawPointer?
        var remaining = 0
        /// Chunks mapped by allocations (inline, or for a large block).
        var chunks: [(base: UnsafeMutableRawPointer, bytes: Int)] = []
        /// A chunk mapped inline that a concurrent chunk switch left unused;
        /// the next switch takes it before the ring's.
        var leftover: UnsafeMutableRawPointer?
        /// Blocks handed out so far: the refill thread reads it to tell
        /// whether the index is growing right now.
        var allocations: UInt64 = 0

        /// Bytes mapped by either side (atomic).
        var mappedBytes: UInt64 = 0

        // Ready chunks, single producer (the refill thread stores a slot,
        // then advances `readyTail`) and single consumer (an allocation,
        // holding `lock`, takes the slot at `readyHead`, then advances it).
        let ready = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: maximumReadyChunks)
        var readyHead: UInt64 = 0
        var readyTail: UInt64 = 0
        /// Chunks the refill thread mapped: its own until it is joined.
        var refillChunks: [UnsafeMutableRawPointer] = []

        // The refill thread: started with the first chunk, woken at every
        // chunk switch.
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
        for chunk in s.refillChunks { munmap(chunk, Self.chunkBytes) }
        s.ready.deallocate()
        s.refillMutex.destroy()
        s.refillWanted.destroy()
        unmanagedState.release()
    }

    /// Bytes mapped, ready chunks included: what the arena holds, used or not.
    var mappedBytes: Int {
        let s = state
        return Int(pcs_atomic_load_u64(&s.mappedBytes))
    }

    /// Chunks mapped ahead and not yet used (for tests).
    var readyChunks: Int {
        locked { s in
            Int(pcs_atomic_load_u64(&s.readyTail) - s.readyHead) + (s.leftover == nil ? 0 : 1)
        }
    }

    /// The chunk the next chunk switch will use, if one is ready (for tests).
    var nextReadyChunk: UnsafeMutableRawPointer? {
        locked { s in
            if let leftover = s.leftover { return leftover }
            guard s.readyHead < pcs_atomic_load_u64(&s.readyTail) else { return nil }
            return s.ready[Int(s.readyHead % UInt64(Self.maximumReadyChunks))]
        }
    }

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
                pcs_atomic_add_u64(&s.mappedBytes, UInt64(bytes))
                pcs_word_unlock(&s.lock)
                return block
            }
            switchedChunk = true
            if let chunk = s.leftover ?? takeReadyChunk(s) {
                if chunk == s.leftover { s.leftover = nil }
                s.cursor = chunk
                s.remaining = Self.chunkBytes
            } else {
                // No chunk ready: map one here, without the lock, so other
                // threads' allocations do not wait for its page faults.
                pcs_word_unlock(&s.lock)
                let chunk = Self.map(Self.chunkBytes)
                pcs_word_lock(&s.lock)
                if s.remaining < size {
                    s.cursor = chunk
                    s.remaining = Self.chunkBytes
                    s.chunks.append((chunk, Self.chunkBytes))
                    pcs_atomic_add_u64(&s.mappedBytes, UInt64(Self.chunkBytes))
                } else if s.leftover == nil {
                    // Another thread switched chunks meanwhile, and the new
                    // one has room: the next switch takes this chunk.
                    s.leftover = chunk
                    s.chunks.append((chunk, Self.chunkBytes))
                    pcs_atomic_add_u64(&s.mappedBytes, UInt64(Self.chunkBytes))
                } else {
                    munmap(chunk, Self.chunkBytes)
                }
            }
        }
        let block = s.cursor!
        s.cursor = block + size
        s.remaining -= size
        pcs_single_writer_add_u64(&s.allocations, 1)
        pcs_word_unlock(&s.lock)
        if switchedChunk { requestRefill() }
        return block
    }

    /// The oldest ready chunk, if the refill thread has one. Called with the
    /// lock held: the lock makes the allocations one consumer.
    private func takeReadyChunk(_ s: State) -> UnsafeMutableRawPointer? {
        let head = s.readyHead
        guard head < pcs_atomic_load_u64(&s.readyTail) else { return nil }
        let chunk = s.ready[Int(head % UInt64(Self.maximumReadyChunks))]
        pcs_atomic_store_u64(&s.readyHead, head + 1)
        return chunk
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

    /// How many chunks the refill thread keeps ready.
    private func wantedReadyChunks(_ s: State) -> UInt64 {
        let share = pcs_atomic_load_u64(&s.mappedBytes) / 16 / UInt64(Self.chunkBytes)
        return min(max(share, UInt64(Self.minimumReadyChunks)), UInt64(Self.maximumReadyChunks))
    }

    /// Tops the ready chunks up after every chunk switch, until the arena is
    /// destroyed.
    private func refillLoop() {
        let s = state
        _ = pcs_set_thread_idle_priority()  // if refused, it maps at normal priority, as before
        // Its page faults must not wait on reclaim writing to the device the
        // queue threads serve (they wait on its chunks). Refused without
        // CAP_SYS_RESOURCE; the writeback and GC threads' log says so.
        _ = pcs_set_io_flusher()
        while true {
            let stop = s.refillMutex.withLock { () -> Bool in
                while !s.refillRequested && !s.stopping { s.refillWanted.wait(s.refillMutex, nanoseconds: 1_000_000_000) }
                s.refillRequested = false
                return s.stopping
            }
            if stop { return }
            while !s.refillMutex.withLock({ s.stopping }) {
                let tail = s.readyTail  // this thread is the only one to store it
                let ready = tail - pcs_atomic_load_u64(&s.readyHead)
                guard ready < wantedReadyChunks(s) else { break }
                if ready > 0 {
                    // Not urgent: wait for a millisecond without allocations.
                    // Even at SCHED_IDLE the scheduler now and then gives this
                    // thread a whole slice on a busy CPU (4 ms, a tick, taken
                    // from a queue thread seven times in one benchmark run),
                    // so it maps while the index is not growing.
                    let before = pcs_atomic_load_u64(&s.allocations)
                    usleep(1000)
                    guard pcs_atomic_load_u64(&s.allocations) == before else { continue }
                }
                guard let chunk = pcs_map_prefaulted(Self.chunkBytes, Self.chunkBytes) else { break }
                s.ready[Int(tail % UInt64(Self.maximumReadyChunks))] = chunk
                s.refillChunks.append(chunk)
                pcs_atomic_add_u64(&s.mappedBytes, UInt64(Self.chunkBytes))
                pcs_atomic_store_u64(&s.readyTail, tail + 1)
            }
        }
    }
}
