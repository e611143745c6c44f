import CSupport
import CURing

/// A `QueueIO` over a private io_uring, for driving a `CacheQueue` without
/// ublk: the native benchmark and tests. The ublk server has its own, which
/// also carries the ublk commands.
public final class RingQueueIO: QueueIO {
    public let ring: IOURing
    /// Requests completed through `completeRequest`, in order: (tag, result).
    public private(set) var completions: [(tag: UInt16, result: Int32)] = []
    private var inFlight = 0

    public init(entries: UInt32 = 256) throws {
        ring = try IOURing(entries: entries)
        completions.reserveCapacity(Int(entries))
    }

    public func submitRead(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, userData: UInt64) {
        ring.prepareRead(fd: fd, into: buffer, count: count, offset: offset, userData: userData)
        inFlight += 1
    }

    public func submitWrite(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, userData: UInt64) {
        ring.prepareWrite(fd: fd, from: buffer, count: count, offset: offset, userData: userData)
        inFlight += 1
    }

    public func submitFlush(fd: Int32, userData: UInt64) {
        ring.prepareFsync(fd: fd, userData: userData)
        inFlight += 1
    }

    public func submitDiscard(fd: Int32, offset: UInt64, length: UInt64, userData: UInt64) {
        let sqe = ring.nextSQE()
        io_uring_prep_fallocate(sqe, fd, pcs_punch_hole_mode(), off_t(offset), off_t(length))
        sqe.pointee.user_data = userData
        inFlight += 1
    }

    public func completeRequest(tag: UInt16, result: Int32) {
        completions.append((tag, result))
    }

    public var hasIOInFlight: Bool { inFlight > 0 }

    /// Submits queued I/O, waits for at least one completion if any is in
    /// flight, and hands every completion to `queue`.
    public func pump(_ queue: CacheQueue) throws {
        guard inFlight > 0 else { return }
        try ring.submitAndWait(1)
        ring.forEachCompletion { userData, result, _ in
            inFlight -= 1
            queue.backingIOCompleted(userData: userData, result: result)
        }
    }

    /// Takes the completions gathered so far.
    public func takeCompletions() -> [(tag: UInt16, result: Int32)] {
        defer { completions.removeAll(keepingCapacity: true) }
        return completions
    }

    /// Completion count without copying.
    public var completionCount: Int { completions.count }

    public func clearCompletions() { completions.removeAll(keepingCapacity: true) }
}

/// A waker that does nothing: for drivers that poll.
public final class PollingWaker: QueueWaker {
    public init() {}
    public func wake() {}
}
