import Glibc
import PCacheCore

/// The cache served through ublk: the `pcache` target of a table.
///
/// The kernel sees a volatile write-back cache with FUA (so it sends FLUSH,
/// and FUA on writes that need it), the backing device's logical block size
/// (512 bytes, or 4096 on a 4Kn disk, as dm stacks it), 4 KiB physical
/// blocks, and DISCARD / WRITE_ZEROES support.
public final class PCacheTarget: UblkTarget {
    public let parameters: UblkDeviceParameters
    public let kind = "pcache"
    public let table: PCacheTable
    public let cache: Cache

    /// Opens the devices of `table` and starts the cache (formatting a blank
    /// cache device, replaying an existing one).
    public init(table: PCacheTable) throws {
        self.table = table
        var configuration = CacheConfiguration()
        configuration.dataCRC = table.dataCRC
        configuration.writebackKeepsHistory = table.writebackHistory
        configuration.logicalBytes = table.sectors << 9
        // One key-set per possible queue: the kernel caps queues at the CPU count.
        configuration.keySetCount = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        // Open key-sets outlive a crashed server here (tmpfs), so kill -9
        // loses no acknowledged write.
        try RuntimeFiles.makeDirectories(RuntimeFiles.directory, mode: 0o700)
        configuration.keySetStashDirectory = RuntimeFiles.directory
        configuration.events = { Log.warning($0) }
        cache = try Cache(cachePath: table.cacheDevicePath, backingPath: table.backingDevicePath,
                          configuration: configuration)
        let replay = cache.replayOutcome
        let status = cache.status()
        Log.info("cache \(table.cacheDevicePath) (\(status.persistence) mode): "
                 + (cache.device.didFormat ? "formatted, " : "")
                 + "\(status.cacheSegments) segments, data_crc \(cache.dataCRC); replayed \(replay.keySets) key-sets, "
                 + "\(replay.keys) keys (\(replay.staleKeys) stale); key_head \(status.keyHead), "
                 + "dirty_tail \(status.dirtyTail), key_tail \(status.keyTail)")
        if let adopted = cache.adoptedKeys {
            if adopted >= 0 {
                Log.info("logged \(adopted) keys the previous server had acknowledged but not yet logged")
            } else {
                Log.error("dropped \(-adopted) unlogged keys of a previous server: the key log moved on since "
                          + "(another server ran on this cache); their writes had not been flushed")
            }
        }

        var p = UblkDeviceParameters(
            deviceBytes: table.sectors << 9,
            attributes: UblkDeviceParameters.volatileCache | UblkDeviceParameters.fua)
        // Never smaller blocks than the backing device takes: writeback and
        // misses use direct I/O, which cannot write part of a block.
        let logicalShift = UInt8(min(max(cache.backing.logicalBlockSize.trailingZeroBitCount, 9), 12))
        p.logicalBlockShift = logicalShift
        p.physicalBlockShift = max(12, logicalShift)
        p.ioMinShift = 12
        p.ioOptShift = 12
        p.discardGranularity = 4096
        p.maxDiscardSectors = 1 << 21
        // WRITE_ZEROES is cached as zeros, taken from a buffer of this size.
        p.maxWriteZeroesSectors = UInt32(Cache.zeroBufferSize >> 9)
        parameters = p
    }

    /// A read's backing reads (one per gap in what is cached) or a discard's one.
    public var ioPerRequest: Int { CacheQueue.maxBackingIOPerRequest }

    public var reclaimProgress: UInt64 {
        let s = cache.status()
        return s.writebackBytes &+ s.gcSegmentsFreed &+ s.writebackKeySets
    }

    public func makeQueueHandler(queueID: Int, depth: Int, io: QueueIO, waker: QueueWaker) throws -> UblkQueueHandler {
        PCacheQueueHandler(queue: cache.makeQueue(id: queueID, depth: depth, io: io, waker: waker))
    }

    public func control(_ words: [String]) -> ControlReply {
        switch words.first {
        case "status":
            // The dmsetup INFO line, with the DM prefix `<start> <len> pcache`.
            return .ok(["0 \(table.sectors) pcache \(cache.status().infoLine)"])
        case "table":
            return .ok([table.dmTableLine()])
        case "stats":
            return .ok(statisticsLines(cache.status()))
        case "message":
            do {
                switch try PCacheMessage.parse(Array(words.dropFirst())) {
                case .gcPercent(let percent):
                    try cache.setGCPercent(percent)
                    return .ok
                }
            } catch {
                return .error("\(error)")
            }
        default:
            return .error("unknown request '\(words.first ?? "")' (status, table, stats, message gc_percent <n>)")
        }
    }

    public func shutdown(flushDirty: Bool) throws {
        try cache.stop(writeBackAll: flushDirty) { remaining in
            Log.info("writeback: \(remaining >> 10) KiB of key log still dirty")
        }
        // What this server wrote back in all, for the log it leaves behind.
        let s = cache.status()
        Log.info("stopped: writeback wrote \(s.writebackBytes >> 10) KiB in \(s.writebackRequests) requests, "
            + "skipped \(s.writebackSkippedBytes >> 10) KiB a newer logged write had overwritten")
    }

    /// `name value` lines: the counters behind the status line.
    func statisticsLines(_ s: CacheStatus) -> [String] {
        var lines = [
            "persistence \(s.persistence)",
            "segments_used \(s.usedSegments) of \(s.cacheSegments)",
            "key_head \(s.keyHead)", "dirty_tail \(s.dirtyTail)", "key_tail \(s.keyTail)",
            "index_extents \(s.indexKeys)", "index_bytes \(s.indexBytes)",
            "writeback_keysets \(s.writebackKeySets)", "writeback_bytes \(s.writebackBytes)",
            "writeback_requests \(s.writebackRequests)", "writeback_skipped_bytes \(s.writebackSkippedBytes)",
            "writeback_history \(s.writebackKeepsHistory)",
            "writeback_failures \(s.writebackFailures)", "writeback_last_error \(s.writebackLastError)",
            "gc_keysets \(s.gcKeySets)", "gc_segments_freed \(s.gcSegmentsFreed)",
        ]
        for name in QueueCounters.Name.allCases {
            lines.append("\(name) \(s.counters[name] ?? 0)")
        }
        if let halted = s.writebackHalted { lines.append("writeback_halted \(halted)") }
        if let halted = s.gcHalted { lines.append("gc_halted \(halted)") }
        return lines
    }
}

/// One queue's requests, handed to its `CacheQueue`.
final class PCacheQueueHandler: UblkQueueHandler {
    let queue: CacheQueue

    init(queue: CacheQueue) {
        self.queue = queue
    }

    @inline(__always)
    func handle(_ request: UblkRequest) -> Int32? {
        let offset = request.byteOffset
        let length = UInt32(request.byteCount)
        switch request.op {
        case UblkRequest.read:
            return queue.read(tag: request.tag, offset: offset, length: length, buffer: request.buffer)
        case UblkRequest.write:
            return queue.write(tag: request.tag, offset: offset, length: length, buffer: request.buffer,
                               fua: request.isFUA)
        case UblkRequest.flush:
            return queue.flush(tag: request.tag)
        case UblkRequest.discard:
            return queue.discard(tag: request.tag, offset: offset, length: length)
        case UblkRequest.writeZeroes:
            return queue.writeZeroes(tag: request.tag, offset: offset, length: length, fua: request.isFUA)
        default:
            return -EOPNOTSUPP
        }
    }

    var lookAheadDistance: Int { CacheQueue.lookAheadDistance }

    @inline(__always)
    func lookAhead(op: UInt8, byteOffset: UInt64, requestsAway: Int) {
        if op == UblkRequest.write || op == UblkRequest.read {
            queue.lookAhead(offset: byteOffset, requestsAway: requestsAway)
        }
    }

    func ioCompleted(userData: UInt64, result: Int32) {
        queue.backingIOCompleted(userData: userData, result: result)
    }

    func resumeDeferred() {
        queue.resumeDeferred()
    }

    func queueStopping() {
        queue.stop()
    }

    func failWaitingRequests() -> Int {
        queue.failWaitingRequests()
    }
}
