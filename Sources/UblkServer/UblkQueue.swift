import CSupport
import CUblk
import CURing
import Glibc
import PCacheCore
import Synchronization

/// Wakes a queue thread blocked in its ring: a pipe whose read the queue
/// keeps pending on the ring. `wake()` is safe from any thread and cheap (one
/// non-blocking write(2)); wakes coalesce (a full pipe already means "wake").
/// (A pipe rather than an eventfd: <sys/eventfd.h> is not in Swift's Glibc.)
public final class EventFDWaker: QueueWaker, @unchecked Sendable {
    /// The end the queue reads.
    public let fd: Int32
    private let writeFD: Int32

    public init() throws {
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) != 0 { throw SystemError.last("pipe") }
        for f in fds { _ = fcntl(f, F_SETFD, FD_CLOEXEC) }
        // Only the write end is non-blocking: io_uring answers a read on an
        // O_NONBLOCK file with -EAGAIN instead of waiting.
        _ = fcntl(fds[1], F_SETFL, O_NONBLOCK)
        fd = fds[0]
        writeFD = fds[1]
    }

    deinit {
        close(fd)
        close(writeFD)
    }

    public func wake() {
        var one: UInt8 = 1
        _ = write(writeFD, &one, 1)
    }
}

/// One ublk hardware queue: one OS thread with its own io_uring, the
/// queue's descriptor array, one buffer per tag and the target's handler.
///
/// The thread FETCHes every tag, then for each completed FETCH builds a
/// `UblkRequest` and hands it to the handler; a result given at once is
/// committed with COMMIT_AND_FETCH_REQ (which also re-arms the tag), a
/// deferred one when the handler calls `completeRequest`. The handler's
/// backing I/O goes on the same ring (6.12 wants every command of a queue
/// from one task, and one wait then serves both). The thread leaves when
/// every tag is retired (`UblkTagTable`: aborted by the kernel at STOP_DEV
/// or when the device goes away) — or when asked to stop and no request is
/// left with the handler — and no backing I/O of the handler is in flight.
/// The first abort tells the handler the queue is stopping. A ring that
/// fails, or a result the kernel refuses, is a failure instead (`failure`,
/// `onFailure`).
///
/// All mutable state below the `// thread-confined` mark is touched only by
/// the queue thread.
public final class UblkQueue: QueueIO, @unchecked Sendable {
    public let deviceID: UInt32
    public let queueID: Int
    public let depth: Int
    public let maxIOBytes: Int

    private let charFD: Int32
    private let target: UblkTarget
    private let wakerObject: EventFDWaker
    public var waker: QueueWaker { wakerObject }

    private let setupFinished = Semaphore()
    private let setupFailure = Mutex<SystemError?>(nil)
    private let stopFlag = Atomic<Bool>(false)
    private let failWaitingFlag = Atomic<Bool>(false)
    private let exitedFlag = Atomic<Bool>(false)
    /// Called on this thread when the queue fails, with its ring and
    /// requests left as they are (the server exits; see `failure`).
    private let onFailure: (@Sendable (Int, String) -> Void)?
    /// Fault injection for tests: the queue fails once it has served this
    /// many requests (`PCACHE_UBLK_FAULT_QUEUE=<queue>:<requests>`).
    private let failAfterRequests: UInt64
    /// Requests handed to the handler so far (for `info`).
    public let requestsServed = Atomic<UInt64>(0)
    private let onExit: @Sendable (UblkQueue) -> Void
    private var thread: OSThread?

    // thread-confined
    private var ring: IOURing?
    private var descriptors: UnsafePointer<ublksrv_io_desc>?
    private var descriptorLength = 0
    private var buffers: UnsafeMutableRawPointer?
    private var tags: UblkTagTable
    private var handler: UblkQueueHandler?
    private var wakerBuffer: UnsafeMutablePointer<UInt64>
    private var handlerInFlight = 0
    /// The handler's `lookAheadDistance`, read once.
    private var lookAheadDistance = 0
    private var stoppingNotified = false
    private var failedWaiting = false
    /// Why the thread ended, when it was not the device stopping: its ring
    /// failed, or the kernel refused a COMMIT_AND_FETCH (the request it
    /// carried then stays with the server, and a stop would wait for it).
    private var failure: String?
    private var served: UInt64 = 0

    /// - Parameters:
    ///   - charFD: /dev/ublkcN, open for the life of the queue (owned by the caller).
    ///   - onFailure: called on the queue thread if the queue fails (its ring
    ///     failed, or the kernel refused a request's result), before anything
    ///     is torn down: the requests it holds may never complete, and the
    ///     server ends the process. If it returns, the queue tears down as on
    ///     a stop.
    ///   - onExit: called on the queue thread when it is about to end.
    public init(deviceID: UInt32, queueID: Int, depth: Int, maxIOBytes: Int, charFD: Int32,
                target: UblkTarget, onFailure: (@Sendable (Int, String) -> Void)? = nil,
                onExit: @escaping @Sendable (UblkQueue) -> Void) throws {
        precondition(depth > 0 && depth <= UblkLayout.maxQueueDepth)
        self.deviceID = deviceID
        self.queueID = queueID
        self.depth = depth
        self.maxIOBytes = maxIOBytes
        self.charFD = charFD
        self.target = target
        self.onExit = onExit
        self.onFailure = onFailure
        failAfterRequests = Self.injectedFailure(queueID: queueID)
        wakerObject = try EventFDWaker()
        tags = UblkTagTable(depth: depth)
        wakerBuffer = .allocate(capacity: 1)
        wakerBuffer.initialize(to: 0)
    }

    deinit {
        tags.deallocate()
        wakerBuffer.deallocate()
    }

    // MARK: Control from other threads

    /// Starts the thread and waits until it has fetched every tag (or failed).
    public func start() throws {
        let thread = OSThread(name: "ublk\(deviceID)q\(queueID)") { [self] in run() }
        try thread.start()
        self.thread = thread
        setupFinished.wait()
        if let failure = setupFailure.withLock({ $0 }) {
            join()
            throw failure
        }
    }

    /// Asks the thread to leave once no request is left with the handler.
    /// Use after STOP_DEV (or when the device never started).
    public func requestStop() {
        stopFlag.store(true, ordering: .releasing)
        wakerObject.wake()
    }

    /// Asks the thread to fail the requests its handler holds back waiting
    /// for resources, and any that would wait from now on
    /// (`UblkQueueHandler.failWaitingRequests`).
    public func failWaitingRequests() {
        failWaitingFlag.store(true, ordering: .releasing)
        wakerObject.wake()
    }

    public var hasExited: Bool { exitedFlag.load(ordering: .acquiring) }

    static func injectedFailure(queueID: Int) -> UInt64 {
        guard let text = getenv("PCACHE_UBLK_FAULT_QUEUE").map({ String(cString: $0) }) else { return .max }
        let parts = text.split(separator: ":")
        guard parts.count == 2, Int(parts[0]) == queueID, let count = UInt64(parts[1]) else { return .max }
        return count
    }

    /// Waits for the thread to end. Idempotent (call from one thread).
    public func join() {
        guard let thread else { return }
        self.thread = nil
        thread.join()
    }

    // MARK: The thread

    private func run() {
        let flusher = pcs_set_io_flusher()
        if flusher != 0 {
            Log.warning("queue \(queueID): PR_SET_IO_FLUSHER failed: \(String(cString: strerror(-flusher)))")
        }
        do {
            try setUp()
        } catch {
            let failure = error as? SystemError ?? SystemError(errno: EIO, "queue \(queueID) setup: \(error)")
            setupFailure.withLock { $0 = failure }
            tearDown()
            setupFinished.signal()
            exitedFlag.store(true, ordering: .releasing)
            return
        }
        setupFinished.signal()
        serve()
        if let failure {
            Log.error("queue \(queueID) failed: \(failure)")
            onFailure?(queueID, failure)
        }
        tearDown()
        exitedFlag.store(true, ordering: .releasing)
        onExit(self)
    }

    private func setUp() throws {
        let entries = UblkLayout.ringEntries(depth: depth)
        let fast = UInt32(IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN)
        let ring: IOURing
        // Every request may have its own I/O in flight besides its command.
        let completions = UblkLayout.completionEntries(depth: depth, ioPerRequest: target.ioPerRequest)
        do {
            ring = try IOURing(entries: entries, flags: fast, completionEntries: completions)
        } catch {
            ring = try IOURing(entries: entries, completionEntries: completions)  // kernels without DEFER_TASKRUN
        }
        self.ring = ring

        var files: [Int32] = [charFD]
        let rc = io_uring_register_files(&ring.ring, &files, 1)
        if rc < 0 { throw SystemError(errno: -rc, "queue \(queueID): register /dev/ublkc\(deviceID)") }

        descriptorLength = UblkLayout.descriptorLength(depth: depth)
        let map = mmap(nil, descriptorLength, PROT_READ, MAP_SHARED | MAP_POPULATE, charFD,
                       off_t(UblkLayout.descriptorOffset(queueID: queueID)))
        if map == MAP_FAILED || map == nil {
            throw SystemError.last("queue \(queueID): mmap descriptors of /dev/ublkc\(deviceID)")
        }
        descriptors = UnsafePointer(map!.assumingMemoryBound(to: ublksrv_io_desc.self))

        let bufferBytes = depth * maxIOBytes
        let buf = mmap(nil, bufferBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if buf == MAP_FAILED || buf == nil {
            throw SystemError.last("queue \(queueID): mmap \(bufferBytes) bytes of buffers")
        }
        buffers = buf

        do {
            handler = try target.makeQueueHandler(queueID: queueID, depth: depth, io: self, waker: wakerObject)
            lookAheadDistance = handler?.lookAheadDistance ?? 0
        } catch let error as SystemError {
            throw error
        } catch {
            throw SystemError(errno: EIO, "queue \(queueID): target refused: \(error)")
        }

        armWaker()
        for tag in 0..<depth {
            prepareCommand(UBLK_U_IO_FETCH_REQ, tag: UInt16(tag), result: 0)
        }
        try ring.submit()
        // A FETCH the driver refuses completes at once: catch it now, before
        // START_DEV would wait for that tag forever.
        var failed: Int32 = 0
        ring.forEachCompletion { userData, result, _ in
            if case .command(let tag) = UblkLayout.decode(userData), result < 0 {
                failed = -result
                tags.retireAtSetup(tag: Int(tag))
            }
        }
        if failed != 0 { throw SystemError(errno: failed, "queue \(queueID): FETCH_REQ") }
    }

    private func serve() {
        guard let ring else { return }
        // A local the calls below borrow: calling through the stored `var`
        // retains the handler before each request and releases it after,
        // and a release is an atomic read-modify-write, which waits for the
        // cache's data copy to reach memory (see `DataWriter`).
        let handler = self.handler
        while true {
            if finished {
                // Tell the handler first: it may still complete requests or
                // submit I/O, which then has to be waited for.
                if !stoppingNotified {
                    notifyStopping()
                    continue
                }
                _ = try? ring.submit()  // commits prepared last
                break
            }
            do {
                try ring.submitAndWait(1)
            } catch let error as SystemError where error.errno == EAGAIN || error.errno == EBUSY || error.errno == ENOMEM {
                // The kernel could not take or post more right now (memory,
                // completions it holds back): reaping what completed below
                // makes room. Leaving would unmap buffers that requests and
                // backing reads still write into.
                if !ring.hasCompletion { usleep(1000) }
            } catch {
                failure = "\(error)"
                break
            }
            if lookAheadDistance > 0 {
                ring.forEachCompletion(lookingAhead: lookAheadDistance, { userData, result, distance in
                    lookAhead(userData, result, distance, handler)
                }) { userData, result, _ in
                    dispatch(userData, result, handler)
                }
            } else {
                ring.forEachCompletion { userData, result, _ in
                    dispatch(userData, result, handler)
                }
            }
            if served >= failAfterRequests {
                failure = "injected failure after \(served) requests (PCACHE_UBLK_FAULT_QUEUE)"
                break
            }
            if !stoppingNotified && stopFlag.load(ordering: .acquiring) {
                notifyStopping()
            }
            if tags.failedCount > 0 {
                failure = "the kernel refused to take a request's result"
                break
            }
            if !failedWaiting && failWaitingFlag.load(ordering: .acquiring) { failWaiting() }
        }
        requestsServed.store(served, ordering: .relaxed)
    }

    private var finished: Bool {
        guard handlerInFlight == 0 else { return false }
        if tags.allRetired { return true }
        return tags.ownedCount == 0 && stopFlag.load(ordering: .acquiring)
    }

    private func tearDown() {
        if let handler, !stoppingNotified {
            stoppingNotified = true
            handler.queueStopping()
        }
        handler = nil
        ring = nil  // io_uring_queue_exit: cancels whatever is still pending
        if let descriptors {
            munmap(UnsafeMutableRawPointer(mutating: descriptors), descriptorLength)
            self.descriptors = nil
        }
        if let buffers {
            munmap(buffers, depth * maxIOBytes)
            self.buffers = nil
        }
    }

    @inline(__always)
    private func dispatch(_ userData: UInt64, _ result: Int32, _ handler: UblkQueueHandler?) {
        switch UblkLayout.decode(userData) {
        case .command(let tag):
            commandCompleted(tag: tag, result: result, handler)
        case .handler(let value):
            handlerInFlight -= 1
            handler?.ioCompleted(userData: value, result: result)
        case .waker:
            if result > 0 || result == -EINTR {
                armWaker()
            } else {
                Log.error("queue \(queueID): waker read failed (\(result)); waking disabled")
            }
            if !stoppingNotified && stopFlag.load(ordering: .acquiring) { notifyStopping() }
            if !failedWaiting && failWaitingFlag.load(ordering: .acquiring) { failWaiting() }
            handler?.resumeDeferred()
        }
    }

    /// A completion `distance` places ahead of the one being dispatched: if
    /// it hands over a request, let the handler start loading for it.
    @inline(__always)
    private func lookAhead(_ userData: UInt64, _ result: Int32, _ distance: Int, _ handler: UblkQueueHandler?) {
        guard result == UBLK_IO_RES_OK, case .command(let tag) = UblkLayout.decode(userData),
              let handler, let descriptors, Int(tag) < depth
        else { return }
        let d = descriptors[Int(tag)]
        handler.lookAhead(op: UInt8(truncatingIfNeeded: d.op_flags), byteOffset: d.start_sector << 9,
                          requestsAway: distance)
    }

    @inline(__always)
    private func commandCompleted(tag: UInt16, result: Int32, _ handler: UblkQueueHandler?) {
        let index = Int(tag)
        switch tags.commandCompleted(tag: index, result: result) {
        case .request:
            served &+= 1
            requestsServed.store(served, ordering: .relaxed)
            let d = descriptors![index]
            let request = UblkRequest(
                tag: tag, op: UInt8(truncatingIfNeeded: d.op_flags), flags: d.op_flags & ~0xFF,
                startSector: d.start_sector, sectorCount: d.nr_sectors,
                buffer: buffers! + index * maxIOBytes)
            if let handler {
                if let now = handler.handle(request) { commit(tag: tag, result: now) }
            } else {
                commit(tag: tag, result: -EIO)
            }
        case .aborted:
            if !stoppingNotified { notifyStopping() }
        case .failed(let errno):
            Log.error("queue \(queueID) tag \(tag): the kernel refused COMMIT_AND_FETCH: \(String(cString: strerror(errno)))")
        case .ignored:
            break
        }
    }

    private func failWaiting() {
        failedWaiting = true
        let failed = handler?.failWaitingRequests() ?? 0
        if failed > 0 { Log.warning("queue \(queueID): \(failed) request(s) waiting for cache space failed with EIO") }
    }

    private func notifyStopping() {
        stoppingNotified = true
        handler?.queueStopping()
    }

    @inline(__always)
    private func commit(tag: UInt16, result: Int32) {
        guard tags.commit(tag: Int(tag)) else {
            Log.error("queue \(queueID): completion for tag \(tag), which is not with the handler")
            return
        }
        prepareCommand(UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag: tag, result: result)
    }

    @inline(__always)
    private func prepareCommand(_ op: UInt32, tag: UInt16, result: Int32) {
        let sqe = ring!.nextSQE()
        pcu_prep_uring_cmd(sqe, 0, op)  // fixed file 0: /dev/ublkcN
        sqe.pointee.flags |= PCU_IOSQE_FIXED_FILE
        let cmd = pcu_sqe_cmd(sqe)!.bindMemory(to: ublksrv_io_cmd.self, capacity: 1)
        cmd.pointee.q_id = UInt16(queueID)
        cmd.pointee.tag = tag
        cmd.pointee.result = result
        cmd.pointee.addr = UInt64(UInt(bitPattern: buffers! + Int(tag) * maxIOBytes))
        sqe.pointee.user_data = UblkLayout.commandUserData(tag: tag)
    }

    private func armWaker() {
        ring!.preparePollRead(fd: wakerObject.fd, into: wakerBuffer, userData: UblkLayout.wakerUserData)
    }

    // MARK: QueueIO (queue thread only)

    public func submitRead(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, userData: UInt64) {
        assert(userData < UblkQueue.handlerUserDataLimit)
        handlerInFlight += 1
        ring!.prepareRead(fd: fd, into: buffer, count: count, offset: offset, userData: userData)
    }

    public func submitWrite(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, userData: UInt64) {
        assert(userData < UblkQueue.handlerUserDataLimit)
        handlerInFlight += 1
        ring!.prepareWrite(fd: fd, from: buffer, count: count, offset: offset, userData: userData)
    }

    public func submitFlush(fd: Int32, userData: UInt64) {
        assert(userData < UblkQueue.handlerUserDataLimit)
        handlerInFlight += 1
        ring!.prepareFsync(fd: fd, userData: userData)
    }

    public func submitDiscard(fd: Int32, offset: UInt64, length: UInt64, userData: UInt64) {
        assert(userData < UblkQueue.handlerUserDataLimit)
        handlerInFlight += 1
        let sqe = ring!.nextSQE()
        io_uring_prep_fallocate(sqe, fd, pcs_punch_hole_mode(), off_t(offset), off_t(length))
        sqe.pointee.user_data = userData
    }

    public func completeRequest(tag: UInt16, result: Int32) {
        commit(tag: tag, result: result)
    }
}
