import Testing
@testable import PCacheCore

@Suite struct DualCopyTests {
    typealias Slots = DualCopySlots<CachePositionOnMedia>

    @Test func latestSlotRules() {
        #expect(Slots.latestSlot(seq0: nil, seq1: nil) == nil)
        #expect(Slots.latestSlot(seq0: 5, seq1: nil) == 0)
        #expect(Slots.latestSlot(seq0: nil, seq1: 5) == 1)
        #expect(Slots.latestSlot(seq0: 1, seq1: 2) == 1)
        #expect(Slots.latestSlot(seq0: 2, seq1: 1) == 0)
        #expect(Slots.latestSlot(seq0: 7, seq1: 7) == 0)   // a tie goes to slot 0
        #expect(Slots.latestSlot(seq0: 255, seq1: 0) == 1)  // 8-bit wrap
        #expect(Slots.latestSlot(seq0: 0, seq1: 255) == 0)
        #expect(Slots.latestSlot(seq0: 0, seq1: 127) == 1)
        #expect(Slots.latestSlot(seq0: 0, seq1: 128) == 0)  // (int8)128 = -128
    }

    @Test func serialComparisonMatchesInt8Difference() {
        for s0 in 0...255 {
            for s1 in 0...255 {
                let expected = Int8(bitPattern: UInt8(s1) &- UInt8(s0)) > 0 ? 1 : 0
                #expect(Slots.latestSlot(seq0: UInt8(s0), seq1: UInt8(s1)) == expected)
            }
        }
    }

    @Test func writesAlternateSlotsAdvancingFirst() {
        let memory = makeDevice(segments: 1)
        var slots = Slots(offset: PCacheLayout.keyTailOffset, stride: PCacheLayout.tailSlotStride)
        #expect(slots.load(from: memory) == nil)
        #expect(slots.index == 0 && slots.sequence == 0)
        for n in 1...600 {
            let p = CachePosition(cacheSegID: UInt32(n % 7), segOff: UInt32(n * 24))
            let written = slots.write(CachePositionOnMedia(p), to: memory)
            // First write: seq 1 into slot 1; then alternate.
            #expect(slots.index == n % 2)
            #expect(slots.sequence == UInt64(n))
            #expect(written.header.seq == UInt8(truncatingIfNeeded: n))
            var fresh = Slots(offset: PCacheLayout.keyTailOffset, stride: PCacheLayout.tailSlotStride)
            #expect(fresh.load(from: memory)?.position == p)
            #expect(fresh.index == slots.index)
            #expect(fresh.sequence == UInt64(n % 256))
        }
        #expect(memory.pendingLineCount == 0)
    }

    @Test func tornNewCopyLeavesTheOldOne() {
        let memory = makeDevice(segments: 1)
        var slots = Slots(offset: PCacheLayout.dirtyTailOffset, stride: PCacheLayout.tailSlotStride)
        slots.write(CachePositionOnMedia(CachePosition(cacheSegID: 1, segOff: 48)), to: memory)  // slot 1
        slots.write(CachePositionOnMedia(CachePosition(cacheSegID: 2, segOff: 96)), to: memory)  // slot 0
        // Tear slot 0 (the newest): slot 1 wins again.
        var b = bytes(memory, PCacheLayout.dirtyTailOffset, 16)
        b[10] ^= 1
        memory.loadImage(b, at: PCacheLayout.dirtyTailOffset)
        var fresh = Slots(offset: PCacheLayout.dirtyTailOffset, stride: PCacheLayout.tailSlotStride)
        #expect(fresh.load(from: memory)?.position == CachePosition(cacheSegID: 1, segOff: 48))
        #expect(fresh.index == 1)
        // The next write goes to slot 0 again, never over the good copy.
        fresh.write(CachePositionOnMedia(CachePosition(cacheSegID: 3, segOff: 0)), to: memory)
        #expect(fresh.index == 0)
        #expect(CachePositionOnMedia(bytes: bytes(memory, PCacheLayout.dirtyTailOffset + 16, 16)).position
                == CachePosition(cacheSegID: 1, segOff: 48))
    }

    @Test func cacheInfoSlotsArePagesApart() {
        let memory = makeDevice(segments: 1)
        var slots = DualCopySlots<CacheInfo>(offset: PCacheLayout.cacheInfoOffset, stride: PCacheLayout.cacheInfoSlotStride)
        var info = CacheInfo()
        info.nSegs = 1
        slots.write(info, to: memory)
        #expect(CacheInfo(bytes: bytes(memory, 12288, 24)).isCRCValid)
        #expect(bytes(memory, 8192, 4096).allSatisfy { $0 == 0 })
        slots.write(info, to: memory)
        #expect(CacheInfo(bytes: bytes(memory, 8192, 24)).header.seq == 2)
        // Nothing at 8216, where the pre-fix kernel put "slot 1".
        #expect(bytes(memory, 8216, 24).allSatisfy { $0 == 0 })
    }
}

@Suite struct SimulatorTests {
    @Test func linesBecomeDurableOnlyAfterFlushAndDrain() {
        let memory = SimulatedPersistentMemory(size: 4096)
        let one: [UInt8] = [1, 1, 1, 1]
        one.withUnsafeBytes { memory.store(at: 0, from: $0.baseAddress!, count: 4) }
        #expect(memory.crashImage(at: memory.currentCrashPoint(), seed: 0).load(UInt32.self, at: 0) == 0)
        #expect(memory.crashImage(at: memory.currentCrashPoint(), seed: 1).load(UInt32.self, at: 0) == 0x0101_0101)
        memory.drain()  // not flushed: still undecided
        #expect(memory.pendingLineCount == 1)
        memory.flush(at: 0, count: 4)
        let two: [UInt8] = [2, 2, 2, 2]
        two.withUnsafeBytes { memory.store(at: 0, from: $0.baseAddress!, count: 4) }
        memory.drain()  // the flushed value or a later one
        let point = memory.currentCrashPoint()
        let values = Set((0..<64).map { memory.crashImage(at: point, seed: $0).load(UInt32.self, at: 0) })
        #expect(values == [0x0101_0101, 0x0202_0202])
        memory.flush(at: 0, count: 64)
        memory.drain()
        #expect(memory.pendingLineCount == 0)
        #expect(memory.durableImage().load(UInt32.self, at: 0) == 0x0202_0202)
    }

    @Test func untrackedSetUpBecomesDurable() {
        let memory = SimulatedPersistentMemory(size: 1 << 20)
        memory.isTracking = false
        memory.store(UInt64(0xABCD), at: 300_000)
        memory.isTracking = true
        #expect(memory.durableImage().load(UInt64.self, at: 300_000) == 0)
        memory.makeDurable()
        #expect(memory.durableImage().load(UInt64.self, at: 300_000) == 0xABCD)
    }

    @Test func tornWordsMixOnlyWithinALine() {
        let memory = SimulatedPersistentMemory(size: 4096)
        memory.persist(at: 0, bytes: [UInt8](repeating: 0xAA, count: 128))
        memory.storeAndFlush(at: 0, from: [UInt8](repeating: 0xBB, count: 128), count: 128)
        let point = memory.currentCrashPoint()
        var mixed = false
        for seed: UInt64 in 2..<40 {
            let image = memory.crashImage(at: point, seed: seed, granularity: 8)
            for word in 0..<16 {
                let v = image.load(UInt64.self, at: word * 8)
                #expect(v == 0xAAAA_AAAA_AAAA_AAAA || v == 0xBBBB_BBBB_BBBB_BBBB)
            }
            if image.load(UInt64.self, at: 0) != image.load(UInt64.self, at: 8) { mixed = true }
        }
        #expect(mixed)
    }
}
