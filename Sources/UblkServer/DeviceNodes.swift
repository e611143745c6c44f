import Glibc
import PCacheCore

/// /dev nodes of ublk devices. With udev (or devtmpfs) they appear by
/// themselves, a little after the kernel creates the device; without either
/// (a bare VM) this makes them from the numbers in /sys.
public enum DeviceNodes {
    public static func charDevicePath(_ id: UInt32) -> String { "/dev/ublkc\(id)" }
    public static func blockDevicePath(_ id: UInt32) -> String { "/dev/ublkb\(id)" }
    static func charSysfsDev(_ id: UInt32) -> String { "/sys/class/ublk-char/ublkc\(id)/dev" }
    static func blockSysfsDev(_ id: UInt32) -> String { "/sys/block/ublkb\(id)/dev" }

    /// Makes sure /dev/ublkcN exists and opens it read-write. Retries for a
    /// while: the node appears asynchronously after ADD_DEV.
    public static func openCharDevice(_ id: UInt32, timeout: Double = 5) throws -> Int32 {
        let path = charDevicePath(id)
        try ensureNode(path: path, sysfsDev: charSysfsDev(id), block: false, timeout: timeout)
        var lastErrno: Int32 = 0
        for _ in 0..<50 {
            let fd = open(path, O_RDWR | O_CLOEXEC)
            if fd >= 0 { return fd }
            lastErrno = errno
            if lastErrno != ENOENT && lastErrno != ENXIO { break }
            sleepSeconds(0.02)
        }
        throw SystemError(errno: lastErrno, "open \(path)")
    }

    /// Makes sure /dev/ublkbN exists (after START_DEV or END_USER_RECOVERY).
    public static func ensureBlockDevice(_ id: UInt32, timeout: Double = 5) throws {
        try ensureNode(path: blockDevicePath(id), sysfsDev: blockSysfsDev(id), block: true, timeout: timeout)
    }

    /// Waits up to `timeout` for `path` to be the device named in `sysfsDev`
    /// ("major:minor"); creates (or corrects) the node when it does not show up.
    static func ensureNode(path: String, sysfsDev: String, block: Bool, timeout: Double) throws {
        var waited = 0.0
        var expected: UInt64? = nil
        while true {
            if expected == nil, let text = readSmallFile(sysfsDev) { expected = parseDevNumber(text) }
            if let expected, let current = nodeNumber(path, block: block), current == expected { return }
            if waited >= min(timeout, 1.0), let expected {
                // Nothing made it: do it ourselves.
                unlink(path)
                let mode = (block ? S_IFBLK : S_IFCHR) | 0o600
                if mknod(path, mode_t(mode), dev_t(expected)) != 0 && errno != EEXIST {
                    throw SystemError.last("mknod \(path)")
                }
                return
            }
            if waited >= timeout {
                throw SystemError(errno: ENODEV, "\(path): the kernel did not create the device (\(sysfsDev) missing)")
            }
            sleepSeconds(0.02)
            waited += 0.02
        }
    }

    /// st_rdev of `path` when it is a node of the right kind.
    static func nodeNumber(_ path: String, block: Bool) -> UInt64? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        let kind = st.st_mode & S_IFMT
        guard kind == (block ? S_IFBLK : S_IFCHR) else { return nil }
        return UInt64(st.st_rdev)
    }

    /// "259:3\n" → the Linux dev_t encoding of (259, 3).
    public static func parseDevNumber(_ text: String) -> UInt64? {
        let trimmed = text.split(whereSeparator: { $0 == "\n" || $0 == " " }).first ?? ""
        let parts = trimmed.split(separator: ":")
        guard parts.count == 2, let major = UInt64(parts[0]), let minor = UInt64(parts[1]) else { return nil }
        return makeDev(major: major, minor: minor)
    }

    /// glibc's makedev.
    public static func makeDev(major: UInt64, minor: UInt64) -> UInt64 {
        ((major & 0xFFFF_F000) << 32) | ((major & 0xFFF) << 8) | ((minor & 0xFFFF_FF00) << 12) | (minor & 0xFF)
    }
}

/// Reads a small text file (sysfs attribute, config) whole; nil on error.
public func readSmallFile(_ path: String, limit: Int = 1 << 20) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while bytes.count < limit {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}

func sleepSeconds(_ seconds: Double) {
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
}
