import Glibc

/// Exclusive use of a device for as long as a cache runs on it.
///
/// Two servers on one cache device would each replay and then overwrite the
/// other's key log. Every pcache-ublk takes an exclusive `flock` on both of
/// its devices; block devices are also opened with O_EXCL, the kernel's own
/// exclusive claim, so nothing can mount them (or build a dm target on them)
/// underneath the cache either.
public final class DeviceClaim: @unchecked Sendable {
    public let path: String
    private let fd: Int32

    /// - Parameter role: "cache device" or "backing device", for the message.
    public init(path: String, role: String) throws {
        self.path = path
        var status = stat()
        guard stat(path, &status) == 0 else {
            throw CacheError.deviceBusy(path: path, role: role, reason: SystemError.last("stat").description)
        }
        let isBlock = status.st_mode & S_IFMT == S_IFBLK
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | (isBlock ? O_EXCL : 0))
        guard descriptor >= 0 else {
            let reason = errno == EBUSY
                ? "it is in use (mounted, claimed by device-mapper, or opened exclusively by another program)"
                : SystemError.last("open").description
            throw CacheError.deviceBusy(path: path, role: role, reason: reason)
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let reason = errno == EWOULDBLOCK
                ? "another pcache-ublk process is serving it" : SystemError.last("flock").description
            close(descriptor)
            throw CacheError.deviceBusy(path: path, role: role, reason: reason)
        }
        fd = descriptor
    }

    deinit { close(fd) }
}
