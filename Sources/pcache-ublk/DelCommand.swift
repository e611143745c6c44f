import CSupport
import Glibc
import PCacheCore
import UblkServer

/// `pcache-ublk del`: stop and remove devices.
enum DelCommand {
    static let summary = "stop and remove /dev/ublkbN (--flush: write back dirty data first)"
    static let usage = "pcache-ublk del -n <id> | --all [--flush] [--force] [--timeout SECONDS]"
    static let valuedOptions: [String: String] = ["-n": "id", "--id": "id", "--timeout": "timeout"]
    static let help = """
        usage: \(usage)

        Asks the device's server to stop (over its control socket): it lets
        in-flight I/O finish, removes /dev/ublkbN, shuts the target down and
        deletes the device. Without --flush dirty data stays in the cache and
        is replayed by the next add with the same cache device. A device whose
        server is gone is stopped and deleted directly.
        --all removes every device added by pcache-ublk.
        A device in use (a mounted filesystem on it, or a device-mapper or
        md device over it) is left alone: stopping it would fail the I/O of
        whoever uses it. --force stops it anyway.
        --timeout SECONDS: how long to wait for the device to go, 1..86400
        (default 120, 3600 with --flush).
        """

    static func run(_ args: [String]) throws -> Int32 {
        if UblkCLI.wantsHelp(args, valued: valuedOptions) {
            UblkCLI.printOut(help)
            return 0
        }
        return UblkCLI.run("del", usage: usage) {
            let parsed = try UblkCLI.Arguments(
                args, valued: valuedOptions,
                flags: ["--all": "all", "-a": "all", "--flush": "flush", "--force": "force"])
            guard parsed.positional.isEmpty else {
                throw UblkCLI.UsageError("unexpected argument '\(parsed.positional[0])'")
            }
            let flush = parsed.has("flush")
            let timeout = try parsed.int("timeout", range: 1...86400) ?? (flush ? 3600 : 120)
            let given = try parsed.deviceID()
            if parsed.has("all") && given != nil { throw UblkCLI.UsageError("-n and --all exclude each other") }
            if !parsed.has("all") && given == nil { throw UblkCLI.UsageError("-n <id> or --all is required") }
            try UblkCLI.requireDriver()
            let control = try UblkControl()
            var ids: [UInt32]
            if parsed.has("all") {
                ids = UblkCLI.deviceIDs().filter { (try? control.deviceInfo($0).isOurs) == true }
                if ids.isEmpty {
                    UblkCLI.printOut("no pcache-ublk devices")
                    return 0
                }
            } else {
                ids = [given!]
            }
            var status: Int32 = 0
            for id in ids {
                do {
                    try delete(id, flush: flush, force: parsed.has("force"), timeout: timeout, control: control)
                    UblkCLI.printOut("deleted /dev/ublkb\(id)")
                } catch {
                    UblkCLI.printError("pcache-ublk del: /dev/ublkb\(id): \(error)")
                    status = 1
                }
            }
            return status
        }
    }

    static func delete(_ id: UInt32, flush: Bool, force: Bool, timeout: Int, control: UblkControl) throws {
        let info: UblkDeviceInfo
        do {
            info = try control.deviceInfo(id)
        } catch let error as SystemError where error.errno == ENODEV {
            RuntimeFiles.removeDeviceFiles(id)
            throw UblkCLI.Failure("no such device")
        }
        guard info.isOurs else { throw UblkCLI.Failure("not a pcache-ublk device (another ublk server's)") }
        if !force, let user = user(of: id) {
            throw UblkCLI.Failure("in use: \(user); nothing was stopped (unmount or remove it first, or --force)")
        }

        // A QUIESCED device has lost its server (or is being recovered).
        if info.state == .live && UblkCLI.isAlive(info.serverPID) {
            // Where to look afterwards whether everything was written back.
            var cacheDevice: String? = nil
            if flush, case .table(let text)? = RuntimeFiles.readRecord(id)?.target {
                cacheDevice = try? PCacheTable.parse(text, checkDevices: false).cacheDevicePath
            }
            do {
                let reply = try ControlSocketClient.request(
                    path: RuntimeFiles.socketPath(id), flush ? "stop flush" : "stop", timeout: 10)
                if case .error(let message) = reply { throw UblkCLI.Failure(message) }
            } catch let error as SystemError {
                // The server is alive but does not answer: SIGTERM stops it cleanly.
                if flush { throw UblkCLI.Failure("the server (pid \(info.serverPID)) does not answer (\(error)); cannot flush") }
                UblkCLI.printError("pcache-ublk del: /dev/ublkb\(id): server does not answer (\(error)); sending SIGTERM")
                kill(info.serverPID, SIGTERM)
            }
            // Done when the kernel no longer knows the device (ENODEV); any
            // other error is not an answer.
            var waited = 0
            var deletedAt: Int? = nil
            while deviceExists(id, control: control) {
                // The server deleted it and exited, and the kernel has taken
                // its node away: a program still holding /dev/ublkbN open
                // keeps the kernel's object until it closes it. A short hold
                // (udev probing, say) is waited out, so that the id is free
                // again when del returns.
                if !UblkCLI.isAlive(info.serverPID) && access("/sys/class/ublk-char/ublkc\(id)", F_OK) != 0 {
                    if deletedAt == nil { deletedAt = waited }
                    if waited - deletedAt! >= 3000 {
                        UblkCLI.printError("pcache-ublk del: /dev/ublkb\(id): deleted; a program still holds it open, "
                                           + "and the kernel frees it when that closes it")
                        break
                    }
                }
                if waited >= timeout * 1000 {
                    throw UblkCLI.Failure("still there after \(timeout) s (server pid \(info.serverPID)); see \(RuntimeFiles.logPath(id))")
                }
                UblkCLI.sleepMilliseconds(100)
                waited += 100
            }
            if let cacheDevice { try checkWrittenBack(cacheDevice, id: id) }
            return
        }

        // No server: stop and delete it ourselves.
        if flush {
            UblkCLI.printError("pcache-ublk del: /dev/ublkb\(id): no server running, nothing can be written back now; dirty data stays in the cache for the next add")
        }
        try control.stopDevice(id)
        try control.deleteDevice(id)
        RuntimeFiles.removeDeviceFiles(id)
    }

    static func deviceExists(_ id: UInt32, control: UblkControl) -> Bool {
        do {
            _ = try control.deviceInfo(id)
            return true
        } catch let error as SystemError where error.errno == ENODEV {
            return false
        } catch {
            return true
        }
    }

    /// Who holds /dev/ublkbN exclusively (a mounted filesystem, a
    /// device-mapper or md device over it, another O_EXCL opener), described,
    /// or nil when nobody does. Opening it with O_EXCL fails with EBUSY
    /// exactly then; openers without O_EXCL (a dd, say) are not seen, as
    /// dmsetup's open count would.
    static func user(of id: UInt32) -> String? {
        let path = DeviceNodes.blockDevicePath(id)
        let fd = open(path, O_RDONLY | O_EXCL | O_NONBLOCK | O_CLOEXEC)
        if fd >= 0 {
            close(fd)
            return nil
        }
        guard errno == EBUSY else { return nil }  // no node (stopped, quiesced): nobody can hold it
        var st = stat()
        if stat(path, &st) == 0, let mounts = readSmallFile("/proc/self/mountinfo", limit: 16 << 20) {
            // "36 35 98:0 / /mnt rw,... - ext4 /dev/ublkb0 rw": field 3 is major:minor, field 5 the mount point.
            let device = "\(pcs_major(UInt64(st.st_rdev))):\(pcs_minor(UInt64(st.st_rdev)))"
            let points = mounts.split(separator: "\n").compactMap { line -> String? in
                let fields = line.split(separator: " ")
                return fields.count > 4 && fields[2] == device ? String(fields[4]) : nil
            }
            if !points.isEmpty { return "mounted on \(points.joined(separator: ", "))" }
        }
        let holders = UblkCLI.directoryEntries("/sys/block/ublkb\(id)/holders")
        if !holders.isEmpty { return "held by \(holders.sorted().joined(separator: ", "))" }
        return "opened exclusively by another program"
    }

    /// After `del --flush`: the server shuts its cache down before the device
    /// goes, so the cache device now tells whether every dirty byte reached
    /// the backing device (the dirty tail is at the end of the key log). A
    /// server whose writeback failed still removes the device (the data is
    /// safe in the cache), and a `stop flush` that came after a plain stop
    /// was too late to count: either way, this is where the user learns it,
    /// before trusting the backing device alone.
    static func checkWrittenBack(_ cacheDevice: String, id: UInt32) throws {
        let report: InspectionReport
        do {
            report = CacheInspector.inspect(memory: try MappedPersistentMemory(path: cacheDevice, readOnly: true),
                                            includeKeys: true)
        } catch {
            throw UblkCLI.Failure("removed, but \(cacheDevice) cannot be read to confirm the writeback: \(error)")
        }
        guard let dirty = report.holdsDirtyData else {
            throw UblkCLI.Failure("removed, but \(cacheDevice) cannot confirm the writeback: \(report.problem ?? "no key log")")
        }
        if dirty {
            throw UblkCLI.Failure(
                "removed, but not everything was written back: \(cacheDevice) still holds dirty data "
                    + "(dirty tail \(report.dirtyTail!), key log end \(report.logEnd!)); the next add replays it"
                    + (report.problem.map { ", though the cache reports: \($0)" } ?? "")
                    + ". See \(RuntimeFiles.logPath(id))")
        }
    }
}
