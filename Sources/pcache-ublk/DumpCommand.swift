import PCacheCore

/// `pcache-ublk dump <cache_dev> [--json] [--keys]`
///
/// Shows the superblock, cache_info, tails and segment table (and with
/// --keys the key log from the key tail, key by key), checking everything
/// on the way. Opens the device read-only. Exit status: 0 consistent,
/// 1 a problem was found (the first one is printed), 2 usage or open errors.
enum DumpCommand {
    static let usage = "pcache-ublk dump <cache_dev> [--json] [--keys]"
    static let summary = "show and check the metadata of a cache device (read-only)"

    static func run(_ arguments: [String]) throws -> Int32 {
        let args = try ParsedArguments(arguments, knownFlags: ["--json", "--keys", "--help", "-h"], usage: usage)
        if args.has("--help") || args.has("-h") {
            print("usage: \(usage)\n  --json  machine-readable output\n  --keys  also walk the key log and check every key\n"
                  + "exit status: 0 consistent, 1 problem found, 2 usage or open error")
            return 0
        }
        guard args.positional.count == 1 else { throw PCacheError.usage("usage: \(usage)") }
        let memory: MappedPersistentMemory
        do {
            memory = try MappedPersistentMemory(path: args.positional[0], readOnly: true)
        } catch {
            printError("pcache-ublk dump: \(error)")
            return 2
        }
        let report = CacheInspector.inspect(memory: memory, includeKeys: args.has("--keys"))
        if args.has("--json") {
            print(report.json().serialized(pretty: true))
        } else {
            print(report.text())
        }
        if let problem = report.problem {
            if args.has("--json") { printError("pcache-ublk dump: \(problem)") }
            return 1
        }
        return 0
    }
}
