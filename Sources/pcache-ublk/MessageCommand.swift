import Glibc
import PCacheCore
import UblkServer

/// `pcache-ublk message`: like `dmsetup message <dev> 0 <message>`.
enum MessageCommand {
    static let summary = "send a message to a device (gc_percent <0..90>)"
    static let usage = "pcache-ublk message -n <id> gc_percent <0..90>"

    static func run(_ args: [String]) throws -> Int32 {
        if UblkCLI.wantsHelp(args) {
            UblkCLI.printOut("""
                usage: \(usage)

                gc_percent N: garbage-collect cache segments once more than N percent
                are in use (0 collects everything written back). Persisted in the
                cache's metadata at once.
                """)
            return 0
        }
        return UblkCLI.run("message", usage: usage) {
            let parsed = try UblkCLI.Arguments(
                args, valued: ["-n": "id", "--id": "id"], flags: [:], stopAtPositional: true)
            guard let id = try parsed.deviceID() else { throw UblkCLI.UsageError("-n <id> is required") }
            guard !parsed.positional.isEmpty else { throw UblkCLI.UsageError("no message given") }
            // Refuse a malformed message here, with the same words the target uses.
            do {
                _ = try PCacheMessage.parse(parsed.positional)
            } catch {
                throw UblkCLI.Failure("\(error)")
            }
            switch try UblkCLI.ask(id, "message " + parsed.positional.joined(separator: " ")) {
            case .ok(let lines):
                for line in lines { UblkCLI.printOut(line) }
                return 0
            case .error(let message):
                throw UblkCLI.Failure(message)
            }
        }
    }
}
