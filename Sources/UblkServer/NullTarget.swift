import Glibc
import PCacheCore

/// A target that answers every request at once without touching data: READ
/// and WRITE report their byte count (a READ's buffer is left as it was),
/// FLUSH / DISCARD / WRITE_ZEROES succeed. It measures the transport's
/// ceiling. Advertises a volatile cache with FUA and discard, so every
/// request kind the cache will see goes through the queues.
public final class NullTarget: UblkTarget {
    public let parameters: UblkDeviceParameters
    public let kind = "null"

    public init(bytes: UInt64) {
        var p = UblkDeviceParameters(deviceBytes: bytes,
                                     attributes: UblkDeviceParameters.volatileCache | UblkDeviceParameters.fua)
        p.discardGranularity = 4096
        p.maxDiscardSectors = 1 << 21
        p.maxWriteZeroesSectors = 1 << 21
        parameters = p
    }

    public func makeQueueHandler(queueID: Int, depth: Int, io: QueueIO, waker: QueueWaker) throws -> UblkQueueHandler {
        NullQueueHandler()
    }

    public func control(_ words: [String]) -> ControlReply {
        let sectors = parameters.deviceBytes >> 9
        switch words.first {
        case "status": return .ok(["0 \(sectors) null"])
        case "table": return .ok(["0 \(sectors) null"])
        case "stats": return .ok(["target null"])
        case "message": return .error("the null target accepts no messages")
        default: return .error("unknown request")
        }
    }

    public func shutdown(flushDirty: Bool) throws {}
}

final class NullQueueHandler: UblkQueueHandler {
    @inline(__always)
    func handle(_ request: UblkRequest) -> Int32? {
        switch request.op {
        case UblkRequest.read, UblkRequest.write:
            return Int32(request.byteCount)
        case UblkRequest.flush, UblkRequest.discard, UblkRequest.writeZeroes:
            return 0
        default:
            return -EOPNOTSUPP
        }
    }

    func ioCompleted(userData: UInt64, result: Int32) {}
    func resumeDeferred() {}
    func queueStopping() {}
}
