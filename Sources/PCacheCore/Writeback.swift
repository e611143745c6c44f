import Glibc

/// Writes dirty data back to the backing device (dm-pcache's
/// `cache_writeback.c`): strictly in log order, one key-set per batch, with a
/// backing flush before the dirty tail moves past it. The backing device so
/// only ever holds a prefix of the write history and stays crash-consistent.
///
/// Runs on its own thread with its own io_uring. A failed write or flush
/// leaves the dirty tail where it is; the same key-set is retried after a
/// back-off, so writeback resumes by itself when the device heals.
final class Writeback: @unchecked Sendable {
    private unowned let cache: Cache
    private let ring: IOURing
    private let batch: UnsafeMutablePointer<SubtreeIndex>

    // Counters for status; written by the writeback thread only.
    private(set) var keySetsWritten: UInt64 = 0
    private(set) var bytesWritten: UInt64 = 0
    private(set) var failedAttempts: UInt64 = 0
    private(set) var lastError: Int32 = 0
    /// A key-set that cannot be decoded stops writeback for good (the Hardened
    /// kernel's latch); retrying would loop forever.
    private(set) var fatalError: CacheError?
    /// Direct writes from the pmem mapping are tried first; some mappings
    /// (device DAX) refuse them, and then the buffered descriptor is used.
    private var directFromCache = true

    enum StepResult { case clean, progressed, failed }

    init(cache: Cache) throws {
        self.cache = cache
        ring = try IOURing(entries: UInt32(PCacheLayout.ksetMaxKeys * 2))
        batch = .allocate(capacity: 1)
        batch.initialize(to: SubtreeIndex(initialCapacity: PCacheLayout.ksetMaxKeys))
    }

    deinit {
        batch.pointee.deallocate()
        batch.deallocate()
    }

    /// Writes back the key-set at the dirty tail, if there is one.
    func step() -> StepResult {
        guard fatalError == nil else { return .clean }
        let tail = cache.metadata.dirtyTail
        guard tail != cache.keyLog.currentHead else { return .clean }
        let keySet: KeySetView
        switch cache.reader.keySet(at: tail) {
        case .success(let found): keySet = found
        case .failure: return .clean
        }
        if keySet.isLast {
            do {
                let next = try cache.reader.nextSegment(of: keySet, at: tail)
                cache.metadata.persistDirtyTail(CachePosition(cacheSegID: next, segOff: 0))
                return .progressed
            } catch {
                fatalError = error as? CacheError
                return .failed
            }
        }

        // Within one key-set a later key wins over an earlier one.
        batch.pointee.removeAll()
        do {
            for i in 0..<keySet.keyCount {
                let key = keySet.key(at: i)
                try cache.reader.validate(key, index: i, at: tail)
                if cache.dataCRC { try cache.reader.checkDataCRC(key, at: tail) }
                batch.pointee.insert(Extent(
                    start: key.off, length: key.len, flags: key.isClean ? .clean : [],
                    segment: key.cacheSegID, segmentOffset: key.cacheSegOff, generation: key.segGen))
            }
        } catch {
            fatalError = error as? CacheError
            return .failed
        }

        if writeBatch() && flushBacking() {
            cache.metadata.persistDirtyTail(tail.advanced(by: keySet.size))
            keySetsWritten += 1
            return .progressed
        }
        failedAttempts += 1
        return .failed
    }

    /// Writes every dirty key of the batch; true when all succeeded.
    private func writeBatch() -> Bool {
        let backing = cache.backing
        var submitted = 0
        for i in 0..<batch.pointee.count {
            let key = batch.pointee[i]
            guard !key.flags.contains(.clean) else { continue }
            let source = UnsafeRawPointer(cache.memory.base + cache.dataOffset(key.segment, key.segmentOffset))
            let fd = directFromCache ? backing.descriptor(buffer: source, count: Int(key.length), offset: key.start)
                : backing.bufferedFD
            ring.prepareWrite(fd: fd, from: source, count: Int(key.length), offset: key.start, userData: UInt64(i))
            submitted += 1
        }
        guard submitted > 0 else { return true }
        var ok = true
        var retryBuffered = false
        do {
            try ring.submitAndWait(UInt32(submitted))
            var seen = 0
            while seen < submitted {
                let (userData, result) = try ring.waitCompletion()
                seen += 1
                let key = batch.pointee[Int(userData)]
                if result == Int32(key.length) {
                    bytesWritten += UInt64(key.length)
                } else if (result == -EINVAL || result == -EFAULT) && directFromCache && backing.isDirect {
                    retryBuffered = true
                } else {
                    ok = false
                    lastError = result < 0 ? result : -EIO
                }
            }
        } catch {
            ok = false
            lastError = -EIO
        }
        if retryBuffered && ok {
            directFromCache = false
            return writeBatch()
        }
        return ok
    }

    private func flushBacking() -> Bool {
        ring.prepareFsync(fd: cache.backing.bufferedFD, userData: 0)
        do {
            try ring.submitAndWait(1)
            let (_, result) = try ring.waitCompletion()
            if result < 0 {
                lastError = result
                return false
            }
            return true
        } catch {
            lastError = -EIO
            return false
        }
    }
}
