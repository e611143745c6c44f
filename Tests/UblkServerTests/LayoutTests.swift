import CUblk
import Glibc
import PCacheCore
import Testing

@testable import UblkServer

@Suite struct LayoutTests {
    @Test func descriptorArrays() {
        // The stride is sized for the maximum depth, whatever the queue's depth.
        #expect(UblkLayout.descriptorStride(pageSize: 4096) == 98304)
        #expect(UblkLayout.descriptorOffset(queueID: 0, pageSize: 4096) == 0)
        #expect(UblkLayout.descriptorOffset(queueID: 1, pageSize: 4096) == 98304)
        #expect(UblkLayout.descriptorOffset(queueID: 3, pageSize: 4096) == 3 * 98304)
        #expect(UblkLayout.descriptorLength(depth: 1, pageSize: 4096) == 4096)
        #expect(UblkLayout.descriptorLength(depth: 128, pageSize: 4096) == 4096)   // 3072 bytes
        #expect(UblkLayout.descriptorLength(depth: 171, pageSize: 4096) == 8192)   // 4104 bytes
        #expect(UblkLayout.descriptorLength(depth: 4096, pageSize: 4096) == 98304)
        #expect(UblkLayout.descriptorStride(pageSize: 65536) == 131072)
        #expect(UblkLayout.descriptorLength(depth: 128, pageSize: 65536) == 65536)
    }

    @Test func ringSizing() {
        #expect(UblkLayout.ringEntries(depth: 1) == 128)
        #expect(UblkLayout.ringEntries(depth: 128) == 512)
        #expect(UblkLayout.ringEntries(depth: 4096) == 16384)
        // Completions: a command per tag and all of a request's backing I/O.
        #expect(UblkLayout.completionEntries(depth: 1, ioPerRequest: 0) == 128)
        #expect(UblkLayout.completionEntries(depth: 128, ioPerRequest: 16) == 4096)  // 128 x 17 + 64
        #expect(UblkLayout.completionEntries(depth: 4096, ioPerRequest: 16) == 65536)  // the kernel's most
    }

    /// The queue ring's completion queue holds what a queue can have in flight
    /// (the default, twice the submission entries, held 1024 at depth 128,
    /// where 128 commands and 16 backing reads per request can be 2176).
    @Test func completionRingIsSizedForEveryRequestsIO() throws {
        let entries = UblkLayout.ringEntries(depth: 128)
        let wanted = UblkLayout.completionEntries(depth: 128, ioPerRequest: 16)
        let ring = try IOURing(entries: entries, completionEntries: wanted)
        #expect(ring.ring.cq.ring_entries == wanted)
        #expect(try IOURing(entries: entries).ring.cq.ring_entries == 2 * entries)
    }

    @Test func userDataSpaces() {
        for tag: UInt16 in [0, 1, 127, 4095, 0xFFFF] {
            #expect(UblkLayout.decode(UblkLayout.commandUserData(tag: tag)) == .command(tag: tag))
        }
        #expect(UblkLayout.decode(UblkLayout.wakerUserData) == .waker)
        let limit: UInt64 = 1 << 62
        for value: UInt64 in [0, 1, 12345, limit - 1] {
            #expect(UblkLayout.decode(value) == .handler(value))
        }
        // Handler values stay below QueueIO's limit, so they never collide.
        #expect(UblkLayout.internalBit == limit)
    }

    @Test func parameterEncoding() throws {
        var p = UblkDeviceParameters(deviceBytes: 1 << 30, attributes: UblkDeviceParameters.volatileCache | UblkDeviceParameters.fua)
        var raw = try UblkParameterEncoding.encode(p, maxIOBytes: 512 * 1024)
        #expect(raw.len == 112)
        #expect(raw.types == UBLK_PARAM_TYPE_BASIC)
        #expect(raw.basic.attrs == UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA)
        #expect(raw.basic.logical_bs_shift == 9 && raw.basic.physical_bs_shift == 12)
        #expect(raw.basic.dev_sectors == 2_097_152)
        #expect(raw.basic.max_sectors == 1024)  // the whole per-tag buffer
        p.discardGranularity = 4096
        p.maxDiscardSectors = 8192
        p.maxWriteZeroesSectors = 4096
        p.maxSectors = 256
        raw = try UblkParameterEncoding.encode(p, maxIOBytes: 512 * 1024)
        #expect(raw.types == UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD)
        #expect(raw.discard.discard_granularity == 4096 && raw.discard.max_discard_segments == 1)
        #expect(raw.discard.max_discard_sectors == 8192 && raw.discard.max_write_zeroes_sectors == 4096)
        #expect(raw.basic.max_sectors == 256)
    }

    @Test func parameterEncodingRefusesWhatTheDriverWould() {
        func refuses(_ change: (inout UblkDeviceParameters) -> Void, maxIO: Int = 512 * 1024) -> Bool {
            var p = UblkDeviceParameters(deviceBytes: 1 << 30)
            change(&p)
            return (try? UblkParameterEncoding.encode(p, maxIOBytes: maxIO)) == nil
        }
        #expect(refuses { $0.logicalBlockShift = 8 })
        #expect(refuses { $0.logicalBlockShift = 13 })
        #expect(refuses { $0.logicalBlockShift = 12; $0.physicalBlockShift = 9 })
        #expect(refuses { $0.deviceBytes = 0 })
        #expect(refuses { $0.deviceBytes = 1000 })
        #expect(refuses { $0.logicalBlockShift = 12; $0.deviceBytes = 4096 * 3 + 512 })
        #expect(refuses { $0.maxSectors = 4 })
        #expect(refuses { $0.maxSectors = 2048 })       // beyond a 512 KiB buffer
        #expect(refuses({ _ in }, maxIO: 2048))          // buffer too small for 8 sectors
        #expect(!refuses { _ in })
    }

    @Test func deviceInfoRoundTrip() {
        let info = UblkDeviceInfo(id: 3, queueCount: 2, queueDepth: 64, state: .quiesced, maxIOBytes: 524288,
                                  serverPID: 42, flags: UBLK_F_USER_RECOVERY, serverFlags: UblkDeviceInfo.serverMarker)
        #expect(UblkDeviceInfo(info.raw) == info)
        #expect(info.supportsRecovery && info.isOurs && info.stateName == "QUIESCED")
        var raw = info.raw
        raw.state = 9
        #expect(UblkDeviceInfo(raw).state == nil && UblkDeviceInfo(raw).stateName == "UNKNOWN(9)")
        #expect(UblkFeatures.names(0x1FE) == ["comp_in_task", "need_get_data", "user_recovery", "recovery_reissue",
                                                "unprivileged", "ioctl_encode", "user_copy", "zoned"])
    }

    @Test func devNumbers() {
        #expect(DeviceNodes.parseDevNumber("259:3\n") == DeviceNodes.makeDev(major: 259, minor: 3))
        #expect(DeviceNodes.makeDev(major: 1, minor: 3) == 0x103)
        #expect(DeviceNodes.makeDev(major: 259, minor: 300) == 0x11_032C)  // minor bits above 8 go to bit 20 up
        #expect(DeviceNodes.parseDevNumber("junk") == nil)
        #expect(DeviceNodes.parseDevNumber("1:") == nil)
        // Agrees with stat(2) on a real node.
        var st = stat()
        #expect(stat("/dev/null", &st) == 0)
        #expect(UInt64(st.st_rdev) == DeviceNodes.makeDev(major: 1, minor: 3))
    }

    @Test func deviceRecords() {
        let a = DeviceRecord(target: .null(bytes: 1 << 30), queues: 2, depth: 64)
        #expect(a.encoded() == "target null 1073741824\nqueues 2\ndepth 64\n")
        #expect(DeviceRecord.decode(a.encoded()) == a)
        let table = "0 2097152 pcache /dev/pmem0 /dev/vdb 4 cache_mode writeback data_crc true"
        let b = DeviceRecord(target: .table(table), queues: 1, depth: 128)
        #expect(DeviceRecord.decode(b.encoded()) == b)
        #expect(DeviceRecord.decode("queues 1\n") == nil)
        #expect(DeviceRecord.decode("target null x\n") == nil)
        #expect(b.target.kind == "pcache" && a.target.kind == "null")
    }

    @Test func recordFilesInARuntimeDirectory() throws {
        let dir = TemporaryDirectory()
        let nested = dir.file("a/b")
        try RuntimeFiles.makeDirectories(nested, mode: 0o700)
        var st = stat()
        #expect(stat(nested, &st) == 0 && st.st_mode & 0o777 == 0o700)
        let path = nested + "/r.conf"
        try RuntimeFiles.writeFileAtomically(path, "target null 4096\n", mode: 0o600)
        #expect(readSmallFile(path) == "target null 4096\n")
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(stat(path + ".tmp", &st) != 0)
        unlink(path)
        rmdir(nested)
        rmdir(dir.file("a"))
    }

    @Test func nullTargetAnswersEverythingAtOnce() throws {
        let target = NullTarget(bytes: 1 << 20)
        #expect(target.parameters.deviceBytes == 1 << 20)
        #expect(target.parameters.attributes == UblkDeviceParameters.volatileCache | UblkDeviceParameters.fua)
        let handler = NullQueueHandler()
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { buffer.deallocate() }
        func request(_ op: UInt8, sectors: UInt32) -> UblkRequest {
            UblkRequest(tag: 0, op: op, flags: 0, startSector: 8, sectorCount: sectors, buffer: buffer)
        }
        #expect(handler.handle(request(UblkRequest.read, sectors: 16)) == 8192)
        #expect(handler.handle(request(UblkRequest.write, sectors: 1)) == 512)
        #expect(handler.handle(request(UblkRequest.flush, sectors: 0)) == 0)
        #expect(handler.handle(request(UblkRequest.discard, sectors: 8)) == 0)
        #expect(handler.handle(request(UblkRequest.writeZeroes, sectors: 8)) == 0)
        #expect(handler.handle(request(UblkRequest.read, sectors: 0)) == 0)
        #expect(handler.handle(request(10, sectors: 8)) == -EOPNOTSUPP)
        #expect(target.control(["status"]) == .ok(["0 2048 null"]))
        #expect(target.control(["message", "gc_percent", "1"]) == .error("the null target accepts no messages"))
    }

    @Test func targetFactoryRefusesABadTableAndBuildsTheNullTarget() {
        #expect(throws: PCacheTableError.self) {
            _ = try UblkTargetFactory.makeTarget(.table("0 8 pcache /nonexistent-cache /nonexistent-backing"))
        }
        #expect((try? UblkTargetFactory.makeTarget(.null(bytes: 4096)))?.kind == "null")
    }

    @Test func wakerWakes() throws {
        let waker = try EventFDWaker()
        for _ in 0..<100_000 { waker.wake() }  // a full pipe never blocks
        var byte: UInt8 = 0
        #expect(read(waker.fd, &byte, 1) == 1)
    }
}
