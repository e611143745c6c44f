import Glibc
import Testing

@testable import PCacheCore

/// Power cuts at every persist point of a write/flush workload.
///
/// The cache runs on simulated persistent memory that records every store,
/// flush and drain. For every event, crash images are built (undrained lines
/// at their oldest value, their newest, and random mixes), a new cache is
/// started on each, and every sector is read back. A sector must hold the
/// write that was durable at the last completed FLUSH before the cut, or a
/// write issued after it; never anything else (no torn or invented data).
@Suite(.serialized) struct DataPathCrashTests {
    static let sector = 512
    static let backingSectors = 8 << 20 / 512

    struct Operation {
        enum Kind { case write(id: UInt32, first: Int, count: Int), flush }
        var kind: Kind
        var startEvent: Int
        var endEvent: Int
    }

    static func sectorData(write id: UInt32, sector: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: id &* 131 &+ UInt32(sector)), count: 512)
        withUnsafeBytes(of: id.littleEndian) { bytes.replaceSubrange(0..<4, with: $0) }
        withUnsafeBytes(of: UInt32(sector).littleEndian) { bytes.replaceSubrange(4..<8, with: $0) }
        return bytes
    }

    static func identify(_ bytes: UnsafeRawBufferPointer, sector: Int) -> UInt32? {
        if bytes.allSatisfy({ $0 == 0 }) { return 0 }
        let id = bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)
        return sectorData(write: id, sector: sector).elementsEqual(bytes) ? id : nil
    }

    func cache(on memory: PersistentMemory, backing: String, dataCRC: Bool) throws -> Cache {
        var configuration = CacheConfiguration()
        configuration.dataCRC = dataCRC
        configuration.startWorkers = false
        configuration.minimumCacheBytes = 48 << 20
        // The key log starts 12 KiB before its segment ends, so the workload
        // also crosses into a new key-log segment (LAST key-set).
        configuration.keyLogStartsBeforeSegmentEnd = 12 << 10
        return try Cache(memory: memory, backing: try BackingDevice(path: backing), configuration: configuration)
    }

    func runWorkload(dataCRC: Bool, seed: UInt64) throws {
        let h = try CacheHarness(cacheMiB: 64, backingMiB: 8)  // for its backing file
        let memory = SimulatedPersistentMemory(size: 64 << 20, label: "crash-test pmem")
        let live = try cache(on: memory, backing: h.backingPath, dataCRC: dataCRC)
        let io = ImmediateQueueIO()
        let queue = live.makeQueue(id: 0, depth: 1, io: io, waker: NoWaker())
        memory.recordsCrashPoints = true
        _ = memory.takeCrashPoints()

        var rng = SeededGenerator(seed: seed)
        var operations: [Operation] = []
        var nextID: UInt32 = 1
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 64 * 512, alignment: 4096)
        defer { buffer.deallocate() }
        for _ in 0..<140 {
            let start = memory.statistics.events
            if rng.next() % 6 == 0 {
                #expect(queue.flush(tag: 0) == 0)
                operations.append(Operation(kind: .flush, startEvent: start, endEvent: memory.statistics.events))
                continue
            }
            let count = Int(rng.next() % 16) + 1
            // A small hot range, so writes overwrite each other.
            let first = Int(rng.next() % UInt64(256 - count))
            let id = nextID
            nextID += 1
            for s in 0..<count {
                Self.sectorData(write: id, sector: first + s).withUnsafeBytes {
                    (buffer + s * 512).copyMemory(from: $0.baseAddress!, byteCount: 512)
                }
            }
            let fua = rng.next() % 8 == 0
            // Half the writes come looked ahead, so both places of the data
            // copy (before the locks, and under them) meet the crash points.
            if id % 2 == 1 { queue.lookAhead(offset: UInt64(first * 512), requestsAway: 1) }
            let result = queue.write(tag: 0, offset: UInt64(first * 512), length: UInt32(count * 512), buffer: buffer, fua: fua)
            #expect(result == Int32(count * 512))
            operations.append(Operation(kind: .write(id: id, first: first, count: count), startEvent: start,
                                        endEvent: memory.statistics.events))
        }
        let points = memory.takeCrashPoints()
        #expect(points.count > 300)

        var images = 0
        var keySetsSeen = 0
        for point in points {
            // What the model allows at this point.
            var durable = [UInt32](repeating: 0, count: 256)
            var allowed = [Set<UInt32>](repeating: [], count: 256)
            var pending: [(UInt32, Int, Int)] = []
            for op in operations where op.startEvent < point.event {
                switch op.kind {
                case let .write(id, first, count):
                    pending.append((id, first, count))
                case .flush where op.endEvent <= point.event:
                    for (id, first, count) in pending { for s in first..<(first + count) { durable[s] = id } }
                    pending = []
                    for s in 0..<256 { allowed[s] = [] }
                case .flush:
                    break
                }
                if case let .write(id, first, count) = op.kind {
                    for s in first..<(first + count) { allowed[s].insert(id) }
                }
            }
            for seed in [UInt64(0), 1, 2 + UInt64(point.event)] {
                let image = memory.crashImage(at: point, seed: seed)
                let recovered = try cache(on: image, backing: h.backingPath, dataCRC: dataCRC)
                keySetsSeen += recovered.replayOutcome.keySets
                let readIO = ImmediateQueueIO()
                let reader = recovered.makeQueue(id: 0, depth: 1, io: readIO, waker: NoWaker())
                let readBuffer = UnsafeMutableRawPointer.allocate(byteCount: 256 * 512, alignment: 4096)
                defer { readBuffer.deallocate() }
                var result = reader.read(tag: 0, offset: 0, length: 256 * 512, buffer: readBuffer)
                while result == nil {
                    let batch = readIO.pending
                    readIO.pending.removeAll()
                    for c in batch { reader.backingIOCompleted(userData: c.userData, result: c.result) }
                    result = readIO.completed.removeValue(forKey: 0)
                }
                try #require(result == Int32(256 * 512), "read after crash at event \(point.event) seed \(seed): \(result!)")
                for s in 0..<256 {
                    let found = Self.identify(UnsafeRawBufferPointer(start: readBuffer + s * 512, count: 512), sector: s)
                    let ok = found != nil && (found! == durable[s] || allowed[s].contains(found!))
                    let detail = "durable \(durable[s]), allowed \(allowed[s].sorted())"
                    try #require(ok, "crash at event \(point.event) seed \(seed): sector \(s) holds \(String(describing: found)); \(detail)")
                }
                images += 1
            }
        }
        print("data-path crash test (data_crc \(dataCRC)): \(operations.count) operations, \(points.count) crash points, "
              + "\(images) crash images replayed and verified (\(keySetsSeen) key-sets replayed in all)")
    }

    @Test func everyPersistPointOfWritesAndFlushes() throws {
        try runWorkload(dataCRC: false, seed: 11)
    }

    @Test func everyPersistPointWithDataCRC() throws {
        try runWorkload(dataCRC: true, seed: 12)
    }
}
