import Testing
@testable import PCacheCore

/// Writes `record` with `seq` into `slot` of the object at `offset`, as durable bytes.
func plant<R: MetadataRecord>(_ record: R, seq: UInt8, at offset: Int, slot: Int, stride: Int,
                              into memory: SimulatedPersistentMemory) {
    var r = record
    r.header = MetaHeader(seq: seq)
    memory.loadImage(r.encoded(), at: offset + slot * stride)
}

func segmentBase(_ physical: Int) -> Int { PCacheLayout.segmentByteOffset(physical: UInt32(physical)) }

/// Rewrites the latest cache_info of a formatted device through its slots.
func rewriteCacheInfo(_ memory: SimulatedPersistentMemory, _ change: (inout CacheInfo) -> Void) {
    var slots = DualCopySlots<CacheInfo>(offset: PCacheLayout.cacheInfoOffset, stride: PCacheLayout.cacheInfoSlotStride)
    var info = slots.load(from: memory)!
    change(&info)
    slots.write(info, to: memory)
}

func rewriteSegmentInfo(_ memory: SimulatedPersistentMemory, physical: Int, _ change: (inout SegmentInfo) -> Void) {
    var slots = DualCopySlots<SegmentInfo>(offset: segmentBase(physical), stride: PCacheLayout.segmentInfoSlotStride)
    var info = slots.load(from: memory)!
    change(&info)
    slots.write(info, to: memory)
}

func rewriteTail(_ memory: SimulatedPersistentMemory, offset: Int, _ position: CachePosition) {
    var slots = DualCopySlots<CachePositionOnMedia>(offset: offset, stride: PCacheLayout.tailSlotStride)
    _ = slots.load(from: memory)
    slots.write(CachePositionOnMedia(position), to: memory)
}

@Suite struct CacheMetadataTests {
    @Test func newCacheIsBuiltLikeTheKernel() throws {
        let memory = makeDevice(segments: 3)
        let metadata = try openCache(memory)
        #expect(metadata.isNewCache)
        #expect(metadata.segmentChain == [0, 1, 2])
        #expect(metadata.info.flags == 0x1180)  // INIT_DONE comes when the core has started
        // cache_info is not written before INIT_DONE.
        #expect(bytes(memory, 8192, 8192).allSatisfy { $0 == 0 })
        // Tails: seq 1 in slot 1, slot 0 untouched.
        for offset in [PCacheLayout.keyTailOffset, PCacheLayout.dirtyTailOffset] {
            #expect(bytes(memory, offset, 16).allSatisfy { $0 == 0 })
            let tail = CachePositionOnMedia(bytes: bytes(memory, offset + 16, 16))
            #expect(tail.isCRCValid && tail.header.seq == 1 && tail.position == .zero)
        }
        for p in 0..<3 {
            let base = segmentBase(p)
            let gen0 = bytes(memory, base + 8192, 16), gen1 = SegmentGeneration(bytes: bytes(memory, base + 8208, 16))
            #expect(gen0.allSatisfy { $0 == 0 })
            #expect(gen1.isCRCValid && gen1.header.seq == 1 && gen1.gen == 0)
            let info0 = SegmentInfo(bytes: bytes(memory, base, 16)), info1 = SegmentInfo(bytes: bytes(memory, base + 4096, 16))
            #expect(info1.isCRCValid && info1.header.seq == 1 && info1.flags == 0x2 && info1.nextSeg == 0)
            if p < 2 {
                // The HAS_NEXT update: seq 2 into slot 0.
                #expect(info0.isCRCValid && info0.header.seq == 2 && info0.flags == 0x3 && info0.nextSeg == UInt32(p + 1))
            } else {
                #expect(bytes(memory, base, 16).allSatisfy { $0 == 0 })
            }
            // An empty kset at data offset 0, and the rest of the first 12 KiB zero.
            #expect(bytes(memory, base + 12288, 24).allSatisfy { $0 == 0 })
            #expect(bytes(memory, base + 16, 4096 - 16).allSatisfy { $0 == 0 })
            #expect(bytes(memory, base + 8224, 4096 - 32).allSatisfy { $0 == 0 })
        }
        #expect(memory.pendingLineCount == 0)
        metadata.persistCacheInfo(setInitDone: true)
        let info = CacheInfo(bytes: bytes(memory, 12288, 24))
        #expect(info.isCRCValid && info.header.seq == 1 && info.flags == 0x1182 && info.segID == 0 && info.nSegs == 3)
    }

    @Test func dataCRCFlagAndOption() throws {
        let memory = makeDevice(segments: 2)
        try formatDevice(memory, dataCRC: true)
        #expect(try openCache(memory, dataCRC: true).info.flags == 0x1183)
        #expect(throws: PCacheError.dataCRCOptionMismatch(requested: false, stored: true)) {
            try openCache(memory, dataCRC: false)
        }
        #expect("\(PCacheError.dataCRCOptionMismatch(requested: true, stored: false))"
                .hasPrefix("invalid option for data_crc: true, expected: false"))
    }

    @Test func existingCacheLoadsWithoutWriting() throws {
        let memory = makeDevice(segments: 4)
        let formatted = CacheState(try formatDevice(memory))
        let before = memory.statistics
        let metadata = try openCache(memory)
        #expect(!metadata.isNewCache)
        #expect(CacheState(metadata) == formatted)
        #expect(memory.statistics == before)
        #expect(metadata.dataAreaOffset(3) == 20480 + 3 * (16 << 20) + 12288)
    }

    @Test func gcPercentSurvivesReopenAcrossSeqWrap() throws {
        let memory = makeDevice(segments: 2)
        try formatDevice(memory)
        for round in 0..<300 {
            let metadata = try openCache(memory)
            let gc = UInt8(round % 91)
            metadata.persistCacheInfo(gcPercent: gc)
            let again = try openCache(memory)
            #expect(again.info.gcPercent == gc)
            #expect(again.info.initDone)
            #expect(again.info.header.seq == UInt8(truncatingIfNeeded: round + 2))
        }
    }

    @Test func tailsAndGenerationsPersist() throws {
        let memory = makeDevice(segments: 3)
        let metadata = try formatDevice(memory)
        for n in 1...260 {
            metadata.persistKeyTail(CachePosition(cacheSegID: UInt32(n % 3), segOff: UInt32(n * 24)))
            metadata.persistDirtyTail(CachePosition(cacheSegID: UInt32((n + 1) % 3), segOff: UInt32(n * 64)))
            metadata.persistSegmentGeneration(UInt32(n % 3), UInt64(n))
        }
        // Tails only need to be in range to load; point them at empty ksets.
        metadata.persistKeyTail(CachePosition(cacheSegID: 1, segOff: 0))
        metadata.persistDirtyTail(CachePosition(cacheSegID: 1, segOff: 0))
        let again = try openCache(memory)
        #expect(again.keyTail == CachePosition(cacheSegID: 1, segOff: 0))
        #expect(again.dirtyTail == CachePosition(cacheSegID: 1, segOff: 0))
        #expect(again.segmentGenerations == [258, 259, 260])
        #expect(again.segmentGeneration(2) == 260)
    }

    @Test func garbageInInvalidCacheInfoDoesNotLeak() throws {
        let memory = makeDevice(segments: 2)
        _ = try openDevice(memory)
        // Both slots: every flag bit set, crc wrong.
        var junk = [UInt8](repeating: 0xFF, count: 24)
        junk[0] = 0
        memory.loadImage(junk, at: 8192)
        memory.loadImage(junk, at: 12288)
        let metadata = try openCache(memory)
        #expect(metadata.isNewCache)
        #expect(metadata.info.flags == 0x1180)
        #expect(metadata.info.nSegs == 2 && metadata.info.reserved == 0)
    }

    @Test func crashDuringFirstStartRebuilds() throws {
        let memory = makeDevice(segments: 3)
        let first = try openCache(memory)  // built, INIT_DONE never written
        first.persistSegmentGeneration(1, 5)
        let second = try openCache(memory)
        #expect(second.isNewCache)
        #expect(second.segmentGenerations == [0, 0, 0])
    }

    @Test func nonIdentityChain() throws {
        // A chain 2 → 0 → 1 on a 3-segment device.
        let memory = makeDevice(segments: 3)
        try formatDevice(memory)
        rewriteCacheInfo(memory) { $0.segID = 2 }
        rewriteSegmentInfo(memory, physical: 2) { $0.hasNext = true; $0.nextSeg = 0 }
        rewriteSegmentInfo(memory, physical: 0) { $0.nextSeg = 1 }
        rewriteSegmentInfo(memory, physical: 1) { $0.hasNext = false }
        memory.loadImage(KeySetCodec.emptyKeySet, at: segmentBase(2) + 12288)
        var gen = DualCopySlots<SegmentGeneration>(offset: segmentBase(2) + 8192, stride: 16)
        gen.write(SegmentGeneration(gen: 9), to: memory)
        let metadata = try openCache(memory)
        #expect(metadata.segmentChain == [2, 0, 1])
        #expect(metadata.physicalSegment(0) == 2)
        #expect(metadata.segmentGenerations == [9, 0, 0])
        #expect(metadata.dataAreaOffset(0) == segmentBase(2) + 12288)
        // The generation is stored by cache id at the physical segment.
        metadata.persistSegmentGeneration(0, 10)
        #expect(try openCache(memory).segmentGeneration(0) == 10)
        var check = DualCopySlots<SegmentGeneration>(offset: segmentBase(2) + 8192, stride: 16)
        #expect(check.load(from: memory)?.gen == 10)
    }

    private func expectError(_ memory: SimulatedPersistentMemory, _ expected: PCacheError,
                             sourceLocation: SourceLocation = #_sourceLocation) {
        let before = memory.statistics
        #expect(throws: expected, sourceLocation: sourceLocation) { try openCache(memory) }
        #expect(memory.statistics == before, "a rejected cache was written to", sourceLocation: sourceLocation)
        #expect(inspect(memory).problem == "\(expected)", sourceLocation: sourceLocation)
    }

    @Test func chainErrors() throws {
        let d = "test-device"
        do {
            let memory = makeDevice(segments: 3)
            try formatDevice(memory)
            rewriteCacheInfo(memory) { $0.segID = 3 }
            expectError(memory, .segmentIDOutOfRange(device: d, what: "cache_info seg_id", id: 3, limit: 3))
        }
        do {
            let memory = makeDevice(segments: 3)
            try formatDevice(memory)
            rewriteSegmentInfo(memory, physical: 1) { $0.nextSeg = 0xFFFF_FFFF }
            expectError(memory, .segmentIDOutOfRange(device: d, what: "segment_info next_seg of physical segment 1",
                                                     id: 0xFFFF_FFFF, limit: 3))
        }
        do {
            let memory = makeDevice(segments: 3)
            try formatDevice(memory)
            rewriteSegmentInfo(memory, physical: 1) { $0.nextSeg = 0 }
            expectError(memory, .segmentChainLoop(device: d, cacheSegID: 2, physical: 0))
        }
        do {
            let memory = makeDevice(segments: 3)
            try formatDevice(memory)
            rewriteSegmentInfo(memory, physical: 0) { $0.hasNext = false }
            expectError(memory, .segmentChainTooShort(device: d, cacheSegID: 0, physical: 0, nSegs: 3))
        }
        do {
            let memory = makeDevice(segments: 3)
            try formatDevice(memory)
            memory.loadImage([1, 2, 3], at: segmentBase(1) + 8)
            memory.loadImage([1, 2, 3], at: segmentBase(1) + 4096 + 8)
            expectError(memory, .segmentInfoUnreadable(device: d, cacheSegID: 1, physical: 1))
            #expect("\(PCacheError.segmentInfoUnreadable(device: d, cacheSegID: 1, physical: 1))"
                    .hasPrefix("can't read segment info of segment: 1"))
        }
        for nSegs: UInt32 in [0, 4, 0xFFFF_FFFF] {
            let memory = makeDevice(segments: 3)
            try formatDevice(memory)
            rewriteCacheInfo(memory) { $0.nSegs = nSegs }
            expectError(memory, .invalidCacheSegmentCount(device: d, nSegs: nSegs, segNum: 3))
        }
    }

    @Test func fewerSegmentsThanTheDeviceHolds() throws {
        let memory = makeDevice(segments: 3)
        try formatDevice(memory)
        rewriteCacheInfo(memory) { $0.nSegs = 2 }
        let metadata = try openCache(memory)
        #expect(metadata.segmentChain == [0, 1])
    }

    @Test func invalidGenerationsReadAsZero() throws {
        let memory = makeDevice(segments: 2)
        let metadata = try formatDevice(memory)
        metadata.persistSegmentGeneration(1, 42)
        memory.loadImage([UInt8](repeating: 0xAB, count: 32), at: segmentBase(1) + 8192)
        #expect(try openCache(memory).segmentGenerations == [0, 0])
    }

    @Test func tailErrors() throws {
        let d = "test-device"
        do {
            let memory = makeDevice(segments: 2)
            try formatDevice(memory)
            memory.loadImage([UInt8](repeating: 0x11, count: 32), at: PCacheLayout.keyTailOffset)
            expectError(memory, .corruptedTails(device: d, which: "key tail"))
            #expect("\(PCacheError.corruptedTails(device: d, which: "key tail"))".hasPrefix("Corrupted key tail or dirty tail"))
        }
        do {
            let memory = makeDevice(segments: 2)
            try formatDevice(memory)
            memory.loadImage([UInt8](repeating: 0, count: 32), at: PCacheLayout.dirtyTailOffset)
            expectError(memory, .corruptedTails(device: d, which: "dirty tail"))
        }
        for bad in [CachePosition(cacheSegID: 2, segOff: 0), CachePosition(cacheSegID: 0, segOff: 16_764_928)] {
            let memory = makeDevice(segments: 2)
            try formatDevice(memory)
            rewriteTail(memory, offset: PCacheLayout.dirtyTailOffset, bad)
            expectError(memory, .tailOutOfRange(device: d, which: "dirty tail", position: bad, nSegs: 2))
        }
    }

    @Test func dirtyTailChainChecks() throws {
        let d = "test-device"
        let data0 = segmentBase(0) + 12288
        // A LAST kset out of range.
        do {
            let memory = makeDevice(segments: 3)
            try formatDevice(memory)
            memory.loadImage(KeySetCodec.encodedLast(nextCacheSegID: 3), at: data0)
            expectError(memory, .keyLogLinkOutOfRange(device: d, at: .zero, next: 3, nSegs: 3))
        }
        // 0 → 1 → 0: a loop.
        do {
            let memory = makeDevice(segments: 3)
            try formatDevice(memory)
            memory.loadImage(KeySetCodec.encodedLast(nextCacheSegID: 1), at: data0)
            memory.loadImage(KeySetCodec.encodedLast(nextCacheSegID: 0), at: segmentBase(1) + 12288)
            expectError(memory, .keyLogLoop(device: d, at: CachePosition(cacheSegID: 1, segOff: 0), next: 0))
        }
        // A LAST kset linking to its own segment.
        do {
            let memory = makeDevice(segments: 3)
            try formatDevice(memory)
            let keys = KeySetCodec.encoded(keys: [KeyOnMedia(off: 0, len: 4096, cacheSegID: 2, cacheSegOff: 0, segGen: 0)])
            memory.loadImage(keys, at: data0)
            memory.loadImage(KeySetCodec.encodedLast(nextCacheSegID: 0), at: data0 + keys.count)
            expectError(memory, .keyLogLoop(device: d, at: CachePosition(cacheSegID: 0, segOff: UInt32(keys.count)), next: 0))
        }
        // A proper two-segment log loads, and the walk finds its end.
        do {
            let memory = makeDevice(segments: 3)
            try formatDevice(memory)
            let keys = KeySetCodec.encoded(keys: [KeyOnMedia(off: 0, len: 4096, cacheSegID: 2, cacheSegOff: 0, segGen: 0)])
            memory.loadImage(keys, at: data0)
            memory.loadImage(KeySetCodec.encodedLast(nextCacheSegID: 1), at: data0 + keys.count)
            memory.loadImage(keys, at: segmentBase(1) + 12288)
            let metadata = try openCache(memory)
            var visited: [CachePosition] = []
            let end = try metadata.walkKeyLog(from: metadata.dirtyTail) { p, _ in visited.append(p) }
            #expect(visited == [.zero, CachePosition(cacheSegID: 0, segOff: 64), CachePosition(cacheSegID: 1, segOff: 0)])
            #expect(end.position == CachePosition(cacheSegID: 1, segOff: 64))
            #expect(end.reason == .badMagic(found: 0))
        }
    }

    @Test func keySetAtTheEndOfTheDataArea() throws {
        let memory = makeDevice(segments: 2)
        let metadata = try formatDevice(memory)
        let end = PCacheLayout.segmentDataSize
        // A LAST kset that ends exactly at the end of the data area is valid;
        // a 64-byte kset starting 40 bytes before the end overruns.
        memory.loadImage(KeySetCodec.encodedLast(nextCacheSegID: 1), at: metadata.dataAreaOffset(0) + end - 24)
        #expect(metadata.keySet(at: CachePosition(cacheSegID: 0, segOff: UInt32(end - 24)))?.isLast == true)
        let keys = KeySetCodec.encoded(keys: [KeyOnMedia(off: 0, len: 1, cacheSegID: 1, cacheSegOff: 0, segGen: 0)])
        memory.loadImage(Array(keys[0..<40]), at: metadata.dataAreaOffset(1) + end - 40)
        #expect(metadata.checkKeySet(at: CachePosition(cacheSegID: 1, segOff: UInt32(end - 40)))
                == .failure(.overrunsSegment(size: 64, available: 40)))
        #expect(metadata.checkKeySet(at: CachePosition(cacheSegID: 1, segOff: UInt32(end - 10)))
                == .failure(.tooShort(available: 10)))
    }
}
