import CSupport
import Glibc
import Testing

@testable import PCacheCore

/// Two queue threads with the writeback and GC threads running: every read
/// must return the last write of its own thread's blocks while GC recycles
/// segments underneath (the generation checks and the seqlock on hit copies).
@Suite(.serialized) struct CacheConcurrencyTests {
    final class ThreadResult: @unchecked Sendable {
        var failures: [String] = []
        var operations = 0
    }

    @Test func twoQueuesWithBackgroundThreadsNeverReadStaleData() throws {
        let h = try CacheHarness(cacheMiB: 112, backingMiB: 32, queues: 2)
        // Replace the synchronous cache with one running its worker threads.
        var configuration = h.configuration
        configuration.startWorkers = true
        let memory = try MappedPersistentMemory(path: h.cachePath, mode: .pmem)
        try h.cache.stop()
        let cache = try Cache(memory: memory, backing: try BackingDevice(path: h.backingPath), configuration: configuration)
        try cache.setGCPercent(0)

        let blocks = 2048  // 4 KiB blocks per thread, interleaved 64 KiB apart
        let results = [ThreadResult(), ThreadResult()]
        let threads = (0..<2).map { t in
            OSThread(name: "stress-\(t)") {
                let io = try! RingQueueIO(entries: 64)
                let queue = cache.makeQueue(id: t, depth: 1, io: io, waker: PollingWaker())
                let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
                defer { buffer.deallocate() }
                var versions = [UInt32](repeating: 0, count: blocks)
                var rng = SeededGenerator(seed: UInt64(t) + 100)
                func run(_ submit: () -> Int32?) -> Int32 {
                    if let r = submit() { return r }
                    while io.completionCount == 0 {
                        if io.hasIOInFlight { try! io.pump(queue) } else { usleep(50); queue.resumeDeferred() }
                    }
                    return io.takeCompletions()[0].result
                }
                // Thread t owns blocks whose 64 KiB group index has parity t.
                func offset(_ block: Int) -> UInt64 { UInt64((block / 16 * 2 + t) * 16 + block % 16) * 4096 }
                for step in 0..<60_000 {
                    let block = Int(rng.next() % UInt64(blocks))
                    if rng.next() % 2 == 0 {
                        versions[block] += 1
                        let tag = UInt32(t) << 28 | UInt32(block) << 12 | (versions[block] & 0xFFF)
                        for i in 0..<1024 { buffer.storeBytes(of: tag &+ UInt32(i), toByteOffset: i * 4, as: UInt32.self) }
                        let r = run { queue.write(tag: 0, offset: offset(block), length: 4096, buffer: buffer, fua: false) }
                        if r != 4096 { results[t].failures.append("write \(step) failed: \(r)") }
                    } else {
                        let r = run { queue.read(tag: 0, offset: offset(block), length: 4096, buffer: buffer) }
                        let first = buffer.load(as: UInt32.self)
                        let expected = versions[block] == 0
                            ? 0 : UInt32(t) << 28 | UInt32(block) << 12 | (versions[block] & 0xFFF)
                        if r != 4096 || first != expected {
                            results[t].failures.append("step \(step): block \(block) read \(first) (r \(r)), expected \(expected)")
                        }
                    }
                    results[t].operations += 1
                    if results[t].failures.count > 5 { break }
                }
                queue.stop()
            }
        }
        for thread in threads { try thread.start() }
        for thread in threads { thread.join() }
        let status = cache.status()
        try cache.stop()
        for (t, result) in results.enumerated() {
            #expect(result.failures.isEmpty, "thread \(t): \(result.failures.prefix(5))")
        }
        print("concurrency: \(results[0].operations + results[1].operations) ops on 2 threads; "
              + "GC freed \(status.gcSegmentsFreed) segments; status \(status.infoLine)")
        #expect(status.gcSegmentsFreed > 6, "the run should recycle every segment at least once")
    }
}

/// The one-word lock that guards index stripes: under heavy contention
/// (three threads on two CPUs, so holders get preempted and waiters sleep on
/// the futex) no increment is lost and every waiter is woken.
@Suite struct WordLockTests {
    final class Shared: @unchecked Sendable {
        let word = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
        var counter = 0
        init() { word.initialize(to: 0) }
        deinit { word.deallocate() }
    }

    @Test func contendedIncrementsAreNeverLost() throws {
        let shared = Shared()
        let perThread = 200_000
        let threads = (0..<3).map { t in
            OSThread(name: "lock-\(t)") {
                for i in 0..<perThread {
                    pcs_word_lock(shared.word)
                    shared.counter += 1
                    if i % 1000 == 0 { sched_yield() }  // hold it across a yield now and then
                    pcs_word_unlock(shared.word)
                }
            }
        }
        for thread in threads { try thread.start() }
        for thread in threads { thread.join() }
        #expect(shared.counter == 3 * perThread)
        #expect(shared.word.pointee == 0, "the lock is free at the end")
    }

    /// An unlock is a plain store, so it can miss a waiter that marked the
    /// word just before (see `pcs_word_unlock`). Here the miss is made
    /// certain: the lock is freed behind a sleeping waiter's back, with no
    /// wake-up. The waiter's timed sleep must still bring it the lock.
    @Test func aWaiterWhoseWakeUpWasLostStillGetsTheLock() throws {
        let shared = Shared()
        pcs_word_lock(shared.word)
        let waiter = OSThread(name: "lock-waiter") {
            pcs_word_lock(shared.word)
            shared.counter += 1
            pcs_word_unlock(shared.word)
        }
        try waiter.start()
        // The waiter has given up spinning and marked the word: it sleeps.
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while pcs_atomic_load_u32(shared.word) != 2 && monotonicNanoseconds() < deadline { usleep(100) }
        try #require(pcs_atomic_load_u32(shared.word) == 2, "the waiter never marked the lock contended")
        usleep(1000)
        pcs_atomic_store_u32(shared.word, 0)  // freed, nobody woken
        waiter.join()
        #expect(shared.counter == 1, "the waiter got the lock")
        #expect(shared.word.pointee == 0)
    }
}
