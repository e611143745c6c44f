import CSupport

/// CRC-32C (Castagnoli) in the raw register convention that dm-pcache stores
/// on media: the seed is used as is and the result is not inverted.
public enum CRC32C {
    /// The seed of every metadata and data CRC on a pcache device.
    public static let pcacheSeed: UInt32 = 0x3B15A

    /// Runs the CRC register over `count` bytes at `pointer`, starting from `seed`.
    @inlinable
    public static func checksum(_ pointer: UnsafeRawPointer, count: Int, seed: UInt32 = pcacheSeed) -> UInt32 {
        pcs_crc32c(seed, pointer, count)
    }

    public static func checksum(_ buffer: UnsafeRawBufferPointer, seed: UInt32 = pcacheSeed) -> UInt32 {
        guard let base = buffer.baseAddress else { return seed }
        return pcs_crc32c(seed, base, buffer.count)
    }

    public static func checksum(_ bytes: [UInt8], seed: UInt32 = pcacheSeed) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0, seed: seed) }
    }

    /// Whether the SSE4.2 instruction path is in use.
    public static var isHardwareAccelerated: Bool { pcs_crc32c_is_hardware() != 0 }
}
