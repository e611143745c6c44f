import Glibc
import PCacheCore
import UblkServer

/// `pcache-ublk add`: create a cached block device and serve it.
enum AddCommand {
    static let summary = "create a cached block device /dev/ublkbN from a pcache table"
    static let usage = """
        pcache-ublk add --table "0 <sectors> pcache <cache_dev> <backing_dev> [<#opts> <opt>...]" \
        [-n <id>] [-q <queues>] [-d <depth>] [--foreground]
        """
    static let help = """
        usage: \(usage)

        Validates the table, starts a server for it in the background and
        prints /dev/ublkbN once the device is live. The server logs to
        \(RuntimeFiles.directory)/ublkb<N>.log and answers on
        \(RuntimeFiles.directory)/ublkb<N>.sock.

          --table TABLE     dm-style table; options: cache_mode writeback,
                            data_crc true|false, writeback_history true|false
          -n, --id N        device id (default: the first free one)
          -q, --queues N    hardware queues, one thread each, 1..4096 (default 1)
          -d, --depth N     tags per queue, 1..4096 (default 128)
          -f, --foreground  serve in this process; SIGTERM or Ctrl-C stops it
          --null SIZE       (testing) the null target instead of a table: SIZE
                            bytes (K/M/G/T), a multiple of 4 KiB, nothing stored
        """
    static let valuedOptions: [String: String] = [
        "--table": "table", "--null": "null", "-n": "id", "--id": "id", "-q": "queues", "--queues": "queues",
        "-d": "depth", "--depth": "depth", "--ready-fd": "ready-fd", "--log": "log",
    ]

    /// `<runtime directory>/add-<digits>.log`, what a parent `add` passes.
    static func isPendingLogName(_ path: String) -> Bool {
        let prefix = "\(RuntimeFiles.directory)/add-"
        guard path.hasPrefix(prefix), path.hasSuffix(".log") else { return false }
        let digits = path.dropFirst(prefix.count).dropLast(4)
        return !digits.isEmpty && digits.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }

    static func run(_ args: [String]) throws -> Int32 {
        if UblkCLI.wantsHelp(args, valued: valuedOptions) {
            UblkCLI.printOut(help)
            return 0
        }
        return UblkCLI.run("add", usage: usage) { try add(args) }
    }

    private static func add(_ args: [String]) throws -> Int32 {
        let parsed = try UblkCLI.Arguments(
            args,
            valued: valuedOptions,
            flags: ["--foreground": "foreground", "-f": "foreground"])
        guard parsed.positional.isEmpty else {
            throw UblkCLI.UsageError("unexpected argument '\(parsed.positional[0])'")
        }
        let readiness = try UblkCLI.Readiness(parsed.value("ready-fd"))
        // --log is how a parent `add` names the log it opened for this server,
        // which is renamed to the device's log once the id is known: only such
        // a file is taken, so a stray --log cannot rename anything else.
        if let log = parsed.value("log"), !isPendingLogName(log) {
            throw UblkCLI.UsageError("--log is internal: it names \(RuntimeFiles.directory)/add-<pid>.log, not '\(log)'")
        }
        do {
            return try addChecked(parsed, args: args, readiness: readiness)
        } catch {
            readiness.failed("\(error)")
            throw error
        }
    }

    private static func addChecked(_ parsed: UblkCLI.Arguments, args: [String], readiness: UblkCLI.Readiness) throws -> Int32 {
        var options = UblkDeviceOptions()
        if let id = try parsed.deviceID() { options.id = id }
        options.queues = try parsed.int("queues", range: 1...4096) ?? 1
        options.depth = try parsed.int("depth", range: 1...4096) ?? 128

        // What to serve.
        let spec: TargetSpec
        switch (parsed.value("table"), parsed.value("null")) {
        case (var table?, nil):
            // Absolute paths: the table is recorded for `recover`, which may
            // run in another directory.
            if let cwd = getcwd(nil, 0) {
                table = PCacheTable.withAbsoluteDevicePaths(table, relativeTo: String(cString: cwd))
                free(cwd)
            }
            // Validate before anything starts; the same again in the server.
            do {
                _ = try PCacheTable.parse(table)
            } catch {
                throw UblkCLI.Failure("invalid table: \(error)")
            }
            spec = .table(table)
        case (nil, let size?):
            guard let bytes = UblkCLI.parseSize(size), bytes > 0, bytes % 4096 == 0 else {
                throw UblkCLI.UsageError("--null: '\(size)' is not a positive size in 4 KiB multiples (e.g. 1G)")
            }
            spec = .null(bytes: bytes)
        case (nil, nil):
            throw UblkCLI.UsageError("--table is required")
        default:
            throw UblkCLI.UsageError("--table and --null exclude each other")
        }
        try UblkCLI.requireDriver()
        try RuntimeFiles.ensureDirectory()

        if !parsed.has("foreground") {
            // Serve from a child of our own, in its own session, and wait for it.
            let pendingLog = "\(RuntimeFiles.directory)/add-\(getpid()).log"
            var childArgs = ["add"] + args
            childArgs += ["--foreground", "--ready-fd", "3", "--log", pendingLog]
            do {
                let id = try UblkCLI.launchServer(arguments: childArgs, logPath: pendingLog)
                UblkCLI.printOut(DeviceNodes.blockDevicePath(id))
                return 0
            } catch let error as UblkCLI.Failure {
                if !error.description.contains(pendingLog) { unlink(pendingLog) }
                throw error
            }
        }

        let target = try UblkTargetFactory.makeTarget(spec)
        let pendingLog = parsed.value("log")
        let hooks = UblkServer.Hooks(
            deviceKnown: { id in
                // The log was opened before the id was known: give it its name.
                if let pendingLog { rename(pendingLog, RuntimeFiles.logPath(id)) }
            },
            ready: { id in
                if readiness.isPiped {
                    readiness.ready(id)
                } else {
                    UblkCLI.printOut(DeviceNodes.blockDevicePath(id))
                }
            })
        return try UblkServer.serve(target: target, spec: spec, mode: .add(options), hooks: hooks)
    }
}
