import Glibc
import PCacheCore

/// The version printed by `--version`.
let pcacheUblkVersion = "0.1.0"

/// One line per verb: name, one-line summary, entry point. Each entry point
/// gets the words after the verb and returns the exit status.
let commands: [(name: String, summary: String, run: ([String]) throws -> Int32)] = [
    ("format", FormatCommand.summary, FormatCommand.run),
    ("dump", DumpCommand.summary, DumpCommand.run),
    ("add", AddCommand.summary, AddCommand.run),
    ("del", DelCommand.summary, DelCommand.run),
    ("list", ListCommand.summary, ListCommand.run),
    ("status", StatusCommand.summary, StatusCommand.run),
    ("message", MessageCommand.summary, MessageCommand.run),
    ("recover", RecoverCommand.summary, RecoverCommand.run),
]

@MainActor func printUsage() {
    var text = "usage: pcache-ublk <command> [arguments]\n\ncommands:\n"
    for command in commands {
        text += "  " + command.name + String(repeating: " ", count: max(1, 10 - command.name.count)) + command.summary + "\n"
    }
    text += "  help      show this text\n\n'pcache-ublk <command> --help' describes a command; --version prints the version."
    print(text)
}

@MainActor func runMain() -> Int32 {
    let arguments = Array(CommandLine.arguments.dropFirst())
    guard let verb = arguments.first else {
        printUsage()
        return 2
    }
    switch verb {
    case "--version", "version":
        print("pcache-ublk \(pcacheUblkVersion)")
        return 0
    case "help", "--help", "-h":
        printUsage()
        return 0
    default:
        break
    }
    guard let command = commands.first(where: { $0.name == verb }) else {
        printError("pcache-ublk: unknown command '\(verb)'")
        printUsage()
        return 2
    }
    do {
        return try command.run(Array(arguments.dropFirst()))
    } catch let error as PCacheError {
        printError("pcache-ublk \(verb): \(error)")
        if case .usage = error { return 2 }
        return 1
    } catch {
        printError("pcache-ublk \(verb): \(error)")
        return 1
    }
}

exit(runMain())
