import CSupport
import CUblk
import CURing
import Glibc
import PCacheCore

/// The kernel's view of one ublk device (`struct ublksrv_ctrl_dev_info`).
public struct UblkDeviceInfo: Sendable, Equatable {
    public enum State: UInt16, Sendable {
        case dead = 0, live = 1, quiesced = 2

        public var name: String {
            switch self {
            case .dead: "DEAD"
            case .live: "LIVE"
            case .quiesced: "QUIESCED"
            }
        }
    }

    public var id: UInt32
    public var queueCount: Int
    public var queueDepth: Int
    /// nil when the kernel reports a state this code does not know.
    public var state: State?
    public var rawState: UInt16
    public var maxIOBytes: Int
    public var serverPID: Int32
    /// `UBLK_F_*` negotiated at ADD_DEV.
    public var flags: UInt64
    /// Opaque to the kernel: `serverMarker` when added by pcache-ublk.
    public var serverFlags: UInt64

    /// "PCUB": set in `ublksrv_flags` by this server so `list` can tell its
    /// devices from other ublk servers'.
    public static let serverMarker: UInt64 = 0x5043_5542

    public init(id: UInt32, queueCount: Int, queueDepth: Int, state: State? = .dead, maxIOBytes: Int,
                serverPID: Int32 = -1, flags: UInt64 = 0, serverFlags: UInt64 = 0) {
        self.id = id
        self.queueCount = queueCount
        self.queueDepth = queueDepth
        self.state = state
        self.rawState = state?.rawValue ?? 0xFFFF
        self.maxIOBytes = maxIOBytes
        self.serverPID = serverPID
        self.flags = flags
        self.serverFlags = serverFlags
    }

    init(_ raw: ublksrv_ctrl_dev_info) {
        id = raw.dev_id
        queueCount = Int(raw.nr_hw_queues)
        queueDepth = Int(raw.queue_depth)
        rawState = raw.state
        state = State(rawValue: raw.state)
        maxIOBytes = Int(raw.max_io_buf_bytes)
        serverPID = raw.ublksrv_pid
        flags = raw.flags
        serverFlags = raw.ublksrv_flags
    }

    var raw: ublksrv_ctrl_dev_info {
        var r = ublksrv_ctrl_dev_info()
        r.nr_hw_queues = UInt16(clamping: queueCount)
        r.queue_depth = UInt16(clamping: queueDepth)
        r.state = rawState
        r.max_io_buf_bytes = UInt32(clamping: maxIOBytes)
        r.dev_id = id
        r.ublksrv_pid = serverPID
        r.flags = flags
        r.ublksrv_flags = serverFlags
        return r
    }

    public var stateName: String { state?.name ?? "UNKNOWN(\(rawState))" }
    public var supportsRecovery: Bool { flags & UBLK_F_USER_RECOVERY != 0 }
    public var isOurs: Bool { serverFlags == Self.serverMarker }
}

/// Feature bits (`UBLK_F_*`) by name, for messages.
public enum UblkFeatures {
    public static let userRecovery = UBLK_F_USER_RECOVERY
    public static let userRecoveryReissue = UBLK_F_USER_RECOVERY_REISSUE
    public static let cmdIoctlEncode = UBLK_F_CMD_IOCTL_ENCODE
    public static let uringCmdCompInTask = UBLK_F_URING_CMD_COMP_IN_TASK

    public static func names(_ flags: UInt64) -> [String] {
        let all: [(UInt64, String)] = [
            (UBLK_F_SUPPORT_ZERO_COPY, "zero_copy"), (UBLK_F_URING_CMD_COMP_IN_TASK, "comp_in_task"),
            (UBLK_F_NEED_GET_DATA, "need_get_data"), (UBLK_F_USER_RECOVERY, "user_recovery"),
            (UBLK_F_USER_RECOVERY_REISSUE, "recovery_reissue"), (UBLK_F_UNPRIVILEGED_DEV, "unprivileged"),
            (UBLK_F_CMD_IOCTL_ENCODE, "ioctl_encode"), (UBLK_F_USER_COPY, "user_copy"), (UBLK_F_ZONED, "zoned"),
        ]
        return all.filter { flags & $0.0 != 0 }.map(\.1)
    }
}

/// `/dev/ublk-control`: adds, starts, stops, removes and queries ublk devices.
///
/// Every command goes through an SQE128 io_uring as `IORING_OP_URING_CMD`
/// and is waited for; a failure throws `SystemError` naming the command and
/// the device. Not thread-safe: use one instance per thread (they are cheap).
public final class UblkControl {
    public static let path = "/dev/ublk-control"
    public static let anyDevice: UInt32 = 0xFFFF_FFFF

    private let fd: Int32
    private let ring: IOURing

    public init(path: String = UblkControl.path) throws {
        fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            if e == ENOENT {
                throw SystemError(errno: e, "open \(path) (is ublk_drv loaded? try 'modprobe ublk_drv')")
            }
            throw SystemError(errno: e, "open \(path)")
        }
        do {
            ring = try IOURing(entries: 4, flags: IORING_SETUP_SQE128)
        } catch {
            close(fd)
            throw error
        }
    }

    deinit { close(fd) }

    // MARK: Commands

    /// ADD_DEV. `info.id` may be `anyDevice`; returns what the kernel made of
    /// it (the real id, the negotiated flags, queues capped at the CPU count,
    /// max_io_buf_bytes rounded down to a page).
    public func addDevice(_ info: UblkDeviceInfo) throws -> UblkDeviceInfo {
        var raw = info.raw
        let devID = info.id
        try withUnsafeMutableBytes(of: &raw) { buf in
            _ = try execute(UBLK_U_CMD_ADD_DEV, "ADD_DEV", devID: devID, buffer: buf)
        }
        return UblkDeviceInfo(raw)
    }

    public func deviceInfo(_ id: UInt32) throws -> UblkDeviceInfo {
        var raw = ublksrv_ctrl_dev_info()
        try withUnsafeMutableBytes(of: &raw) { buf in
            _ = try execute(UBLK_U_CMD_GET_DEV_INFO, "GET_DEV_INFO", devID: id, buffer: buf)
        }
        return UblkDeviceInfo(raw)
    }

    public func setParameters(_ id: UInt32, _ parameters: UblkDeviceParameters, maxIOBytes: Int) throws {
        var raw = try UblkParameterEncoding.encode(parameters, maxIOBytes: maxIOBytes)
        try withUnsafeMutableBytes(of: &raw) { buf in
            _ = try execute(UBLK_U_CMD_SET_PARAMS, "SET_PARAMS", devID: id, buffer: buf)
        }
    }

    /// GET_PARAMS: the raw parameters the kernel holds.
    public func parameters(_ id: UInt32) throws -> ublk_params {
        var raw = ublk_params()
        raw.len = UInt32(MemoryLayout<ublk_params>.size)
        try withUnsafeMutableBytes(of: &raw) { buf in
            _ = try execute(UBLK_U_CMD_GET_PARAMS, "GET_PARAMS", devID: id, buffer: buf)
        }
        return raw
    }

    /// The device size in bytes, from GET_PARAMS.
    public func deviceBytes(_ id: UInt32) throws -> UInt64 {
        try parameters(id).basic.dev_sectors << 9
    }

    /// START_DEV: blocks until every queue has a FETCH posted for every tag,
    /// then adds /dev/ublkbN. Call it from a thread that is not a queue thread,
    /// with the queues already serving.
    public func startDevice(_ id: UInt32, serverPID: Int32 = getpid()) throws {
        _ = try execute(UBLK_U_CMD_START_DEV, "START_DEV", devID: id, data: UInt64(serverPID))
    }

    /// STOP_DEV: removes /dev/ublkbN (after in-flight requests complete) and
    /// completes every queue's pending FETCH with ABORT.
    public func stopDevice(_ id: UInt32) throws {
        _ = try execute(UBLK_U_CMD_STOP_DEV, "STOP_DEV", devID: id)
    }

    /// DEL_DEV: waits until /dev/ublkcN is closed, then frees the id.
    public func deleteDevice(_ id: UInt32) throws {
        _ = try execute(UBLK_U_CMD_DEL_DEV, "DEL_DEV", devID: id)
    }

    /// DEL_DEV_ASYNC (6.9+): the device is deleted, and the kernel frees it
    /// once the last program holding /dev/ublkbN open closes it, where
    /// DEL_DEV waits for that. Falls back to DEL_DEV on older drivers.
    public func deleteDeviceWithoutWaiting(_ id: UInt32) throws {
        do {
            _ = try execute(UBLK_U_CMD_DEL_DEV_ASYNC, "DEL_DEV_ASYNC", devID: id)
        } catch let error as SystemError where error.errno == EOPNOTSUPP || error.errno == EINVAL {
            try deleteDevice(id)
        }
    }

    /// GET_FEATURES: the `UBLK_F_*` the running driver supports.
    public func features() throws -> UInt64 {
        var value: UInt64 = 0
        try withUnsafeMutableBytes(of: &value) { buf in
            _ = try execute(UBLK_U_CMD_GET_FEATURES, "GET_FEATURES", devID: 0, buffer: buf)
        }
        return value
    }

    /// START_USER_RECOVERY: the device must be QUIESCED and its old server
    /// gone (EBUSY otherwise).
    public func startRecovery(_ id: UInt32) throws {
        _ = try execute(UBLK_U_CMD_START_USER_RECOVERY, "START_USER_RECOVERY", devID: id)
    }

    /// END_USER_RECOVERY: blocks until the new server's queues have fetched
    /// every tag, then makes the device LIVE again.
    public func endRecovery(_ id: UInt32, serverPID: Int32 = getpid()) throws {
        _ = try execute(UBLK_U_CMD_END_USER_RECOVERY, "END_USER_RECOVERY", devID: id, data: UInt64(serverPID))
    }

    // MARK: Plumbing

    @discardableResult
    private func execute(_ op: UInt32, _ name: String, devID: UInt32,
                         buffer: UnsafeMutableRawBufferPointer? = nil, data: UInt64 = 0) throws -> Int32 {
        let sqe = ring.nextSQE()
        pcu_prep_uring_cmd(sqe, fd, op)
        let cmdArea = pcu_sqe_cmd(sqe)!
        memset(cmdArea, 0, 80)
        let cmd = cmdArea.bindMemory(to: ublksrv_ctrl_cmd.self, capacity: 1)
        cmd.pointee.dev_id = devID
        cmd.pointee.queue_id = 0xFFFF
        if let buffer {
            cmd.pointee.addr = UInt64(UInt(bitPattern: buffer.baseAddress))
            cmd.pointee.len = UInt16(buffer.count)
        }
        cmd.pointee.data = data
        sqe.pointee.user_data = UInt64(op)
        let what = devID == Self.anyDevice ? "\(name) (any device)" : "\(name) (device \(devID))"
        do {
            try ring.submit()
            let (_, result) = try ring.waitCompletion()
            if result < 0 { throw SystemError(errno: -result, what) }
            return result
        } catch let error as SystemError where error.operation.hasPrefix("io_uring") {
            throw SystemError(errno: error.errno, "\(what): \(error.operation)")
        }
    }
}

/// Converts `UblkDeviceParameters` into the kernel's `ublk_params`, checking
/// what the 6.12 driver would refuse so the error is ours and readable.
public enum UblkParameterEncoding {
    public static func encode(_ p: UblkDeviceParameters, maxIOBytes: Int) throws -> ublk_params {
        func invalid(_ why: String) -> SystemError { SystemError(errno: EINVAL, "device parameters: \(why)") }
        guard (9...12).contains(p.logicalBlockShift) else {
            throw invalid("logical block shift \(p.logicalBlockShift) not in 9...12")
        }
        guard p.physicalBlockShift >= p.logicalBlockShift, p.physicalBlockShift <= 20 else {
            throw invalid("physical block shift \(p.physicalBlockShift) below the logical one or too large")
        }
        let logicalBytes = UInt64(1) << p.logicalBlockShift
        guard p.deviceBytes > 0, p.deviceBytes % logicalBytes == 0 else {
            throw invalid("size \(p.deviceBytes) is not a positive multiple of \(logicalBytes)")
        }
        let bufferSectors = UInt32(maxIOBytes >> 9)
        let maxSectors = p.maxSectors == 0 ? bufferSectors : p.maxSectors
        guard maxSectors >= 8, maxSectors <= bufferSectors else {
            throw invalid("max sectors \(maxSectors) not in 8...\(bufferSectors)")
        }
        var raw = ublk_params()
        raw.len = UInt32(MemoryLayout<ublk_params>.size)
        raw.types = UBLK_PARAM_TYPE_BASIC
        raw.basic.attrs = p.attributes
        raw.basic.logical_bs_shift = p.logicalBlockShift
        raw.basic.physical_bs_shift = p.physicalBlockShift
        raw.basic.io_opt_shift = p.ioOptShift
        raw.basic.io_min_shift = p.ioMinShift
        raw.basic.max_sectors = maxSectors
        raw.basic.dev_sectors = p.deviceBytes >> 9
        if p.discardGranularity != 0 {
            raw.types |= UBLK_PARAM_TYPE_DISCARD
            raw.discard.discard_granularity = p.discardGranularity
            raw.discard.max_discard_sectors = p.maxDiscardSectors
            raw.discard.max_write_zeroes_sectors = p.maxWriteZeroesSectors
            raw.discard.max_discard_segments = 1
        }
        return raw
    }
}
