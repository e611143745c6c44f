import Foundation
import Testing
@testable import PCacheCore

@Suite struct InspectorTests {
    @Test func usedCacheReport() throws {
        let memory = try makeUsedCache()
        let report = inspect(memory)
        #expect(report.isConsistent, "\(report.problem ?? "")")
        #expect(report.superblock?.segNum == 3)
        #expect(report.cacheInfo?.gcPercent == 20)
        #expect(report.cacheInfo?.dataCRC == true)
        #expect(report.keyTail == CachePosition(cacheSegID: 0, segOff: 104))
        #expect(report.dirtyTail == CachePosition(cacheSegID: 1, segOff: 0))
        #expect(report.segments.map(\.generation) == [0, 0, 3])
        // From the key tail: the LAST kset, then one kset of 2 keys in segment 1.
        #expect(report.keySets.count == 2)
        #expect(report.keySets[0].isLast && report.keySets[0].next == 1)
        #expect(report.keySets[1].keys.count == 2 && report.keySets[1].dirty)
        #expect(report.logEnd == CachePosition(cacheSegID: 1, segOff: 104))

        let text = report.text()
        #expect(text.contains("flags 0x503"))
        #expect(text.contains("0:104  LAST -> cache segment 1"))
        #expect(text.contains("off 1048576 len 4096 at 2:0 gen 3"))
        #expect(text.hasSuffix("status      consistent"))

        // The JSON is valid and carries the fields.
        let json = report.json().serialized(pretty: true)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(object["consistent"] as? Bool == true)
        #expect((object["cache_info"] as? [String: Any])?["flags_hex"] as? String == "503")
        #expect((object["ksets"] as? [Any])?.count == 2)
        #expect((object["segments"] as? [Any])?.count == 3)
    }

    /// What `del --flush` reads after the server is gone: whether the key
    /// log still holds data the backing device has not got.
    @Test func dirtyDataIsToldFromTheDevice() throws {
        let h = try CacheHarness()
        func report() throws -> InspectionReport {
            inspect(try MappedPersistentMemory(path: h.cachePath, readOnly: true))
        }
        #expect(try report().holdsDirtyData == false, "a fresh cache")
        #expect(h.write(0, pattern(3, 8192)) == 8192)
        for q in h.queues { q.stop() }
        try h.cache.stop()
        #expect(try report().holdsDirtyData == true, "stopped without writeback")
        try h.start(queueCount: 1)
        for q in h.queues { q.stop() }
        try h.cache.stop(writeBackAll: true)
        #expect(try report().holdsDirtyData == false, "stopped after writing everything back")
        #expect(inspect(try MappedPersistentMemory(path: h.cachePath, readOnly: true), keys: false).holdsDirtyData == nil,
                "keys not walked: cannot tell")
        try h.start(queueCount: 1)
    }

    @Test func inspectorNeverWrites() throws {
        let memory = try makeUsedCache()
        let before = memory.statistics
        _ = inspect(memory)
        _ = inspect(makeDevice(segments: 2))
        #expect(memory.statistics == before)
    }

    @Test func problemsAreFound() throws {
        // Data CRC mismatch.
        do {
            let memory = try makeUsedCache()
            memory.loadImage([0x00], at: segmentBase(2) + 12288 + 100)
            let report = inspect(memory)
            #expect(report.problem?.contains("data_crc error") == true, "\(report.problem ?? "")")
        }
        // Key beyond the data area; key into a log segment; seg_gen from the future.
        for (key, expected) in [
            (KeyOnMedia(off: 0, len: 8192, cacheSegID: 2, cacheSegOff: 16_760_000, segGen: 3), "past the end of the data area"),
            (KeyOnMedia(off: 0, len: 4096, cacheSegID: 1, cacheSegOff: 8192, segGen: 0), "holds the key log"),
            (KeyOnMedia(off: 0, len: 4096, cacheSegID: 2, cacheSegOff: 0, segGen: 4), "newer than segment 2's generation"),
            (KeyOnMedia(off: 0, len: 4096, cacheSegID: 7, cacheSegOff: 0, segGen: 0), "points into cache segment 7"),
            (KeyOnMedia(off: 0, len: 0, cacheSegID: 2, cacheSegOff: 0, segGen: 3), "length 0"),
            (KeyOnMedia(off: UInt64.max - 10, len: 4096, cacheSegID: 2, cacheSegOff: 0, segGen: 3), "overflows"),
        ] {
            let memory = try makeUsedCache()
            memory.loadImage(KeySetCodec.encoded(keys: [key]), at: segmentBase(1) + 12288)
            memory.loadImage(KeySetCodec.emptyKeySet, at: segmentBase(1) + 12288 + 64)
            let report = inspect(memory)
            #expect(report.problem?.contains(expected) == true, "\(report.problem ?? "none") for \(expected)")
            // The kernel-level checks pass: only the inspector's key checks catch these.
            _ = try openCache(memory, dataCRC: true)
        }
        // A stale key (seg_gen older than the segment) is fine, and marked.
        do {
            let memory = try makeUsedCache()
            let stale = KeyOnMedia(off: 0, len: 4096, cacheSegID: 2, cacheSegOff: 0, segGen: 1, dataCRC: 0xBAD)
            memory.loadImage(KeySetCodec.encoded(keys: [stale]), at: segmentBase(1) + 12288)
            let report = inspect(memory)
            #expect(report.isConsistent, "\(report.problem ?? "")")
            #expect(report.keySets.last?.keys.first?.stale == true)
            #expect(report.text().contains("[stale]"))
        }
        // Dirty tail not on the log.
        do {
            let memory = try makeUsedCache()
            rewriteTail(memory, offset: PCacheLayout.dirtyTailOffset, CachePosition(cacheSegID: 2, segOff: 8192))
            let report = inspect(memory)
            #expect(report.problem?.contains("dirty tail 2:8192 is not on the key log") == true, "\(report.problem ?? "")")
        }
        // A device whose first start never finished.
        do {
            let memory = makeDevice(segments: 2)
            _ = try openCache(memory)
            let report = inspect(memory)
            #expect(report.problem?.contains("never completely started") == true)
            #expect(report.text().contains("cache_info  no valid copy"))
        }
        // A blank device.
        #expect(inspect(makeDevice(segments: 2)).problem?.contains("is not formatted") == true)
    }

    @Test func warnings() throws {
        let memory = makeDevice(segments: 2)
        try formatDevice(memory)
        rewriteCacheInfo(memory) { $0.gcPercent = 120; $0.cacheModeBits = 9 }
        let report = inspect(memory)
        #expect(report.isConsistent)
        #expect(report.warnings.count == 2)
    }

    @Test func jsonEscaping() {
        let value = JSONValue.object([("a\"b", .string("line\nnext\u{01}\\")), ("n", .array([.int(-1), .uint(2), .null, .bool(false)]))])
        #expect(value.serialized() == #"{"a\"b":"line\nnext\u0001\\","n":[-1,2,null,false]}"#)
    }
}

/// The command-line tool, when it has been built next to the tests.
@Suite struct CommandLineTests {
    static let binary: String? = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let path = root.appendingPathComponent(".build/debug/pcache-ublk").path
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }()

    func run(_ arguments: [String]) throws -> (status: Int32, output: String, error: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary!)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let error = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output, error)
    }

    @Test(.enabled(if: binary != nil)) func formatAndDump() throws {
        let path = try temporaryFile(size: 512 << 20)
        defer { unlink(path) }
        #expect(try run(["--version"]).output.hasPrefix("pcache-ublk "))
        #expect(try run(["frobnicate"]).status == 2)
        #expect(try run(["dump", path]).status == 1)  // blank: not formatted
        let formatted = try run(["format", path, "--data-crc"])
        #expect(formatted.status == 0, "\(formatted.error)")
        #expect(formatted.output.contains("31 segments"))
        let again = try run(["format", path])
        #expect(again.status == 1 && again.error.contains("--force"))
        let dump = try run(["dump", path, "--keys"])
        #expect(dump.status == 0 && dump.output.contains("flags 0x1183") && dump.output.contains("consistent"))
        let json = try run(["dump", "--json", path])
        #expect(json.status == 0)
        let object = try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any]
        #expect((object?["superblock"] as? [String: Any])?["seg_num"] as? Int == 31)
        #expect(try run(["format", "--force", path]).status == 0)
        #expect(try run(["dump", path]).output.contains("flags 0x1182"))
        #expect(try run(["dump", path, "--bogus"]).status == 2)
        #expect(try run(["dump", "/nonexistent/device"]).status == 2)
    }

    /// `-h` asks for help only where it is an option, not an option's value.
    @Test(.enabled(if: binary != nil)) func helpIsAnOptionNotAValue() throws {
        let help = try run(["add", "-h"])
        #expect(help.status == 0 && help.output.contains("--null SIZE") && help.output.contains("writeback_history"))
        #expect(try run(["del", "--flush", "--help"]).output.contains("--timeout SECONDS"))
        let table = try run(["add", "--table", "-h"])
        #expect(table.status != 0 && table.error.contains("invalid table"), "\(table)")
        let id = try run(["add", "--table", "x", "-n", "-h"])
        #expect(id.status == 2 && id.error.contains("invalid device id '-h'"), "\(id)")
        // The internal --log (a parent's pending log, renamed once the id is
        // known) takes nothing else, so it cannot rename a user's file.
        let victim = try temporaryFile(size: 4096)
        defer { unlink(victim) }
        let log = try run(["add", "-f", "--log", victim, "--null", "1G"])
        #expect(log.status == 2 && log.error.contains("--log is internal"), "\(log)")
        #expect(access(victim, F_OK) == 0)
    }

    /// On a host without ublk_drv (this one), every verb that needs the driver
    /// says so, rather than listing nothing or blaming the device id.
    @Test(.enabled(if: binary != nil && access("/dev/ublk-control", F_OK) != 0))
    func verbsNameTheMissingDriver() throws {
        for verb in [["list"], ["status"], ["status", "-n", "0"], ["message", "-n", "0", "gc_percent", "10"],
                     ["message", "gc_percent", "10", "-n", "0"], ["del", "-n", "0"], ["recover", "-n", "0"]] {
            let result = try run(verb)
            #expect(result.status == 1, "\(verb)")
            #expect(result.error.contains("/dev/ublk-control is missing: load the driver with 'modprobe ublk_drv'"), "\(verb): \(result.error)")
        }
        // Words after the id are still a usage error, and a bad value is refused before the driver is looked for.
        #expect(try run(["message", "gc_percent", "10", "-n", "0", "x"]).status == 2)
        #expect(try run(["message", "gc_percent", "-1", "-n", "0"]).error.contains("Invalid gc_percent value"))
    }
}
