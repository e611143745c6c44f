import Glibc
import PCacheCore
import Synchronization
import Testing

@testable import UblkServer

/// A target that records what reaches it.
final class FakeTarget: UblkTarget {
    let parameters = UblkDeviceParameters(deviceBytes: 1 << 30)
    let kind = "fake"
    let seen = Locked<[[String]]>([])

    func makeQueueHandler(queueID: Int, depth: Int, io: QueueIO, waker: QueueWaker) throws -> UblkQueueHandler {
        throw SystemError(errno: ENOTSUP, "fake")
    }

    func control(_ words: [String]) -> ControlReply {
        seen.withLock { $0.append(words) }
        switch words.first {
        case "status": return .ok(["0 2097152 pcache 0 63 63 1 70 1182 0:0 0:0 0:0"])
        case "table": return .ok(["0 2097152 pcache 259:0 254:16 4 cache_mode writeback crc true"])
        case "stats": return .ok(["writeback_failures 0", "crcErrors 0"])
        case "message":
            do {
                _ = try PCacheMessage.parse(Array(words.dropFirst()))
                return .ok
            } catch {
                return .error(error.description)
            }
        default: return .error("unexpected")
        }
    }

    func shutdown(flushDirty: Bool) throws {}
}

/// A server on a real Unix socket in a temporary directory.
final class SocketFixture {
    let dir = TemporaryDirectory()
    let target = FakeTarget()
    let stops = Locked<[Bool]>([])
    let server: ControlSocketServer
    var path: String { server.path }

    init(clientTimeout: Int = 1) throws {
        let target = self.target
        let stops = self.stops
        let dispatcher = ControlDispatcher(
            target: target, info: { ["id 7", "state LIVE"] },
            stop: { flush in stops.withLock { $0.append(flush) } })
        server = ControlSocketServer(path: dir.file("ublkb7.sock"), clientTimeout: clientTimeout) { verb, words in
            dispatcher.reply(verb: verb, words: words)
        }
        try server.start()
    }

    deinit { server.stop() }

    func ask(_ line: String) throws -> ControlReply {
        try ControlSocketClient.request(path: path, line, timeout: 5)
    }

    /// Sends raw bytes (no newline added), optionally half-closes, and
    /// returns everything the server wrote back.
    func raw(_ bytes: [UInt8], shutdownWrite: Bool = true) -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = makeUnixAddress(path)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else { return "connect failed" }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }
            sent += n
        }
        if shutdownWrite { shutdown(fd, Int32(SHUT_WR)) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

@Suite struct ControlProtocolTests {
    @Test func requestParsing() {
        #expect(ControlProtocol.parseRequest(Array("status".utf8)) == .words(["status"]))
        #expect(ControlProtocol.parseRequest(Array("  message\tgc_percent  10 \r".utf8))
                == .words(["message", "gc_percent", "10"]))
        #expect(ControlProtocol.parseRequest([]) == .invalid("empty request"))
        #expect(ControlProtocol.parseRequest(Array("   ".utf8)) == .invalid("empty request"))
        if case .invalid(let why) = ControlProtocol.parseRequest([0x73, 0x00, 0x74]) {
            #expect(why.hasPrefix("malformed request"))
        } else {
            Issue.record("NUL accepted")
        }
        if case .invalid(let why) = ControlProtocol.parseRequest([0x73, 0xFF, 0xFE]) {
            #expect(why == "malformed request: not UTF-8")
        } else {
            Issue.record("invalid UTF-8 accepted")
        }
        let long = [UInt8](repeating: 0x61, count: ControlProtocol.maxRequestBytes + 1)
        #expect(ControlProtocol.parseRequest(long) == .invalid("request too long (limit 4096 bytes)"))
        let limit = [UInt8](repeating: 0x61, count: ControlProtocol.maxRequestBytes)
        #expect(ControlProtocol.parseRequest(limit) == .words([String(repeating: "a", count: 4096)]))
    }

    @Test func replyEncodingRoundTrips() {
        #expect(ControlProtocol.encode(.ok(["a b", "c"])) == "ok\na b\nc\n\n")
        #expect(ControlProtocol.encode(.ok([])) == "ok\n\n")
        #expect(ControlProtocol.encode(.error("bad\nthing")) == "error: bad thing\n\n")
        // Payload lines are never empty and never contain a newline on the wire.
        #expect(ControlProtocol.encode(.ok(["", "x\ny"])) == "ok\n-\nx y\n\n")
        for reply in [ControlReply.ok(["1", "2 3"]), .ok([]), .error("nope: really")] {
            #expect(ControlProtocol.decodeReply(ControlProtocol.encode(reply)) == reply)
        }
        #expect(ControlProtocol.decodeReply("garbage\n\n") == .error("malformed reply from the server: garbage"))
        #expect(ControlProtocol.decodeReply("") == .error("malformed reply from the server: "))
    }
}

@Suite struct ControlSocketTests {
    @Test func builtInAndTargetVerbs() throws {
        let f = try SocketFixture()
        #expect(try f.ask("status") == .ok(["0 2097152 pcache 0 63 63 1 70 1182 0:0 0:0 0:0"]))
        #expect(try f.ask("table") == .ok(["0 2097152 pcache 259:0 254:16 4 cache_mode writeback crc true"]))
        #expect(try f.ask("STATUS") == .ok(["0 2097152 pcache 0 63 63 1 70 1182 0:0 0:0 0:0"]))
        #expect(try f.ask("info") == .ok(["id 7", "state LIVE"]))
        #expect(try f.ask("stats") == .ok(["writeback_failures 0", "crcErrors 0"]))
        #expect(try f.ask("message gc_percent 10") == .ok([]))
        #expect(try f.ask("message gc_percent 91") == .error("Invalid gc_percent value (91 is above 90)"))
        #expect(f.target.seen.withLock { $0 } == [
            ["status"], ["table"], ["status"], ["stats"], ["message", "gc_percent", "10"],
            ["message", "gc_percent", "91"],
        ])
        #expect(f.stops.withLock { $0 }.isEmpty)
        #expect(try f.ask("stop") == .ok(["stopping"]))
        #expect(try f.ask("stop flush") == .ok(["stopping after writing back dirty data"]))
        #expect(f.stops.withLock { $0 } == [false, true])
    }

    @Test func badRequestsGetErrorsAndReachNothing() throws {
        let f = try SocketFixture()
        #expect(try f.ask("frobnicate") == .error(
            "unknown request 'frobnicate' (expected one of: status, table, stats, message, info, stop)"))
        #expect(try f.ask("") == .error("empty request"))
        #expect(try f.ask("status now") == .error("'status' takes no arguments"))
        #expect(try f.ask("table 1") == .error("'table' takes no arguments"))
        #expect(try f.ask("stats all") == .error("'stats' takes no arguments"))
        #expect(try f.ask("info x") == .error("'info' takes no arguments"))
        #expect(try f.ask("message") == .error("'message' needs a message, e.g. 'message gc_percent 80'"))
        #expect(try f.ask("stop now") == .error("'stop' takes no argument or 'flush'"))
        #expect(f.raw(Array("sta\u{1}tus\n".utf8)) == "error: malformed request: control character 0x1\n\n")
        #expect(f.raw([0xC3, 0x28, 0x0A]) == "error: malformed request: not UTF-8\n\n")
        let huge = [UInt8](repeating: 0x41, count: 64 * 1024) + [0x0A]
        #expect(f.raw(huge) == "error: request too long (limit 4096 bytes)\n\n")
        #expect(f.target.seen.withLock { $0 }.isEmpty)
        #expect(f.stops.withLock { $0 }.isEmpty)
        // Still serving normally afterwards.
        #expect(try f.ask("info") == .ok(["id 7", "state LIVE"]))
    }

    @Test func requestWithoutNewlineEndedByShutdownIsServed() throws {
        let f = try SocketFixture()
        #expect(f.raw(Array("info".utf8)) == "ok\nid 7\nstate LIVE\n\n")
        // Only the first line counts; the rest of the connection is ignored.
        #expect(f.raw(Array("info\nstop\n".utf8)) == "ok\nid 7\nstate LIVE\n\n")
        #expect(f.stops.withLock { $0 }.isEmpty)
    }

    @Test func silentClientsTimeOutWithoutBlockingOthers() throws {
        let f = try SocketFixture(clientTimeout: 1)
        // A client that connects and says nothing, holding the connection open.
        let idle = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(idle) }
        var address = makeUnixAddress(f.path)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(idle, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        #expect(rc == 0)
        // The next client is answered once the idle one has timed out.
        #expect(try f.ask("info") == .ok(["id 7", "state LIVE"]))
    }

    @Test func socketFileIsPrivateAndRemovedOnStop() throws {
        let f = try SocketFixture()
        var st = stat()
        #expect(stat(f.path, &st) == 0)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        #expect(st.st_mode & 0o777 == 0o600)
        f.server.stop()
        #expect(stat(f.path, &st) != 0)
        #expect(throws: SystemError.self) { try f.ask("info") }
        f.server.stop()  // idempotent
    }

    /// A server that takes the connection and never answers: the client
    /// says it waited, not "Resource temporarily unavailable".
    @Test func aServerThatNeverRepliesIsATimeout() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("mute.sock")
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = makeUnixAddress(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0 && listen(listener, 1) == 0)
        do {
            _ = try ControlSocketClient.request(path: path, "status", timeout: 1)
            Issue.record("a reply from a server that sends none")
        } catch let error as SystemError {
            #expect(error.errno == ETIMEDOUT)
            #expect("\(error)".contains("no reply within 1 s"), "\(error)")
        }
    }

    @Test func staleSocketFileIsReplaced() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("s.sock")
        let fd = open(path, O_CREAT | O_WRONLY, 0o644)
        close(fd)
        let server = ControlSocketServer(path: path) { _, _ in .ok(["fine"]) }
        try server.start()
        defer { server.stop() }
        #expect(try ControlSocketClient.request(path: path, "anything") == .ok(["fine"]))
    }

    @Test func manyClientsInParallel() throws {
        let f = try SocketFixture()
        let failures = AtomicCounter()
        var threads: [OSThread] = []
        let path = f.path
        for _ in 0..<8 {
            threads.append(OSThread(name: "client") {
                for _ in 0..<25 {
                    let reply = try? ControlSocketClient.request(path: path, "status", timeout: 10)
                    if reply != .ok(["0 2097152 pcache 0 63 63 1 70 1182 0:0 0:0 0:0"]) { failures.increment() }
                }
            })
        }
        for t in threads { try t.start() }
        for t in threads { t.join() }
        #expect(failures.value == 0)
        #expect(f.target.seen.withLock { $0.count } == 200)
    }
}
