import Glibc
import PCacheCore
import UblkServer

/// One line per verb: name, one-line summary, entry point. Each entry point
/// gets the words after the verb and returns the exit status.
let commands: [(name: String, summary: String, run: ([String]) throws -> Int32)] = [
    ("add", AddCommand.summary, AddCommand.run),
    ("del", DelCommand.summary, DelCommand.run),
    ("list", ListCommand.summary, ListCommand.run),
    ("status", StatusCommand.summary, StatusCommand.run),
    ("message", MessageCommand.summary, MessageCommand.run),
    ("recover", RecoverCommand.summary, RecoverCommand.run),
]

@MainActor func runMain() -> Int32 {
    let arguments = Array(CommandLine.arguments.dropFirst())
    var usage = "usage: pcache-ublk <command> [arguments]\n\ncommands:\n"
    for command in commands {
        usage += "  " + command.name + String(repeating: " ", count: max(1, 10 - command.name.count)) + command.summary + "\n"
    }
    guard let verb = arguments.first, let command = commands.first(where: { $0.name == verb }) else {
        UblkCLI.printError(usage)
        return 2
    }
    do {
        return try command.run(Array(arguments.dropFirst()))
    } catch {
        UblkCLI.printError("pcache-ublk \(verb): \(error)")
        return 1
    }
}

exit(runMain())
