import Glibc

/// Where the open key-sets live: a shared-memory file that outlives the
/// server process.
///
/// A write is acknowledged once its data is in pmem and its key sits in an
/// open key-set; the key reaches the log at the next close. A power cut may
/// lose such keys (the device is a volatile write-back cache, and a FLUSH is
/// what makes writes durable). A *server* crash need not: the machine, its
/// memory and the pmem are all still there. Keeping the open key-sets in a
/// `MAP_SHARED` file on tmpfs (`/run`) lets the next server (`recover`, or
/// `add` after a crash) find every acknowledged key and log it before it
/// serves anything. A reboot empties `/run`, which is right: then only what a
/// FLUSH made durable counts.
///
/// The file records which cache it belongs to (device identity and
/// superblock) and the key head after the last close, so keys are adopted
/// only into exactly the log they were meant for.
public final class KeySetStash: @unchecked Sendable {
    public let path: String
    public let slotCount: Int
    private let base: UnsafeMutableRawPointer
    private let length: Int

    static let magic: UInt64 = 0x5445_534B_4255_4350  // "PCUBKSET"
    static let version: UInt32 = 1
    static let headerSize = 64
    static let slotStride = (PCacheLayout.ksetMaxSize + 63) / 64 * 64

    /// Identifies the cache a stash belongs to.
    public struct Identity: Equatable, Sendable {
        var device: UInt64
        var inode: UInt64
        var superblockCRC: UInt32

        public init(cacheDevicePath path: String, superblock: Superblock) {
            var s = stat()
            _ = stat(path, &s)
            let isDevice = s.st_mode & S_IFMT == S_IFBLK || s.st_mode & S_IFMT == S_IFCHR
            device = UInt64(isDevice ? s.st_rdev : s.st_dev)
            inode = isDevice ? 0 : UInt64(s.st_ino)
            superblockCRC = superblock.crc
        }
    }

    /// Keys a previous server left in its open key-sets.
    public struct Leftover: Sendable {
        /// Each non-empty slot's key-set, sealed (header, magic, CRC) as it
        /// is logged: a slot is sealed only when its key-set closes.
        public var keySets: [[UInt8]]
        public var keyHead: CachePosition
        public var keyCount: Int { keySets.reduce(0) { $0 + (Int(($1[4...7]).withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })) } }
    }

    /// The stash file's name for a cache device, in `directory`.
    public static func path(directory: String, identity: Identity) -> String {
        "\(directory)/keysets-\(String(identity.device, radix: 16))-\(String(identity.inode, radix: 16)).shm"
    }

    /// Reads what a crashed server left at `path` for this cache, if anything.
    /// A file for another cache, or of another format, is ignored.
    public static func leftover(at path: String, identity: Identity) -> Leftover? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var s = stat()
        guard fstat(fd, &s) == 0, s.st_size >= headerSize else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(s.st_size))
        guard bytes.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, $0.count, 0) }) == Int(s.st_size) else { return nil }
        return bytes.withUnsafeBytes { raw -> Leftover? in
            func load<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
                T(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: T.self))
            }
            guard load(0, UInt64.self) == magic, load(8, UInt32.self) == version,
                  load(16, UInt64.self) == identity.device, load(24, UInt64.self) == identity.inode,
                  load(32, UInt32.self) == identity.superblockCRC
            else { return nil }
            let slots = Int(load(12, UInt32.self))
            guard slots > 0, slots <= 4096, headerSize + slots * slotStride <= raw.count else { return nil }
            let head = CachePosition(cacheSegID: load(36, UInt32.self), segOff: load(40, UInt32.self))
            var keySets: [[UInt8]] = []
            for i in 0..<slots {
                let offset = headerSize + i * slotStride
                let count = Int(load(offset + 4, UInt32.self))
                guard count > 0 else { continue }
                guard count <= PCacheLayout.ksetMaxKeys else { return nil }
                var keySet = Array(raw[offset..<(offset + KeySetCodec.size(keyCount: count))])
                keySet.withUnsafeMutableBytes { _ = KeySetEncoding.seal(keyCount: count, buffer: $0.baseAddress!) }
                keySets.append(keySet)
            }
            return Leftover(keySets: keySets, keyHead: head)
        }
    }

    /// Creates (replacing any old one) a stash with `slots` empty key-sets.
    public init(path: String, identity: Identity, slots: Int, keyHead: CachePosition) throws {
        self.path = path
        slotCount = slots
        length = Self.headerSize + slots * Self.slotStride
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if !directory.isEmpty { mkdir(directory, 0o700) }
        let temporary = path + ".new"
        let fd = open(temporary, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError.last("create \(temporary)") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(length)) == 0 else { throw SystemError.last("size \(temporary)") }
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw SystemError.last("mmap \(temporary)")
        }
        base = p
        func store<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        }
        store(Self.version, 8)
        store(UInt32(slots), 12)
        store(identity.device, 16)
        store(identity.inode, 24)
        store(identity.superblockCRC, 32)
        setKeyHead(keyHead)
        store(Self.magic, 0)
        guard rename(temporary, path) == 0 else {
            munmap(base, length)
            throw SystemError.last("rename \(temporary)")
        }
    }

    deinit { munmap(base, length) }

    /// The buffer of slot `index`: a key-set whose key_num is kept current.
    func slot(_ index: Int) -> UnsafeMutableRawPointer {
        base + Self.headerSize + index * Self.slotStride
    }

    /// Records the log's head after a close.
    func setKeyHead(_ head: CachePosition) {
        base.storeBytes(of: head.cacheSegID.littleEndian, toByteOffset: 36, as: UInt32.self)
        base.storeBytes(of: head.segOff.littleEndian, toByteOffset: 40, as: UInt32.self)
    }

    /// Removes the file: everything was logged (clean stop).
    public func remove() {
        unlink(path)
    }
}
