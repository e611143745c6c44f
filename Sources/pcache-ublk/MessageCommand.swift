import Glibc
import PCacheCore
import UblkServer

/// `pcache-ublk message`: like `dmsetup message <dev> 0 <message>`.
enum MessageCommand {
    static let summary = "send a message to a device (gc_percent <0..90>)"
    static let usage = "pcache-ublk message -n <id> gc_percent <0..90>"
    static let valuedOptions: [String: String] = ["-n": "id", "--id": "id"]

    static func run(_ args: [String]) throws -> Int32 {
        if UblkCLI.wantsHelp(args, valued: valuedOptions) {
            UblkCLI.printOut("""
                usage: \(usage)

                gc_percent N: garbage-collect cache segments once more than N percent
                are in use (0 collects everything written back). Persisted in the
                cache's metadata at once.
                """)
            return 0
        }
        return UblkCLI.run("message", usage: usage) {
            // The message's words stay positional even when they look like
            // options ("gc_percent -1" is refused by the target's own words),
            // so an id given after them is picked out here.
            let parsed = try UblkCLI.Arguments(
                args, valued: valuedOptions, flags: [:], stopAtPositional: true)
            var words = parsed.positional
            var id = try parsed.deviceID()
            if id == nil, let at = words.firstIndex(where: { $0 == "-n" || $0 == "--id" || $0.hasPrefix("--id=") }) {
                let trailing = try UblkCLI.Arguments(Array(words[at...]), valued: valuedOptions, flags: [:])
                guard trailing.positional.isEmpty else {
                    throw UblkCLI.UsageError("unexpected argument '\(trailing.positional[0])' after the device id")
                }
                id = try trailing.deviceID()
                words.removeSubrange(at...)
            }
            guard let id else { throw UblkCLI.UsageError("-n <id> is required") }
            guard !words.isEmpty else { throw UblkCLI.UsageError("no message given") }
            // Refuse a malformed message here, with the same words the target uses.
            do {
                _ = try PCacheMessage.parse(words)
            } catch {
                throw UblkCLI.Failure("\(error)")
            }
            try UblkCLI.requireDriver()
            switch try UblkCLI.ask(id, "message " + words.joined(separator: " ")) {
            case .ok(let lines):
                for line in lines { UblkCLI.printOut(line) }
                return 0
            case .error(let message):
                throw UblkCLI.Failure(message)
            }
        }
    }
}
