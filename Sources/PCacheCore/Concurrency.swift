import Glibc

/// A pthread mutex at a fixed address. Used where locks live inside flat,
/// manually allocated arrays (index subtrees, key-sets), so that taking a lock
/// costs no reference counting and the hot path allocates nothing.
public struct PThreadMutex {
    private let storage: UnsafeMutablePointer<pthread_mutex_t>

    /// Each mutex gets a cache line of its own: locks of neighbouring
    /// subtrees or key-sets, taken by different queue threads, must not
    /// share one.
    public init() {
        storage = UnsafeMutableRawPointer.allocate(byteCount: max(64, MemoryLayout<pthread_mutex_t>.size), alignment: 64)
            .bindMemory(to: pthread_mutex_t.self, capacity: 1)
        storage.initialize(to: pthread_mutex_t())
        pthread_mutex_init(storage, nil)
    }

    /// Destroys the mutex; the value must not be used afterwards.
    public func destroy() {
        pthread_mutex_destroy(storage)
        UnsafeMutableRawPointer(storage).deallocate()
    }

    @inline(__always) public func lock() { pthread_mutex_lock(storage) }
    @inline(__always) public func unlock() { pthread_mutex_unlock(storage) }

    @inline(__always)
    public func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(storage)
        defer { pthread_mutex_unlock(storage) }
        return try body()
    }

    fileprivate var raw: UnsafeMutablePointer<pthread_mutex_t> { storage }
}

/// A condition variable paired with a `PThreadMutex`, for background workers
/// that sleep until kicked or until a timeout.
public struct PThreadCondition {
    private let storage: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        storage = .allocate(capacity: 1)
        storage.initialize(to: pthread_cond_t())
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(storage, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    public func destroy() {
        pthread_cond_destroy(storage)
        storage.deallocate()
    }

    public func broadcast() { pthread_cond_broadcast(storage) }

    /// Waits with `mutex` held, for at most `nanoseconds`.
    public func wait(_ mutex: PThreadMutex, nanoseconds: UInt64) {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let total = UInt64(deadline.tv_nsec) + nanoseconds
        deadline.tv_sec += Int(total / 1_000_000_000)
        deadline.tv_nsec = Int(total % 1_000_000_000)
        pthread_cond_timedwait(storage, mutex.raw, &deadline)
    }
}

/// Monotonic time in nanoseconds.
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Starts a named OS thread running `body`; `join()` waits for it.
/// Foundation-free, so the static binary stays small.
public final class OSThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: () -> Void
    private let name: String

    public init(name: String, _ body: @escaping () -> Void) {
        self.name = name
        self.body = body
    }

    public func start() throws {
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { context in
            let me = Unmanaged<OSThread>.fromOpaque(context!).takeRetainedValue()
            // Worker threads take no asynchronous signals: the process decides
            // which thread handles them (the server's main thread sigwaits),
            // and a thread started before that decision must not be picked.
            var all = sigset_t()
            sigfillset(&all)
            for synchronous in [SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT] { sigdelset(&all, synchronous) }
            pthread_sigmask(SIG_BLOCK, &all, nil)
            me.name.withCString { pcsSetThreadName($0) }
            me.body()
            return nil
        }, context)
        if rc != 0 {
            Unmanaged<OSThread>.fromOpaque(context).release()
            throw SystemError(errno: rc, "pthread_create(\(name))")
        }
    }

    public func join() {
        pthread_join(thread, nil)
    }
}

import CSupport

@inline(__always) func pcsSetThreadName(_ name: UnsafePointer<CChar>) { pcs_set_thread_name(name) }
