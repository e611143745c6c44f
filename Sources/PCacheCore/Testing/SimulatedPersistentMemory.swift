import Glibc
import Synchronization

/// Persistent memory simulated in RAM that can show what a power cut would
/// leave on the media at any point, for crash-consistency tests.
///
/// The model is libpmem's: a store reaches the CPU view (`base`) at once,
/// but becomes durable only after a flush covering it and a later `drain()`.
/// Until then each 64-byte line stored since its last drained flush may hold,
/// on the media, **any value the line has had since then** (its last
/// durable value or any later one), independently of other lines. A crash
/// image picks one of those values per line (or, with a finer `granularity`,
/// per aligned 8-byte word, modelling torn lines).
///
/// Every store, flush and drain is an *event*. With `recordsCrashPoints`
/// on, the state after each event is kept as a `CrashPoint` (cheaply: the
/// undrained lines plus an index into the append-only log of durable
/// lines), and `crashImage(at:seed:)` builds the memory a power cut at that
/// point could leave. The images are fresh instances of this class (sparse:
/// backed by anonymous memory), so they can be opened, written and even
/// crashed again.
public final class SimulatedPersistentMemory: PersistentMemory, @unchecked Sendable {
    public static let lineSize = 64
    public typealias Line = SIMD64<UInt8>

    public let base: UnsafeMutableRawPointer
    public let size: Int
    public let mode: PersistenceMode = .pmem
    public let label: String
    private let mappedLength: Int

    /// A line stored since its last drained flush.
    public struct PendingLine: Sendable {
        /// Every value the media may hold, oldest (last durable) first.
        public var candidates: [Line]
        /// Index in `candidates` of the value at the line's last flush.
        public var flushedFrom: Int?
    }

    /// The durable state after some event, from which crash images are made.
    public struct CrashPoint: Sendable {
        /// Events (stores, flushes, drains) done before this point.
        public let event: Int
        /// Length of the durable-line log at this point.
        let durableCount: Int
        /// Lines that may hold more than one value.
        public let pending: [Int: PendingLine]
        /// Number of distinct images this point allows, capped at Int.max.
        public var pendingLineCount: Int { pending.count }
    }

    public struct Statistics: Sendable, Equatable {
        public var stores = 0
        public var flushes = 0
        public var drains = 0
        public var events: Int { stores + flushes + drains }
    }

    private struct State {
        var tracking = true
        var recording = false
        var durableLog: [(line: Int, value: Line)] = []
        var pending: [Int: PendingLine] = [:]
        var flushed: Set<Int> = []
        var stats = Statistics()
        var crashPoints: [CrashPoint] = []
        /// Pages stored to while tracking was off (for `makeDurable`).
        var untrackedPages: Set<Int> = []
    }

    private static let pageSize = 4096

    private let state = Mutex(State())

    /// A zero-filled device of `size` bytes (sparse: untouched pages cost nothing).
    public init(size: Int, label: String = "simulated pmem") {
        precondition(size >= 0)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let length = max(page, (size + page - 1) / page * page)
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              p != UnsafeMutableRawPointer(bitPattern: -1) else {
            fatalError("cannot reserve \(length) bytes of anonymous memory for a simulated device")
        }
        base = p
        self.size = size
        self.label = label
        mappedLength = length
    }

    deinit {
        munmap(base, mappedLength)
    }

    // MARK: - Control

    /// When false, stores go to the CPU view only and are not tracked: fast
    /// set-up of large contents. Crash images do not see those stores until
    /// `makeDurable()` is called, so end untracked set-up with it.
    ///
    /// The log of durable lines only grows (crash points index into it);
    /// long data-path runs should record crash points only around the
    /// operations they explore.
    public var isTracking: Bool {
        get { state.withLock { $0.tracking } }
        set { state.withLock { $0.tracking = newValue } }
    }

    /// Whether a crash point is kept after every event.
    public var recordsCrashPoints: Bool {
        get { state.withLock { $0.recording } }
        set { state.withLock { $0.recording = newValue } }
    }

    /// Returns the recorded crash points and forgets them.
    public func takeCrashPoints() -> [CrashPoint] {
        state.withLock { s in
            defer { s.crashPoints = [] }
            return s.crashPoints
        }
    }

    /// The crash point of the current state.
    public func currentCrashPoint() -> CrashPoint {
        state.withLock { s in CrashPoint(event: s.stats.events, durableCount: s.durableLog.count, pending: s.pending) }
    }

    public var statistics: Statistics { state.withLock { $0.stats } }

    /// Lines not yet durable.
    public var pendingLineCount: Int { state.withLock { $0.pending.count } }

    /// Declares the whole CPU view durable, as after a clean shutdown: every
    /// undrained line and every page written while tracking was off. Use
    /// after untracked set-up. Not an event.
    public func makeDurable() {
        state.withLock { s in
            for line in s.pending.keys.sorted() { s.durableLog.append((line, lineValue(line))) }
            s.pending.removeAll()
            s.flushed.removeAll()
            let linesPerPage = Self.pageSize / Self.lineSize
            for page in s.untrackedPages.sorted() {
                for line in page * linesPerPage..<min((page + 1) * linesPerPage, (size + Self.lineSize - 1) / Self.lineSize) {
                    s.durableLog.append((line, lineValue(line)))
                }
            }
            s.untrackedPages.removeAll()
        }
    }

    /// Writes `bytes` at `offset` as already-durable contents (test set-up; not an event).
    public func loadImage(_ bytes: [UInt8], at offset: Int) {
        precondition(contains(offset: offset, count: bytes.count))
        state.withLock { s in
            bytes.withUnsafeBytes { (base + offset).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            guard !bytes.isEmpty else { return }
            for line in lineRange(offset, bytes.count) {
                s.pending[line] = nil
                s.flushed.remove(line)
                s.durableLog.append((line, lineValue(line)))
            }
        }
    }

    // MARK: - PersistentMemory

    public func store(at offset: Int, from source: UnsafeRawPointer, count: Int) {
        precondition(contains(offset: offset, count: count),
                     "store of \(count) bytes at \(offset) is outside the \(size)-byte simulated device")
        state.withLock { s in
            applyStore(&s, offset, source, count)
            s.stats.stores += 1
            recordPoint(&s)
        }
    }

    public func storeAndFlush(at offset: Int, from source: UnsafeRawPointer, count: Int) {
        precondition(contains(offset: offset, count: count),
                     "store of \(count) bytes at \(offset) is outside the \(size)-byte simulated device")
        state.withLock { s in
            applyStore(&s, offset, source, count)
            applyFlush(&s, offset, count)
            // One event: a crash between the store and its flush leaves the same choices.
            s.stats.stores += 1
            recordPoint(&s)
        }
    }

    public func flush(at offset: Int, count: Int) {
        precondition(contains(offset: offset, count: count))
        state.withLock { s in
            applyFlush(&s, offset, count)
            s.stats.flushes += 1
            recordPoint(&s)
        }
    }

    public func drain() {
        state.withLock { s in
            for line in s.flushed {
                guard var entry = s.pending[line], let from = entry.flushedFrom else { continue }
                entry.candidates.removeFirst(from)
                entry.flushedFrom = nil
                if entry.candidates.count == 1 {
                    s.durableLog.append((line, entry.candidates[0]))
                    s.pending[line] = nil
                } else {
                    s.pending[line] = entry
                }
            }
            s.flushed.removeAll(keepingCapacity: true)
            s.stats.drains += 1
            recordPoint(&s)
        }
    }

    // MARK: - Crash images

    /// The memory a power cut at `point` could leave. Seed 0 keeps every
    /// undrained line at its oldest possible value, seed 1 at its newest;
    /// other seeds choose at random per line (or per `granularity`-byte word:
    /// 64 or a divisor of it, e.g. 8 for the 8-byte atomicity of x86).
    public func crashImage(at point: CrashPoint, seed: UInt64, granularity: Int = lineSize) -> SimulatedPersistentMemory {
        precondition(granularity > 0 && Self.lineSize % granularity == 0)
        let image = SimulatedPersistentMemory(size: size, label: label)
        let log = state.withLock { $0.durableLog }
        precondition(point.durableCount <= log.count, "crash point from another device")
        for i in 0..<point.durableCount {
            image.writeLine(log[i].line, log[i].value)
        }
        var random = SplitMix64(seed: seed)
        for line in point.pending.keys.sorted() {
            let candidates = point.pending[line]!.candidates
            var value = candidates[0]
            switch seed {
            case 0: break
            case 1: value = candidates[candidates.count - 1]
            default:
                if granularity == Self.lineSize {
                    value = candidates[Int(random.next() % UInt64(candidates.count))]
                } else {
                    for word in stride(from: 0, to: Self.lineSize, by: granularity) {
                        let pick = candidates[Int(random.next() % UInt64(candidates.count))]
                        for b in word..<word + granularity { value[b] = pick[b] }
                    }
                }
            }
            image.writeLine(line, value)
        }
        return image
    }

    /// The memory a power cut right now would leave if nothing undrained survived.
    public func durableImage() -> SimulatedPersistentMemory {
        crashImage(at: currentCrashPoint(), seed: 0)
    }

    // MARK: - Internals

    private func lineRange(_ offset: Int, _ count: Int) -> ClosedRange<Int> {
        (offset / Self.lineSize)...((offset + count - 1) / Self.lineSize)
    }

    private func lineValue(_ line: Int) -> Line {
        UnsafeRawPointer(base + line * Self.lineSize).loadUnaligned(as: Line.self)
    }

    /// Sets a line durably (crash-image construction).
    private func writeLine(_ line: Int, _ value: Line) {
        (base + line * Self.lineSize).storeBytes(of: value, as: Line.self)
        state.withLock { $0.durableLog.append((line, value)) }
    }

    private func applyStore(_ s: inout State, _ offset: Int, _ source: UnsafeRawPointer, _ count: Int) {
        guard count > 0 else { return }
        guard s.tracking else {
            (base + offset).copyMemory(from: source, byteCount: count)
            for page in (offset / Self.pageSize)...((offset + count - 1) / Self.pageSize) { s.untrackedPages.insert(page) }
            return
        }
        let lines = lineRange(offset, count)
        for line in lines where s.pending[line] == nil {
            s.pending[line] = PendingLine(candidates: [lineValue(line)], flushedFrom: nil)
        }
        (base + offset).copyMemory(from: source, byteCount: count)
        for line in lines {
            let value = lineValue(line)
            if s.pending[line]!.candidates.last != value {
                s.pending[line]!.candidates.append(value)
            }
        }
    }

    private func applyFlush(_ s: inout State, _ offset: Int, _ count: Int) {
        guard count > 0, s.tracking else { return }
        for line in lineRange(offset, count) {
            guard let entry = s.pending[line] else { continue }
            s.pending[line]!.flushedFrom = entry.candidates.count - 1
            s.flushed.insert(line)
        }
    }

    private func recordPoint(_ s: inout State) {
        guard s.recording else { return }
        s.crashPoints.append(CrashPoint(event: s.stats.events, durableCount: s.durableLog.count, pending: s.pending))
    }
}

extension SimulatedPersistentMemory {
    /// Counts from `exploreCrashes`.
    public struct CrashExploration: Sendable {
        public var crashPoints = 0
        public var images = 0
    }

    /// Runs `operation` while recording a crash point after every event
    /// (plus one before the first), then calls `check` with crash images of
    /// every point: seed 0 (oldest values), seed 1 (newest) and
    /// `randomSeeds` random choices for each of `granularities`. A point
    /// with nothing undrained has one possible image and is checked once.
    @discardableResult
    public func exploreCrashes(randomSeeds: Int = 8, granularities: [Int] = [64, 8],
                               operation: () throws -> Void,
                               check: (SimulatedPersistentMemory, CrashPoint) throws -> Void) rethrows -> CrashExploration {
        let wasRecording = recordsCrashPoints
        _ = takeCrashPoints()
        let initial = currentCrashPoint()
        recordsCrashPoints = true
        defer { recordsCrashPoints = wasRecording }
        try operation()
        let points = [initial] + takeCrashPoints()
        var result = CrashExploration()
        for point in points {
            result.crashPoints += 1
            if point.pending.isEmpty {
                result.images += 1
                try check(crashImage(at: point, seed: 0), point)
                continue
            }
            for seed: UInt64 in 0...1 {
                result.images += 1
                try check(crashImage(at: point, seed: seed), point)
            }
            for granularity in granularities {
                for i in 0..<randomSeeds {
                    result.images += 1
                    let seed = 2 &+ UInt64(i) &* 0x9E37_79B9 &+ UInt64(granularity) &* 0x1000_0001 &+ UInt64(point.event) &* 31
                    try check(crashImage(at: point, seed: seed, granularity: granularity), point)
                }
            }
        }
        return result
    }
}
