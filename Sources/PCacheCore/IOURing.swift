import CURing
import Glibc

/// An error from a system call, carrying errno and what was being done.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public let errno: Int32
    public let operation: String

    public init(errno: Int32, _ operation: String) {
        self.errno = errno
        self.operation = operation
    }

    /// The error for the current `errno` of the calling thread.
    public static func last(_ operation: String) -> SystemError {
        SystemError(errno: Glibc.errno, operation)
    }

    public var description: String {
        "\(operation): \(String(cString: strerror(errno)))"
    }
}

/// A thin owner of one liburing ring. Not thread-safe: one thread drives it.
///
/// SQEs are obtained with `nextSQE()`, filled with liburing's prep helpers,
/// and sent with `submit()` / `submitAndWait(_:)`. Completions are read with
/// `forEachCompletion`, which marks each seen.
public final class IOURing {
    public var ring = io_uring()
    public let entries: UInt32
    /// Completions peeked at once by `forEachCompletion(lookingAhead:)`.
    private static let peekCapacity = 32
    private let peeked = UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>.allocate(capacity: peekCapacity)

    /// - Parameters:
    ///   - entries: submission queue size (the completion queue is twice that).
    ///   - flags: `IORING_SETUP_*` flags, e.g. SQE128 for ublk control commands.
    /// - Parameter completionEntries: the completion queue's size, when the
    ///   default (twice `entries`) is too small for what can be in flight
    ///   at once; the kernel rounds it up to a power of two and clamps it.
    public init(entries: UInt32, flags: UInt32 = 0, completionEntries: UInt32? = nil) throws {
        self.entries = entries
        var params = io_uring_params()
        params.flags = flags
        if let completionEntries, completionEntries > 2 * entries {
            params.flags |= UInt32(IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP)
            params.cq_entries = completionEntries
        }
        let rc = io_uring_queue_init_params(entries, &ring, &params)
        if rc < 0 { throw SystemError(errno: -rc, "io_uring_queue_init(\(entries) entries)") }
    }

    deinit {
        io_uring_queue_exit(&ring)
        peeked.deallocate()
    }

    /// A free SQE, submitting queued ones first if the ring is full.
    @inline(__always)
    public func nextSQE() -> UnsafeMutablePointer<io_uring_sqe> {
        if let sqe = io_uring_get_sqe(&ring) { return sqe }
        _ = io_uring_submit(&ring)
        guard let sqe = io_uring_get_sqe(&ring) else {
            fatalError("io_uring: no SQE free after submit")
        }
        return sqe
    }

    /// Submits queued SQEs; returns how many were taken, or throws.
    @discardableResult
    public func submit() throws -> Int {
        let rc = io_uring_submit(&ring)
        if rc < 0 { throw SystemError(errno: -rc, "io_uring_submit") }
        return Int(rc)
    }

    /// Submits queued SQEs and waits for at least `count` completions.
    /// EINTR is not an error: the caller simply looks at completions again.
    public func submitAndWait(_ count: UInt32 = 1) throws {
        let rc = io_uring_submit_and_wait(&ring, count)
        if rc < 0 && rc != -EINTR { throw SystemError(errno: -rc, "io_uring_submit_and_wait") }
    }

    /// Whether a completion is ready, without taking it.
    public var hasCompletion: Bool {
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        return io_uring_peek_cqe(&ring, &cqe) == 0 && cqe != nil
    }

    /// Calls `body(userData, result, flags)` for every completion ready now.
    /// Returns the number handled.
    @inline(__always)
    @discardableResult
    public func forEachCompletion(_ body: (UInt64, Int32, UInt32) -> Void) -> Int {
        var handled = 0
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        while io_uring_peek_cqe(&ring, &cqe) == 0, let c = cqe {
            let userData = c.pointee.user_data
            let result = c.pointee.res
            let flags = c.pointee.flags
            io_uring_cqe_seen(&ring, c)
            body(userData, result, flags)
            handled += 1
        }
        return handled
    }

    /// `forEachCompletion` for a caller that prepares for what comes next:
    /// before `body` sees a completion, `ahead(userData, result, distance)`
    /// sees each ready one `distance` places after it, for distances
    /// `1...maxDistance`. A ublk queue loads the index lines of its next
    /// requests this way. Each completion is marked seen before its `body`
    /// runs, as `forEachCompletion` does.
    @inline(__always)
    @discardableResult
    public func forEachCompletion(
        lookingAhead maxDistance: Int, _ ahead: (UInt64, Int32, Int) -> Void, _ body: (UInt64, Int32, UInt32) -> Void
    ) -> Int {
        var handled = 0
        while true {
            let count = Int(io_uring_peek_batch_cqe(&ring, peeked, UInt32(Self.peekCapacity)))
            guard count > 0 else { break }
            for i in 0..<count {
                var distance = 1
                while distance <= maxDistance && i + distance < count {
                    let later = peeked[i + distance]!
                    ahead(later.pointee.user_data, later.pointee.res, distance)
                    distance += 1
                }
                let cqe = peeked[i]!
                let userData = cqe.pointee.user_data, result = cqe.pointee.res, flags = cqe.pointee.flags
                // Only this slot is given back: the later ones peeked stay
                // the kernel's to leave alone until they are seen too.
                io_uring_cq_advance(&ring, 1)
                body(userData, result, flags)
            }
            handled += count
        }
        return handled
    }

    /// Waits for one completion and returns (userData, result).
    public func waitCompletion() throws -> (userData: UInt64, result: Int32) {
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        while true {
            let rc = io_uring_wait_cqe(&ring, &cqe)
            if rc == -EINTR { continue }
            if rc < 0 { throw SystemError(errno: -rc, "io_uring_wait_cqe") }
            break
        }
        let c = cqe!
        let out = (c.pointee.user_data, c.pointee.res)
        io_uring_cqe_seen(&ring, c)
        return out
    }

    // MARK: Common preparations

    @inline(__always)
    public func prepareRead(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, userData: UInt64) {
        let sqe = nextSQE()
        io_uring_prep_read(sqe, fd, buffer, UInt32(count), offset)
        sqe.pointee.user_data = userData
    }

    @inline(__always)
    public func prepareWrite(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, userData: UInt64) {
        let sqe = nextSQE()
        io_uring_prep_write(sqe, fd, buffer, UInt32(count), offset)
        sqe.pointee.user_data = userData
    }

    /// One write gathered from `count` pieces; `pieces` must stay valid
    /// until the write completes.
    @inline(__always)
    public func prepareWritev(fd: Int32, pieces: UnsafePointer<iovec>, count: Int, offset: UInt64, userData: UInt64) {
        let sqe = nextSQE()
        io_uring_prep_writev(sqe, fd, pieces, UInt32(count), offset)
        sqe.pointee.user_data = userData
    }

    /// fdatasync-style flush of everything written to `fd`.
    @inline(__always)
    public func prepareFsync(fd: Int32, userData: UInt64) {
        let sqe = nextSQE()
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC)
        sqe.pointee.user_data = userData
    }

    /// A read of 8 bytes from an eventfd, used to wake a thread blocked on this ring.
    @inline(__always)
    public func preparePollRead(fd: Int32, into buffer: UnsafeMutableRawPointer, userData: UInt64) {
        let sqe = nextSQE()
        io_uring_prep_read(sqe, fd, buffer, 8, 0)
        sqe.pointee.user_data = userData
    }
}
