import CSupport
import Glibc
import Testing

@testable import PCacheCore

/// Backing I/O done at once with pread/pwrite; completions are handed to the
/// queue when the harness pumps, as a ring's would be.
final class ImmediateQueueIO: QueueIO {
    var pending: [(userData: UInt64, result: Int32)] = []
    var completed: [UInt16: Int32] = [:]
    /// When set, backing reads fail with this errno.
    var failReads: Int32? = nil

    func submitRead(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, userData: UInt64) {
        if let failReads {
            pending.append((userData, -failReads))
            return
        }
        let n = pread(fd, buffer, count, off_t(offset))
        pending.append((userData, n < 0 ? -errno : Int32(n)))
    }

    func submitWrite(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, userData: UInt64) {
        let n = pwrite(fd, buffer, count, off_t(offset))
        pending.append((userData, n < 0 ? -errno : Int32(n)))
    }

    func submitFlush(fd: Int32, userData: UInt64) {
        pending.append((userData, fsync(fd) == 0 ? 0 : -errno))
    }

    func submitDiscard(fd: Int32, offset: UInt64, length: UInt64, userData: UInt64) {
        pending.append((userData, pcs_punch_hole(fd, offset, length)))
    }

    func completeRequest(tag: UInt16, result: Int32) {
        completed[tag] = result
    }
}

final class NoWaker: QueueWaker {
    func wake() {}
}

/// A cache on files in /dev/shm, driven synchronously from the test thread:
/// no worker threads, writeback and GC run when the harness says so.
final class CacheHarness {
    let directory: String
    let cachePath: String
    let backingPath: String
    let cacheBytes: Int
    let backingBytes: Int
    var configuration: CacheConfiguration
    private(set) var cache: Cache!
    private(set) var queues: [CacheQueue] = []
    private(set) var ios: [ImmediateQueueIO] = []
    let depth = 4

    /// Segments freed by GC over every start of this harness.
    private(set) var segmentsFreedBeforeRestarts: UInt64 = 0
    var segmentsFreed: UInt64 { segmentsFreedBeforeRestarts + cache.status().gcSegmentsFreed }

    init(cacheMiB: Int = 160, backingMiB: Int = 64, dataCRC: Bool = false, queues: Int = 1,
         keyLogStartsBeforeSegmentEnd: Int? = nil, stashOpenKeySets: Bool = false,
         events: (@Sendable (String) -> Void)? = nil) throws {
        var template = Array("/dev/shm/pcache-test-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw SystemError.last("mkdtemp") }
        directory = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        cachePath = directory + "/cache"
        backingPath = directory + "/backing"
        cacheBytes = cacheMiB << 20
        backingBytes = backingMiB << 20
        for (path, size) in [(cachePath, cacheBytes), (backingPath, backingBytes)] {
            let fd = open(path, O_CREAT | O_RDWR, 0o600)
            guard fd >= 0, ftruncate(fd, off_t(size)) == 0 else { throw SystemError.last("create \(path)") }
            close(fd)
        }
        configuration = CacheConfiguration()
        configuration.dataCRC = dataCRC
        configuration.keySetCount = queues
        configuration.startWorkers = false
        configuration.minimumCacheBytes = 64 << 20
        configuration.keyLogStartsBeforeSegmentEnd = keyLogStartsBeforeSegmentEnd
        if stashOpenKeySets { configuration.keySetStashDirectory = directory + "/run" }
        configuration.events = events
        try start(queueCount: queues)
    }

    deinit {
        cache = nil
        if let run = configuration.keySetStashDirectory {
            if let dir = opendir(run) {
                while let entry = readdir(dir) {
                    let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                    if name != "." && name != ".." { unlink(run + "/" + name) }
                }
                closedir(dir)
            }
            rmdir(run)
        }
        unlink(cachePath)
        unlink(backingPath)
        rmdir(directory)
    }

    func start(queueCount: Int? = nil) throws {
        let count = queueCount ?? queues.count
        let memory = try MappedPersistentMemory(path: cachePath, mode: .pmem)
        cache = try Cache(memory: memory, backing: try BackingDevice(path: backingPath), configuration: configuration)
        ios = (0..<count).map { _ in ImmediateQueueIO() }
        queues = (0..<count).map { cache.makeQueue(id: $0, depth: depth, io: ios[$0], waker: NoWaker()) }
    }

    /// A clean stop (all key-sets closed) and a new start: replay.
    func restart() throws {
        segmentsFreedBeforeRestarts += cache.status().gcSegmentsFreed
        for q in queues { q.stop() }
        try cache.stop()
        queues = []
        cache = nil
        try start(queueCount: ios.count)
    }

    /// Drops the cache without closing key-sets: what a crash of the server
    /// leaves (pmem holds exactly what was persisted).
    func crashAndRestart() throws {
        // (No cache when the last start failed.)
        segmentsFreedBeforeRestarts += cache?.status().gcSegmentsFreed ?? 0
        queues = []
        cache = nil
        try start(queueCount: ios.count)
    }

    /// Runs `submit` on queue `q` and pumps backing I/O, writeback and GC
    /// until the request completes.
    func run(queue q: Int = 0, tag: UInt16 = 0, _ submit: (CacheQueue) -> Int32?) -> Int32 {
        let io = ios[q]
        io.completed[tag] = nil
        if let result = submit(queues[q]) { return result }
        for _ in 0..<100_000 {
            if let result = io.completed.removeValue(forKey: tag) { return result }
            if !io.pending.isEmpty {
                let batch = io.pending
                io.pending.removeAll()
                for c in batch { queues[q].backingIOCompleted(userData: c.userData, result: c.result) }
                continue
            }
            // Deferred: make room the way the background threads would.
            _ = cache.closeKeySets()
            while cache.runWriteback() {}
            while cache.runGarbageCollection() {}
            queues[q].resumeDeferred()
        }
        Issue.record("request on queue \(q) tag \(tag) never completed")
        return -EIO
    }

    func write(_ offset: UInt64, _ bytes: [UInt8], fua: Bool = false, queue q: Int = 0) -> Int32 {
        var copy = bytes
        return copy.withUnsafeMutableBytes { raw in
            run(queue: q) { $0.write(tag: 0, offset: offset, length: UInt32(raw.count), buffer: raw.baseAddress!, fua: fua) }
        }
    }

    func read(_ offset: UInt64, _ length: Int, queue q: Int = 0) -> (Int32, [UInt8]) {
        var buffer = [UInt8](repeating: 0xEE, count: length)
        let result = buffer.withUnsafeMutableBytes { raw in
            run(queue: q) { $0.read(tag: 0, offset: offset, length: UInt32(length), buffer: raw.baseAddress!) }
        }
        return (result, buffer)
    }

    func flush(queue q: Int = 0) -> Int32 {
        run(queue: q) { $0.flush(tag: 0) }
    }

    /// Raw bytes of the backing file.
    func backingBytes(_ offset: UInt64, _ length: Int) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: length)
        let fd = open(backingPath, O_RDONLY)
        defer { close(fd) }
        _ = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, length, off_t(offset)) }
        return buffer
    }
}

/// Deterministic pattern bytes: a write's identity is recoverable from its data.
func pattern(_ seed: UInt64, _ count: Int) -> [UInt8] {
    var generator = SeededGenerator(seed: seed)
    var bytes = [UInt8](repeating: 0, count: count)
    var i = 0
    while i < count {
        var word = generator.next()
        for _ in 0..<8 where i < count {
            bytes[i] = UInt8(truncatingIfNeeded: word)
            word >>= 8
            i += 1
        }
    }
    return bytes
}
