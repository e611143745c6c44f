import Testing
@testable import PCacheCore

@Suite struct LayoutTests {
    @Test func regionOffsets() {
        #expect(PCacheLayout.superblockOffset == 4096)
        #expect(PCacheLayout.cacheInfoOffset == 8192)
        #expect(PCacheLayout.cacheInfoOffset + PCacheLayout.cacheInfoSlotStride == 12288)
        #expect(PCacheLayout.cacheCtrlOffset == 16384)
        #expect(PCacheLayout.keyTailOffset == 16384)
        #expect(PCacheLayout.keyTailOffset + PCacheLayout.tailSlotStride == 16400)
        #expect(PCacheLayout.dirtyTailOffset == 16416)
        #expect(PCacheLayout.dirtyTailOffset + PCacheLayout.tailSlotStride == 16432)
        #expect(PCacheLayout.segmentsOffset == 20480)
    }

    @Test func segmentGeometry() {
        #expect(PCacheLayout.segmentSize == 16_777_216)
        #expect(PCacheLayout.segmentInfoSlotStride == 4096)
        #expect(PCacheLayout.segmentCtrlOffset == 8192)
        #expect(PCacheLayout.segmentGenerationOffset == 8192)
        #expect(PCacheLayout.segmentGenerationOffset + PCacheLayout.segmentGenerationSlotStride == 8208)
        #expect(PCacheLayout.segmentDataOffset == 12288)
        #expect(PCacheLayout.segmentDataSize == 16_764_928)
        #expect(PCacheLayout.segmentDataOffset + PCacheLayout.segmentDataSize == PCacheLayout.segmentSize)
        #expect(PCacheLayout.segmentByteOffset(physical: 0) == 20480)
        #expect(PCacheLayout.segmentByteOffset(physical: 3) == 20480 + 3 * 16_777_216)
        #expect(PCacheLayout.segmentDataByteOffset(physical: 1) == 20480 + 16_777_216 + 12288)
    }

    @Test func limitsAndMagic() {
        #expect(PCacheLayout.minimumDeviceSize == 536_870_912)
        #expect(PCacheLayout.maximumSegments == 1_048_576)
        #expect(PCacheLayout.ksetHeaderSize == 24)
        #expect(PCacheLayout.keySize == 40)
        #expect(PCacheLayout.ksetMaxKeys == 128)
        #expect(PCacheLayout.ksetMaxSize == 5144)
        #expect(PCacheLayout.ksetMaxSize == PCacheLayout.ksetHeaderSize + 128 * PCacheLayout.keySize)
        #expect(PCacheLayout.magic == 0x65B0_5EFA_96C5_96EF)
        #expect(PCacheLayout.ksetMagic == 0x6768_94A6_4E16_4F1A)
        #expect(PCacheLayout.crcSeed == 0x3B15A)
        #expect(PCacheLayout.subtreeShift == 22)
        #expect(PCacheLayout.subtreeSize == 4 << 20)
        #expect(PCacheLayout.subtreeMask == 0x3F_FFFF)
        #expect(PCacheLayout.gcPercentDefault == 70)
        #expect(PCacheLayout.gcPercentMax == 90)
    }

    @Test func segmentCounts() {
        #expect(PCacheLayout.segmentCount(deviceBytes: 512 << 20) == 31)
        #expect(PCacheLayout.segmentCount(deviceBytes: 1 << 30) == 63)
        #expect(PCacheLayout.segmentCount(deviceBytes: 20480 + 16 * (1 << 20)) == 1)
        #expect(PCacheLayout.segmentCount(deviceBytes: 20480 + 16 * (1 << 20) - 1) == 0)
        #expect(PCacheLayout.segmentCount(deviceBytes: 0) == 0)
        #expect(PCacheLayout.segmentCount(deviceBytes: 100) == 0)
        // Capped at 2^20 segments (16 TiB) past that.
        #expect(PCacheLayout.segmentCount(deviceBytes: 20 << 40) == 1 << 20)
        #expect(PCacheLayout.segmentsThatFit(deviceBytes: 20 << 40) == (UInt64(20 << 40) - 20480) / (16 << 20))
    }
}
