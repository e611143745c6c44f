import Testing
@testable import PCacheCore

/// Little-endian value of `count` bytes at `offset`.
private func field(_ b: [UInt8], _ offset: Int, _ count: Int) -> UInt64 {
    (0..<count).reduce(UInt64(0)) { $0 | UInt64(b[offset + $1]) << (8 * UInt64($1)) }
}

private func crcOver(_ b: [UInt8], from: Int = 4, to: Int) -> UInt32 {
    CRC32C.checksum(Array(b[from..<to]))
}

@Suite struct OnMediaTests {
    @Test func structSizes() {
        #expect(MetaHeader.encodedSize == 8)
        #expect(Superblock.encodedSize == 24)
        #expect(CacheInfo.encodedSize == 24)
        #expect(SegmentInfo.encodedSize == 16)
        #expect(CachePositionOnMedia.encodedSize == 16)
        #expect(SegmentGeneration.encodedSize == 16)
        #expect(KeyOnMedia.encodedSize == 40)
        #expect(KeySetHeader.encodedSize == 24)
        #expect(KeySetCodec.size(keyCount: 128) == 5144)
        #expect(KeySetCodec.size(keyCount: 0) == 24)
    }

    @Test func superblockFieldOffsets() {
        let sb = Superblock(flags: 0x0102_0304, magic: PCacheLayout.magic, segNum: 0x0A0B_0C0D, padding: 0x1122_3344)
        let b = sb.encoded()
        #expect(b.count == 24)
        #expect(field(b, 4, 4) == 0x0102_0304)
        #expect(field(b, 8, 8) == PCacheLayout.magic)
        #expect(field(b, 16, 4) == 0x0A0B_0C0D)
        #expect(field(b, 20, 4) == 0x1122_3344)
        // The crc covers bytes 4..23, padding included.
        #expect(field(b, 0, 4) == UInt64(crcOver(b, to: 24)))
        let back = Superblock(bytes: b)
        #expect(back == sb.withCRC(UInt32(field(b, 0, 4))))
        #expect(back.isCRCValid)
    }

    @Test func superblockWorkedExample() {
        // 1 GiB device: seg_num 63, flags 0, zero padding.
        let sb = Superblock(flags: 0, segNum: PCacheLayout.segmentCount(deviceBytes: 1 << 30))
        #expect(sb.segNum == 63)
        #expect(field(sb.encoded(), 0, 4) == 0x097F_12DB)
    }

    @Test func superblockPaddingIsKeptAndChecked() {
        var b = Superblock(segNum: 63).encoded()
        b[21] = 0x5A  // padding changed without a new crc
        let sb = Superblock(bytes: b)
        #expect(!sb.isCRCValid)
        #expect(sb.padding == 0x5A00)
        // Re-encoding keeps the padding as read.
        #expect(Superblock(bytes: sb.encoded()).padding == 0x5A00)
        #expect(Superblock(bytes: sb.encoded()).isCRCValid)
    }

    @Test func cacheInfoFieldOffsetsAndFlags() {
        var info = CacheInfo()
        info.header.seq = 0x7E
        info.segID = 0x1111_2222
        info.nSegs = 0x3333_4444
        info.gcPercent = 70
        info.initDone = true
        info.cacheMode = .writeback
        #expect(info.flags == 0x1182)
        info.dataCRC = true
        #expect(info.flags == 0x1183)
        info.reserved = 0
        let b = info.encoded()
        #expect(b.count == 24)
        #expect(b[4] == 0x7E && b[5] == 0 && b[6] == 0 && b[7] == 0)
        #expect(field(b, 8, 4) == 0x1111_2222)
        #expect(field(b, 12, 4) == 0x3333_4444)
        #expect(field(b, 16, 4) == 0x1183)
        #expect(field(b, 20, 4) == 0)
        #expect(field(b, 0, 4) == UInt64(crcOver(b, to: 24)))
        let back = CacheInfo(bytes: b)
        #expect(back.isCRCValid)
        #expect(back.gcPercent == 70 && back.initDone && back.dataCRC && back.cacheMode == .writeback)
    }

    @Test func cacheInfoFlagFields() {
        var info = CacheInfo()
        for mode in CacheMode.allCases {
            info.cacheMode = mode
            #expect(info.flags == mode.rawValue << 2)
            #expect(info.cacheMode == mode)
        }
        info.cacheModeBits = 0xF
        #expect(info.cacheMode == nil)
        #expect(info.flags == 0x3C)
        info.cacheModeBits = 0
        info.gcPercent = 127
        #expect(info.flags == 127 << 6)
        info.gcPercent = 90
        #expect(info.gcPercent == 90)
        info.gcPercent = 0
        #expect(info.flags == 0)
        // Bits outside the fields are not disturbed.
        info.flags = 0xFFFF_E000
        info.gcPercent = 70
        info.initDone = true
        #expect(info.flags == 0xFFFF_E000 | 0x1182)
    }

    @Test func segmentInfoFieldOffsets() {
        var s = SegmentInfo()
        s.type = SegmentInfo.typeCacheData
        #expect(s.flags == 0x2)
        s.hasNext = true
        s.nextSeg = 0xABCD
        #expect(s.flags == 0x3)
        s.header.seq = 2
        let b = s.encoded()
        #expect(b.count == 16)
        #expect(b[4] == 2)
        #expect(field(b, 8, 4) == 3)
        #expect(field(b, 12, 4) == 0xABCD)
        #expect(field(b, 0, 4) == UInt64(crcOver(b, to: 16)))
        #expect(SegmentInfo(bytes: b) == s.withCRC(UInt32(field(b, 0, 4))))
    }

    @Test func positionAndGenerationFieldOffsets() {
        var p = CachePositionOnMedia(CachePosition(cacheSegID: 0x0102_0304, segOff: 0x0506_0708))
        p.header.seq = 9
        let b = p.encoded()
        #expect(b[4] == 9)
        #expect(field(b, 8, 4) == 0x0102_0304)
        #expect(field(b, 12, 4) == 0x0506_0708)
        #expect(field(b, 0, 4) == UInt64(crcOver(b, to: 16)))
        #expect(CachePositionOnMedia(bytes: b).position == p.position)

        var g = SegmentGeneration(gen: 0x0102_0304_0506_0708)
        g.header.seq = 200
        let gb = g.encoded()
        #expect(gb[4] == 200)
        #expect(field(gb, 8, 8) == 0x0102_0304_0506_0708)
        #expect(field(gb, 0, 4) == UInt64(crcOver(gb, to: 16)))
        #expect(SegmentGeneration(bytes: gb).gen == g.gen)
    }

    @Test func zeroSlotsNeverValidate() {
        let zeros = [UInt8](repeating: 0, count: 24)
        #expect(!CacheInfo(bytes: zeros).isCRCValid)
        #expect(!SegmentInfo(bytes: zeros).isCRCValid)
        #expect(!CachePositionOnMedia(bytes: zeros).isCRCValid)
        #expect(!SegmentGeneration(bytes: zeros).isCRCValid)
        #expect(!Superblock(bytes: zeros).isCRCValid)
    }

    @Test func keyFieldOffsets() {
        var k = KeyOnMedia(off: 0x0102_0304_0506_0708, len: 0x1112_1314, flags: 0, cacheSegID: 0x2122_2324,
                           cacheSegOff: 0x3132_3334, segGen: 0x4142_4344_4546_4748, dataCRC: 0x5152_5354)
        k.isClean = true
        #expect(k.flags == 2)
        var b = [UInt8](repeating: 0xEE, count: 40)
        b.withUnsafeMutableBytes { k.encode(into: $0.baseAddress!) }
        #expect(field(b, 0, 8) == 0x0102_0304_0506_0708)
        #expect(field(b, 8, 4) == 0x1112_1314)
        #expect(field(b, 12, 4) == 2)
        #expect(field(b, 16, 4) == 0x2122_2324)
        #expect(field(b, 20, 4) == 0x3132_3334)
        #expect(field(b, 24, 8) == 0x4142_4344_4546_4748)
        #expect(field(b, 32, 4) == 0x5152_5354)
        #expect(field(b, 36, 4) == 0)
        #expect(b.withUnsafeBytes { KeyOnMedia(decoding: $0.baseAddress!) } == k)
    }

    @Test func lastKeySetWorkedExample() {
        let b = KeySetCodec.encodedLast(nextCacheSegID: 1)
        #expect(b.count == 24)
        #expect(field(b, 0, 4) == 0x8418_1C51)
        #expect(field(b, 4, 4) == 1)
        #expect(field(b, 8, 8) == PCacheLayout.ksetMagic)
        #expect(field(b, 16, 8) == 1)
        let view = b.withUnsafeBytes { KeySetCodec.validate(at: $0.baseAddress!, available: 24) }
        #expect(view?.isLast == true)
        #expect(view?.nextCacheSegID == 1)
        #expect(view?.size == 24)
        #expect(view?.keyCount == 0)
    }

    @Test func normalKeySetRoundTrip() {
        let keys = (0..<5).map { i in
            KeyOnMedia(off: UInt64(i) * 4096, len: 4096, cacheSegID: 2, cacheSegOff: UInt32(i) * 4096, segGen: 7,
                       dataCRC: UInt32(i))
        }
        let b = KeySetCodec.encoded(keys: keys)
        #expect(b.count == 24 + 5 * 40)
        #expect(field(b, 4, 4) == 5)
        #expect(field(b, 16, 8) == 0)
        #expect(field(b, 0, 4) == UInt64(crcOver(b, to: b.count)))
        b.withUnsafeBytes { raw in
            let view = KeySetCodec.validate(at: raw.baseAddress!, available: raw.count)
            #expect(view != nil)
            #expect(view?.keys == keys)
            #expect(view?.size == b.count)
            // One byte too few available: rejected before the crc.
            #expect(KeySetCodec.check(at: raw.baseAddress!, available: raw.count - 1)
                    == .failure(.overrunsSegment(size: b.count, available: raw.count - 1)))
        }
    }

    @Test func keySetRejections() {
        var b = KeySetCodec.encoded(keys: [KeyOnMedia(off: 0, len: 512, cacheSegID: 1, cacheSegOff: 0, segGen: 0)])
        func check(_ bytes: [UInt8], _ available: Int? = nil) -> Result<KeySetView, KeySetInvalidity> {
            bytes.withUnsafeBytes { KeySetCodec.check(at: $0.baseAddress!, available: available ?? $0.count) }
        }
        #expect(check(b).isSuccess)
        #expect(check(b, 23) == .failure(.tooShort(available: 23)))
        #expect(check(KeySetCodec.emptyKeySet) == .failure(.badMagic(found: 0)))
        // A flipped key bit breaks the crc.
        var flipped = b
        flipped[30] ^= 0x10
        if case .failure(.crcMismatch) = check(flipped) {} else { Issue.record("flipped bit not caught") }
        // key_num above 128 is rejected before the crc (which would overrun).
        b[4] = 200
        #expect(check(b) == .failure(.tooManyKeys(keyNum: 200)))
        b[4] = 0; b[5] = 0xFF; b[6] = 0xFF; b[7] = 0xFF
        #expect(check(b) == .failure(.tooManyKeys(keyNum: 0xFFFF_FF00)))
        // A LAST kset's crc covers exactly the header.
        var last = KeySetCodec.encodedLast(nextCacheSegID: 0xFFFF_FFFF)
        #expect(check(last).isSuccess)
        last.append(contentsOf: [1, 2, 3])
        #expect(check(last).isSuccess)
    }

    @Test func sealFillsMagicAndCRC() {
        var b = [UInt8](repeating: 0, count: 24 + 40)
        b[4] = 1  // key_num
        b.withUnsafeMutableBytes { raw in
            KeyOnMedia(off: 8192, len: 4096, cacheSegID: 0, cacheSegOff: 0, segGen: 1).encode(into: raw.baseAddress! + 24)
            #expect(KeySetCodec.seal(raw.baseAddress!) == 64)
        }
        #expect(field(b, 8, 8) == PCacheLayout.ksetMagic)
        #expect(field(b, 0, 4) == UInt64(crcOver(b, to: 64)))
        #expect(b.withUnsafeBytes { KeySetCodec.validate(at: $0.baseAddress!, available: 64) }?.key(at: 0).off == 8192)
    }

    @Test func positions() {
        let p = CachePosition(cacheSegID: 3, segOff: 100)
        #expect(p.description == "3:100")
        #expect(p.advanced(by: 24) == CachePosition(cacheSegID: 3, segOff: 124))
        #expect(p.remaining == PCacheLayout.segmentDataSize - 100)
    }
}

extension Result {
    var isSuccess: Bool { if case .success = self { return true } else { return false } }
}

extension Superblock {
    func withCRC(_ crc: UInt32) -> Superblock { var s = self; s.crc = crc; return s }
}

extension SegmentInfo {
    func withCRC(_ crc: UInt32) -> SegmentInfo { var s = self; s.header.crc = crc; return s }
}
