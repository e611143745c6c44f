import Foundation
import Testing
@testable import PCacheCore

@Suite struct CacheDeviceTests {
    @Test func formattedFileOf512MiB() throws {
        let path = try temporaryFile(size: 512 << 20)
        defer { unlink(path) }
        do {
            let memory = try MappedPersistentMemory(path: path)
            #expect(memory.size == 512 << 20)
            #expect(memory.mode == .msync || memory.mode == .pmem)
            let metadata = try CacheFormat.format(memory: memory, dataCRC: false, force: false)
            #expect(metadata.device.segmentCount == 31)
            #expect(metadata.segmentCount == 31)
            #expect(metadata.info.flags == 0x1182)
        }
        // Read back through a fresh read-only mapping.
        let memory = try MappedPersistentMemory(path: path, readOnly: true)
        #expect(memory.isReadOnly)
        #expect(memory.load(UInt64.self, at: 4096 + 8) == 0x65B0_5EFA_96C5_96EF)
        #expect(memory.load(UInt32.self, at: 4096 + 16) == 31)
        let report = CacheInspector.inspect(memory: memory, includeKeys: true)
        #expect(report.isConsistent, "\(report.problem ?? "")")
        #expect(report.segments.count == 31)
        #expect(report.cacheInfo?.flags == 0x1182)
        // And once more read-write: an existing cache, nothing rebuilt.
        let again = try CacheMetadata.open(device: try CacheDevice.open(memory: try MappedPersistentMemory(path: path)),
                                           dataCRC: false)
        #expect(!again.isNewCache)
        #expect(again.segmentChain == Array(0..<31))
    }

    /// A FIFO used to hang the open (waiting for a writer), and a character
    /// device that is not device-DAX got an empty reason from libpmem.
    @Test func filesThatCannotBeACacheAreRefusedAtOnce() throws {
        let fifo = NSTemporaryDirectory() + "pcache-fifo-\(getpid())"
        #expect(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        for readOnly in [true, false] {
            #expect(throws: PCacheError.mappingFailed(path: fifo, reason: "not a regular file, block device or DAX device")) {
                try MappedPersistentMemory(path: fifo, readOnly: readOnly)
            }
            #expect(throws: PCacheError.mappingFailed(path: "/dev/null", reason: "a character device that is not device-DAX")) {
                try MappedPersistentMemory(path: "/dev/null", readOnly: readOnly)
            }
        }
    }

    @Test func tooSmallIsRefused() throws {
        let path = try temporaryFile(size: (512 << 20) - 4096)
        defer { unlink(path) }
        let memory = try MappedPersistentMemory(path: path)
        #expect(throws: PCacheError.deviceTooSmall(device: path, size: (512 << 20) - 4096, minimum: 536_870_912)) {
            try CacheDevice.open(memory: memory)
        }
        let message = "\(PCacheError.deviceTooSmall(device: path, size: 536_866_816, minimum: 536_870_912))"
        #expect(message.contains("cache device is too small"))
        #expect(message.contains("536866816 bytes, at least 536870912 needed"))
        // Nothing was written.
        #expect(memory.loadBytes(at: 0, count: 20480).allSatisfy { $0 == 0 })
    }

    @Test func blankDeviceIsFormattedWithTheSuperblockLast() throws {
        let memory = makeDevice(segments: 3)
        memory.recordsCrashPoints = true
        let device = try openDevice(memory)
        #expect(device.didFormat)
        #expect(device.segmentCount == 3)
        let sb = Superblock(bytes: bytes(memory, 4096, 24))
        #expect(sb.isCRCValid && sb.magic == PCacheLayout.magic && sb.segNum == 3 && sb.flags == 0 && sb.padding == 0)
        // A power cut anywhere leaves either magic 0 (formats again) or a
        // complete superblock, even when 8-byte words tear independently.
        var sawMagic = false
        for point in memory.takeCrashPoints() {
            for seed: UInt64 in 0..<16 {
                let image = memory.crashImage(at: point, seed: seed, granularity: 8)
                let found = Superblock(bytes: bytes(image, 4096, 24))
                if found.magic != 0 {
                    sawMagic = true
                    #expect(found.isCRCValid && found.segNum == 3)
                }
            }
        }
        #expect(sawMagic)
    }

    @Test func formatZeroesCacheInfoAndCtrl() throws {
        let memory = makeDevice(segments: 2)
        memory.loadImage([UInt8](repeating: 0xA5, count: 20480 - 8192), at: 8192)
        memory.loadImage([UInt8](repeating: 0x77, count: 4096), at: 0)
        _ = try openDevice(memory)
        #expect(bytes(memory, 8192, 20480 - 8192).allSatisfy { $0 == 0 })
        #expect(bytes(memory, 0, 4096).allSatisfy { $0 == 0x77 })  // never touched
    }

    private func refusesWithoutWriting(_ memory: SimulatedPersistentMemory, _ expected: PCacheError) {
        let before = memory.statistics
        #expect(throws: expected) { try openDevice(memory) }
        #expect(memory.statistics == before, "a refused device was written to")
    }

    @Test func foreignMagicIsRefusedAndNotWritten() throws {
        let memory = makeDevice(segments: 2)
        memory.loadImage([0xEF, 0xBE, 0xAD, 0xDE, 0, 0, 0, 0], at: 4104)
        refusesWithoutWriting(memory, .unexpectedMagic(device: "test-device", found: 0xDEAD_BEEF))
        let text = "\(PCacheError.unexpectedMagic(device: "/dev/pmem0", found: 0xDEAD_BEEF))"
        #expect(text.contains("unexpected magic 0xdeadbeef"))
        #expect(text.contains("format --force"))
        #expect(text.contains("nothing was written"))
    }

    @Test func superblockCRCMismatch() throws {
        let memory = makeDevice(segments: 2)
        _ = try openDevice(memory)
        var sb = bytes(memory, 4096, 24)
        sb[17] ^= 0x01  // seg_num 3 instead of 2, crc unchanged
        memory.loadImage(sb, at: 4096)
        let decoded = Superblock(bytes: sb)
        refusesWithoutWriting(memory, .superblockCRCMismatch(device: "test-device", stored: decoded.crc,
                                                              computed: decoded.computedCRC))
    }

    @Test func bigEndianFlag() throws {
        let memory = makeDevice(segments: 2)
        memory.loadImage(Superblock(flags: Superblock.flagBigEndian, segNum: 2).encoded(), at: 4096)
        refusesWithoutWriting(memory, .bigEndianDevice(device: "test-device"))
    }

    @Test func segmentCountBounds() throws {
        for segNum: UInt32 in [0, 3, 1_000_000, 0xFFFF_FFFF] {
            let memory = makeDevice(segments: 2)
            memory.loadImage(Superblock(segNum: segNum).encoded(), at: 4096)
            refusesWithoutWriting(memory, .invalidSegmentCount(device: "test-device", segNum: segNum, fits: 2,
                                                               maximum: 1 << 20))
        }
        // Fewer segments than fit is fine (the device grew).
        let memory = makeDevice(segments: 3)
        memory.loadImage(Superblock(segNum: 2).encoded(), at: 4096)
        #expect(try openDevice(memory).segmentCount == 2)
    }

    @Test func truncatedImages() throws {
        for size in [0, 1, 4096, 4119, 20479, 20480, 20480 + (16 << 20) - 1] {
            let memory = SimulatedPersistentMemory(size: size, label: "tiny")
            #expect(throws: PCacheError.deviceTooSmall(device: "tiny", size: size, minimum: 20480 + (16 << 20))) {
                try openDevice(memory)
            }
            #expect(!inspect(memory).isConsistent)
        }
        // A 3-segment cache copied onto a device that holds only 2.
        let big = makeDevice(segments: 3)
        try formatDevice(big)
        let small = makeDevice(segments: 2)
        small.loadImage(bytes(big, 0, 20480), at: 0)
        #expect(throws: PCacheError.invalidSegmentCount(device: "test-device", segNum: 3, fits: 2, maximum: 1 << 20)) {
            try openDevice(small)
        }
    }

    @Test func readOnlyOpenNeverFormats() throws {
        let memory = makeDevice(segments: 2)
        #expect(throws: PCacheError.notFormatted(device: "test-device")) {
            try CacheDevice.openReadOnly(memory: memory, minimumSize: 0)
        }
        #expect(memory.statistics.events == 0)
    }

    @Test func formatRefusesAFormattedDeviceWithoutForce() throws {
        let memory = makeDevice(segments: 2)
        try formatDevice(memory, dataCRC: true)
        #expect(throws: PCacheError.alreadyFormatted(device: "test-device", magic: PCacheLayout.magic)) {
            try formatDevice(memory)
        }
        let forced = try formatDevice(memory, dataCRC: false, force: true)
        #expect(forced.info.flags == 0x1182)
        #expect(try openCache(memory).info.flags == 0x1182)
    }
}
