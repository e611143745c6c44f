/// Answers control-socket requests for one device: the built-in verbs
/// (`info`, `stop`, `stop flush`) here, `status`, `table`, `stats` and
/// `message …` through the target. Runs on the control-socket thread.
public final class ControlDispatcher: Sendable {
    public static let verbs = ["status", "table", "stats", "message", "info", "stop"]

    private let target: UblkTarget
    private let info: @Sendable () -> [String]
    private let stop: @Sendable (_ flush: Bool) -> Void

    /// - Parameters:
    ///   - info: the lines of the `info` reply.
    ///   - stop: asks the server to stop (after the reply is sent); `flush`:
    ///     write back dirty data first.
    public init(target: UblkTarget, info: @escaping @Sendable () -> [String],
                stop: @escaping @Sendable (_ flush: Bool) -> Void) {
        self.target = target
        self.info = info
        self.stop = stop
    }

    public func reply(verb: String, words: [String]) -> ControlReply {
        switch verb {
        case "status", "table", "stats":
            guard words.count == 1 else { return .error("'\(verb)' takes no arguments") }
            return target.control([verb])
        case "info":
            guard words.count == 1 else { return .error("'info' takes no arguments") }
            return .ok(info())
        case "message":
            guard words.count >= 2 else { return .error("'message' needs a message, e.g. 'message gc_percent 80'") }
            return target.control(["message"] + words.dropFirst())
        case "stop":
            if words.count == 1 {
                stop(false)
                return .ok(["stopping"])
            }
            if words.count == 2 && words[1].lowercased() == "flush" {
                stop(true)
                return .ok(["stopping after writing back dirty data"])
            }
            return .error("'stop' takes no argument or 'flush'")
        default:
            return .error("unknown request '\(words[0].prefix(64))' (expected one of: \(Self.verbs.joined(separator: ", ")))")
        }
    }
}
