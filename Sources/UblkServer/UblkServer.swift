import Glibc
import PCacheCore
import Synchronization

/// Runs one device in this process, from ADD_DEV (or recovery) to DEL_DEV.
///
/// The calling (main) thread blocks SIGTERM, SIGINT, SIGHUP and SIGUSR1
/// before any thread starts, so every thread inherits the mask and the main
/// thread alone takes them with sigwait(2): SIGTERM / SIGINT stop the device
/// cleanly; SIGUSR1 is how the control-socket thread (`stop`) and the queue
/// threads (one ended) get the main thread's attention.
public enum UblkServer {
    public enum Mode: Sendable {
        /// A new device.
        case add(UblkDeviceOptions)
        /// Take over device N, QUIESCED after its server died.
        case recover(UInt32)
    }

    /// Called on the main thread at two points of the start-up.
    public struct Hooks {
        /// The device id is known (just after ADD_DEV or before recovery).
        public var deviceKnown: (UInt32) -> Void
        /// The device is live and its control socket answers.
        public var ready: (UInt32) -> Void

        public init(deviceKnown: @escaping (UInt32) -> Void = { _ in }, ready: @escaping (UInt32) -> Void = { _ in }) {
            self.deviceKnown = deviceKnown
            self.ready = ready
        }
    }

    /// Serves until a stop; returns the process exit status (0: clean stop).
    /// Throws when the device could not be brought up. An added device is
    /// deleted again. A device being recovered is not touched when the
    /// failure comes before START_USER_RECOVERY; after it (no queue could be
    /// set up, say), the kernel may refuse a second recovery, and `del` is
    /// what is left.
    public static func serve(target: UblkTarget, spec: TargetSpec, mode: Mode, hooks: Hooks = Hooks()) throws -> Int32 {
        let signals = blockServerSignals()
        signal(SIGPIPE, SIG_IGN)
        let pid = getpid()

        let control = try UblkControl()
        let device: UblkDevice
        switch mode {
        case .add(let options): device = try UblkDevice.add(target: target, options: options, control: control)
        case .recover(let id): device = try UblkDevice.takeOver(id: id, target: target, control: control)
        }
        let id = device.id
        hooks.deviceKnown(id)
        do {
            if case .add = mode {
                // A recovery reads this record and leaves it as it is: nothing
                // that can fail needlessly between START_USER_RECOVERY and
                // END_USER_RECOVERY, which a failure leaves half done.
                try RuntimeFiles.ensureDirectory()
                try RuntimeFiles.writeRecord(
                    DeviceRecord(target: spec, queues: device.info.queueCount, depth: device.info.queueDepth), id: id)
            }
            let recoverable = device.info.supportsRecovery
            try device.start(onQueueExit: { kill(pid, SIGUSR1) }, onQueueFailure: { _, _ in
                exitAfterQueueFailure(device: id, recoverable: recoverable)
            })
        } catch {
            if case .add = mode {
                Log.ifFails("deleting device \(id) after the failed start") { try control.deleteDevice(id) }
                RuntimeFiles.removeDeviceFiles(id)
            }
            throw error
        }

        let stopRequest = StopRequest()
        let dispatcher = ControlDispatcher(
            target: target,
            info: { infoLines(device) },
            stop: { flush in
                stopRequest.request(flush: flush)
                kill(pid, SIGUSR1)
            })
        let socket = ControlSocketServer(path: RuntimeFiles.socketPath(id)) { verb, words in
            dispatcher.reply(verb: verb, words: words)
        }
        do {
            try socket.start()
        } catch {
            Log.error("control socket: \(error); stopping the device")
            device.stop()
            Log.ifFails("target shutdown") { try target.shutdown(flushDirty: false) }
            Log.ifFails("deleting the device") { try device.delete() }
            RuntimeFiles.removeDeviceFiles(id)
            throw error
        }

        let info = device.info
        Log.info("serving \(device.blockDevicePath): \(target.kind), \(target.parameters.deviceBytes) bytes, "
                 + "\(info.queueCount) queue(s) of depth \(info.queueDepth), "
                 + "features \(UblkFeatures.names(info.flags).joined(separator: ","))"
                 + (device.recovering ? " (recovered)" : ""))
        hooks.ready(id)

        var flush = false
        waiting: while true {
            var signalNumber: Int32 = 0
            var set = signals
            if sigwait(&set, &signalNumber) != 0 { continue }
            switch signalNumber {
            case SIGTERM, SIGINT:
                Log.info("signal \(signalNumber): stopping")
                break waiting
            case SIGUSR1:
                if let requested = stopRequest.take() {
                    flush = requested
                    Log.info("stop requested over the control socket" + (flush ? " (flush)" : ""))
                    break waiting
                }
                if device.exitedQueues > 0 {
                    Log.warning("a queue ended (the device was stopped from outside): stopping")
                    break waiting
                }
            default:
                continue  // SIGHUP: nothing to reload
            }
        }

        socket.stop()
        stopWithinGrace(device)
        var status: Int32 = 0
        do {
            try target.shutdown(flushDirty: flush)
        } catch {
            Log.error("target shutdown: \(error)")
            status = 1
        }
        do {
            try device.delete()
        } catch {
            Log.error("\(error)")
            status = 1
        }
        RuntimeFiles.removeDeviceFiles(id)
        Log.info("\(device.blockDevicePath) removed")
        return status
    }

    /// How long a stopping device's requests may wait for cache space while
    /// the target makes no room before they fail (`stopWithinGrace`).
    static let waitingRequestGraceSeconds = 30

    /// Syncs /dev/ublkbN and STOP_DEVs the device, which waits for every
    /// request the kernel has handed out. A request waiting for cache space
    /// gets it only from writeback and GC; when they cannot make room (the
    /// backing device failing, writeback halted), the sync and the stop would
    /// wait for good. So once the target's `reclaimProgress` has not moved
    /// for `waitingRequestGraceSeconds`, such requests fail with EIO and the
    /// stop goes on. A slow but healthy backing device keeps the clock
    /// restarting: its writes wait, as they would without a stop.
    static func stopWithinGrace(_ device: UblkDevice) {
        let stopped = Semaphore()
        let watchdog = OSThread(name: "stop-watchdog") {
            var progress = device.target.reclaimProgress
            var still = 0
            while !stopped.wait(seconds: 1) {
                let now = device.target.reclaimProgress
                still = now == progress ? still + 1 : 0
                progress = now
                if still == waitingRequestGraceSeconds { break }
            }
            guard still == waitingRequestGraceSeconds else { return }
            Log.warning("stopping: still not stopped, and no cache space made for \(waitingRequestGraceSeconds) s; "
                        + "failing the requests that wait for cache space")
            device.failWaitingRequests()
        }
        var watching = true
        do {
            try watchdog.start()
        } catch {
            Log.error("\(error): requests waiting for cache space may hold up the stop")
            watching = false
        }
        if device.exitedQueues == 0 { device.syncBlockDevice() }
        device.stop()
        if watching {
            stopped.signal()
            watchdog.join()
        }
    }

    /// A queue thread failed (its ring returned an error it could not wait
    /// out, or the kernel refused to take a request's result). Requests it
    /// held may never complete now, and STOP_DEV would wait for them for
    /// good, so the process exits at once, as a crash would: with
    /// USER_RECOVERY the kernel keeps the device QUIESCED with its I/O
    /// waiting for `recover`; without, it fails that I/O and stops the
    /// device, and `del` deletes it. Acknowledged keys not yet logged are in
    /// the key-set stash, which the next server adopts. Runs on the failed
    /// queue's thread, which has logged why.
    static func exitAfterQueueFailure(device id: UInt32, recoverable: Bool) -> Never {
        if recoverable {
            Log.error("exiting without stopping /dev/ublkb\(id): its I/O waits for 'pcache-ublk recover -n \(id)'")
        } else {
            Log.error("exiting: the device has no USER_RECOVERY, so the kernel fails its I/O and stops it; "
                      + "'pcache-ublk del -n \(id)' deletes it")
        }
        unlink(RuntimeFiles.socketPath(id))
        _exit(3)
    }

    /// Blocks the server's signals in the calling thread (and so in every
    /// thread it starts); returns the set for sigwait.
    static func blockServerSignals() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGHUP, SIGUSR1] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        return set
    }

    static func infoLines(_ device: UblkDevice) -> [String] {
        let current = (try? UblkControl().deviceInfo(device.id)) ?? device.info
        return [
            "device \(device.blockDevicePath)",
            "id \(device.id)",
            "target \(device.target.kind)",
            "bytes \(device.target.parameters.deviceBytes)",
            "queues \(current.queueCount)",
            "depth \(current.queueDepth)",
            "max_io_bytes \(current.maxIOBytes)",
            "pid \(current.serverPID)",
            "state \(current.stateName)",
            "features \(UblkFeatures.names(current.flags).joined(separator: ","))",
            "requests \(device.requestsServed)",
            "queue_requests \(device.requestsServedPerQueue.map(String.init).joined(separator: " "))",
        ]
    }
}

/// A stop asked for over the control socket.
final class StopRequest: Sendable {
    // 0: none, 1: stop, 2: stop and flush
    private let state = Atomic<Int>(0)

    func request(flush: Bool) {
        let value = flush ? 2 : 1
        // A flush request is never downgraded by a plain one.
        var current = state.load(ordering: .relaxed)
        while current < value {
            let (exchanged, original) = state.compareExchange(
                expected: current, desired: value, ordering: .acquiringAndReleasing)
            if exchanged { break }
            current = original
        }
    }

    /// nil when nothing was requested, else whether to flush.
    func take() -> Bool? {
        let value = state.load(ordering: .acquiring)
        return value == 0 ? nil : value == 2
    }
}
