import Glibc
import PCacheCore
import UblkServer

/// `pcache-ublk status`: the target's status (or table) line, like `dmsetup status`.
enum StatusCommand {
    static let summary = "print a device's status line (--table: its table line; --info: server details; --stats: counters)"
    static let usage = "pcache-ublk status [-n <id>] [--table | --info | --stats]"
    static let valuedOptions: [String: String] = ["-n": "id", "--id": "id"]

    static func run(_ args: [String]) throws -> Int32 {
        if UblkCLI.wantsHelp(args, valued: valuedOptions) {
            UblkCLI.printOut("""
                usage: \(usage)

                Asks the device's server for its status line (dmsetup status), its
                table line with --table (dmsetup table), the server's details with
                --info, or the target's counters with --stats (`name value` lines:
                writeback_failures, writeback_last_error, crcErrors, gc_segments_freed,
                ...). Without -n: every pcache-ublk device, one line each,
                prefixed with its path.
                """)
            return 0
        }
        return UblkCLI.run("status", usage: usage) {
            let parsed = try UblkCLI.Arguments(
                args, valued: valuedOptions, flags: ["--table": "table", "--info": "info", "--stats": "stats"])
            guard parsed.positional.isEmpty else {
                throw UblkCLI.UsageError("unexpected argument '\(parsed.positional[0])'")
            }
            let chosen = ["table", "info", "stats"].filter { parsed.has($0) }
            if chosen.count > 1 {
                throw UblkCLI.UsageError("--table, --info and --stats exclude each other")
            }
            let request = chosen.first ?? "status"
            try UblkCLI.requireDriver()
            if let id = try parsed.deviceID() {
                switch try UblkCLI.ask(id, request) {
                case .ok(let lines):
                    for line in lines { UblkCLI.printOut(line) }
                    return 0
                case .error(let message):
                    throw UblkCLI.Failure(message)
                }
            }
            // Every device of ours that has a server.
            var status: Int32 = 0
            let control = try? UblkControl()
            for id in UblkCLI.deviceIDs() where (try? control?.deviceInfo(id))??.isOurs == true {
                do {
                    switch try UblkCLI.ask(id, request) {
                    case .ok(let lines):
                        for line in lines { UblkCLI.printOut("\(DeviceNodes.blockDevicePath(id)): \(line)") }
                    case .error(let message):
                        UblkCLI.printOut("\(DeviceNodes.blockDevicePath(id)): error: \(message)")
                        status = 1
                    }
                } catch {
                    UblkCLI.printOut("\(DeviceNodes.blockDevicePath(id)): \(error)")
                    status = 1
                }
            }
            return status
        }
    }
}
