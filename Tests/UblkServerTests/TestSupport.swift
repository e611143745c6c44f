import Glibc
import PCacheCore
import Synchronization

/// A temporary directory removed (with its files) when released.
final class TemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/pcu-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        path = String(decoding: template.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit {
        if let dir = opendir(path) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
                }
                if name == "." || name == ".." { continue }
                let full = path + "/" + name
                if unlink(full) != 0 { rmdir(full) }
            }
            closedir(dir)
        }
        rmdir(path)
    }

    func file(_ name: String) -> String { path + "/" + name }

    /// A sparse file of `size` bytes with a recognisable pattern in its
    /// first and last 4 KiB (so "unchanged" means something).
    @discardableResult
    func makeFile(_ name: String, size: Int, seed: UInt8 = 0x5A) -> String {
        let p = file(name)
        let fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0o644)
        precondition(fd >= 0, "create \(p)")
        precondition(ftruncate(fd, off_t(size)) == 0)
        var pattern = [UInt8](repeating: 0, count: 4096)
        for i in 0..<pattern.count { pattern[i] = UInt8(truncatingIfNeeded: i &* 31) ^ seed }
        _ = pattern.withUnsafeBytes { pwrite(fd, $0.baseAddress, min(4096, size), 0) }
        if size >= 8192 {
            _ = pattern.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(size - 4096)) }
        }
        close(fd)
        return p
    }
}

/// Size and CRC-32C of a whole file.
func fileDigest(_ path: String) -> (size: Int, crc: UInt32)? {
    let fd = open(path, O_RDONLY)
    if fd < 0 { return nil }
    defer { close(fd) }
    let chunk = 1 << 20
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
    defer { buffer.deallocate() }
    var crc = CRC32C.pcacheSeed
    var size = 0
    while true {
        let n = read(fd, buffer, chunk)
        if n <= 0 { break }
        crc = CRC32C.checksum(buffer, count: n, seed: crc)
        size += n
    }
    return (size, crc)
}

/// A Mutex in a class, so closures can share it.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
}
