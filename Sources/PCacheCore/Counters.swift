import CSupport

/// Event counters of one queue. Only the queue's thread adds; any thread may
/// read. Relaxed atomics on memory no other writer touches: no contention.
public final class QueueCounters: @unchecked Sendable {
    public enum Name: Int, CaseIterable, Sendable {
        case reads, writes, flushes, readBytes, writeBytes, hitBytes, missBytes
        case deferrals, crcErrors, backingErrors
    }

    private let values: UnsafeMutablePointer<UInt64>

    init() {
        // Own cache lines: two queues' counters must not share one.
        let bytes = (Name.allCases.count * 8 + 63) / 64 * 64
        values = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            .bindMemory(to: UInt64.self, capacity: Name.allCases.count)
        values.initialize(repeating: 0, count: Name.allCases.count)
    }

    deinit { UnsafeMutableRawPointer(values).deallocate() }

    @inline(__always)
    func add(_ name: Name, _ amount: UInt64 = 1) {
        pcs_single_writer_add_u64(values + name.rawValue, amount)
    }

    public subscript(name: Name) -> UInt64 {
        pcs_atomic_load_u64(values + name.rawValue)
    }
}
