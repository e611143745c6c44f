import Glibc
import PCacheCore
import Synchronization

/// The control-socket wire format (Documentation/control-socket.md).
///
/// Request: one line of at most `maxRequestBytes` bytes (printable UTF-8,
/// words separated by spaces or tabs), ended by "\n" or by the client
/// shutting down its side. Reply: a first line `ok` or `error: <message>`,
/// then for `ok` zero or more non-empty payload lines, then one empty line;
/// the server then closes the connection.
public enum ControlProtocol {
    public static let maxRequestBytes = 4096

    public enum Request: Equatable {
        case words([String])
        case invalid(String)
    }

    /// Parses the raw bytes of one request (without its "\n").
    public static func parseRequest(_ bytes: [UInt8]) -> Request {
        var line = bytes
        if line.last == 0x0D { line.removeLast() }  // tolerate CRLF
        if line.count > maxRequestBytes {
            return .invalid("request too long (limit \(maxRequestBytes) bytes)")
        }
        for b in line where (b < 0x20 && b != 0x09) || b == 0x7F {
            return .invalid("malformed request: control character 0x\(String(b, radix: 16))")
        }
        guard let text = String(validating: line, as: UTF8.self) else {
            return .invalid("malformed request: not UTF-8")
        }
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        if words.isEmpty { return .invalid("empty request") }
        return .words(words)
    }

    public static func encode(_ reply: ControlReply) -> String {
        switch reply {
        case .ok(let lines):
            var text = "ok\n"
            for line in lines {
                let clean = sanitize(line)
                text += (clean.isEmpty ? "-" : clean) + "\n"
            }
            return text + "\n"
        case .error(let message):
            return "error: \(sanitize(message))\n\n"
        }
    }

    /// Decodes a whole reply as read from the socket.
    public static func decodeReply(_ text: String) -> ControlReply {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let first = lines.first else { return .error("empty reply from the server") }
        lines.removeFirst()
        if first == "ok" {
            var payload: [String] = []
            for line in lines {
                if line.isEmpty { break }
                payload.append(line)
            }
            return .ok(payload)
        }
        if first.hasPrefix("error: ") { return .error(String(first.dropFirst(7))) }
        return .error("malformed reply from the server: \(first.prefix(80))")
    }

    private static func sanitize(_ line: String) -> String {
        String(line.map { $0 == "\n" || $0 == "\r" ? " " : $0 })
    }
}

/// A Unix stream socket that answers one request line per connection, on a
/// thread of its own, with plain POSIX calls. A slow or broken client costs
/// at most `clientTimeout` seconds of that thread and never touches I/O.
public final class ControlSocketServer: @unchecked Sendable {
    public let path: String
    private let handler: @Sendable (String, [String]) -> ControlReply
    private let clientTimeout: Int
    private var listenFD: Int32 = -1
    private var wakePipe: [Int32] = [-1, -1]
    private var thread: OSThread?
    private let stopping = Atomic<Bool>(false)

    /// - Parameter handler: called on the socket thread with the request's
    ///   words (never empty) and its verb (the first word, lowercased).
    public init(path: String, clientTimeout: Int = 2,
                handler: @escaping @Sendable (String, [String]) -> ControlReply) {
        self.path = path
        self.clientTimeout = clientTimeout
        self.handler = handler
    }

    deinit { stop() }

    /// Binds (replacing a stale socket file), restricts it to mode 0600 and
    /// starts serving.
    public func start() throws {
        guard path.utf8.count < 108 else { throw SystemError(errno: ENAMETOOLONG, "control socket path \(path)") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError.last("socket") }
        unlink(path)
        var address = makeUnixAddress(path)
        // No umask games (the mask is process-wide and other threads create
        // files too): the runtime directory is 0700, so nobody else can reach
        // the socket before the chmod below.
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if bound != 0 {
            let e = errno
            close(fd)
            throw SystemError(errno: e, "bind \(path)")
        }
        chmod(path, 0o600)
        if listen(fd, 16) != 0 {
            let e = errno
            close(fd)
            unlink(path)
            throw SystemError(errno: e, "listen \(path)")
        }
        if pipe(&wakePipe) != 0 {
            let e = errno
            close(fd)
            unlink(path)
            throw SystemError(errno: e, "pipe")
        }
        for f in wakePipe { _ = fcntl(f, F_SETFD, FD_CLOEXEC) }
        listenFD = fd
        let thread = OSThread(name: "pcache-ctl") { [self] in serve() }
        do {
            try thread.start()
        } catch {
            close(fd)
            listenFD = -1
            unlink(path)
            for f in wakePipe { close(f) }
            wakePipe = [-1, -1]
            throw error
        }
        self.thread = thread
    }

    /// Stops the thread, closes and removes the socket. Idempotent.
    public func stop() {
        if stopping.exchange(true, ordering: .acquiringAndReleasing) { return }
        if wakePipe[1] >= 0 {
            var one: UInt8 = 1
            _ = write(wakePipe[1], &one, 1)
        }
        thread?.join()
        thread = nil
        if listenFD >= 0 {
            close(listenFD)
            unlink(path)
            listenFD = -1
        }
        for f in wakePipe where f >= 0 { close(f) }
        wakePipe = [-1, -1]
    }

    private func serve() {
        var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wakePipe[0], events: Int16(POLLIN), revents: 0)]
        while !stopping.load(ordering: .acquiring) {
            fds[0].revents = 0
            fds[1].revents = 0
            let n = poll(&fds, 2, -1)
            if n < 0 {
                if errno == EINTR { continue }
                Log.error("control socket: poll: \(String(cString: strerror(errno)))")
                return
            }
            if fds[1].revents != 0 { return }
            if fds[0].revents & Int16(POLLIN) != 0 {
                let client = accept(listenFD, nil, nil)
                if client < 0 { continue }
                _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                serveClient(client)
                close(client)
            }
        }
    }

    private func serveClient(_ fd: Int32) {
        var timeout = timeval(tv_sec: clientTimeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let reply: ControlReply
        switch readRequest(fd) {
        case .none:
            return  // timed out or reset before a request: nothing to answer
        case .some(let bytes):
            switch ControlProtocol.parseRequest(bytes) {
            case .invalid(let why): reply = .error(why)
            case .words(let words): reply = handler(words[0].lowercased(), words)
            }
        }
        let text = ControlProtocol.encode(reply)
        var copy = text
        copy.withUTF8 { buf in
            var done = 0
            while done < buf.count {
                let n = send(fd, buf.baseAddress! + done, buf.count - done, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                done += n
            }
        }
    }

    /// Reads up to the first "\n" (or EOF). An over-long request is cut at
    /// the limit plus one byte, which the parser then refuses. nil: nothing
    /// usable arrived.
    private func readRequest(_ fd: Int32) -> [UInt8]? {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 512)
        let limit = ControlProtocol.maxRequestBytes + 1
        while bytes.count < limit {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, limit - bytes.count), 0) }
            if n < 0 {
                if errno == EINTR { continue }
                return bytes.isEmpty ? nil : bytes
            }
            if n == 0 { return bytes.isEmpty ? nil : bytes }
            if let newline = chunk[0..<n].firstIndex(of: 0x0A) {
                bytes.append(contentsOf: chunk[0..<newline])
                return bytes
            }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }
}

/// Sends one request to a server's control socket and returns its reply.
public enum ControlSocketClient {
    public static func request(path: String, _ line: String, timeout: Int = 30) throws -> ControlReply {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError.last("socket") }
        defer { close(fd) }
        var address = makeUnixAddress(path)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if connected != 0 { throw SystemError.last("connect \(path)") }
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var message = line + "\n"
        let sent = message.withUTF8 { buf -> Bool in
            var done = 0
            while done < buf.count {
                let n = send(fd, buf.baseAddress! + done, buf.count - done, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { errno = ETIMEDOUT }
                if n <= 0 { return false }
                done += n
            }
            return true
        }
        if !sent { throw SystemError.last("send to \(path)") }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK {  // SO_RCVTIMEO ran out
                    throw SystemError(errno: ETIMEDOUT, "\(path): no reply within \(timeout) s")
                }
                throw SystemError.last("read reply from \(path)")
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count >= 2 && bytes[bytes.count - 1] == 0x0A && bytes[bytes.count - 2] == 0x0A { break }
            if bytes.count > 16 << 20 { break }
        }
        if bytes.isEmpty { throw SystemError(errno: ECONNRESET, "\(path): the server closed without a reply") }
        return ControlProtocol.decodeReply(String(decoding: bytes, as: UTF8.self))
    }
}

func makeUnixAddress(_ path: String) -> sockaddr_un {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        let bytes = Array(path.utf8.prefix(raw.count - 1))
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return address
}
