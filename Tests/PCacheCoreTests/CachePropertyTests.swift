import Glibc
import Testing

@testable import PCacheCore

/// Random operation sequences against a model of the block device.
///
/// Every 512-byte sector written carries the id of the write and its own
/// sector number, so a read reveals exactly which write each sector came
/// from. The model keeps, per sector, the newest acknowledged write and —
/// for crashes — the write that was durable at the last FLUSH plus every
/// write acknowledged since: after a crash a sector may hold any of those,
/// and nothing else.
@Suite(.serialized) struct CachePropertyTests {
    static let sector = 512
    static let operations = Int(getenv("PCACHE_PROPERTY_OPS").map { String(cString: $0) } ?? "") ?? 100_000

    struct Model {
        var latest: [UInt32]
        var durable: [UInt32]
        var sinceFlush: [Set<UInt32>]

        init(sectors: Int) {
            latest = [UInt32](repeating: 0, count: sectors)
            durable = latest
            sinceFlush = [Set<UInt32>](repeating: [], count: sectors)
        }

        mutating func wrote(_ id: UInt32, sector: Int, count: Int, durableNow: Bool) {
            for s in sector..<(sector + count) {
                latest[s] = id
                if durableNow {
                    durable[s] = id
                    sinceFlush[s] = []
                } else {
                    sinceFlush[s].insert(id)
                }
            }
        }

        mutating func flushed() {
            for s in latest.indices where !sinceFlush[s].isEmpty {
                durable[s] = latest[s]
                sinceFlush[s] = []
            }
        }
    }

    static func sectorData(write id: UInt32, sector: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: id &* 31 &+ UInt32(sector)), count: sector512)
        withUnsafeBytes(of: id.littleEndian) { bytes.replaceSubrange(0..<4, with: $0) }
        withUnsafeBytes(of: UInt32(sector).littleEndian) { bytes.replaceSubrange(4..<8, with: $0) }
        return bytes
    }
    static let sector512 = 512

    /// Which write a sector read back came from (0: never written, all zero).
    static func identify(_ bytes: ArraySlice<UInt8>, sector: Int) -> UInt32? {
        if bytes.allSatisfy({ $0 == 0 }) { return 0 }
        let id = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt32.self) }
        return Array(bytes) == sectorData(write: id, sector: sector) ? id : nil
    }

    func run(seed: UInt64, dataCRC: Bool, queues: Int, operations: Int) throws {
        let h = try CacheHarness(
            cacheMiB: 112, backingMiB: 48, dataCRC: dataCRC, queues: queues, keyLogStartsBeforeSegmentEnd: 64 << 10)
        let sectors = h.backingBytes / Self.sector
        var model = Model(sectors: sectors)
        var rng = SeededGenerator(seed: seed)
        var nextID: UInt32 = 1
        var stats = (writes: 0, reads: 0, flushes: 0, restarts: 0, crashes: 0, writebacks: 0, gcs: 0)
        // Look-ahead hints, as a ublk queue gives them for requests it has
        // in hand, here for offsets that may never come (some past the end
        // of the device): they must change nothing a read returns. Drawn
        // from a generator of their own, so the operations stay the same.
        var hints = SeededGenerator(seed: seed &+ 1_000_003)

        for step in 0..<operations {
            let q = Int.random(in: 0..<queues, using: &rng)
            h.queues[q].lookAhead(offset: UInt64.random(in: 0..<UInt64(2 * h.backingBytes), using: &hints),
                                  requestsAway: Int.random(in: 1...CacheQueue.lookAheadDistance, using: &hints))
            let roll = Int.random(in: 0..<1000, using: &rng)
            switch roll {
            case 0..<450:
                // Mostly small writes, some large ones crossing a 4 MiB stripe.
                let count = roll < 60 ? Int.random(in: 64...1024, using: &rng) : Int.random(in: 1...32, using: &rng)
                let first = Int.random(in: 0...(sectors - count), using: &rng)
                let id = nextID
                nextID += 1
                var data = [UInt8]()
                data.reserveCapacity(count * Self.sector)
                for s in first..<(first + count) { data += Self.sectorData(write: id, sector: s) }
                let fua = roll % 10 == 0
                // Half the writes come looked ahead, as from a ublk batch: their
                // data is copied under the locks (see `continueWrite`).
                if step % 2 == 0 { h.queues[q].lookAhead(offset: UInt64(first * Self.sector), requestsAway: 1) }
                let result = h.write(UInt64(first * Self.sector), data, fua: fua, queue: q)
                try #require(result == Int32(data.count), "write \(id) failed: \(result) at step \(step)")
                model.wrote(id, sector: first, count: count, durableNow: false)
                if fua {
                    // FUA makes only this write durable; the model keeps it a
                    // candidate too, so checks stay sector-exact but lenient.
                }
                stats.writes += 1
            case 450..<800:
                let count = Int.random(in: 1...256, using: &rng)
                let first = Int.random(in: 0...(sectors - count), using: &rng)
                let (result, bytes) = h.read(UInt64(first * Self.sector), count * Self.sector, queue: q)
                try #require(result == Int32(count * Self.sector), "read failed: \(result) at step \(step)")
                for s in first..<(first + count) {
                    let slice = bytes[((s - first) * Self.sector)..<((s - first + 1) * Self.sector)]
                    let found = Self.identify(slice, sector: s)
                    try #require(found == model.latest[s],
                                 "step \(step): sector \(s) holds write \(String(describing: found)), expected \(model.latest[s])")
                }
                stats.reads += 1
            case 800..<880:
                try #require(h.flush(queue: q) == 0)
                model.flushed()
                stats.flushes += 1
            case 880..<940:
                while h.cache.runWriteback() {}
                stats.writebacks += 1
            case 940..<990:
                while h.cache.runGarbageCollection() {}
                stats.gcs += 1
            case 990..<993:
                try h.cache.setGCPercent(UInt8([0, 10, 50, 70, 90].randomElement(using: &rng)!))
            case 993..<997:
                try h.restart()
                model.flushed()  // a clean stop closes every key-set
                stats.restarts += 1
            default:
                try h.crashAndRestart()
                // Each sector now holds its durable write or a later one; adopt it.
                for s in 0..<sectors where !model.sinceFlush[s].isEmpty {
                    let offset = s * Self.sector
                    let (_, bytes) = h.read(UInt64(offset), Self.sector, queue: 0)
                    let found = Self.identify(bytes[0..<Self.sector], sector: s)
                    let allowed = model.sinceFlush[s].union([model.durable[s]])
                    try #require(found != nil && allowed.contains(found!),
                                 "after crash at step \(step): sector \(s) holds \(String(describing: found)), allowed \(allowed.sorted())")
                    model.latest[s] = found!
                    model.durable[s] = found!
                    model.sinceFlush[s] = []
                }
                stats.crashes += 1
            }
        }
        // Everything written back ends up on the backing device.
        #expect(h.flush() == 0)
        while h.cache.runWriteback() {}
        let final = h.backingBytes(0, h.backingBytes)
        for s in 0..<sectors {
            let found = Self.identify(final[(s * Self.sector)..<((s + 1) * Self.sector)], sector: s)
            try #require(found == model.latest[s], "backing sector \(s) holds \(String(describing: found)) after full writeback")
        }
        let status = h.cache.status()
        #expect(h.segmentsFreed > 6, "the run should wrap the cache several times")
        #expect(status.keyHead.cacheSegID != 0, "the key log should have moved past its first segment")
        print("property run seed \(seed) crc \(dataCRC) queues \(queues): \(operations) ops, "
              + "\(stats.writes) writes, \(stats.reads) reads, \(stats.flushes) flushes, \(stats.restarts) restarts, "
              + "\(stats.crashes) crashes; GC freed \(h.segmentsFreed) segments; status \(status.infoLine)")
    }

    @Test func randomOperationsOneQueue() throws {
        try run(seed: 1, dataCRC: false, queues: 1, operations: Self.operations / 2)
    }

    @Test func randomOperationsTwoQueuesWithDataCRC() throws {
        try run(seed: 2, dataCRC: true, queues: 2, operations: Self.operations / 2)
    }
}
