import Glibc

/// Plain stderr logging for the server process (its stderr is the device's
/// log file when it runs in the background). Not for the hot path.
public enum Log {
    public static func info(_ message: String) { write("info", message) }
    public static func warning(_ message: String) { write("warning", message) }
    public static func error(_ message: String) { write("error", message) }

    /// Runs a clean-up step whose failure must not hide the error being
    /// handled, and logs that failure instead of dropping it.
    public static func ifFails(_ what: String, _ body: () throws -> Void) {
        do { try body() } catch { Self.error("\(what): \(error)") }
    }

    private static func write(_ level: String, _ message: String) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var t = now.tv_sec
        var parts = tm()
        gmtime_r(&t, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let ms = now.tv_nsec / 1_000_000
        let msText = ms < 10 ? "00\(ms)" : ms < 100 ? "0\(ms)" : "\(ms)"
        let stamp = "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T"
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(msText)Z"
        let line = "\(stamp) pcache-ublk[\(getpid())] \(level): \(message)\n"
        line.withCString { p in _ = Glibc.write(2, p, strlen(p)) }
    }
}
