import Glibc
import PCacheCore
import UblkServer

/// `pcache-ublk recover`: a new server takes over a device whose server died.
enum RecoverCommand {
    static let summary = "serve /dev/ublkbN again after its server died (the device kept its I/O waiting)"
    static let usage = "pcache-ublk recover -n <id> [--foreground]"
    static let valuedOptions: [String: String] = ["-n": "id", "--id": "id", "--ready-fd": "ready-fd"]
    static let help = """
        usage: \(usage)

        When a server dies (crash, kill -9) its device stays, QUIESCED: I/O
        waits instead of failing. recover rebuilds the target from
        \(RuntimeFiles.directory)/ublkb<N>.conf, takes the device over
        (START_USER_RECOVERY … END_USER_RECOVERY) and serves it in the
        background, like add.
        """

    static func run(_ args: [String]) throws -> Int32 {
        if UblkCLI.wantsHelp(args, valued: valuedOptions) {
            UblkCLI.printOut(help)
            return 0
        }
        return UblkCLI.run("recover", usage: usage) {
            let parsed = try UblkCLI.Arguments(
                args, valued: valuedOptions,
                flags: ["--foreground": "foreground", "-f": "foreground"])
            guard parsed.positional.isEmpty else {
                throw UblkCLI.UsageError("unexpected argument '\(parsed.positional[0])'")
            }
            let readiness = try UblkCLI.Readiness(parsed.value("ready-fd"))
            do {
                return try recover(parsed, args: args, readiness: readiness)
            } catch {
                readiness.failed("\(error)")
                throw error
            }
        }
    }

    private static func recover(_ parsed: UblkCLI.Arguments, args: [String], readiness: UblkCLI.Readiness) throws -> Int32 {
        guard let id = try parsed.deviceID() else { throw UblkCLI.UsageError("-n <id> is required") }
        try UblkCLI.requireDriver()
        let info = try UblkControl().deviceInfo(id)
        // A record left behind by a device of ours whose id another ublk
        // server has since taken must not put our target under its device.
        guard info.isOurs else { throw UblkCLI.Failure("/dev/ublkb\(id) is not a pcache-ublk device (another ublk server's)") }
        guard let record = RuntimeFiles.readRecord(id) else {
            throw UblkCLI.Failure("no record of what /dev/ublkb\(id) serves (\(RuntimeFiles.recordPath(id)) missing)")
        }
        if info.state == .live, UblkCLI.isAlive(info.serverPID) {
            throw UblkCLI.Failure("/dev/ublkb\(id) is LIVE, served by pid \(info.serverPID): nothing to recover")
        }
        guard info.supportsRecovery else {
            throw UblkCLI.Failure("/dev/ublkb\(id) was added without USER_RECOVERY and cannot be recovered")
        }

        if !parsed.has("foreground") {
            try RuntimeFiles.ensureDirectory()
            let childArgs = ["recover"] + args + ["--foreground", "--ready-fd", "3"]
            let served = try UblkCLI.launchServer(arguments: childArgs, logPath: RuntimeFiles.logPath(id))
            UblkCLI.printOut(DeviceNodes.blockDevicePath(served))
            return 0
        }

        let target = try UblkTargetFactory.makeTarget(record.target)
        let hooks = UblkServer.Hooks(ready: { id in
            if readiness.isPiped {
                readiness.ready(id)
            } else {
                UblkCLI.printOut(DeviceNodes.blockDevicePath(id))
            }
        })
        return try UblkServer.serve(target: target, spec: record.target, mode: .recover(id), hooks: hooks)
    }
}
