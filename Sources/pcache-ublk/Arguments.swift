import Glibc
import PCacheCore

/// The words after a verb, split into positional arguments and `--flags`.
/// Only flags without values are supported; unknown ones are usage errors.
struct ParsedArguments {
    var positional: [String] = []
    var flags: Set<String> = []

    init(_ arguments: [String], knownFlags: Set<String>, usage: String) throws {
        var onlyPositional = false
        for word in arguments {
            if !onlyPositional && word == "--" {
                onlyPositional = true
            } else if !onlyPositional && word.hasPrefix("-") && word != "-" {
                guard knownFlags.contains(word) else {
                    throw PCacheError.usage("unknown option \(word)\nusage: \(usage)")
                }
                flags.insert(word)
            } else {
                positional.append(word)
            }
        }
    }

    func has(_ flag: String) -> Bool { flags.contains(flag) }
}

/// Writes a line to standard error.
func printError(_ message: String) {
    let line = message + "\n"
    _ = line.utf8CString.withUnsafeBufferPointer { buffer in
        write(2, buffer.baseAddress, buffer.count - 1)
    }
}
