import Glibc
import PCacheCore

/// What a device serves, as recorded for `recover` and `list`.
public enum TargetSpec: Sendable, Equatable {
    /// The null target of this many bytes.
    case null(bytes: UInt64)
    /// A dm-style pcache table string.
    case table(String)

    public var kind: String {
        switch self {
        case .null: "null"
        case .table: "pcache"
        }
    }
}

/// The per-device record in the runtime directory: how to rebuild the target
/// after a crash (`recover`), and what `list` shows.
public struct DeviceRecord: Sendable, Equatable {
    public var target: TargetSpec
    public var queues: Int
    public var depth: Int

    public init(target: TargetSpec, queues: Int, depth: Int) {
        self.target = target
        self.queues = queues
        self.depth = depth
    }

    /// Text form: `target null <bytes>` or `target table <table…>`, then
    /// `queues <n>` and `depth <n>`, one per line.
    public func encoded() -> String {
        var text: String
        switch target {
        case .null(let bytes): text = "target null \(bytes)\n"
        case .table(let table): text = "target table \(table)\n"
        }
        text += "queues \(queues)\ndepth \(depth)\n"
        return text
    }

    public static func decode(_ text: String) -> DeviceRecord? {
        var target: TargetSpec? = nil
        var queues = 1
        var depth = 128
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
            guard words.count >= 2 else { continue }
            switch words[0] {
            case "target":
                if words[1] == "null", words.count == 3, let bytes = UInt64(words[2]) {
                    target = .null(bytes: bytes)
                } else if words[1] == "table", words.count == 3 {
                    target = .table(String(words[2]))
                }
            case "queues": queues = Int(words[1]) ?? queues
            case "depth": depth = Int(words[1]) ?? depth
            default: continue
            }
        }
        guard let target else { return nil }
        return DeviceRecord(target: target, queues: queues, depth: depth)
    }
}

/// The runtime directory, /run/pcache-ublk (mode 0700): per device a control
/// socket `ublkb<N>.sock`, the record `ublkb<N>.conf` and the server's log
/// `ublkb<N>.log`. `PCACHE_UBLK_RUN_DIR` overrides the place (tests).
public enum RuntimeFiles {
    public static var directory: String {
        if let p = getenv("PCACHE_UBLK_RUN_DIR") { return String(cString: p) }
        return "/run/pcache-ublk"
    }

    public static func socketPath(_ id: UInt32) -> String { "\(directory)/ublkb\(id).sock" }
    public static func recordPath(_ id: UInt32) -> String { "\(directory)/ublkb\(id).conf" }
    public static func logPath(_ id: UInt32) -> String { "\(directory)/ublkb\(id).log" }

    /// Creates the directory (and its parents) with mode 0700 if missing.
    public static func ensureDirectory() throws {
        try makeDirectories(directory, mode: 0o700)
    }

    public static func makeDirectories(_ path: String, mode: mode_t) throws {
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, mode) == 0 {
                chmod(prefix, mode)  // exactly `mode`, whatever the umask
            } else if errno != EEXIST {
                throw SystemError.last("mkdir \(prefix)")
            }
        }
    }

    public static func writeRecord(_ record: DeviceRecord, id: UInt32) throws {
        try writeFileAtomically(recordPath(id), record.encoded(), mode: 0o600)
    }

    public static func readRecord(_ id: UInt32) -> DeviceRecord? {
        readSmallFile(recordPath(id)).flatMap(DeviceRecord.decode)
    }

    public static func removeDeviceFiles(_ id: UInt32, keepLog: Bool = true) {
        unlink(socketPath(id))
        unlink(recordPath(id))
        if !keepLog { unlink(logPath(id)) }
    }

    /// Writes `text` to `path` through a temporary file and rename(2).
    public static func writeFileAtomically(_ path: String, _ text: String, mode: mode_t) throws {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        if fd < 0 { throw SystemError.last("create \(temporary)") }
        let ok = text.utf8CString.withUnsafeBufferPointer { buf in
            writeAll(fd, UnsafeRawPointer(buf.baseAddress!), buf.count - 1)
        }
        close(fd)
        if !ok || rename(temporary, path) != 0 {
            let e = errno
            unlink(temporary)
            throw SystemError(errno: e, "write \(path)")
        }
    }
}

/// write(2) until everything is written; false on error.
@discardableResult
public func writeAll(_ fd: Int32, _ pointer: UnsafeRawPointer, _ count: Int) -> Bool {
    var done = 0
    while done < count {
        let n = write(fd, pointer + done, count - done)
        if n < 0 {
            if errno == EINTR { continue }
            return false
        }
        done += n
    }
    return true
}

@discardableResult
public func writeAll(_ fd: Int32, _ text: String) -> Bool {
    var copy = text
    return copy.withUTF8 { buf in
        guard let base = buf.baseAddress else { return true }
        return writeAll(fd, UnsafeRawPointer(base), buf.count)
    }
}
