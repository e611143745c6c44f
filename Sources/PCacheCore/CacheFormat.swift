/// Formatting a cache device offline, as `pcache-ublk format` does.
public enum CacheFormat {
    /// Writes a new, empty cache: the bytes dm-pcache leaves after the first
    /// start of a blank device with no I/O (superblock, segment chain,
    /// generations 0, an empty key log, both tails at 0:0, then cache_info
    /// with INIT_DONE, gc_percent 70, write-back and `dataCRC`).
    ///
    /// A device whose superblock magic is not 0 is refused unless `force`
    /// is set; then its superblock page is zeroed first, so that a power cut
    /// at any point leaves either the old cache (before that) or a device
    /// that formats again on its next open.
    @discardableResult
    public static func format(memory: any PersistentMemory, dataCRC: Bool, force: Bool) throws -> CacheMetadata {
        try format(memory: memory, dataCRC: dataCRC, force: force, minimumSize: PCacheLayout.minimumDeviceSize)
    }

    /// Test hook: `minimumSize` below 512 MiB lets tests use small images.
    static func format(memory: any PersistentMemory, dataCRC: Bool, force: Bool, minimumSize: Int) throws -> CacheMetadata {
        let floor = max(minimumSize, PCacheLayout.segmentsOffset + PCacheLayout.segmentSize)
        if memory.size < floor {
            throw PCacheError.deviceTooSmall(device: memory.label, size: memory.size, minimum: floor)
        }
        let magic = memory.load(UInt64.self, at: PCacheLayout.superblockOffset + 8)
        if magic != 0 {
            guard force else { throw PCacheError.alreadyFormatted(device: memory.label, magic: magic) }
            // The magic first: once it is durably 0 the device reads as
            // blank, so no power cut can leave a torn superblock behind.
            memory.persistZero(at: PCacheLayout.superblockOffset + 8, count: 8)
            memory.persistZero(at: PCacheLayout.superblockOffset, count: PCacheLayout.pageSize)
        }
        let device = try CacheDevice.open(memory: memory, minimumSize: minimumSize)
        let metadata = try CacheMetadata.open(device: device, dataCRC: dataCRC)
        // Opening a just-formatted device always finds a new cache: the
        // format zeroed cache_info.
        precondition(metadata.isNewCache, "a freshly formatted device held a started cache")
        metadata.persistCacheInfo(setInitDone: true)
        return metadata
    }
}
