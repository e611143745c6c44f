import Testing
@testable import PCacheCore

/// Mutates a used cache image many thousands of times and checks that
/// loading and inspecting never crash, never write when they refuse, and
/// report errors as `PCacheError`s with a message.
@Suite struct FuzzTests {
    enum Kind { case superblock, meta(Int), kset, raw }
    struct Region { let offset: Int; let count: Int; let kind: Kind }

    /// The structs and logs of the image made by `makeUsedCache()`.
    static func hotRegions() -> [Region] {
        var regions: [Region] = [Region(offset: 4096, count: 24, kind: .superblock),
                                 Region(offset: 8192, count: 24, kind: .meta(24)),
                                 Region(offset: 12288, count: 24, kind: .meta(24))]
        for i in 0..<4 { regions.append(Region(offset: 16384 + 16 * i, count: 16, kind: .meta(16))) }
        for p in 0..<3 {
            let base = segmentBase(p)
            for offset in [base, base + 4096, base + 8192, base + 8208] {
                regions.append(Region(offset: offset, count: 16, kind: .meta(16)))
            }
        }
        regions.append(Region(offset: segmentBase(0) + 12288, count: 128, kind: .kset))
        regions.append(Region(offset: segmentBase(0) + 12288 + 104, count: 24, kind: .kset))
        regions.append(Region(offset: segmentBase(1) + 12288, count: 128, kind: .kset))
        regions.append(Region(offset: segmentBase(2) + 12288, count: 64, kind: .raw))
        return regions
    }

    /// Everything an open may write, saved once and restored after each run.
    static func savedRanges() -> [(Int, Int)] {
        [(0, 20480)] + (0..<3).map { (segmentBase($0), 12288 + 8192) }
    }

    static let interesting: [UInt32] = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 128, 129, 0xFFFF, 16_764_928, 16_764_904,
                                        0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF]

    /// Recomputes the crc of a mutated region so the mutation gets past it.
    static func reseal(_ memory: SimulatedPersistentMemory, _ region: Region) {
        let p = memory.base + region.offset
        switch region.kind {
        case .superblock, .meta:
            let size = region.count
            let crc = CRC32C.checksum(UnsafeRawPointer(p) + 4, count: size - 4)
            p.storeBytes(of: crc.littleEndian, as: UInt32.self)
        case .kset:
            let header = KeySetHeader(decoding: p)
            if header.isLast || Int(header.keyNumOrNext) <= PCacheLayout.ksetMaxKeys,
               header.encodedSize <= region.count + 64 {
                KeySetCodec.seal(p)
            }
        case .raw:
            break
        }
    }

    static func mutate(_ memory: SimulatedPersistentMemory, _ regions: [Region], _ rng: inout SplitMix64) {
        let region = regions[Int(rng.next() % UInt64(regions.count))]
        let p = memory.base + region.offset
        switch rng.next() % 6 {
        case 0:  // flip bits, crc left stale
            for _ in 0..<(1 + rng.next() % 3) {
                let bit = Int(rng.next() % UInt64(region.count * 8))
                p.storeBytes(of: p.load(fromByteOffset: bit / 8, as: UInt8.self) ^ (1 << UInt8(bit % 8)),
                             toByteOffset: bit / 8, as: UInt8.self)
            }
        case 1:  // flip bits, then a valid crc
            let bit = Int(rng.next() % UInt64(region.count * 8 - 32)) + 32
            p.storeBytes(of: p.load(fromByteOffset: bit / 8, as: UInt8.self) ^ (1 << UInt8(bit % 8)),
                         toByteOffset: bit / 8, as: UInt8.self)
            reseal(memory, region)
        case 2, 3:  // an interesting value in an aligned 4-byte field, then a valid crc
            let field = 4 + Int(rng.next() % UInt64(region.count / 4 - 1)) * 4
            let value = interesting[Int(rng.next() % UInt64(interesting.count))]
            p.storeBytes(of: value.littleEndian, toByteOffset: field, as: UInt32.self)
            reseal(memory, region)
        case 4:  // random bytes over the whole region, sometimes resealed
            for i in 0..<region.count { p.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
            if rng.next() % 2 == 0 { reseal(memory, region) }
        default:  // zero the region
            for i in 0..<region.count { p.storeBytes(of: 0, toByteOffset: i, as: UInt8.self) }
        }
    }

    @Test func mutatedImagesNeverCrash() throws {
        let memory = try makeUsedCache()
        #expect(inspect(memory).isConsistent, "\(inspect(memory).problem ?? "")")
        memory.isTracking = false
        let regions = Self.hotRegions()
        let saved = Self.savedRanges().map { ($0.0, bytes(memory, $0.0, $0.1)) }
        var rng = SplitMix64(seed: 0x5EED_F00D)
        var outcomes: [String: Int] = [:]
        let iterations = 12_000
        for n in 0..<iterations {
            for (offset, data) in saved {
                data.withUnsafeBytes { (memory.base + offset).copyMemory(from: $0.baseAddress!, byteCount: data.count) }
            }
            for _ in 0..<(1 + rng.next() % 3) { Self.mutate(memory, regions, &rng) }

            // The inspector: read-only, never traps, always has a verdict.
            let before = memory.statistics
            let report = inspect(memory)
            #expect(memory.statistics == before)
            if n % 16 == 0 {
                _ = report.text()
                _ = report.json().serialized()
            }
            outcomes["inspect: " + (report.isConsistent ? "consistent" : "problem"), default: 0] += 1

            // The read-write open: a clear error, or a usable cache.
            do {
                let metadata = try openCache(memory, dataCRC: true)
                let chain = metadata.segmentChain
                #expect(Set(chain).count == chain.count && chain.allSatisfy { $0 < metadata.device.segmentCount })
                #expect(metadata.keyTail.cacheSegID < metadata.segmentCount)
                #expect(metadata.dirtyTail.cacheSegID < metadata.segmentCount)
                do {
                    _ = try metadata.walkKeyLog(from: metadata.keyTail) { _, view in _ = view.keys }
                    outcomes[metadata.isNewCache ? "open: new cache" : "open: existing cache", default: 0] += 1
                } catch let error as PCacheError {
                    #expect(!error.description.isEmpty)
                    outcomes["open: existing, key log from key tail: \(Self.caseName(error))", default: 0] += 1
                }
            } catch let error as PCacheError {
                #expect(!error.description.isEmpty)
                outcomes["open error: \(Self.caseName(error))", default: 0] += 1
            }
        }
        print("fuzz: \(iterations) mutated images")
        for (outcome, count) in outcomes.sorted(by: { $0.key < $1.key }) { print("fuzz:   \(count)\t\(outcome)") }
        #expect(outcomes.count > 8, "the mutations reach too few outcomes")
    }

    @Test func randomImages() throws {
        // Random bytes over every metadata region, with a valid superblock
        // half of the time so the loader gets further.
        let memory = makeDevice(segments: 3)
        memory.isTracking = false
        var rng = SplitMix64(seed: 42)
        let ranges = Self.savedRanges() + [(segmentBase(0) + 12288 + 8192, 4096)]
        var opened = 0
        for i in 0..<500 {
            for (offset, count) in ranges {
                for w in stride(from: 0, to: count, by: 8) { (memory.base + offset + w).storeBytes(of: rng.next(), as: UInt64.self) }
            }
            if i % 2 == 0 {
                memory.base.advanced(by: 4096).copyMemory(from: Superblock(segNum: 1 + UInt32(i % 3)).encoded(), byteCount: 24)
            }
            _ = inspect(memory).text()
            do {
                _ = try openCache(memory, dataCRC: i % 4 < 2)
                opened += 1
            } catch is PCacheError {
            }
        }
        print("fuzz: 500 random images, \(opened) opened (a random cache_info never validates: they format or build anew)")
    }

    /// The enum case of an error, without its values.
    static func caseName(_ error: PCacheError) -> String {
        Mirror(reflecting: error).children.first?.label ?? "\(error)"
    }
}
