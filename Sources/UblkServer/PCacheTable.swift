import CSupport
import Glibc
import PCacheCore

/// Cache modes. dm-pcache accepts only write-back.
public enum PCacheCacheMode: String, Sendable, Equatable {
    case writeback
}

/// A refused table or message. `message` is the kernel's wording where the
/// kernel has one (dm-pcache's `ti->error`), ours otherwise; `detail` adds
/// what the kernel would put in its log (the path, strerror, sizes).
public struct PCacheTableError: Error, Equatable, CustomStringConvertible, Sendable {
    public let message: String
    public let detail: String?

    public init(_ message: String, detail: String? = nil) {
        self.message = message
        self.detail = detail
    }

    public var description: String {
        if let detail { return "\(message) (\(detail))" }
        return message
    }
}

/// A pcache table: `0 <sectors> pcache <cache_dev> <backing_dev> [<#opts> <opt>...]`.
///
/// Parsing follows dm-pcache's constructor and uses its error strings
/// ("Insufficient args", "Invalid number of cache option arguments",
/// "Missing value for cache_mode", "Invalid cache mode parameter", "Invalid
/// data crc parameter", "Unrecognised cache option requested", "Error opening
/// cache device", …). On top of it, and stricter than the kernel:
/// - the DM-level fields are checked: start must be 0 (pcache uses bio
///   offsets unshifted), the length a decimal number, the target `pcache`;
/// - words after the option group are refused (the kernel ignores them,
///   which silently drops a mistyped option);
/// - the devices must be block devices, DAX character devices (cache only)
///   or regular files; the same device twice is refused; the cache must hold
///   at least 512 MiB; the length must equal the backing device's size
///   (the kernel does not check it).
/// And one option of ours, `writeback_history true|false` (so up to 6
/// option words where the kernel takes 4).
public struct PCacheTable: Sendable, Equatable {
    public var sectors: UInt64
    public var cacheDevicePath: String
    public var backingDevicePath: String
    public var cacheMode: PCacheCacheMode
    public var dataCRC: Bool
    /// Write every version back, so the backing device alone always holds a
    /// prefix of the write history (`CacheConfiguration.writebackKeepsHistory`).
    public var writebackHistory: Bool

    public static let minimumCacheBytes: UInt64 = 512 << 20
    public static let usage = "<start> <length> pcache <cache_dev> <backing_dev> [<#opts> <opt>...]"

    public init(sectors: UInt64, cacheDevicePath: String, backingDevicePath: String,
                cacheMode: PCacheCacheMode = .writeback, dataCRC: Bool = false, writebackHistory: Bool = false) {
        self.sectors = sectors
        self.cacheDevicePath = cacheDevicePath
        self.backingDevicePath = backingDevicePath
        self.cacheMode = cacheMode
        self.dataCRC = dataCRC
        self.writebackHistory = writebackHistory
    }

    /// Parses and validates a table, looking at the devices (opened read-write
    /// and closed again: nothing is written).
    public static func parse(_ text: String) throws(PCacheTableError) -> PCacheTable {
        try parse(text, checkDevices: true)
    }

    /// `text` with relative device paths made absolute against `directory`,
    /// words joined by single spaces. A table is kept in the device's record
    /// and read again by `recover`, which may run from anywhere.
    public static func withAbsoluteDevicePaths(_ text: String, relativeTo directory: String) -> String {
        var words = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
        guard words.count >= 5, words[2] == "pcache" else { return text }
        let base = directory.hasSuffix("/") ? directory : directory + "/"
        for i in 3...4 where !words[i].hasPrefix("/") { words[i] = base + words[i] }
        return words.joined(separator: " ")
    }

    /// - Parameter checkDevices: false parses the words only (no file access).
    public static func parse(_ text: String, checkDevices: Bool) throws(PCacheTableError) -> PCacheTable {
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
        guard words.count >= 3 else {
            throw PCacheTableError("Invalid table", detail: "expected \"\(usage)\"")
        }
        guard let start = parseDecimal(words[0]) else {
            throw PCacheTableError("Invalid start sector", detail: "'\(words[0])' is not a decimal number")
        }
        guard start == 0 else {
            throw PCacheTableError("Target must start at sector 0", detail: "start is \(start)")
        }
        guard let sectors = parseDecimal(words[1]) else {
            throw PCacheTableError("Invalid target length", detail: "'\(words[1])' is not a decimal number of sectors")
        }
        guard sectors > 0 else { throw PCacheTableError("Zero-length target") }
        guard words[2] == "pcache" else {
            throw PCacheTableError("Unknown target type", detail: "'\(words[2])', expected pcache")
        }
        // The constructor's own arguments.
        let args = Array(words[3...])
        guard args.count >= 2 else { throw PCacheTableError("Insufficient args") }
        var table = PCacheTable(sectors: sectors, cacheDevicePath: args[0], backingDevicePath: args[1])

        var cache: DeviceIdentity? = nil
        var backing: DeviceIdentity? = nil
        if checkDevices {
            cache = try DeviceIdentity.inspect(args[0], role: .cache)
            backing = try DeviceIdentity.inspect(args[1], role: .backing)
        }

        // The option group: "<#opts> <opt>...".
        var rest = args[2...]
        if let countWord = rest.first {
            rest = rest.dropFirst()
            guard let count = parseOptionCount(countWord) else {
                throw PCacheTableError("Invalid number of cache option arguments", detail: "'\(countWord)' is not a count")
            }
            guard count <= 6, count <= rest.count else {
                throw PCacheTableError(
                    "Invalid number of cache option arguments",
                    detail: count > 6 ? "\(count), at most 6" : "\(count), but \(rest.count) \(rest.count == 1 ? "word follows" : "words follow")")
            }
            var group = rest.prefix(count)
            rest = rest.dropFirst(count)
            // A value the count leaves out of the group: named, as the kernel's
            // words alone ("Missing value") read as if it were not there.
            let cutOff = rest.first.map { "the option count is \(count); '\($0)' lies after the group" }
            while let name = group.first {
                group = group.dropFirst()
                switch name {
                case "cache_mode":
                    guard let value = group.first else { throw PCacheTableError("Missing value for cache_mode", detail: cutOff) }
                    group = group.dropFirst()
                    guard let mode = PCacheCacheMode(rawValue: value) else {
                        throw PCacheTableError("Invalid cache mode parameter", detail: "'\(value)'")
                    }
                    table.cacheMode = mode
                case "data_crc":
                    table.dataCRC = try Self.booleanValue(
                        of: name, in: &group, invalid: "Invalid data crc parameter", cutOff: cutOff)
                case "writeback_history":
                    table.writebackHistory = try Self.booleanValue(
                        of: name, in: &group, invalid: "Invalid writeback history parameter", cutOff: cutOff)
                default:
                    throw PCacheTableError("Unrecognised cache option requested", detail: "'\(name)'")
                }
            }
            if !rest.isEmpty {
                throw PCacheTableError(
                    "Unexpected arguments after the cache options",
                    detail: "'\(rest.joined(separator: " "))': the option count is \(count)")
            }
        }

        if let cache, let backing {
            if cache.sameDevice(as: backing) {
                throw PCacheTableError("Cache and backing device are the same",
                                       detail: "\(args[0]) and \(args[1])")
            }
            if cache.bytes < minimumCacheBytes {
                throw PCacheTableError("Cache device too small",
                                       detail: "\(args[0]) has \(cache.bytes) bytes, at least \(minimumCacheBytes) (512 MiB) needed")
            }
            let backingSectors = backing.bytes >> 9
            if sectors != backingSectors {
                throw PCacheTableError("Target length does not match the backing device",
                                       detail: "length \(sectors) sectors, \(args[1]) has \(backingSectors)")
            }
        }
        return table
    }

    /// The table in canonical form (every dm-pcache option spelled out, and
    /// ours when it is not the default, so the default table is the kernel's).
    public var tableString: String {
        let options = "cache_mode \(cacheMode.rawValue) data_crc \(dataCRC)"
        return "0 \(sectors) pcache \(cacheDevicePath) \(backingDevicePath) "
            + (writebackHistory ? "6 \(options) writeback_history true" : "4 \(options)")
    }

    /// The status TABLE line, as dm-pcache prints it after the DM prefix:
    /// `<cache maj:min> <backing maj:min> 4 cache_mode writeback crc <true|false>`.
    /// The key word is `crc`, not `data_crc` — the kernel's quirk, kept
    /// because dtg-tests case 19 asserts it (the line cannot be fed back as
    /// a table). A regular file has no maj:min: its path is printed instead.
    public func statusTableLine() -> String {
        "\(Self.deviceLabel(cacheDevicePath)) \(Self.deviceLabel(backingDevicePath)) 4 cache_mode \(cacheMode.rawValue) crc \(dataCRC)"
    }

    /// `dmsetup table`'s whole line: `0 <sectors> pcache <status table line>`.
    public func dmTableLine() -> String { "0 \(sectors) pcache \(statusTableLine())" }

    /// "maj:min" of a device node, or the path of anything else.
    public static func deviceLabel(_ path: String) -> String {
        var st = stat()
        guard stat(path, &st) == 0 else { return path }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFBLK || kind == S_IFCHR else { return path }
        return "\(pcs_major(UInt64(st.st_rdev))):\(pcs_minor(UInt64(st.st_rdev)))"
    }

    /// Takes the value of a `true|false` option from the front of `group`:
    /// exactly `true` or `false`, as the kernel's strcmp takes them.
    private static func booleanValue(
        of option: String, in group: inout ArraySlice<String>, invalid: String, cutOff: String?
    ) throws(PCacheTableError) -> Bool {
        guard let value = group.first else { throw PCacheTableError("Missing value for \(option)", detail: cutOff) }
        group = group.dropFirst()
        switch value {
        case "true": return true
        case "false": return false
        default: throw PCacheTableError(invalid, detail: "'\(value)'")
        }
    }

    /// Digits only (no sign, no spaces), fitting in 64 bits.
    static func parseDecimal(_ word: String) -> UInt64? {
        guard !word.isEmpty, word.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return UInt64(word)
    }

    /// dm_read_arg: kstrtouint(…, 10) — digits with an optional '+'.
    static func parseOptionCount(_ word: String) -> Int? {
        let digits = word.hasPrefix("+") ? String(word.dropFirst()) : word
        guard let value = parseDecimal(digits), value <= UInt64(UInt32.max) else { return nil }
        return Int(value)
    }
}

/// What a table's device path refers to.
struct DeviceIdentity {
    enum Role {
        case cache, backing
        var name: String { self == .cache ? "cache" : "backing" }
    }

    enum Kind { case block, regular, daxCharacter }

    /// LOOP_MAJOR: loop devices (their partitions use extended minors).
    static let loopMajor: UInt32 = 7

    let kind: Kind
    let device: UInt64   // st_dev
    let inode: UInt64    // st_ino
    let rdev: UInt64     // st_rdev
    let bytes: UInt64
    /// For a bound loop device: the file behind it (st_dev, inode, and rdev
    /// when that file is a device node).
    var loopBacking: (device: UInt64, inode: UInt64, rdev: UInt64)? = nil

    /// Whether the two name the same bytes: the same file or device node,
    /// or a loop device and the file (or device) it is bound to.
    func sameDevice(as other: DeviceIdentity) -> Bool {
        switch (kind, other.kind) {
        case (.regular, .regular): return device == other.device && inode == other.inode
        case (.block, .block), (.daxCharacter, .daxCharacter):
            if rdev == other.rdev { return true }
        default: break
        }
        return isLoop(over: other) || other.isLoop(over: self)
    }

    private func isLoop(over other: DeviceIdentity) -> Bool {
        guard let loop = loopBacking else { return false }
        if loop.device == other.device && loop.inode == other.inode { return true }  // the file itself
        return loop.rdev != 0 && other.kind != .regular && loop.rdev == other.rdev  // a device node of it
    }

    /// Stats and opens (read-write, exclusively for block devices) `path`,
    /// reads its size, closes it again.
    static func inspect(_ path: String, role: Role) throws(PCacheTableError) -> DeviceIdentity {
        let openError = "Error opening \(role.name) device"
        var st = stat()
        if stat(path, &st) != 0 {
            throw PCacheTableError(openError, detail: "\(path): \(String(cString: strerror(errno)))")
        }
        let format = st.st_mode & S_IFMT
        let kind: Kind
        switch format {
        case S_IFBLK: kind = .block
        case S_IFREG: kind = .regular
        case S_IFCHR where role == .cache && MappedPersistentMemory.isDeviceDAX(rdev: st.st_rdev): kind = .daxCharacter
        default:
            let allowed = role == .cache ? "a block device, a DAX character device or a regular file"
                                         : "a block device or a regular file"
            throw PCacheTableError("Unsupported \(role.name) device type", detail: "\(path) is not \(allowed)")
        }
        var flags = O_RDWR | O_CLOEXEC
        if kind == .block { flags |= O_EXCL }  // refuse a device that is mounted or held
        let fd = open(path, flags)
        if fd < 0 {
            throw PCacheTableError(openError, detail: "\(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var bytes: UInt64 = 0
        switch kind {
        case .regular:
            bytes = UInt64(st.st_size)
        case .block:
            let rc = pcs_block_device_size(fd, &bytes)
            if rc < 0 {
                throw PCacheTableError(openError, detail: "\(path): size: \(String(cString: strerror(-rc)))")
            }
        case .daxCharacter:
            let rdev = UInt64(st.st_rdev)
            let sizeText = readSmallFile("/sys/dev/char/\(pcs_major(rdev)):\(pcs_minor(rdev))/size") ?? ""
            bytes = UInt64(sizeText.split(separator: "\n").first ?? "") ?? 0
        }
        var identity = DeviceIdentity(kind: kind, device: UInt64(st.st_dev), inode: UInt64(st.st_ino),
                                      rdev: UInt64(st.st_rdev), bytes: bytes)
        if kind == .block && pcs_major(UInt64(st.st_rdev)) == Self.loopMajor {
            var device: UInt64 = 0, inode: UInt64 = 0, rdevice: UInt64 = 0
            if pcs_loop_backing(fd, &device, &inode, &rdevice) == 0 {
                identity.loopBacking = (device, inode, rdevice)
            }
        }
        return identity
    }
}

/// Messages to a pcache device (`dmsetup message … 0 <message>`).
public enum PCacheMessage: Sendable, Equatable {
    /// `gc_percent <n>`: start GC when this percentage of segments is used.
    case gcPercent(UInt8)

    public static let maxGCPercent: UInt8 = 90

    /// Parses the message words (without a leading "message"): exactly two
    /// words, the name case-insensitive, the value decimal digits parsed as
    /// u8 (so 300 is refused, not truncated to 44 as in 6.18) and 0...90.
    public static func parse(_ words: [String]) throws(PCacheTableError) -> PCacheMessage {
        guard let name = words.first else {
            throw PCacheTableError("Invalid message", detail: "empty; expected gc_percent <0..90>")
        }
        guard name.lowercased() == "gc_percent" else {
            throw PCacheTableError("Unknown message", detail: "'\(name.prefix(64))'; supported: gc_percent <0..90>")
        }
        guard words.count == 2 else {
            throw PCacheTableError("Invalid message", detail: "gc_percent takes exactly one value: gc_percent <0..90>")
        }
        let word = words[1]
        guard !word.isEmpty, word.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            throw PCacheTableError("Invalid gc_percent value", detail: "'\(word.prefix(64))' is not a decimal number")
        }
        guard let value = UInt8(word) else {
            throw PCacheTableError("Invalid gc_percent value", detail: "\(word.prefix(64)) does not fit in 0..255")
        }
        guard value <= maxGCPercent else {
            throw PCacheTableError("Invalid gc_percent value", detail: "\(value) is above \(maxGCPercent)")
        }
        return .gcPercent(value)
    }
}
