import Synchronization

/// The cache layer's metadata (the metadata parts of the kernel's cache.c and
/// cache_segment.c): cache_info, the segment chain with each segment's info
/// and generation, and the two tails.
///
/// `open` loads an existing cache, or builds a new one exactly as dm-pcache
/// does on its first start. Afterwards the persist methods write new
/// versions with the dual-copy scheme. Each object has its own small lock,
/// so the GC thread (key tail), the writeback thread (dirty tail), whoever
/// invalidates segments (generations) and the control path (cache_info)
/// never wait for one another.
public final class CacheMetadata: @unchecked Sendable {
    public let device: CacheDevice
    public let memory: any PersistentMemory
    /// INIT_DONE was clear at load: the chain and tails were just built (the
    /// core replays nothing and sets INIT_DONE once it has started).
    public let isNewCache: Bool
    /// Physical segment id of each cache segment id.
    public let segmentChain: [UInt32]
    /// n_segs: segments in the cache.
    public let segmentCount: UInt32
    /// Whether keys carry a CRC of their data (cache_info DATA_CRC).
    public let dataCRCEnabled: Bool
    /// The latest segment_info of each cache segment, as loaded or written.
    public let segmentInfos: [SegmentInfo]

    private struct InfoState {
        var slots: DualCopySlots<CacheInfo>
        var info: CacheInfo
    }

    private struct TailState {
        var slots: DualCopySlots<CachePositionOnMedia>
        var position: CachePosition
    }

    private struct GenerationState {
        var slots: DualCopySlots<SegmentGeneration>
        var gen: UInt64
    }

    private let infoState: Mutex<InfoState>
    private let keyTailState: Mutex<TailState>
    private let dirtyTailState: Mutex<TailState>
    private let generationState: Mutex<[GenerationState]>

    private init(device: CacheDevice, isNewCache: Bool, info: InfoState, chain: [UInt32], infos: [SegmentInfo],
                 generations: [GenerationState], keyTail: TailState, dirtyTail: TailState) {
        self.device = device
        self.memory = device.memory
        self.isNewCache = isNewCache
        self.segmentChain = chain
        self.segmentCount = UInt32(chain.count)
        self.dataCRCEnabled = info.info.dataCRC
        self.segmentInfos = infos
        self.infoState = Mutex(info)
        self.generationState = Mutex(generations)
        self.keyTailState = Mutex(keyTail)
        self.dirtyTailState = Mutex(dirtyTail)
    }

    // MARK: - Opening

    /// Loads the cache on `device`, or builds a new one.
    ///
    /// - A valid cache_info must have been formatted with the same `dataCRC`.
    ///   Its mode and gc_percent are kept; `cacheMode` is used only for a
    ///   new cache (dm-pcache does not compare it either).
    /// - No valid cache_info, or INIT_DONE clear: a new cache. Its segment
    ///   chain, generations, segment infos and tails are written now;
    ///   cache_info is not written until `persistCacheInfo(setInitDone: true)`.
    /// - Otherwise every on-media id and offset is checked (the hardened
    ///   kernel's checks plus a bounded walk of the key log from the dirty
    ///   tail), and nothing is written.
    public static func open(device: CacheDevice, dataCRC: Bool, cacheMode: CacheMode = .writeback) throws -> CacheMetadata {
        try load(device: device, requested: (dataCRC, cacheMode))
    }

    /// Loads an existing cache without writing anything and without checking
    /// options. A cache that was never completely started gives
    /// `PCacheError.cacheNotInitialised`. For the inspector.
    public static func inspect(device: CacheDevice) throws -> CacheMetadata {
        try load(device: device, requested: nil)
    }

    private static func load(device: CacheDevice, requested: (dataCRC: Bool, mode: CacheMode)?) throws -> CacheMetadata {
        let memory = device.memory
        let name = device.name
        var infoSlots = DualCopySlots<CacheInfo>(offset: PCacheLayout.cacheInfoOffset,
                                                  stride: PCacheLayout.cacheInfoSlotStride)
        var info: CacheInfo
        if let found = infoSlots.load(from: memory) {
            if let requested, found.dataCRC != requested.dataCRC {
                throw PCacheError.dataCRCOptionMismatch(requested: requested.dataCRC, stored: found.dataCRC)
            }
            info = found
        } else {
            guard let requested else { throw PCacheError.cacheNotInitialised(device: name, reason: "no valid cache_info") }
            // Start from zero: nothing of an invalid slot may leak in.
            info = CacheInfo()
            info.nSegs = device.segmentCount
            info.gcPercent = PCacheLayout.gcPercentDefault
            info.cacheMode = requested.mode
            info.dataCRC = requested.dataCRC
        }
        let isNew = !info.initDone
        if isNew && requested == nil {
            throw PCacheError.cacheNotInitialised(device: name, reason: "INIT_DONE is clear in cache_info")
        }
        guard info.nSegs > 0, info.nSegs <= device.segmentCount else {
            throw PCacheError.invalidCacheSegmentCount(device: name, nSegs: info.nSegs, segNum: device.segmentCount)
        }
        let state = InfoState(slots: infoSlots, info: info)
        if isNew {
            return build(device: device, info: state)
        }
        return try loadExisting(device: device, info: state)
    }

    /// Builds the segment chain and tails of a new cache (dm-pcache's first start).
    private static func build(device: CacheDevice, info initial: InfoState) -> CacheMetadata {
        let memory = device.memory
        var state = initial
        let n = Int(state.info.nSegs)
        var chain: [UInt32] = []
        var infos: [SegmentInfo] = []
        var generations: [GenerationState] = []
        chain.reserveCapacity(n)
        infos.reserveCapacity(n)
        generations.reserveCapacity(n)
        var previousSlots: DualCopySlots<SegmentInfo>? = nil
        for i in 0..<n {
            // The lowest free physical segment of an empty bitmap.
            let physical = UInt32(i)
            let base = device.segmentBase(physical: physical)
            if i == 0 {
                state.info.segID = physical
            } else {
                var record = infos[i - 1]
                record.hasNext = true
                record.nextSeg = physical
                infos[i - 1] = previousSlots!.write(record, to: memory)
            }
            memory.persistZero(at: base, count: PCacheLayout.segmentMetadataSize)
            var genSlots = DualCopySlots<SegmentGeneration>(offset: base + PCacheLayout.segmentGenerationOffset,
                                                             stride: PCacheLayout.segmentGenerationSlotStride)
            genSlots.write(SegmentGeneration(gen: 0), to: memory)
            generations.append(GenerationState(slots: genSlots, gen: 0))
            var infoSlots = DualCopySlots<SegmentInfo>(offset: base, stride: PCacheLayout.segmentInfoSlotStride)
            var record = SegmentInfo()
            record.type = SegmentInfo.typeCacheData
            infos.append(infoSlots.write(record, to: memory))
            previousSlots = infoSlots
            memory.persist(at: base + PCacheLayout.segmentDataOffset, bytes: KeySetCodec.emptyKeySet)
            chain.append(physical)
        }
        // Both tails restart at seq 1 in slot 1. The kernel relies on the
        // format having zeroed cache_ctrl; when a new cache is built over an
        // old cache's tails (cache_info lost), an old slot 0 with a later seq
        // would win over the new tails. Zeroing them first makes that
        // impossible and writes the same bytes in every other case.
        memory.persistZero(at: PCacheLayout.cacheCtrlOffset, count: 2 * 2 * PCacheLayout.tailSlotStride)
        var dirty = TailState(slots: DualCopySlots(offset: PCacheLayout.dirtyTailOffset, stride: PCacheLayout.tailSlotStride),
                              position: .zero)
        dirty.slots.write(CachePositionOnMedia(.zero), to: memory)
        var key = TailState(slots: DualCopySlots(offset: PCacheLayout.keyTailOffset, stride: PCacheLayout.tailSlotStride),
                            position: .zero)
        key.slots.write(CachePositionOnMedia(.zero), to: memory)
        return CacheMetadata(device: device, isNewCache: true, info: state, chain: chain, infos: infos,
                             generations: generations, keyTail: key, dirtyTail: dirty)
    }

    /// Walks and checks the metadata of an existing cache. Writes nothing.
    private static func loadExisting(device: CacheDevice, info state: InfoState) throws -> CacheMetadata {
        let memory = device.memory
        let name = device.name
        let segNum = device.segmentCount
        let n = Int(state.info.nSegs)
        var inChain = [Bool](repeating: false, count: Int(segNum))
        var chain: [UInt32] = []
        var infos: [SegmentInfo] = []
        var generations: [GenerationState] = []
        chain.reserveCapacity(n)
        infos.reserveCapacity(n)
        generations.reserveCapacity(n)
        var physical = state.info.segID
        var source = "cache_info seg_id"
        for i in 0..<n {
            let cacheSegID = UInt32(i)
            guard physical < segNum else {
                throw PCacheError.segmentIDOutOfRange(device: name, what: source, id: physical, limit: segNum)
            }
            guard !inChain[Int(physical)] else {
                throw PCacheError.segmentChainLoop(device: name, cacheSegID: cacheSegID, physical: physical)
            }
            inChain[Int(physical)] = true
            let base = device.segmentBase(physical: physical)
            var infoSlots = DualCopySlots<SegmentInfo>(offset: base, stride: PCacheLayout.segmentInfoSlotStride)
            guard let record = infoSlots.load(from: memory) else {
                throw PCacheError.segmentInfoUnreadable(device: name, cacheSegID: cacheSegID, physical: physical)
            }
            var genSlots = DualCopySlots<SegmentGeneration>(offset: base + PCacheLayout.segmentGenerationOffset,
                                                             stride: PCacheLayout.segmentGenerationSlotStride)
            let gen = genSlots.load(from: memory)?.gen ?? 0
            chain.append(physical)
            infos.append(record)
            generations.append(GenerationState(slots: genSlots, gen: gen))
            if i < n - 1 {
                guard record.hasNext else {
                    throw PCacheError.segmentChainTooShort(device: name, cacheSegID: cacheSegID, physical: physical,
                                                           nSegs: state.info.nSegs)
                }
                physical = record.nextSeg
                source = "segment_info next_seg of physical segment \(chain[i])"
            }
        }
        let key = try loadTail(memory, name, offset: PCacheLayout.keyTailOffset, which: "key tail", nSegs: state.info.nSegs)
        let dirty = try loadTail(memory, name, offset: PCacheLayout.dirtyTailOffset, which: "dirty tail", nSegs: state.info.nSegs)
        let metadata = CacheMetadata(device: device, isNewCache: false, info: state, chain: chain, infos: infos,
                                     generations: generations, keyTail: key, dirtyTail: dirty)
        // The hardened kernel's dirty-tail check: the log from the dirty
        // tail must end, with every link in range and no segment twice.
        _ = try metadata.walkKeyLog(from: dirty.position) { _, _ in }
        return metadata
    }

    private static func loadTail(_ memory: any PersistentMemory, _ name: String, offset: Int, which: String,
                                 nSegs: UInt32) throws -> TailState {
        var slots = DualCopySlots<CachePositionOnMedia>(offset: offset, stride: PCacheLayout.tailSlotStride)
        guard let record = slots.load(from: memory) else {
            throw PCacheError.corruptedTails(device: name, which: which)
        }
        let p = record.position
        guard p.cacheSegID < nSegs, Int(p.segOff) < PCacheLayout.segmentDataSize else {
            throw PCacheError.tailOutOfRange(device: name, which: which, position: p, nSegs: nSegs)
        }
        return TailState(slots: slots, position: p)
    }

    // MARK: - cache_info

    /// The current cache_info (with the seq of its latest copy).
    public var info: CacheInfo { infoState.withLock { $0.info } }

    /// Writes cache_info as the next version (seq + 1, into the other slot),
    /// optionally changing gc_percent (0…90) and setting INIT_DONE.
    public func persistCacheInfo(gcPercent: UInt8? = nil, setInitDone: Bool = false) {
        if let gcPercent {
            precondition(gcPercent <= PCacheLayout.gcPercentMax, "gc_percent \(gcPercent) above \(PCacheLayout.gcPercentMax)")
        }
        updateCacheInfo { info in
            if let gcPercent { info.gcPercent = gcPercent }
            if setInitDone { info.initDone = true }
        }
    }

    /// Applies `change` to cache_info and writes it as the next version.
    public func updateCacheInfo(_ change: (inout CacheInfo) -> Void) {
        let memory = self.memory
        infoState.withLock { state in
            var info = state.info
            change(&info)
            state.info = state.slots.write(info, to: memory)
        }
    }

    // MARK: - Segments

    /// Physical segment id of cache segment `cacheSegID`.
    @inlinable
    public func physicalSegment(_ cacheSegID: UInt32) -> UInt32 {
        segmentChain[Int(cacheSegID)]
    }

    /// Device offset of the data area of cache segment `cacheSegID`.
    public func dataAreaOffset(_ cacheSegID: UInt32) -> Int {
        PCacheLayout.segmentDataByteOffset(physical: segmentChain[Int(cacheSegID)])
    }

    /// Device offset of `position` (its data area plus seg_off).
    public func deviceOffset(of position: CachePosition) -> Int {
        dataAreaOffset(position.cacheSegID) + Int(position.segOff)
    }

    /// The persisted generation of cache segment `cacheSegID`.
    public func segmentGeneration(_ cacheSegID: UInt32) -> UInt64 {
        generationState.withLock { $0[Int(cacheSegID)].gen }
    }

    /// Every segment's generation, by cache segment id.
    public var segmentGenerations: [UInt64] {
        generationState.withLock { states in states.map(\.gen) }
    }

    /// Writes cache segment `cacheSegID`'s generation as its next version.
    public func persistSegmentGeneration(_ cacheSegID: UInt32, _ gen: UInt64) {
        let memory = self.memory
        generationState.withLock { states in
            states[Int(cacheSegID)].slots.write(SegmentGeneration(gen: gen), to: memory)
            states[Int(cacheSegID)].gen = gen
        }
    }

    // MARK: - Tails

    /// First kset not yet garbage-collected. Written only by GC.
    public var keyTail: CachePosition { keyTailState.withLock { $0.position } }
    /// First kset not yet written back. Written only by writeback.
    public var dirtyTail: CachePosition { dirtyTailState.withLock { $0.position } }

    public func persistKeyTail(_ position: CachePosition) {
        persistTail(keyTailState, position)
    }

    public func persistDirtyTail(_ position: CachePosition) {
        persistTail(dirtyTailState, position)
    }

    private func persistTail(_ state: borrowing Mutex<TailState>, _ position: CachePosition) {
        precondition(position.cacheSegID < segmentCount && Int(position.segOff) < PCacheLayout.segmentDataSize,
                     "tail \(position) out of range")
        let memory = self.memory
        state.withLock { tail in
            tail.slots.write(CachePositionOnMedia(position), to: memory)
            tail.position = position
        }
    }

    // MARK: - Key log

    /// Checks the kset at `position`, bounded by the rest of its data area.
    public func checkKeySet(at position: CachePosition) -> Result<KeySetView, KeySetInvalidity> {
        precondition(position.cacheSegID < segmentCount && Int(position.segOff) <= PCacheLayout.segmentDataSize)
        let available = position.remaining
        let p = memory.pointer(at: deviceOffset(of: position), count: min(available, PCacheLayout.ksetMaxSize))
        return KeySetCodec.check(at: p, available: available)
    }

    /// The kset at `position` if it is valid.
    public func keySet(at position: CachePosition) -> KeySetView? {
        if case let .success(view) = checkKeySet(at: position) { return view }
        return nil
    }

    /// Where a walk of the key log stopped: the first invalid kset (the key
    /// head, after a replay) and why it is invalid.
    public struct KeyLogEnd: Sendable {
        public let position: CachePosition
        public let reason: KeySetInvalidity
    }

    /// Walks the key log from `start`, calling `visit` with each valid kset
    /// (LAST ones included) in log order, until the first invalid kset.
    /// A LAST kset must link to a cache segment below n_segs that the walk
    /// has not been in yet; otherwise this throws. The walk is bounded: each
    /// segment is entered once and each kset is at least 24 bytes.
    public func walkKeyLog(from start: CachePosition,
                           _ visit: (CachePosition, KeySetView) throws -> Void) throws -> KeyLogEnd {
        var entered = [Bool](repeating: false, count: Int(segmentCount))
        entered[Int(start.cacheSegID)] = true
        var position = start
        while true {
            switch checkKeySet(at: position) {
            case let .failure(reason):
                return KeyLogEnd(position: position, reason: reason)
            case let .success(view):
                try visit(position, view)
                if let next = view.nextCacheSegID {
                    guard next < segmentCount else {
                        throw PCacheError.keyLogLinkOutOfRange(device: device.name, at: position, next: next,
                                                               nSegs: segmentCount)
                    }
                    guard !entered[Int(next)] else {
                        throw PCacheError.keyLogLoop(device: device.name, at: position, next: next)
                    }
                    entered[Int(next)] = true
                    position = CachePosition(cacheSegID: next, segOff: 0)
                } else {
                    position = position.advanced(by: view.size)
                }
            }
        }
    }
}
