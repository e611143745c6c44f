/// Where a cache queue sends its backing-device I/O.
///
/// In the server this is the ublk queue's own io_uring (6.12 requires every
/// command of a queue to come from one thread, and keeping backing I/O on the
/// same ring means one wait serves both). Completions come back to the owner
/// of `userData` through `CacheQueue.backingIOCompleted`.
public protocol BlockIOQueue: AnyObject {
    func submitRead(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, userData: UInt64)
    func submitWrite(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, userData: UInt64)
    func submitFlush(fd: Int32, userData: UInt64)
}

/// Wakes a thread that may be blocked waiting for I/O, from any thread.
public protocol QueueWaker: AnyObject, Sendable {
    func wake()
}
