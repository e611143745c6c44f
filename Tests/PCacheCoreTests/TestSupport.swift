import Foundation
@testable import PCacheCore

/// Small devices for tests: the fixed regions plus `segments` segments
/// (sparse, so a few segments cost only the pages touched).
func makeDevice(segments: Int, label: String = "test-device") -> SimulatedPersistentMemory {
    SimulatedPersistentMemory(size: PCacheLayout.segmentsOffset + segments * PCacheLayout.segmentSize, label: label)
}

/// Opens with the size check lowered to what the test image has.
func openDevice(_ memory: any PersistentMemory) throws -> CacheDevice {
    try CacheDevice.open(memory: memory, minimumSize: 0)
}

func openCache(_ memory: any PersistentMemory, dataCRC: Bool = false) throws -> CacheMetadata {
    try CacheMetadata.open(device: try openDevice(memory), dataCRC: dataCRC)
}

/// Formats a small device the way `pcache-ublk format` does.
@discardableResult
func formatDevice(_ memory: any PersistentMemory, dataCRC: Bool = false, force: Bool = false) throws -> CacheMetadata {
    try CacheFormat.format(memory: memory, dataCRC: dataCRC, force: force, minimumSize: 0)
}

func inspect(_ memory: any PersistentMemory, keys: Bool = true) -> InspectionReport {
    CacheInspector.inspect(memory: memory, includeKeys: keys, minimumSize: 0)
}

/// Everything a load of the cache metadata yields, minus sequence numbers.
struct CacheState: Equatable, CustomStringConvertible {
    var segNum: UInt32
    var segID: UInt32
    var nSegs: UInt32
    var flags: UInt32
    var chain: [UInt32]
    var generations: [UInt64]
    var keyTail: CachePosition
    var dirtyTail: CachePosition

    init(_ m: CacheMetadata) {
        segNum = m.device.segmentCount
        let info = m.info
        segID = info.segID
        nSegs = info.nSegs
        flags = info.flags
        chain = m.segmentChain
        generations = m.segmentGenerations
        keyTail = m.keyTail
        dirtyTail = m.dirtyTail
    }

    var description: String {
        "seg_num \(segNum) seg_id \(segID) n_segs \(nSegs) flags \(String(flags, radix: 16)) chain \(chain) "
            + "gens \(generations) key_tail \(keyTail) dirty_tail \(dirtyTail)"
    }
}

/// Loads without writing: the state, or nil for a device whose cache was
/// never completely started, or rethrows anything else.
func readOnlyState(_ memory: any PersistentMemory) throws -> CacheState? {
    let device: CacheDevice
    do {
        device = try CacheDevice.openReadOnly(memory: memory, minimumSize: 0)
    } catch PCacheError.notFormatted {
        return nil
    }
    do {
        return CacheState(try CacheMetadata.inspect(device: device))
    } catch PCacheError.cacheNotInitialised {
        return nil
    }
}

/// Bytes of a region as an array.
func bytes(_ memory: any PersistentMemory, _ offset: Int, _ count: Int) -> [UInt8] {
    memory.loadBytes(at: offset, count: count)
}

/// A temporary sparse file of `size` bytes, removed by `cleanup`.
func temporaryFile(size: Int, name: String = "pcache-test") throws -> String {
    let path = NSTemporaryDirectory() + "\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).img"
    guard FileManager.default.createFile(atPath: path, contents: nil) else {
        throw PCacheError.usage("cannot create \(path)")
    }
    guard truncate(path, off_t(size)) == 0 else { throw PCacheError.usage("cannot size \(path)") }
    return path
}
