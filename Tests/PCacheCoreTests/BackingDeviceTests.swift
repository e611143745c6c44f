import Glibc
import Testing

@testable import PCacheCore

/// The backing device's direct-I/O alignment (BackingDevice.swift).
@Suite struct BackingDeviceTests {
    /// For a regular file, `logicalBlockSize` is the alignment its filesystem
    /// asks of direct I/O, so a direct write of exactly that size and
    /// alignment succeeds: on a filesystem over a 4Kn disk, 512 would fail
    /// with EINVAL. Checked on tmpfs and on the filesystem holding /tmp.
    @Test(arguments: ["/dev/shm", "/tmp"])
    func directIOAtTheReportedAlignmentSucceeds(directory: String) throws {
        let path = "\(directory)/pcache-backing-test-\(getpid())"
        let fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0o600)
        try #require(fd >= 0, "cannot create \(path)")
        defer { unlink(path) }
        #expect(ftruncate(fd, 1 << 20) == 0)
        close(fd)

        let backing = try BackingDevice(path: path)
        let size = backing.logicalBlockSize
        #expect(size >= 512 && size <= 65536 && size.nonzeroBitCount == 1, "block size \(size)")
        guard backing.isDirect else { return }  // no direct I/O here: nothing to align
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: size)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xA5, count: size)
        #expect(backing.canUseDirect(buffer: buffer, count: size, offset: UInt64(size)))
        #expect(pwrite(backing.fd, buffer, size, off_t(size)) == size, "direct write: errno \(errno)")
        #expect(!backing.canUseDirect(buffer: buffer, count: size / 2, offset: UInt64(size)), "half a block goes buffered")
    }
}
