import Glibc
import Testing

@testable import UblkServer

/// Devices as temporary files: a 512 MiB cache (the minimum), a too-small
/// one, a 64 MiB backing file, and things that are not devices at all.
final class TableFixture {
    let dir = TemporaryDirectory()
    let cache: String
    let smallCache: String
    let backing: String
    let backingSectors: UInt64 = (64 << 20) >> 9
    let fifo: String
    let directory: String
    let symlinkToCache: String
    let hardlinkToCache: String

    init() {
        cache = dir.makeFile("cache.img", size: 512 << 20, seed: 0x11)
        smallCache = dir.makeFile("small.img", size: (512 << 20) - 4096, seed: 0x22)
        backing = dir.makeFile("backing.img", size: 64 << 20, seed: 0x33)
        fifo = dir.file("fifo")
        mkfifo(fifo, 0o600)
        directory = dir.file("subdir")
        mkdir(directory, 0o700)
        symlinkToCache = dir.file("cache-symlink")
        symlink(cache, symlinkToCache)
        hardlinkToCache = dir.file("cache-hardlink")
        link(cache, hardlinkToCache)
    }

    var base: String { "0 \(backingSectors) pcache \(cache) \(backing)" }

    var files: [String] { [cache, smallCache, backing] }
}

@Suite struct PCacheTableTests {
    /// Every malformed table, with the message it must be refused with.
    static func malformed(_ f: TableFixture) -> [(String, String)] {
        let b = f.base
        let s = f.backingSectors
        return [
            ("", "Invalid table"),
            ("0 \(s)", "Invalid table"),
            ("x \(s) pcache \(f.cache) \(f.backing)", "Invalid start sector"),
            ("-1 \(s) pcache \(f.cache) \(f.backing)", "Invalid start sector"),
            ("8 \(s) pcache \(f.cache) \(f.backing)", "Target must start at sector 0"),
            ("0 abc pcache \(f.cache) \(f.backing)", "Invalid target length"),
            ("0 -5 pcache \(f.cache) \(f.backing)", "Invalid target length"),
            ("0 18446744073709551616 pcache \(f.cache) \(f.backing)", "Invalid target length"),
            ("0 0 pcache \(f.cache) \(f.backing)", "Zero-length target"),
            ("0 \(s) linear \(f.cache) \(f.backing)", "Unknown target type"),
            ("0 \(s) PCACHE \(f.cache) \(f.backing)", "Unknown target type"),
            ("0 \(s) pcache", "Insufficient args"),
            ("0 \(s) pcache \(f.cache)", "Insufficient args"),
            ("0 \(s) pcache \(f.dir.file("missing")) \(f.backing)", "Error opening cache device"),
            ("0 \(s) pcache \(f.cache) \(f.dir.file("missing"))", "Error opening backing device"),
            ("\(b) 4 data_crc X", "Invalid number of cache option arguments"),   // dtg case 03
            ("\(b) 4 cache_mode X", "Invalid number of cache option arguments"),  // dtg case 04
            ("\(b) INVAL", "Invalid number of cache option arguments"),           // dtg case 08
            ("\(b) 100", "Invalid number of cache option arguments"),             // dtg case 08
            ("\(b) 7 cache_mode writeback data_crc true writeback_history true x", "Invalid number of cache option arguments"),
            ("\(b) 5 cache_mode writeback data_crc true", "Invalid number of cache option arguments"),
            ("\(b) 5 cache_mode writeback data_crc true x", "Unrecognised cache option requested"),
            ("\(b) -1", "Invalid number of cache option arguments"),
            ("\(b) 2x cache_mode writeback", "Invalid number of cache option arguments"),
            ("\(b) 2 cache_mode invalid", "Invalid cache mode parameter"),        // dtg case 01
            ("\(b) 2 cache_mode writethrough", "Invalid cache mode parameter"),
            ("\(b) 2 cache_mode WriteBack", "Invalid cache mode parameter"),
            ("\(b) 2 data_crc invalid", "Invalid data crc parameter"),            // dtg case 02
            ("\(b) 2 data_crc TRUE", "Invalid data crc parameter"),
            ("\(b) 2 data_crc 1", "Invalid data crc parameter"),
            ("\(b) 1 cache_mode", "Missing value for cache_mode"),
            ("\(b) 1 data_crc", "Missing value for data_crc"),
            ("\(b) 1 writeback_history", "Missing value for writeback_history"),
            ("\(b) 2 writeback_history yes", "Invalid writeback history parameter"),
            ("\(b) 3 data_crc true cache_mode", "Missing value for cache_mode"),
            ("\(b) 3 cache_mode writeback data_crc", "Missing value for data_crc"),
            ("\(b) 2 foo bar", "Unrecognised cache option requested"),
            ("\(b) 1 foo", "Unrecognised cache option requested"),
            ("\(b) 2 Cache_Mode writeback", "Unrecognised cache option requested"),
            ("\(b) 2 crc true", "Unrecognised cache option requested"),           // the status line's quirk
            ("\(b) 2 cache_mode writeback data_crc true", "Unexpected arguments after the cache options"),
            ("\(b) 0 extra", "Unexpected arguments after the cache options"),
            ("0 \(s) pcache \(f.smallCache) \(f.backing)", "Cache device too small"),
            ("0 \(s) pcache \(f.cache) \(f.cache)", "Cache and backing device are the same"),
            ("0 \(s) pcache \(f.cache) \(f.symlinkToCache)", "Cache and backing device are the same"),
            ("0 \(s) pcache \(f.cache) \(f.hardlinkToCache)", "Cache and backing device are the same"),
            ("0 \(s + 1) pcache \(f.cache) \(f.backing)", "Target length does not match the backing device"),
            ("0 \(s - 8) pcache \(f.cache) \(f.backing)", "Target length does not match the backing device"),
            ("0 \(s) pcache /dev/null \(f.backing)", "Unsupported cache device type"),
            ("0 \(s) pcache \(f.cache) /dev/null", "Unsupported backing device type"),
            ("0 \(s) pcache \(f.cache) \(f.fifo)", "Unsupported backing device type"),
            ("0 \(s) pcache \(f.directory) \(f.backing)", "Unsupported cache device type"),
            ("0 \(s) pcache \(f.cache) \(f.directory)", "Unsupported backing device type"),
        ]
    }

    @Test func malformedTablesAreRefusedWithTheKernelsWordsAndTouchNothing() {
        let f = TableFixture()
        let before = f.files.map { fileDigest($0) }
        let cases = Self.malformed(f)
        #expect(cases.count >= 30)
        for (table, message) in cases {
            do {
                let parsed = try PCacheTable.parse(table)
                Issue.record("accepted: \(table) -> \(parsed)")
            } catch {
                #expect(error.message == message, "table: \(table) -> \(error)")
            }
        }
        let after = f.files.map { fileDigest($0) }
        for (i, path) in f.files.enumerated() {
            #expect(before[i]?.size == after[i]?.size && before[i]?.crc == after[i]?.crc, "\(path) changed")
        }
    }

    /// A loop device over the cache file is the cache file: the same bytes
    /// under another name, which the path and inode checks alone miss.
    @Test(.enabled(if: getuid() == 0 && access("/dev/loop-control", F_OK) == 0 && access("/usr/sbin/losetup", X_OK) == 0))
    func aLoopDeviceOverTheOtherFileIsTheSameDevice() throws {
        let f = TableFixture()
        func shell(_ command: String) -> String {
            guard let pipe = popen(command, "r") else { return "" }
            var output = ""
            var line = [CChar](repeating: 0, count: 256)
            while fgets(&line, Int32(line.count), pipe) != nil { output += String(cString: line) }
            pclose(pipe)
            return String(output.filter { !$0.isWhitespace })
        }
        let loop = shell("/usr/sbin/losetup -f --show \(f.cache) 2>/dev/null")
        try #require(loop.hasPrefix("/dev/loop"), "losetup gave '\(loop)'")
        defer { _ = shell("/usr/sbin/losetup -d \(loop)") }
        for table in ["0 \(f.backingSectors) pcache \(f.cache) \(loop)", "0 \(f.backingSectors) pcache \(loop) \(f.cache)"] {
            do {
                _ = try PCacheTable.parse(table)
                Issue.record("accepted: \(table)")
            } catch {
                #expect(error.message == "Cache and backing device are the same", "\(table) -> \(error)")
            }
        }
        // A loop device over another file is another device.
        let other = shell("/usr/sbin/losetup -f --show \(f.backing) 2>/dev/null")
        try #require(other.hasPrefix("/dev/loop"))
        defer { _ = shell("/usr/sbin/losetup -d \(other)") }
        #expect(try PCacheTable.parse("0 \(f.backingSectors) pcache \(f.cache) \(other)").backingDevicePath == other)
    }

    @Test func relativeDevicePathsAreMadeAbsolute() {
        #expect(PCacheTable.withAbsoluteDevicePaths("0 8 pcache c.img ../b.img 2 data_crc true", relativeTo: "/srv")
                == "0 8 pcache /srv/c.img /srv/../b.img 2 data_crc true")
        #expect(PCacheTable.withAbsoluteDevicePaths("0  8\tpcache /dev/dax0.0 disk", relativeTo: "/root/")
                == "0 8 pcache /dev/dax0.0 /root/disk")
        #expect(PCacheTable.withAbsoluteDevicePaths("0 8 linear c b", relativeTo: "/srv") == "0 8 linear c b")
        #expect(PCacheTable.withAbsoluteDevicePaths("0 8 pcache c", relativeTo: "/srv") == "0 8 pcache c")
    }

    /// The kernel's words say what kind of fault; the details say where.
    @Test func optionCountFaultsNameTheCount() {
        let f = TableFixture()
        let b = f.base
        let cases = [
            ("\(b) 1 data_crc true", "Missing value for data_crc (the option count is 1; 'true' lies after the group)"),
            ("\(b) 3 cache_mode writeback data_crc true", "Missing value for data_crc (the option count is 3; 'true' lies after the group)"),
            ("\(b) 1 cache_mode", "Missing value for cache_mode"),
            ("\(b) 4 data_crc true", "Invalid number of cache option arguments (4, but 2 words follow)"),
            ("\(b) 2 data_crc", "Invalid number of cache option arguments (2, but 1 word follows)"),
            ("\(b) 8 a b c d e f g h", "Invalid number of cache option arguments (8, at most 6)"),
            ("\(b) four", "Invalid number of cache option arguments ('four' is not a count)"),
        ]
        for (table, expected) in cases {
            do {
                _ = try PCacheTable.parse(table)
                Issue.record("accepted: \(table)")
            } catch {
                #expect("\(error)" == expected, "table: \(table)")
            }
        }
    }

    @Test func validTables() throws {
        let f = TableFixture()
        let b = f.base
        let plain = try PCacheTable.parse(b)  // dtg case 05: no optional arguments
        #expect(plain == PCacheTable(sectors: f.backingSectors, cacheDevicePath: f.cache,
                                     backingDevicePath: f.backing, cacheMode: .writeback, dataCRC: false))
        #expect(try PCacheTable.parse("\(b) 2 cache_mode writeback").dataCRC == false)  // dtg case 06
        #expect(try PCacheTable.parse("\(b) 2 data_crc true").dataCRC == true)          // dtg case 07
        #expect(try PCacheTable.parse("\(b) 4 cache_mode writeback data_crc true").dataCRC == true)
        #expect(try PCacheTable.parse("\(b) 4 data_crc true cache_mode writeback").dataCRC == true)
        #expect(try PCacheTable.parse("\(b) 4 data_crc true data_crc false").dataCRC == false)  // later wins
        #expect(try PCacheTable.parse("\(b) 0") == plain)
        #expect(try PCacheTable.parse("\(b) +2 data_crc true").dataCRC == true)  // kstrtouint takes '+'
        #expect(plain.writebackHistory == false)
        let history = try PCacheTable.parse("\(b) 6 cache_mode writeback data_crc true writeback_history true")
        #expect(history.writebackHistory && history.dataCRC)
        #expect(try PCacheTable.parse("\(b) 2 writeback_history false").writebackHistory == false)
        #expect(try PCacheTable.parse("  0\t\(f.backingSectors)  pcache \(f.cache)\t\(f.backing)\n") == plain)
    }

    @Test func syntaxOnlyParsingNeedsNoDevices() throws {
        let t = try PCacheTable.parse("0 2048 pcache /no/cache /no/backing 2 data_crc true", checkDevices: false)
        #expect(t.sectors == 2048 && t.cacheDevicePath == "/no/cache" && t.dataCRC)
        #expect(t.tableString == "0 2048 pcache /no/cache /no/backing 4 cache_mode writeback data_crc true")
        // Our option appears only when set, so the default table stays the kernel's.
        let h = try PCacheTable.parse("0 2048 pcache /no/cache /no/backing 2 writeback_history true", checkDevices: false)
        #expect(h.tableString == "0 2048 pcache /no/cache /no/backing 6 cache_mode writeback data_crc false writeback_history true")
        #expect(try PCacheTable.parse(h.tableString, checkDevices: false) == h)
        #expect(throws: PCacheTableError("Insufficient args")) {
            try PCacheTable.parse("0 2048 pcache /no/cache", checkDevices: false)
        }
    }

    @Test func statusTableLineKeepsTheCrcQuirk() {
        let f = TableFixture()
        let t = PCacheTable(sectors: 8, cacheDevicePath: "/dev/null", backingDevicePath: f.backing, dataCRC: true)
        // A device node prints maj:min (/dev/null is 1:3), a regular file its path.
        #expect(t.statusTableLine() == "1:3 \(f.backing) 4 cache_mode writeback crc true")
        #expect(t.dmTableLine() == "0 8 pcache 1:3 \(f.backing) 4 cache_mode writeback crc true")
        let off = PCacheTable(sectors: 8, cacheDevicePath: "/dev/zero", backingDevicePath: "/dev/null")
        #expect(off.statusTableLine() == "1:5 1:3 4 cache_mode writeback crc false")
    }

    @Test func errorDescriptionsCarryTheDetail() {
        let f = TableFixture()
        do {
            _ = try PCacheTable.parse("0 \(f.backingSectors) pcache \(f.dir.file("nope")) \(f.backing)")
        } catch {
            #expect(error.description.hasPrefix("Error opening cache device ("))
            #expect(error.description.contains("No such file or directory"))
        }
    }
}

@Suite struct PCacheMessageTests {
    @Test func gcPercentAccepted() throws {
        #expect(try PCacheMessage.parse(["gc_percent", "0"]) == .gcPercent(0))
        #expect(try PCacheMessage.parse(["gc_percent", "80"]) == .gcPercent(80))
        #expect(try PCacheMessage.parse(["gc_percent", "90"]) == .gcPercent(90))
        #expect(try PCacheMessage.parse(["GC_PERCENT", "10"]) == .gcPercent(10))  // name case-insensitive
        #expect(try PCacheMessage.parse(["Gc_Percent", "007"]) == .gcPercent(7))
    }

    @Test(arguments: [
        ([], "Invalid message"),
        (["gc_percent"], "Invalid message"),
        (["gc_percent", "10", "20"], "Invalid message"),
        (["gc_percent", "91"], "Invalid gc_percent value"),   // dtg case 09
        (["gc_percent", "-1"], "Invalid gc_percent value"),   // dtg case 09
        (["gc_percent", ""], "Invalid gc_percent value"),     // dtg case 09
        (["gc_percent", "bad"], "Invalid gc_percent value"),  // dtg case 09
        (["gc_percent", "300"], "Invalid gc_percent value"),  // 6.18 truncated this to 44
        (["gc_percent", "0x10"], "Invalid gc_percent value"),
        (["gc_percent", "+5"], "Invalid gc_percent value"),
        (["gc_percent", "99999999999999999999"], "Invalid gc_percent value"),
        (["invalid_cmd", "1"], "Unknown message"),             // dtg case 09
        (["gc-percent", "10"], "Unknown message"),
    ] as [([String], String)])
    func refused(words: [String], message: String) {
        #expect(throws: PCacheTableError.self) { try PCacheMessage.parse(words) }
        do {
            _ = try PCacheMessage.parse(words)
        } catch {
            #expect(error.message == message, "\(words) -> \(error)")
        }
    }
}
