import PCacheCore

/// `pcache-ublk format <cache_dev> [--data-crc] [--force]`
///
/// Writes what dm-pcache's first start writes on a blank device: the
/// superblock, the segment chain with its generations and segment infos, an
/// empty key log, both tails at 0:0, and cache_info with INIT_DONE (gc_percent
/// 70, write-back, data_crc as asked). A device that already holds data at
/// the superblock is left alone unless --force is given.
enum FormatCommand {
    static let usage = "pcache-ublk format <cache_dev> [--data-crc] [--force]"
    static let summary = "write a new, empty cache onto a pmem device or file"

    static func run(_ arguments: [String]) throws -> Int32 {
        let args = try ParsedArguments(arguments, knownFlags: ["--data-crc", "--force", "--help", "-h"], usage: usage)
        if args.has("--help") || args.has("-h") {
            print("usage: \(usage)\n  --data-crc  keep a CRC of the cached data in every key\n"
                  + "  --force     overwrite a device that already holds a superblock")
            return 0
        }
        guard args.positional.count == 1 else { throw PCacheError.usage("usage: \(usage)") }
        let path = args.positional[0]
        let memory = try MappedPersistentMemory(path: path)
        let metadata = try CacheFormat.format(memory: memory, dataCRC: args.has("--data-crc"), force: args.has("--force"))
        let device = metadata.device
        let info = metadata.info
        print("formatted \(path): \(device.segmentCount) segments of 16 MiB, cache_info flags \(String(info.flags, radix: 16))"
              + " (data_crc \(info.dataCRC ? "on" : "off"), gc_percent \(info.gcPercent), \(memory.mode) persistence)")
        return 0
    }
}
