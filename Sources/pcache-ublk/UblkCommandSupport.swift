import Glibc
import PCacheCore
import UblkServer

/// Helpers shared by the ublk verbs (add, del, list, status, message,
/// recover). Namespaced so they cannot collide with other verbs' helpers.
enum UblkCLI {
    /// A command-line mistake: printed with the usage, exit status 2.
    struct UsageError: Error, CustomStringConvertible {
        let description: String
        init(_ message: String) { description = message }
    }

    /// A failure to report: exit status 1.
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ message: String) { description = message }
    }

    /// Runs a verb's body, printing its errors as `pcache-ublk <verb>: …` and
    /// mapping them to exit statuses (2 usage, 1 failure).
    static func run(_ verb: String, usage: String, _ body: () throws -> Int32) -> Int32 {
        do {
            return try body()
        } catch let error as UsageError {
            printError("pcache-ublk \(verb): \(error)\nusage: \(usage)")
            return 2
        } catch {
            printError("pcache-ublk \(verb): \(error)")
            return 1
        }
    }

    static func printError(_ message: String) {
        writeAll(2, message + "\n")
    }

    static func printOut(_ message: String) {
        writeAll(1, message + "\n")
    }

    /// Whether `-h` or `--help` is among the options: not as the value of
    /// one of `valued` (`add --table -h` is a table, however odd), nor after `--`.
    static func wantsHelp(_ args: [String], valued: [String: String]) -> Bool {
        var i = 0
        while i < args.count {
            let word = args[i]
            if word == "--" { return false }
            if word == "-h" || word == "--help" { return true }
            if valued[word] != nil { i += 1 }
            i += 1
        }
        return false
    }

    /// Options of the form `-n 3`, `--id 3` or `--id=3`, and bare flags.
    /// Stops at `--` or (when `stopAtPositional`) at the first positional
    /// word, which keeps values like "-1" in `message -n 0 gc_percent -1`
    /// positional.
    struct Arguments {
        private(set) var values: [String: String] = [:]
        private(set) var flags: Set<String> = []
        private(set) var positional: [String] = []

        /// - Parameters:
        ///   - valued: option spellings that take a value, mapped to a key.
        ///   - flags: flag spellings, mapped to a key.
        init(_ args: [String], valued: [String: String], flags flagNames: [String: String],
             stopAtPositional: Bool = false) throws {
            var i = 0
            while i < args.count {
                let word = args[i]
                if word == "--" {
                    positional.append(contentsOf: args[(i + 1)...])
                    break
                }
                if word.hasPrefix("-") && word.count > 1 && !(stopAtPositional && !positional.isEmpty) {
                    var name = word
                    var inline: String? = nil
                    if word.hasPrefix("--"), let eq = word.firstIndex(of: "=") {
                        name = String(word[..<eq])
                        inline = String(word[word.index(after: eq)...])
                    }
                    if let key = valued[name] {
                        if let inline {
                            values[key] = inline
                        } else {
                            guard i + 1 < args.count else { throw UsageError("\(name) needs a value") }
                            values[key] = args[i + 1]
                            i += 1
                        }
                    } else if let key = flagNames[name], inline == nil {
                        flags.insert(key)
                    } else {
                        throw UsageError("unknown option \(word)")
                    }
                } else {
                    if stopAtPositional && !positional.isEmpty {
                        positional.append(contentsOf: args[i...])
                        break
                    }
                    positional.append(word)
                }
                i += 1
            }
        }

        func has(_ key: String) -> Bool { flags.contains(key) }
        func value(_ key: String) -> String? { values[key] }

        func int(_ key: String, range: ClosedRange<Int>) throws -> Int? {
            guard let text = values[key] else { return nil }
            guard let v = Int(text), range.contains(v) else {
                throw UsageError("\(key) must be a number in \(range.lowerBound)...\(range.upperBound), not '\(text)'")
            }
            return v
        }

        func deviceID() throws -> UInt32? {
            guard let text = values["id"] else { return nil }
            return try UblkCLI.parseDeviceID(text)
        }
    }

    /// "3", "ublkb3" or "/dev/ublkb3".
    static func parseDeviceID(_ text: String) throws -> UInt32 {
        var t = Substring(text)
        if t.hasPrefix("/dev/") { t = t.dropFirst(5) }
        if t.hasPrefix("ublkb") || t.hasPrefix("ublkc") { t = t.dropFirst(5) }
        guard !t.isEmpty, t.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let id = UInt32(t), id < (1 << 20) else {
            throw UsageError("invalid device id '\(text)'")
        }
        return id
    }

    /// "1G", "512M", "4096", "1GiB", "2T" → bytes (binary units).
    static func parseSize(_ text: String) -> UInt64? {
        var digits = Substring(text)
        var shift = 0
        let suffixes: [(String, Int)] = [
            ("KiB", 10), ("MiB", 20), ("GiB", 30), ("TiB", 40),
            ("K", 10), ("M", 20), ("G", 30), ("T", 40), ("k", 10), ("m", 20), ("g", 30), ("t", 40),
        ]
        for (suffix, s) in suffixes where digits.hasSuffix(suffix) {
            digits = digits.dropLast(suffix.count)
            shift = s
            break
        }
        guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = UInt64(digits) else {
            return nil
        }
        guard n <= UInt64.max >> shift else { return nil }
        return n << shift
    }

    /// Human-readable size: "1.0 GiB".
    static func formatSize(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(bytes) B" }
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10) \(units[unit])"
    }

    /// Refuses to go on without the ublk driver, naming what to load: without
    /// it there are no devices, and an empty list would hide why.
    static func requireDriver() throws {
        if access(UblkControl.path, F_OK) != 0 {
            throw Failure("\(UblkControl.path) is missing: load the driver with 'modprobe ublk_drv'")
        }
    }

    /// Ids of the ublk devices the kernel has, from /sys/class/ublk-char.
    static func deviceIDs() -> [UInt32] {
        directoryEntries("/sys/class/ublk-char").compactMap { name in
            name.hasPrefix("ublkc") ? UInt32(name.dropFirst(5)) : nil
        }.sorted()
    }

    /// The names in a directory, without "." and ".."; empty if it cannot be read.
    static func directoryEntries(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Whether process `pid` exists and is not a zombie.
    static func isAlive(_ pid: Int32) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
        // "pid (comm) S ...": the state follows the last ')'.
        guard let stat = readSmallFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return true }
        let state = stat[stat.index(after: close)...].drop(while: { $0 == " " }).first
        return state != "Z" && state != "X"
    }

    /// Asks the server of device `id` over its control socket. A missing or
    /// dead server becomes a Failure that says what to do.
    static func ask(_ id: UInt32, _ line: String, timeout: Int = 30) throws -> ControlReply {
        do {
            return try ControlSocketClient.request(path: RuntimeFiles.socketPath(id), line, timeout: timeout)
        } catch let error as SystemError where error.errno == ENOENT || error.errno == ECONNREFUSED {
            var hint = ""
            if let info = try? UblkControl().deviceInfo(id) {
                hint = "state \(info.stateName)"
                if info.state == .quiesced { hint += "; its server died: 'pcache-ublk recover -n \(id)'" }
            } else {
                hint = "no such device"
            }
            throw Failure("no server answers for /dev/ublkb\(id) (\(hint))")
        }
    }

    // MARK: Starting a server in the background

    /// Re-executes this binary with `arguments` (which include
    /// `--foreground --ready-fd 3`), its stdout and stderr appended to
    /// `logPath`, in a new session; waits until it reports readiness on fd 3
    /// ("ready <id>") or an error ("error <message>"). Returns the device id.
    static func launchServer(arguments: [String], logPath: String, timeoutSeconds: Int32 = 600) throws -> UInt32 {
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else { throw SystemError.last("pipe") }
        let readEnd = pipeFDs[0], writeEnd = pipeFDs[1]
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)  // dup2 onto fd 3 clears it in the child
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard logFD >= 0 else {
            close(readEnd)
            close(writeEnd)
            throw SystemError.last("open \(logPath)")
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, logFD, 1)
        posix_spawn_file_actions_adddup2(&actions, logFD, 2)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        var emptySet = sigset_t()
        sigemptyset(&emptySet)
        posix_spawnattr_setsigmask(&attributes, &emptySet)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGUSR1] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        let setsid: Int32 = 0x80  // POSIX_SPAWN_SETSID (glibc ≥ 2.26): leave the caller's session
        posix_spawnattr_setflags(&attributes, Int16(setsid | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let executable = ownExecutablePath()
        let argv = [executable] + arguments
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, &cArgs, environ)
        for p in cArgs { free(p) }
        posix_spawn_file_actions_destroy(&actions)
        posix_spawnattr_destroy(&attributes)
        close(logFD)
        close(writeEnd)
        if rc != 0 {
            close(readEnd)
            throw SystemError(errno: rc, "posix_spawn \(executable)")
        }
        defer { close(readEnd) }

        // Wait for "ready <id>\n" or "error <message>\n" (or EOF: it died).
        var text: [UInt8] = []
        var pfd = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
        var waitedMs: Int32 = 0
        while true {
            let n = poll(&pfd, 1, 1000)
            if n < 0 && errno == EINTR { continue }
            if n == 0 {
                waitedMs += 1000
                if waitedMs >= timeoutSeconds * 1000 {
                    throw Failure("the server (pid \(pid)) did not report ready within \(timeoutSeconds) s; see \(logPath)")
                }
                continue
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let got = chunk.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            if got < 0 && errno == EINTR { continue }
            if got <= 0 { break }
            text.append(contentsOf: chunk[0..<got])
        }
        let message = String(decoding: text, as: UTF8.self)
        if message.hasPrefix("ready "),
           let id = UInt32(message.dropFirst(6).prefix(while: { $0 != "\n" })) {
            return id
        }
        var status: Int32 = 0
        for _ in 0..<20 {  // reap it if it is gone
            if waitpid(pid, &status, WNOHANG) != 0 { break }
            sleepMilliseconds(50)
        }
        if message.hasPrefix("error ") {
            throw Failure(String(message.dropFirst(6).prefix(while: { $0 != "\n" })))
        }
        throw Failure("the server exited during start-up; see \(logPath)")
    }

    /// The server's end of the readiness pipe (hidden `--ready-fd`): one
    /// report, "ready <id>" or "error <message>", then closed.
    final class Readiness {
        private var fd: Int32?

        init(_ text: String?) throws {
            guard let text else { return }
            guard let fd = Int32(text), fd >= 3, fcntl(fd, F_GETFD) >= 0 else {
                throw UsageError("--ready-fd: '\(text)' is not an open file descriptor")
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            self.fd = fd
        }

        var isPiped: Bool { fd != nil }

        func ready(_ id: UInt32) { send("ready \(id)") }

        func failed(_ message: String) { send("error " + String(message.map { $0 == "\n" ? " " : $0 })) }

        private func send(_ line: String) {
            guard let fd else { return }
            writeAll(fd, line + "\n")
            close(fd)
            self.fd = nil
        }
    }

    static func ownExecutablePath() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if n > 0 {
            let path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if !path.hasSuffix(" (deleted)") { return path }
        }
        return "/proc/self/exe"
    }

    static func sleepMilliseconds(_ ms: Int) {
        var request = timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }

}
