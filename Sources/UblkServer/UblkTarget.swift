import CUblk
import PCacheCore

// The interface between the ublk transport (this module) and what serves the
// requests: the cache (written elsewhere) or the null target.
//
// Threads:
// - `UblkTarget` is shared: `parameters`, `makeQueueHandler` and `control` may
//   be called from any thread (the control socket has its own), so it must be
//   `Sendable` and keep its shared state behind locks or atomics.
// - A `UblkQueueHandler` belongs to exactly one queue thread. It is created on
//   that thread and every call into it, and every call it makes into its
//   `QueueIO`, happens on that thread. It needs no locking of its own.

/// One block request, as the kernel put it in the queue's descriptor array.
public struct UblkRequest {
    /// The tag: the request's slot in its queue (0 ..< depth).
    public let tag: UInt16
    /// `UBLK_IO_OP_*`: READ 0, WRITE 1, FLUSH 2, DISCARD 3, WRITE_ZEROES 5.
    public let op: UInt8
    /// `UBLK_IO_F_*` (FUA is bit 13), already shifted: `op_flags & ~0xff`.
    public let flags: UInt32
    /// First 512-byte sector.
    public let startSector: UInt64
    /// Length in 512-byte sectors (0 for FLUSH).
    public let sectorCount: UInt32
    /// The tag's data buffer (max_io_buf_bytes long, page-aligned). For a
    /// WRITE it holds the data; for a READ the handler fills it.
    public let buffer: UnsafeMutableRawPointer

    public init(tag: UInt16, op: UInt8, flags: UInt32, startSector: UInt64, sectorCount: UInt32,
                buffer: UnsafeMutableRawPointer) {
        self.tag = tag
        self.op = op
        self.flags = flags
        self.startSector = startSector
        self.sectorCount = sectorCount
        self.buffer = buffer
    }

    /// Bytes covered by the request.
    @inline(__always) public var byteCount: Int { Int(sectorCount) << 9 }
    /// Byte offset on the device.
    @inline(__always) public var byteOffset: UInt64 { startSector << 9 }
    @inline(__always) public var isFUA: Bool { flags & UBLK_IO_F_FUA != 0 }

    public static let read: UInt8 = UBLK_IO_OP_READ
    public static let write: UInt8 = UBLK_IO_OP_WRITE
    public static let flush: UInt8 = UBLK_IO_OP_FLUSH
    public static let discard: UInt8 = UBLK_IO_OP_DISCARD
    public static let writeZeroes: UInt8 = UBLK_IO_OP_WRITE_ZEROES
}

/// Serves the requests of one queue. Called only on that queue's thread.
///
/// Results are what the kernel expects in COMMIT_AND_FETCH_REQ: for READ and
/// WRITE the number of bytes done (a READ answered with 0 becomes EIO; a short
/// one has its remainder issued again), 0 for FLUSH / DISCARD / WRITE_ZEROES,
/// or a negative errno.
public protocol UblkQueueHandler: AnyObject {
    /// A request arrived. Return its result now, or nil to complete it later
    /// (on this thread) with `io.completeRequest(tag:result:)`.
    func handle(_ request: UblkRequest) -> Int32?
    /// How many requests ahead of the one being handled `lookAhead` wants
    /// to hear of; 0: none.
    var lookAheadDistance: Int { get }
    /// A request is waiting `requestsAway` (1...`lookAheadDistance`) places
    /// behind the one about to be handled: a hint to start loading what it
    /// will need. It may never be handed over (the device stopping), so
    /// nothing may depend on it.
    func lookAhead(op: UInt8, byteOffset: UInt64, requestsAway: Int)
    /// A completion for an SQE this handler submitted through its `QueueIO`.
    func ioCompleted(userData: UInt64, result: Int32)
    /// The queue's waker fired (someone called `QueueWaker.wake()`): retry
    /// deferred work.
    func resumeDeferred()
    /// The queue is going away (the device is stopping or being torn down).
    /// Fail or finish what is pending; the queue thread keeps running until
    /// every backing I/O the handler submitted has completed.
    func queueStopping()
    /// The device is being stopped and requests the handler holds back
    /// waiting for resources (cache space) have waited long enough: fail
    /// them, and any that would wait from now on. Returns how many failed.
    func failWaitingRequests() -> Int
}

extension UblkQueueHandler {
    /// Handlers with nothing to load ahead get no hints.
    public var lookAheadDistance: Int { 0 }
    public func lookAhead(op: UInt8, byteOffset: UInt64, requestsAway: Int) {}

    /// Handlers that never hold requests back have none to fail.
    public func failWaitingRequests() -> Int { 0 }
}

/// What the block device looks like to the kernel (SET_PARAMS).
public struct UblkDeviceParameters: Sendable, Equatable {
    /// Device size in bytes: a multiple of the logical block size.
    public var deviceBytes: UInt64
    /// log2 of the logical block size, 9...12.
    public var logicalBlockShift: UInt8 = 9
    /// log2 of the physical block size, ≥ logicalBlockShift.
    public var physicalBlockShift: UInt8 = 12
    /// log2 of the optimal and minimal I/O sizes.
    public var ioOptShift: UInt8 = 12
    public var ioMinShift: UInt8 = 12
    /// Largest request in sectors (0: as large as the per-tag buffer allows).
    public var maxSectors: UInt32 = 0
    /// `UBLK_ATTR_*`: VOLATILE_CACHE (4) makes the kernel send FLUSH, FUA (8)
    /// lets writes carry the FUA flag. The cache sets both.
    public var attributes: UInt32 = 0
    /// Discard support: granularity in bytes (0: no DISCARD / WRITE_ZEROES
    /// parameters at all), largest discard and write-zeroes in sectors.
    public var discardGranularity: UInt32 = 0
    public var maxDiscardSectors: UInt32 = 0
    public var maxWriteZeroesSectors: UInt32 = 0

    public init(deviceBytes: UInt64, attributes: UInt32 = 0) {
        self.deviceBytes = deviceBytes
        self.attributes = attributes
    }

    public static let volatileCache: UInt32 = UBLK_ATTR_VOLATILE_CACHE
    public static let fua: UInt32 = UBLK_ATTR_FUA
    public static let readOnly: UInt32 = UBLK_ATTR_READ_ONLY
    public static let rotational: UInt32 = UBLK_ATTR_ROTATIONAL
}

/// The reply to one control request: `ok` with payload lines, or an error.
/// Payload lines never contain a newline and are never empty on the wire
/// (see Documentation/control-socket.md).
public enum ControlReply: Sendable, Equatable {
    case ok([String])
    case error(String)

    public static var ok: ControlReply { .ok([]) }
}

/// A block device implementation served through ublk.
public protocol UblkTarget: AnyObject, Sendable {
    /// Fixed for the life of the device; read once before SET_PARAMS (and
    /// compared with the kernel's on recovery).
    var parameters: UblkDeviceParameters { get }
    /// Short name for `list` and `info` ("null", "pcache").
    var kind: String { get }
    /// Called once per queue, on that queue's thread, before the queue
    /// fetches its first request.
    func makeQueueHandler(queueID: Int, depth: Int, io: QueueIO, waker: QueueWaker) throws -> UblkQueueHandler
    /// `status`, `table` and `message …` requests from the control socket,
    /// as whitespace-separated words (`["message", "gc_percent", "10"]`).
    /// Called on the control-socket thread.
    func control(_ words: [String]) -> ControlReply
    /// Clean stop, after every queue thread has exited. `flushDirty`: write
    /// back everything dirty first (`del --flush`).
    func shutdown(flushDirty: Bool) throws
    /// Most I/O of its own a queue handler has in flight for one request
    /// (backing reads of a partial hit, say): the queue's completion ring is
    /// sized so that every one of them has room.
    var ioPerRequest: Int { get }
    /// A count that grows whenever the target makes room for requests that
    /// wait for it (bytes written back, segments freed). A stopping server
    /// fails waiting requests only after it has not moved for a while.
    /// Any thread.
    var reclaimProgress: UInt64 { get }
}

extension UblkTarget {
    public var ioPerRequest: Int { 0 }
    public var reclaimProgress: UInt64 { 0 }
}
