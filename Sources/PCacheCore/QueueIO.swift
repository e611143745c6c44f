/// What a per-queue request handler can ask of the thread that drives it.
///
/// In the server this is the ublk queue thread and its io_uring: 6.12 requires
/// every command of a queue to come from one thread, and keeping backing I/O
/// on the same ring means one wait serves both. In tests and the native
/// benchmark it is a plain io_uring loop.
///
/// `userData` values chosen by handlers must be below `QueueIO.handlerUserDataLimit`;
/// the driver keeps the values above it for its own commands. A completion
/// for a handler's SQE is given back to that handler's `ioCompleted`.
public protocol QueueIO: AnyObject {
    func submitRead(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, userData: UInt64)
    func submitWrite(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, userData: UInt64)
    func submitFlush(fd: Int32, userData: UInt64)
    /// Deallocates (discards) a byte range: fallocate(PUNCH_HOLE | KEEP_SIZE).
    func submitDiscard(fd: Int32, offset: UInt64, length: UInt64, userData: UInt64)
    /// Completes a request the handler left pending: `result` is bytes done or -errno.
    func completeRequest(tag: UInt16, result: Int32)
}

extension QueueIO {
    public static var handlerUserDataLimit: UInt64 { 1 << 62 }
}

/// Wakes a queue thread that may be blocked in its ring, from any thread,
/// so that it calls its handler's `resumeDeferred`.
public protocol QueueWaker: AnyObject, Sendable {
    func wake()
}
