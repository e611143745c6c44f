import CPMem
import CSupport
import Glibc

/// How stores are made durable.
public enum PersistenceMode: Sendable, Equatable, CustomStringConvertible {
    /// Real persistent memory (`pmem_is_pmem`): CPU cache-line write-back
    /// plus a store fence.
    case pmem
    /// A page-cache mapping (a regular file, a non-DAX block device):
    /// `pmem_msync` of the page-aligned range. Synchronous and ~1000× slower.
    case msync

    public var description: String {
        switch self {
        case .pmem: return "pmem"
        case .msync: return "msync"
        }
    }
}

/// The cache device as byte-addressable memory.
///
/// Loads read `base` directly. **Every store goes through the methods of this
/// protocol**: that is what lets `SimulatedPersistentMemory` reproduce what a
/// power cut would leave behind. The ordering contract is the one of libpmem:
/// a store is durable only after a flush covering it *and* a later `drain()`.
public protocol PersistentMemory: AnyObject, Sendable {
    /// Start of the mapping, for loads.
    var base: UnsafeMutableRawPointer { get }
    /// Bytes mapped: the device size.
    var size: Int { get }
    var mode: PersistenceMode { get }
    /// A name for messages: the device path, or a description.
    var label: String { get }

    /// A plain store, not flushed.
    func store(at offset: Int, from source: UnsafeRawPointer, count: Int)
    /// Store and start write-back of the lines, no fence (`pmem_memcpy_nodrain`).
    func storeAndFlush(at offset: Int, from source: UnsafeRawPointer, count: Int)
    /// Start write-back of the lines covering the range, no fence.
    func flush(at offset: Int, count: Int)
    /// Fence: every earlier flush is durable when this returns.
    func drain()
}

extension PersistentMemory {
    public var label: String { "persistent memory" }

    /// Store, flush and fence: durable on return (`pmem_memcpy_persist`).
    @inlinable
    public func persist(at offset: Int, from source: UnsafeRawPointer, count: Int) {
        storeAndFlush(at: offset, from: source, count: count)
        drain()
    }

    /// Stores zeros over the range and flushes it, without a fence.
    public func zero(at offset: Int, count: Int) {
        guard count > 0 else { return }
        let chunk = min(count, 1 << 16)
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 64)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: chunk)
        var done = 0
        while done < count {
            let n = min(chunk, count - done)
            storeAndFlush(at: offset + done, from: zeros, count: n)
            done += n
        }
    }

    /// Zeros the range durably.
    public func persistZero(at offset: Int, count: Int) {
        zero(at: offset, count: count)
        drain()
    }

    /// Persists the bytes of `bytes` at `offset`.
    public func persist(at offset: Int, bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            if let p = raw.baseAddress { persist(at: offset, from: p, count: raw.count) }
        }
    }

    /// Whether [offset, offset + count) lies inside the mapping.
    @inlinable
    public func contains(offset: Int, count: Int) -> Bool {
        offset >= 0 && count >= 0 && offset <= size && count <= size - offset
    }

    /// A pointer for loading `count` bytes at `offset`; traps when out of range.
    @inlinable
    public func pointer(at offset: Int, count: Int) -> UnsafeRawPointer {
        precondition(contains(offset: offset, count: count),
                     "load of \(count) bytes at \(offset) is outside the \(size)-byte mapping")
        return UnsafeRawPointer(base + offset)
    }

    /// Loads a little-endian integer; traps when out of range.
    @inlinable
    public func load<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(littleEndian: pointer(at: offset, count: MemoryLayout<T>.size).loadUnaligned(as: T.self))
    }

    /// Loads a little-endian integer, or nil when out of range.
    @inlinable
    public func loadIfInBounds<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T? {
        guard contains(offset: offset, count: MemoryLayout<T>.size) else { return nil }
        return T(littleEndian: (UnsafeRawPointer(base) + offset).loadUnaligned(as: T.self))
    }

    /// Copies `count` bytes at `offset`; traps when out of range.
    public func loadBytes(at offset: Int, count: Int) -> [UInt8] {
        let p = pointer(at: offset, count: count)
        return [UInt8](UnsafeRawBufferPointer(start: p, count: count))
    }

    /// Stores a little-endian integer without flushing it.
    @inlinable
    public func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        withUnsafeBytes(of: value.littleEndian) { store(at: offset, from: $0.baseAddress!, count: $0.count) }
    }
}

/// A cache device mapped into this process: a DAX device (`/dev/daxN.M`), a
/// pmem block device (`/dev/pmemN`) or a regular file.
///
/// Read-write mappings of files and device-DAX go through `pmem_map_file`;
/// block devices, which libpmem cannot size, are mapped with `mmap` and use
/// `msync` mode (a block device mapping goes through the page cache). A
/// read-only mapping uses `mmap(PROT_READ)`, so nothing can be written.
///
/// The persistence mode is what `pmem_is_pmem` says, unless `mode` is given
/// or the environment variable `PCACHE_PERSISTENCE` is `pmem` or `msync`
/// (for tests and benchmarks: forcing `pmem` on a file is fast but not durable).
public final class MappedPersistentMemory: PersistentMemory, @unchecked Sendable {
    public let path: String
    public let base: UnsafeMutableRawPointer
    public let size: Int
    public let mode: PersistenceMode
    /// What `pmem_is_pmem` said about the mapping (false for mmap'ed ones).
    public let isPmem: Bool
    public let isReadOnly: Bool
    public var label: String { path }

    private let unmapWithLibpmem: Bool

    /// The environment variable that forces a persistence mode.
    public static let modeEnvironmentVariable = "PCACHE_PERSISTENCE"

    public init(path: String, readOnly: Bool = false, mode forcedMode: PersistenceMode? = nil) throws {
        self.path = path
        self.isReadOnly = readOnly
        // O_NONBLOCK: opening a FIFO would otherwise wait for a writer, and
        // the check below refuses it anyway. It changes nothing for the
        // kinds of file accepted.
        let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw PCacheError.system(operation: "open", path: path, errno: errno) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw PCacheError.system(operation: "stat", path: path, errno: e)
        }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK || (kind == S_IFCHR && Self.isDeviceDAX(rdev: st.st_rdev)) else {
            close(fd)
            let what = kind == S_IFCHR ? "a character device that is not device-DAX" : "not a regular file, block device or DAX device"
            throw PCacheError.mappingFailed(path: path, reason: what)
        }
        if !readOnly && kind != S_IFBLK {
            // Regular file or device-DAX: libpmem sizes, maps and classifies it.
            close(fd)
            var mappedLength = 0
            var pmem: Int32 = 0
            guard let p = pmem_map_file(path, 0, 0, 0, &mappedLength, &pmem) else {
                let e = errno
                let message = pmem_errormsg().map { String(cString: $0) } ?? ""
                throw PCacheError.mappingFailed(path: path, reason: message.isEmpty ? String(cString: strerror(e)) : message)
            }
            base = p
            size = mappedLength
            isPmem = pmem != 0
            unmapWithLibpmem = true
        } else {
            defer { close(fd) }
            let length: Int
            switch kind {
            case S_IFBLK:
                var bytes: UInt64 = 0
                let r = pcs_block_device_size(fd, &bytes)
                guard r == 0 else { throw PCacheError.system(operation: "BLKGETSIZE64 on", path: path, errno: -r) }
                length = Int(bytes)
            case S_IFREG:
                length = Int(st.st_size)
            case S_IFCHR:
                length = try Self.deviceDAXSize(rdev: st.st_rdev, path: path)
            default:
                throw PCacheError.mappingFailed(path: path, reason: "not a regular file, block device or DAX device")
            }
            guard length > 0 else { throw PCacheError.mappingFailed(path: path, reason: "it is empty") }
            let protection = readOnly ? PROT_READ : PROT_READ | PROT_WRITE
            let p = mmap(nil, length, protection, MAP_SHARED, fd, 0)
            guard let p, p != MAP_FAILED else {
                throw PCacheError.system(operation: "mmap", path: path, errno: errno)
            }
            base = p
            size = length
            isPmem = false
            unmapWithLibpmem = false
        }
        mode = forcedMode ?? Self.environmentMode() ?? (isPmem ? .pmem : .msync)
    }

    deinit {
        if unmapWithLibpmem {
            _ = pmem_unmap(base, size)
        } else {
            _ = munmap(base, size)
        }
    }

    private static func environmentMode() -> PersistenceMode? {
        guard let value = getenv(modeEnvironmentVariable) else { return nil }
        switch String(cString: value) {
        case "pmem": return .pmem
        case "msync": return .msync
        default: return nil
        }
    }

    /// Size of a device-DAX character device, from sysfs.
    /// Whether the character device `rdev` is device-DAX (`/dev/daxX.Y`):
    /// its sysfs node belongs to the `dax` subsystem.
    public static func isDeviceDAX(rdev: dev_t) -> Bool {
        let link = "/sys/dev/char/\(pcs_major(UInt64(rdev))):\(pcs_minor(UInt64(rdev)))/subsystem"
        var buffer = [CChar](repeating: 0, count: 512)
        let n = readlink(link, &buffer, buffer.count - 1)
        guard n > 0 else { return false }
        let target = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return target.hasSuffix("/dax")
    }

    private static func deviceDAXSize(rdev: dev_t, path: String) throws -> Int {
        let sysfs = "/sys/dev/char/\(pcs_major(UInt64(rdev))):\(pcs_minor(UInt64(rdev)))/size"
        let fd = open(sysfs, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw PCacheError.mappingFailed(path: path, reason: "cannot read its size from \(sysfs)") }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, 63) }
        guard n > 0 else { throw PCacheError.mappingFailed(path: path, reason: "cannot read its size from \(sysfs)") }
        let text = String(decoding: buffer[0..<n], as: UTF8.self).filter { $0.isNumber }
        guard let value = Int(text) else { throw PCacheError.mappingFailed(path: path, reason: "unreadable size in \(sysfs)") }
        return value
    }

    @inline(__always)
    private func checkStore(_ offset: Int, _ count: Int) {
        precondition(!isReadOnly, "store to read-only mapping of \(path)")
        precondition(contains(offset: offset, count: count),
                     "store of \(count) bytes at \(offset) is outside the \(size)-byte mapping of \(path)")
    }

    public func store(at offset: Int, from source: UnsafeRawPointer, count: Int) {
        checkStore(offset, count)
        (base + offset).copyMemory(from: source, byteCount: count)
    }

    public func storeAndFlush(at offset: Int, from source: UnsafeRawPointer, count: Int) {
        checkStore(offset, count)
        switch mode {
        case .pmem:
            _ = pmem_memcpy_nodrain(base + offset, source, count)
        case .msync:
            (base + offset).copyMemory(from: source, byteCount: count)
            sync(offset, count)
        }
    }

    public func flush(at offset: Int, count: Int) {
        checkStore(offset, count)
        switch mode {
        case .pmem: pmem_flush(base + offset, count)
        case .msync: sync(offset, count)
        }
    }

    public func drain() {
        if mode == .pmem { pmem_drain() }
    }

    private func sync(_ offset: Int, _ count: Int) {
        guard count > 0 else { return }
        // pmem_msync aligns the range down to a page itself.
        if pmem_msync(base + offset, count) != 0 {
            // There is no way to report this through a store; an msync failure
            // means the page cache lost the device: stop rather than lie.
            fatalError("msync of \(count) bytes at \(offset) of \(path) failed: \(PCacheError.errnoText(errno))")
        }
    }
}

/// `MAP_FAILED`, which Swift does not import.
private var MAP_FAILED: UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: -1) }

/// The data copy of the write path: a direct libpmem call for a mapped
/// device in pmem mode, the `PersistentMemory` protocol otherwise (msync
/// mode, and the simulated memory of the crash-point tests).
///
/// Why not the protocol always: calling through an existential retains the
/// object and releases it after, and a release is an atomic
/// read-modify-write. Issued after the copy's non-temporal stores it waits
/// for all of them to reach memory, which the write path would otherwise
/// overlap with its index and key-set work (perf: half a write's time).
struct DataWriter {
    private let base: UnsafeMutableRawPointer
    private let size: Int
    private let direct: Bool
    private let memory: any PersistentMemory

    init(_ memory: any PersistentMemory) {
        self.memory = memory
        base = memory.base
        size = memory.size
        let mapped = memory as? MappedPersistentMemory
        direct = mapped?.mode == .pmem && mapped?.isReadOnly == false
    }

    @inline(__always)
    func storeAndFlush(at offset: Int, from source: UnsafeRawPointer, count: Int) {
        if direct {
            // The range comes from the segment allocator (the protocol's
            // path checks it in release builds too).
            assert(offset >= 0 && count >= 0 && offset + count <= size, "data copy outside the mapping")
            _ = pmem_memcpy_nodrain(base + offset, source, count)
        } else {
            memory.storeAndFlush(at: offset, from: source, count: count)
        }
    }

    @inline(__always)
    func drain() {
        if direct { pmem_drain() } else { memory.drain() }
    }
}
