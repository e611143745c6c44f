import CUblk
import Glibc
import PCacheCore
import Synchronization

/// How to create a device.
public struct UblkDeviceOptions: Sendable, Equatable {
    /// A given device id, or nil for any free one.
    public var id: UInt32? = nil
    /// Hardware queues (one thread each). The kernel caps this at the CPU count.
    public var queues: Int = 1
    /// Tags per queue, 1...4096.
    public var depth: Int = 128
    /// Per-tag buffer, hence the largest request (512 KiB).
    public var maxIOBytes: Int = 512 * 1024
    /// Ask for USER_RECOVERY (and REISSUE when the driver has it), so that a
    /// crashed server leaves the device QUIESCED for `recover`.
    public var userRecovery: Bool = true

    public init(id: UInt32? = nil, queues: Int = 1, depth: Int = 128) {
        self.id = id
        self.queues = queues
        self.depth = depth
    }
}

/// One ublk device served by this process: its kernel object, its
/// /dev/ublkcN and its queue threads.
///
/// Life: `add` (ADD_DEV, SET_PARAMS) or `takeOver` (START_USER_RECOVERY) →
/// `start` (open /dev/ublkcN, queues FETCH every tag, then START_DEV or
/// END_USER_RECOVERY from the calling thread) → serve → `stop` (STOP_DEV,
/// queues leave, /dev/ublkcN closed) → `delete` (DEL_DEV).
/// Driven from one thread (the server's main thread).
public final class UblkDevice: @unchecked Sendable {
    public let id: UInt32
    public private(set) var info: UblkDeviceInfo
    public let target: UblkTarget
    public let recovering: Bool
    private let control: UblkControl
    private var charFD: Int32 = -1
    public private(set) var queues: [UblkQueue] = []
    private let queueExitCount = AtomicCounter()

    public var blockDevicePath: String { DeviceNodes.blockDevicePath(id) }
    public var charDevicePath: String { DeviceNodes.charDevicePath(id) }

    private init(info: UblkDeviceInfo, target: UblkTarget, control: UblkControl, recovering: Bool) {
        self.id = info.id
        self.info = info
        self.target = target
        self.control = control
        self.recovering = recovering
    }

    /// ADD_DEV and SET_PARAMS for a new device. On failure nothing is left behind.
    public static func add(target: UblkTarget, options: UblkDeviceOptions, control: UblkControl) throws -> UblkDevice {
        guard (1...UblkLayout.maxQueueDepth).contains(options.depth) else {
            throw SystemError(errno: EINVAL, "queue depth \(options.depth) not in 1...\(UblkLayout.maxQueueDepth)")
        }
        guard (1...Int(UBLK_MAX_NR_QUEUES)).contains(options.queues) else {
            throw SystemError(errno: EINVAL, "queue count \(options.queues) not in 1...\(UBLK_MAX_NR_QUEUES)")
        }
        let parameters = target.parameters
        // Check the parameters before the device exists.
        _ = try UblkParameterEncoding.encode(parameters, maxIOBytes: options.maxIOBytes)

        var flags = UblkFeatures.cmdIoctlEncode | UblkFeatures.uringCmdCompInTask
        if options.userRecovery {
            var supported: UInt64 = 0
            do {
                supported = try control.features()
            } catch {
                Log.warning("GET_FEATURES: \(error); the device is added without USER_RECOVERY")
            }
            if supported & UblkFeatures.userRecovery != 0 { flags |= UblkFeatures.userRecovery }
            if supported & UblkFeatures.userRecoveryReissue != 0 { flags |= UblkFeatures.userRecoveryReissue }
        }
        let request = UblkDeviceInfo(
            id: options.id ?? UblkControl.anyDevice, queueCount: options.queues, queueDepth: options.depth,
            maxIOBytes: options.maxIOBytes, flags: flags, serverFlags: UblkDeviceInfo.serverMarker)
        let info = try control.addDevice(request)
        do {
            try control.setParameters(info.id, parameters, maxIOBytes: info.maxIOBytes)
        } catch {
            Log.ifFails("deleting device \(info.id) after SET_PARAMS failed") { try control.deleteDevice(info.id) }
            throw error
        }
        return UblkDevice(info: info, target: target, control: control, recovering: false)
    }

    /// Takes over a device whose server died: waits (up to `timeout`) for it
    /// to be QUIESCED, checks the target matches, then START_USER_RECOVERY.
    public static func takeOver(id: UInt32, target: UblkTarget, control: UblkControl,
                                timeout: Double = 10) throws -> UblkDevice {
        var info = try control.deviceInfo(id)
        guard info.supportsRecovery else {
            throw SystemError(errno: EOPNOTSUPP, "device \(id) was added without USER_RECOVERY: it cannot be recovered")
        }
        var waited = 0.0
        while info.state != .quiesced {
            if info.state == .live, info.serverPID > 0, kill(info.serverPID, 0) == 0 {
                throw SystemError(errno: EBUSY, "device \(id) is LIVE, served by pid \(info.serverPID)")
            }
            if info.state == .dead {
                throw SystemError(errno: ENODEV, "device \(id) is DEAD (stopped): nothing to recover; delete it with 'pcache-ublk del -n \(id)'")
            }
            if waited >= timeout {
                throw SystemError(errno: ETIMEDOUT, "device \(id) did not become QUIESCED (state \(info.stateName))")
            }
            sleepSeconds(0.1)
            waited += 0.1
            info = try control.deviceInfo(id)
        }
        let kernelBytes = try control.deviceBytes(id)
        if kernelBytes != target.parameters.deviceBytes {
            throw SystemError(errno: EINVAL, "device \(id) has \(kernelBytes) bytes, the target \(target.parameters.deviceBytes)")
        }
        // EBUSY while the dead server's /dev/ublkcN is still being released.
        var attempts = 0
        while true {
            do {
                try control.startRecovery(id)
                break
            } catch let error as SystemError where error.errno == EBUSY && attempts < 50 {
                attempts += 1
                sleepSeconds(0.1)
            }
        }
        return UblkDevice(info: info, target: target, control: control, recovering: true)
    }

    /// Opens /dev/ublkcN, starts every queue (each FETCHes all its tags), then
    /// START_DEV — or END_USER_RECOVERY when taking over — and makes sure
    /// /dev/ublkbN exists. `onQueueExit` is called (on the queue's thread)
    /// whenever a queue thread ends after a successful start;
    /// `onQueueFailure` (on the failed queue's thread) when one fails, with
    /// its requests left as they are (see `UblkQueue.failure`).
    public func start(onQueueExit: @escaping @Sendable () -> Void,
                      onQueueFailure: (@Sendable (Int, String) -> Void)? = nil) throws {
        charFD = try DeviceNodes.openCharDevice(id)
        do {
            for q in 0..<info.queueCount {
                let queue = try UblkQueue(
                    deviceID: id, queueID: q, depth: info.queueDepth, maxIOBytes: info.maxIOBytes,
                    charFD: charFD, target: target, onFailure: onQueueFailure,
                    onExit: { [queueExitCount] _ in
                        queueExitCount.increment()
                        onQueueExit()
                    })
                try queue.start()
                queues.append(queue)
            }
            if recovering {
                try control.endRecovery(id)
            } else {
                try control.startDevice(id)
            }
        } catch {
            // The device never went live with these queues: make them leave.
            for queue in queues { queue.requestStop() }
            for queue in queues { queue.join() }
            queues.removeAll()
            close(charFD)
            charFD = -1
            throw error
        }
        do {
            try DeviceNodes.ensureBlockDevice(id)
        } catch {
            // Live, but without a node nobody can use it: stop it, so the
            // caller can delete it (DEL_DEV waits for /dev/ublkcN to close,
            // which only `stop` does).
            stop()
            throw error
        }
        if let fresh = try? control.deviceInfo(id) { info = fresh }
    }

    /// How many queue threads have ended.
    public var exitedQueues: Int { queueExitCount.value }

    /// Requests served so far, summed over the queues (approximate while serving).
    public var requestsServed: UInt64 {
        queues.reduce(0) { $0 + $1.requestsServed.load(ordering: .relaxed) }
    }

    /// Requests served so far by each queue, in queue order.
    public var requestsServedPerQueue: [UInt64] {
        queues.map { $0.requestsServed.load(ordering: .relaxed) }
    }

    /// Best effort: writes back the page cache of /dev/ublkbN while the
    /// queues still serve (STOP_DEV would otherwise fail what is still dirty).
    public func syncBlockDevice() {
        let fd = open(blockDevicePath, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }

    /// STOP_DEV (the kernel completes what is in flight, removes /dev/ublkbN
    /// and aborts every queue's FETCH), then waits for the queue threads and
    /// closes /dev/ublkcN. Errors are logged: stopping goes on regardless.
    public func stop() {
        do {
            try control.stopDevice(id)
        } catch {
            Log.error("\(error)")
        }
        for queue in queues { queue.requestStop() }
        for queue in queues { queue.join() }
        if charFD >= 0 {
            close(charFD)
            charFD = -1
        }
    }

    /// Makes every queue fail the requests its target holds back waiting
    /// for resources (from any thread; see `UblkQueue.failWaitingRequests`).
    public func failWaitingRequests() {
        for queue in queues { queue.failWaitingRequests() }
    }

    /// DEL_DEV (after `stop`), without waiting for programs that still hold
    /// /dev/ublkbN open: the server is done with the device, and one such
    /// program must not keep it from exiting (`UblkControl.deleteDeviceWithoutWaiting`).
    public func delete() throws {
        try control.deleteDeviceWithoutWaiting(id)
    }

    /// The kernel's current view of the device.
    public func currentInfo() throws -> UblkDeviceInfo { try control.deviceInfo(id) }
}

/// An `Atomic<Int>` that closures can share.
public final class AtomicCounter: Sendable {
    private let storage = Atomic<Int>(0)
    public init() {}
    public func increment() { storage.add(1, ordering: .relaxed) }
    public var value: Int { storage.load(ordering: .relaxed) }
}
