import CSupport
import Testing

@testable import PCacheCore

@Suite struct CRC32CTests {
    @Test func checkValueWithPcacheSeed() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE586_8AB2)
    }

    @Test func standardCheckValueThroughRawConvention() {
        // Standard CRC-32C = ~raw(~0, data).
        #expect(~CRC32C.checksum(Array("123456789".utf8), seed: 0xFFFF_FFFF) == 0xE306_9283)
    }

    @Test func allZeroSlotNeverValidates() {
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 20)) == 0xB9B6_9066)
    }

    @Test func hardwareAndPortableAgreeOnEveryLengthAndAlignment() {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<70_000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        bytes.withUnsafeBytes { raw in
            for length in [0, 1, 7, 8, 63, 64, 255, 767, 768, 769, 4096, 5144, 24_575, 24_576, 24_577, 65_536] {
                for alignment in 0..<8 {
                    let p = raw.baseAddress! + alignment
                    let seed = UInt32.random(in: 0...UInt32.max)
                    #expect(pcs_crc32c(seed, p, length) == pcs_crc32c_portable(seed, p, length))
                }
            }
        }
    }

    @Test func crcOfConcatenationChainsThroughSeed() {
        let a = Array("hello, ".utf8), b = Array("persistent memory".utf8)
        #expect(CRC32C.checksum(b, seed: CRC32C.checksum(a)) == CRC32C.checksum(a + b))
    }
}
