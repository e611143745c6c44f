/// Reading the key log back: bounds-checked access to the key-set at a
/// position and validation of the keys in it. Replay, writeback and GC all
/// read the log this way, so a crafted or corrupt image is caught before any
/// id or offset from it is used.
struct KeyLogReader {
    let memory: PersistentMemory
    let segmentCount: UInt32
    let dataAreaOffsets: UnsafeMutablePointer<Int>
    let backingBytes: UInt64

    /// The key-set at `position`, or why there is none.
    func keySet(at position: CachePosition) -> Result<KeySetView, KeySetInvalidity> {
        guard position.cacheSegID < segmentCount, Int(position.segOff) < PCacheLayout.segmentDataSize else {
            return .failure(.tooShort(available: 0))
        }
        let pointer = memory.base + dataAreaOffsets[Int(position.cacheSegID)] + Int(position.segOff)
        return KeySetCodec.check(at: pointer, available: position.remaining)
    }

    /// The link of a LAST key-set, checked against the cache's size.
    func nextSegment(of keySet: KeySetView, at position: CachePosition) throws -> UInt32 {
        let next = keySet.nextCacheSegID!
        guard next < segmentCount else {
            throw CacheError.corruptKeyLog(
                at: position, reason: "LAST kset links to cache segment \(next), but the cache has \(segmentCount)")
        }
        return next
    }

    /// Checks what the kernel's 6.18 replay does not: the key's segment,
    /// its span inside the data area, and its range on the backing device.
    func validate(_ key: KeyOnMedia, index: Int, at position: CachePosition) throws {
        func fail(_ reason: String) -> CacheError { .corruptKey(at: position, index: index, reason: reason) }
        guard key.len > 0, key.len % 512 == 0, key.off % 512 == 0, key.cacheSegOff % 512 == 0 else {
            throw fail("offset \(key.off), length \(key.len) or segment offset \(key.cacheSegOff) not sector-aligned")
        }
        guard key.cacheSegID < segmentCount else {
            throw fail("cache segment \(key.cacheSegID) out of range (cache has \(segmentCount))")
        }
        guard UInt64(key.cacheSegOff) + UInt64(key.len) <= UInt64(PCacheLayout.segmentDataSize) else {
            throw fail("data \(key.cacheSegOff)+\(key.len) runs past the segment's data area")
        }
        let end = key.off.addingReportingOverflow(UInt64(key.len))
        guard !end.overflow, end.partialValue <= backingBytes else {
            throw fail("range \(key.off)+\(key.len) lies beyond the backing device (\(backingBytes) bytes)")
        }
        guard key.off >> UInt64(PCacheLayout.subtreeShift) == (end.partialValue - 1) >> UInt64(PCacheLayout.subtreeShift)
        else {
            throw fail("range \(key.off)+\(key.len) crosses a 4 MiB stripe boundary")
        }
    }

    /// Pointer to a key's cached data.
    @inline(__always)
    func data(of key: KeyOnMedia) -> UnsafeMutableRawPointer {
        memory.base + dataAreaOffsets[Int(key.cacheSegID)] + Int(key.cacheSegOff)
    }

    /// Verifies a key's data_crc.
    func checkDataCRC(_ key: KeyOnMedia, at position: CachePosition) throws {
        let computed = CRC32C.checksum(data(of: key), count: Int(key.len))
        guard computed == key.dataCRC else {
            throw CacheError.dataCRCMismatch(
                at: position, keyOffset: key.off, length: key.len, stored: key.dataCRC, computed: computed)
        }
    }
}
