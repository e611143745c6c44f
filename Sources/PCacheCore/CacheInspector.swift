/// The offline inspector behind `pcache-ublk dump`: reads a cache device
/// without writing to it, checks it like the kernel's start-up does (plus the
/// key-level checks the kernel leaves out), and reports what it finds,
/// stopping at the first problem, like fsck.
public enum CacheInspector {
    /// Inspects `memory`, which should be mapped read-only.
    public static func inspect(memory: any PersistentMemory, includeKeys: Bool) -> InspectionReport {
        inspect(memory: memory, includeKeys: includeKeys, minimumSize: PCacheLayout.minimumDeviceSize)
    }

    /// Test hook: `minimumSize` below 512 MiB lets tests use small images.
    static func inspect(memory: any PersistentMemory, includeKeys: Bool, minimumSize: Int) -> InspectionReport {
        var report = InspectionReport(device: memory.label, size: memory.size, includesKeys: includeKeys)
        report.segmentsThatFit = PCacheLayout.segmentsThatFit(deviceBytes: UInt64(memory.size))

        // Superblock.
        let device: CacheDevice
        do {
            device = try CacheDevice.openReadOnly(memory: memory, minimumSize: minimumSize)
        } catch {
            if memory.contains(offset: PCacheLayout.superblockOffset, count: Superblock.encodedSize) {
                report.superblock = Superblock(decoding: memory.pointer(at: PCacheLayout.superblockOffset,
                                                                        count: Superblock.encodedSize))
            }
            report.problem = "\(error)"
            return report
        }
        report.superblock = device.superblock

        // The raw slots, shown whether or not the cache loads.
        let infoSlots = DualCopySlots<CacheInfo>(offset: PCacheLayout.cacheInfoOffset, stride: PCacheLayout.cacheInfoSlotStride)
        report.cacheInfoSlots = infoSlots.readSlots(from: memory).map { .init($0) }
        let keySlots = DualCopySlots<CachePositionOnMedia>(offset: PCacheLayout.keyTailOffset, stride: PCacheLayout.tailSlotStride)
        let dirtySlots = DualCopySlots<CachePositionOnMedia>(offset: PCacheLayout.dirtyTailOffset, stride: PCacheLayout.tailSlotStride)
        report.keyTailSlots = keySlots.readSlots(from: memory).map { .init($0, $0.position) }
        report.dirtyTailSlots = dirtySlots.readSlots(from: memory).map { .init($0, $0.position) }
        if let (info, slot) = infoSlots.findLatest(in: memory) {
            report.cacheInfo = info
            report.cacheInfoSlot = slot
        }
        if let (tail, slot) = keySlots.findLatest(in: memory) {
            report.keyTail = tail.position
            report.keyTailSlot = slot
        }
        if let (tail, slot) = dirtySlots.findLatest(in: memory) {
            report.dirtyTail = tail.position
            report.dirtyTailSlot = slot
        }

        // cache_info, the segment chain, the tails, the dirty-tail chain.
        let metadata: CacheMetadata
        do {
            metadata = try CacheMetadata.inspect(device: device)
        } catch {
            report.problem = "\(error)"
            return report
        }
        let generations = metadata.segmentGenerations
        report.segments = (0..<Int(metadata.segmentCount)).map { i in
            InspectionReport.SegmentEntry(cacheSegID: UInt32(i), physical: metadata.segmentChain[i],
                                          generation: generations[i], info: metadata.segmentInfos[i])
        }
        if let info = report.cacheInfo {
            if info.gcPercent > PCacheLayout.gcPercentMax {
                report.warnings.append("gc_percent \(info.gcPercent) is above \(PCacheLayout.gcPercentMax)")
            }
            if info.cacheMode != .writeback {
                report.warnings.append("cache mode \(info.cacheMode.map { "\($0)" } ?? "\(info.cacheModeBits)") "
                                       + "is not writeback, the only mode dm-pcache accepts")
            }
        }
        if includeKeys {
            walkKeys(metadata, generations, &report)
        }
        return report
    }

    private struct Stop: Error { let message: String }

    /// Walks the key log from the key tail and checks every key.
    private static func walkKeys(_ metadata: CacheMetadata, _ generations: [UInt64], _ report: inout InspectionReport) {
        let keyTail = metadata.keyTail
        let dirtyTail = metadata.dirtyTail
        var keySets: [InspectionReport.KeySetEntry] = []
        var logSegments = Set<UInt32>([keyTail.cacheSegID])
        var dirty = false
        let end: CacheMetadata.KeyLogEnd
        do {
            end = try metadata.walkKeyLog(from: keyTail) { position, view in
                if position == dirtyTail { dirty = true }
                if let next = view.nextCacheSegID { logSegments.insert(next) }
                keySets.append(.init(position: position, isLast: view.isLast, next: view.nextCacheSegID,
                                     size: view.size, dirty: dirty,
                                     keys: view.keys.map { .init(key: $0, stale: false) }))
            }
        } catch {
            report.keySets = keySets
            report.problem = "\(error)"
            return
        }
        report.keySets = keySets
        report.logEnd = end.position
        report.logEndReason = end.reason.description
        if !dirty && end.position != dirtyTail {
            report.problem = "dirty tail \(dirtyTail) is not on the key log, which runs from the key tail \(keyTail) "
                + "to \(end.position)"
            return
        }
        // Key-level checks, in log order; stop at the first problem.
        let name = metadata.device.name
        for k in keySets.indices {
            for i in keySets[k].keys.indices {
                let key = keySets[k].keys[i].key
                let at = "key \(i) of the kset at \(keySets[k].position) on \(name)"
                var problem: String? = nil
                if key.flags & KeyOnMedia.flagEmpty != 0 {
                    problem = "\(at) has the in-memory EMPTY flag set"
                } else if key.len == 0 {
                    problem = "\(at) has length 0"
                } else if key.off > UInt64.max - UInt64(key.len) {
                    problem = "\(at) covers [\(key.off), +\(key.len)), which overflows 64 bits"
                } else if key.cacheSegID >= metadata.segmentCount {
                    problem = "\(at) points into cache segment \(key.cacheSegID), but the cache has \(metadata.segmentCount)"
                } else if Int(key.cacheSegOff) + Int(key.len) > PCacheLayout.segmentDataSize {
                    problem = "\(at) has data at \(key.cacheSegOff)+\(key.len), past the end of the data area "
                        + "(\(PCacheLayout.segmentDataSize) bytes)"
                } else if key.segGen > generations[Int(key.cacheSegID)] {
                    problem = "\(at) has seg_gen \(key.segGen), newer than segment \(key.cacheSegID)'s generation "
                        + "\(generations[Int(key.cacheSegID)])"
                } else {
                    let stale = key.segGen < generations[Int(key.cacheSegID)]
                    keySets[k].keys[i].stale = stale
                    if !stale {
                        if logSegments.contains(key.cacheSegID) {
                            problem = "\(at) points into cache segment \(key.cacheSegID), which holds the key log"
                        } else if metadata.dataCRCEnabled {
                            let offset = metadata.deviceOffset(of: key.position)
                            let crc = CRC32C.checksum(metadata.memory.pointer(at: offset, count: Int(key.len)),
                                                      count: Int(key.len))
                            if crc != key.dataCRC {
                                problem = "\(at): data_crc error: stored \(hex(key.dataCRC)), the data gives \(hex(crc))"
                            }
                        }
                    }
                }
                if let problem {
                    report.keySets = keySets
                    report.problem = problem
                    return
                }
            }
        }
        report.keySets = keySets
    }
}

/// What the inspector found.
public struct InspectionReport: Sendable {
    public struct Slot: Sendable {
        public let valid: Bool
        public let seq: UInt8
        public let position: CachePosition?
        init<R: MetadataRecord>(_ record: R, _ position: CachePosition? = nil) {
            valid = record.isCRCValid
            seq = record.header.seq
            self.position = position
        }
    }

    public struct SegmentEntry: Sendable {
        public let cacheSegID: UInt32
        public let physical: UInt32
        public let generation: UInt64
        public let info: SegmentInfo
    }

    public struct KeyEntry: Sendable {
        public let key: KeyOnMedia
        /// seg_gen is older than the segment's generation: replay drops it.
        public var stale: Bool
    }

    public struct KeySetEntry: Sendable {
        public let position: CachePosition
        public let isLast: Bool
        public let next: UInt32?
        public let size: Int
        /// At or after the dirty tail: not yet written back.
        public let dirty: Bool
        public var keys: [KeyEntry]
    }

    public let device: String
    public let size: Int
    public let includesKeys: Bool
    public var segmentsThatFit: UInt64 = 0
    public var superblock: Superblock?
    public var cacheInfoSlots: [Slot] = []
    public var cacheInfo: CacheInfo?
    public var cacheInfoSlot: Int?
    public var keyTailSlots: [Slot] = []
    public var dirtyTailSlots: [Slot] = []
    public var keyTail: CachePosition?
    public var keyTailSlot: Int?
    public var dirtyTail: CachePosition?
    public var dirtyTailSlot: Int?
    public var segments: [SegmentEntry] = []
    public var keySets: [KeySetEntry] = []
    public var logEnd: CachePosition?
    public var logEndReason: String?
    public var warnings: [String] = []
    /// The first problem found; nil when the device is consistent.
    public var problem: String?

    init(device: String, size: Int, includesKeys: Bool) {
        self.device = device
        self.size = size
        self.includesKeys = includesKeys
    }

    public var isConsistent: Bool { problem == nil }

    /// Whether the key log holds data not yet written back: the dirty tail is
    /// at one of its key-sets rather than at its end. Nil when that cannot be
    /// told (keys not walked, or the log could not be followed). A bad key
    /// does not hide it: the tails and the log's extent are told apart from
    /// the keys' contents.
    public var holdsDirtyData: Bool? {
        guard let dirtyTail, let logEnd else { return nil }
        if dirtyTail == logEnd { return false }
        return keySets.contains { $0.position == dirtyTail } ? true : nil
    }

    // MARK: - Text

    public func text() -> String {
        var out: [String] = []
        out.append("device      \(device): \(size) bytes, \(segmentsThatFit) segments fit")
        if let sb = superblock {
            out.append("superblock  magic \(hex(sb.magic)) crc \(hex(sb.crc)) (\(sb.isCRCValid ? "ok" : "BAD"))"
                       + " flags \(hex(sb.flags)) seg_num \(sb.segNum)")
        }
        if !cacheInfoSlots.isEmpty {
            if let info = cacheInfo {
                out.append("cache_info  seg_id \(info.segID) n_segs \(info.nSegs) flags \(hex(info.flags)) ("
                           + Self.describeFlags(info) + ")")
            } else {
                out.append("cache_info  no valid copy")
            }
            out.append("            " + Self.describeSlots(cacheInfoSlots, latest: cacheInfoSlot))
            out.append("key_tail    \(keyTail.map { "\($0)" } ?? "none")  " + Self.describeSlots(keyTailSlots, latest: keyTailSlot))
            out.append("dirty_tail  \(dirtyTail.map { "\($0)" } ?? "none")  " + Self.describeSlots(dirtyTailSlots, latest: dirtyTailSlot))
        }
        if !segments.isEmpty {
            out.append("segments    cache  physical  generation  info-flags  next  seq")
            for s in segments {
                let next = s.info.hasNext ? String(s.info.nextSeg) : "-"
                out.append("            " + Self.pad(String(s.cacheSegID), 5) + "  " + Self.pad(String(s.physical), 8)
                           + "  " + Self.pad(String(s.generation), 10) + "  " + Self.pad(hex(s.info.flags), 10)
                           + "  " + Self.pad(next, 4) + "  " + String(s.info.header.seq))
            }
        }
        if includesKeys && (!keySets.isEmpty || logEnd != nil) {
            out.append("key log     from key tail \(keyTail.map { "\($0)" } ?? "?")")
            for set in keySets {
                if set.isLast {
                    out.append("  \(set.position)  LAST -> cache segment \(set.next!)")
                    continue
                }
                out.append("  \(set.position)  kset of \(set.keys.count) keys, \(set.size) bytes, "
                           + (set.dirty ? "dirty" : "written back"))
                for entry in set.keys {
                    let k = entry.key
                    var flags: [String] = []
                    if k.isClean { flags.append("clean") }
                    if entry.stale { flags.append("stale") }
                    out.append("      off \(k.off) len \(k.len) at \(k.cacheSegID):\(k.cacheSegOff) gen \(k.segGen)"
                               + " crc \(hex(k.dataCRC))" + (flags.isEmpty ? "" : " [" + flags.joined(separator: ",") + "]"))
                }
            }
            if let end = logEnd {
                out.append("  \(end)  end of log: \(logEndReason ?? "")")
            }
        }
        for w in warnings { out.append("warning     \(w)") }
        out.append("status      " + (problem.map { "PROBLEM: \($0)" } ?? "consistent"))
        return out.joined(separator: "\n")
    }

    static func describeFlags(_ info: CacheInfo) -> String {
        var parts: [String] = []
        parts.append(info.initDone ? "init_done" : "init not done")
        parts.append("data_crc " + (info.dataCRC ? "on" : "off"))
        parts.append("mode " + (info.cacheMode.map { "\($0)" } ?? "unknown(\(info.cacheModeBits))"))
        parts.append("gc_percent \(info.gcPercent)")
        return parts.joined(separator: ", ")
    }

    static func describeSlots(_ slots: [Slot], latest: Int?) -> String {
        slots.enumerated().map { i, s in
            "slot \(i): " + (s.valid ? "seq \(s.seq)" + (latest == i ? " (latest)" : "") : "invalid")
        }.joined(separator: ", ")
    }

    static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
    }

    // MARK: - JSON

    public func json() -> JSONValue {
        var members: [(String, JSONValue)] = [
            ("device", .string(device)),
            ("size", .int(Int64(size))),
            ("segments_fit", .uint(segmentsThatFit)),
        ]
        if let sb = superblock {
            members.append(("superblock", .object([
                ("crc", .uint(UInt64(sb.crc))), ("crc_valid", .bool(sb.isCRCValid)),
                ("flags", .uint(UInt64(sb.flags))), ("magic", .string(hex(sb.magic))),
                ("seg_num", .uint(UInt64(sb.segNum))),
            ])))
        }
        if !cacheInfoSlots.isEmpty {
            if let info = cacheInfo {
                members.append(("cache_info", .object([
                    ("slot", cacheInfoSlot.map { .int(Int64($0)) } ?? .null),
                    ("seq", .uint(UInt64(info.header.seq))),
                    ("seg_id", .uint(UInt64(info.segID))), ("n_segs", .uint(UInt64(info.nSegs))),
                    ("flags", .uint(UInt64(info.flags))), ("flags_hex", .string(String(info.flags, radix: 16))),
                    ("data_crc", .bool(info.dataCRC)), ("init_done", .bool(info.initDone)),
                    ("cache_mode", info.cacheMode.map { .string("\($0)") } ?? .uint(UInt64(info.cacheModeBits))),
                    ("gc_percent", .uint(UInt64(info.gcPercent))),
                ])))
            } else {
                members.append(("cache_info", .null))
            }
            members.append(("cache_info_slots", Self.jsonSlots(cacheInfoSlots)))
            members.append(("key_tail", keyTail.map(Self.jsonPosition) ?? .null))
            members.append(("key_tail_slots", Self.jsonSlots(keyTailSlots)))
            members.append(("dirty_tail", dirtyTail.map(Self.jsonPosition) ?? .null))
            members.append(("dirty_tail_slots", Self.jsonSlots(dirtyTailSlots)))
        }
        members.append(("segments", .array(segments.map { s in
            .object([
                ("cache_seg_id", .uint(UInt64(s.cacheSegID))), ("physical", .uint(UInt64(s.physical))),
                ("gen", .uint(s.generation)), ("flags", .uint(UInt64(s.info.flags))),
                ("has_next", .bool(s.info.hasNext)), ("next_seg", s.info.hasNext ? .uint(UInt64(s.info.nextSeg)) : .null),
                ("type", .uint(UInt64(s.info.type))), ("seq", .uint(UInt64(s.info.header.seq))),
            ])
        })))
        if includesKeys {
            members.append(("ksets", .array(keySets.map { set in
                var m: [(String, JSONValue)] = [("position", Self.jsonPosition(set.position)), ("last", .bool(set.isLast))]
                if let next = set.next { m.append(("next_cache_seg_id", .uint(UInt64(next)))) }
                m.append(("size", .int(Int64(set.size))))
                if !set.isLast {
                    m.append(("dirty", .bool(set.dirty)))
                    m.append(("keys", .array(set.keys.map { e in
                        .object([
                            ("off", .uint(e.key.off)), ("len", .uint(UInt64(e.key.len))),
                            ("flags", .uint(UInt64(e.key.flags))), ("clean", .bool(e.key.isClean)),
                            ("cache_seg_id", .uint(UInt64(e.key.cacheSegID))),
                            ("cache_seg_off", .uint(UInt64(e.key.cacheSegOff))),
                            ("seg_gen", .uint(e.key.segGen)), ("data_crc", .uint(UInt64(e.key.dataCRC))),
                            ("stale", .bool(e.stale)),
                        ])
                    })))
                }
                return .object(m)
            })))
            members.append(("log_end", logEnd.map(Self.jsonPosition) ?? .null))
            members.append(("log_end_reason", logEndReason.map { .string($0) } ?? .null))
        }
        members.append(("warnings", .array(warnings.map { .string($0) })))
        members.append(("consistent", .bool(isConsistent)))
        members.append(("problem", problem.map { .string($0) } ?? .null))
        return .object(members)
    }

    static func jsonPosition(_ p: CachePosition) -> JSONValue {
        .object([("cache_seg_id", .uint(UInt64(p.cacheSegID))), ("seg_off", .uint(UInt64(p.segOff)))])
    }

    static func jsonSlots(_ slots: [Slot]) -> JSONValue {
        .array(slots.map { s in
            var m: [(String, JSONValue)] = [("valid", .bool(s.valid)), ("seq", .uint(UInt64(s.seq)))]
            if let p = s.position, s.valid { m.append(("position", jsonPosition(p))) }
            return .object(m)
        })
    }
}
