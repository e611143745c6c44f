import Synchronization
import Testing
@testable import PCacheCore

/// Totals printed at the end of each scenario and overall.
private let totals = Mutex((points: 0, images: 0))

private func report(_ name: String, _ result: SimulatedPersistentMemory.CrashExploration) {
    let (p, i) = totals.withLock { t in
        t.points += result.crashPoints
        t.images += result.images
        return (t.points, t.images)
    }
    print("crash consistency [\(name)]: \(result.crashPoints) crash points, \(result.images) crash images checked "
          + "(running total \(p) points, \(i) images)")
}

/// Records the expected state after every step of a sequence of updates
/// and the event count at which each step was complete.
private struct Timeline {
    var states: [CacheState] = []
    var boundaries: [Int] = []

    mutating func mark(_ state: CacheState, _ memory: SimulatedPersistentMemory) {
        states.append(state)
        boundaries.append(memory.statistics.events)
    }

    /// The states a crash at `event` may show: the last complete one and the next.
    func allowed(atEvent event: Int) -> [CacheState] {
        let k = boundaries.lastIndex { $0 <= event }!
        return k + 1 < states.count ? [states[k], states[k + 1]] : [states[k]]
    }
}

/// A cache that has been used: data_crc on, gc_percent 20, a key log over
/// two segments, moved tails, bumped generations.
func makeUsedCache(segments: Int = 3) throws -> SimulatedPersistentMemory {
    let memory = makeDevice(segments: segments)
    let metadata = try formatDevice(memory, dataCRC: true)
    metadata.persistCacheInfo(gcPercent: 20)
    metadata.persistSegmentGeneration(2, 3)
    let data = [UInt8](repeating: 0x5C, count: 4096)
    memory.persist(at: metadata.dataAreaOffset(2), bytes: data)
    let crc = CRC32C.checksum(data)
    let key = KeyOnMedia(off: 1 << 20, len: 4096, cacheSegID: 2, cacheSegOff: 0, segGen: 3, dataCRC: crc)
    let kset = KeySetCodec.encoded(keys: [key, key])
    memory.persist(at: metadata.dataAreaOffset(0), bytes: kset)
    memory.persist(at: metadata.dataAreaOffset(0) + kset.count, bytes: KeySetCodec.encodedLast(nextCacheSegID: 1))
    memory.persist(at: metadata.dataAreaOffset(1), bytes: kset)
    memory.persist(at: metadata.dataAreaOffset(1) + kset.count, bytes: KeySetCodec.emptyKeySet)
    metadata.persistDirtyTail(CachePosition(cacheSegID: 1, segOff: 0))
    metadata.persistKeyTail(CachePosition(cacheSegID: 0, segOff: UInt32(kset.count)))
    return memory
}

@Suite(.serialized) struct CrashConsistencyTests {
    @Test func formatOfABlankDevice() throws {
        // Reference: the result without a crash.
        let final = CacheState(try formatDevice(makeDevice(segments: 3)))
        #expect(final.flags == 0x1182)

        let memory = makeDevice(segments: 3)
        var outcomes = (blank: 0, complete: 0)
        let result = try memory.exploreCrashes(operation: { try formatDevice(memory) }) { image, point in
            if let state = try readOnlyState(image) {
                #expect(state == final, "crash at event \(point.event): \(state)")
                outcomes.complete += 1
            } else {
                // Blank or half built: the next start formats and builds it again.
                let metadata = try openCache(image)
                #expect(metadata.isNewCache)
                metadata.persistCacheInfo(setInitDone: true)
                #expect(try readOnlyState(image) == final, "crash at event \(point.event)")
                outcomes.blank += 1
            }
        }
        #expect(outcomes.blank > 0 && outcomes.complete > 0)
        report("format of a blank device (incl. new-cache segment_info/gen writes)", result)
    }

    @Test func forcedFormatOverAUsedCache() throws {
        let old = try #require(try readOnlyState(try makeUsedCache()))
        let final = CacheState(try formatDevice(makeDevice(segments: 3)))
        let memory = try makeUsedCache()
        var seen = (old: 0, new: 0, blank: 0)
        let result = try memory.exploreCrashes(operation: { try formatDevice(memory, force: true) }) { image, point in
            if let state = try readOnlyState(image) {
                #expect(state == old || state == final, "crash at event \(point.event): \(state)")
                if state == old { seen.old += 1 } else { seen.new += 1 }
            } else {
                // Formatting again finishes the job.
                try formatDevice(image, force: true)
                #expect(try readOnlyState(image) == final)
                seen.blank += 1
            }
        }
        #expect(seen.old > 0 && seen.new > 0 && seen.blank > 0)
        report("format --force over a used cache", result)
    }

    @Test func firstStartOverOldSegments() throws {
        // A device whose cache_info was lost (zeroed) while the segments still
        // hold an old cache's metadata: the start builds a new cache.
        let memory = try makeUsedCache()
        memory.loadImage([UInt8](repeating: 0, count: 8192), at: PCacheLayout.cacheInfoOffset)
        let reference = try makeUsedCache()
        reference.loadImage([UInt8](repeating: 0, count: 8192), at: PCacheLayout.cacheInfoOffset)
        let referenceMetadata = try openCache(reference, dataCRC: false)
        referenceMetadata.persistCacheInfo(setInitDone: true)
        let final = CacheState(referenceMetadata)
        let result = try memory.exploreCrashes(operation: {
            let m = try openCache(memory, dataCRC: false)
            m.persistCacheInfo(setInitDone: true)
        }) { image, point in
            if let state = try readOnlyState(image) {
                #expect(state == final, "crash at event \(point.event): \(state)")
            } else {
                let m = try openCache(image, dataCRC: false)
                #expect(m.isNewCache)
                m.persistCacheInfo(setInitDone: true)
                #expect(try readOnlyState(image) == final)
            }
        }
        report("new-cache build over old segment metadata", result)
    }

    @Test func cacheInfoUpdates() throws {
        let memory = try makeUsedCache()
        var timeline = Timeline()
        var metadata = try openCache(memory, dataCRC: true)
        timeline.mark(CacheState(metadata), memory)
        let result = try memory.exploreCrashes(operation: {
            // A restart (every start rewrites cache_info), then gc_percent
            // messages through more than one wrap of the 8-bit seq.
            metadata = try openCache(memory, dataCRC: true)
            metadata.persistCacheInfo(setInitDone: true)
            timeline.mark(CacheState(metadata), memory)
            for n in 0..<300 {
                metadata.persistCacheInfo(gcPercent: UInt8((n * 7) % 91))
                timeline.mark(CacheState(metadata), memory)
            }
        }) { image, point in
            let state = try #require(try readOnlyState(image))
            #expect(timeline.allowed(atEvent: point.event).contains(state), "crash at event \(point.event): \(state)")
        }
        report("cache_info updates (restart + 300 gc_percent changes)", result)
    }

    @Test func tailUpdates() throws {
        let memory = makeDevice(segments: 3)
        let metadata = try formatDevice(memory)
        var timeline = Timeline()
        timeline.mark(CacheState(metadata), memory)
        let result = memory.exploreCrashes(operation: {
            for n in 1...300 {
                // Writeback moves the dirty tail, GC follows with the key tail.
                let dirty = CachePosition(cacheSegID: UInt32(n % 3), segOff: UInt32(n * 64))
                metadata.persistDirtyTail(dirty)
                timeline.mark(CacheState(metadata), memory)
                metadata.persistKeyTail(CachePosition(cacheSegID: UInt32((n + 2) % 3), segOff: UInt32(n * 24)))
                timeline.mark(CacheState(metadata), memory)
            }
        }) { image, point in
            let state: CacheState?
            do { state = try readOnlyState(image) } catch {
                Issue.record("crash at event \(point.event): \(error)")
                return
            }
            #expect(state.map { timeline.allowed(atEvent: point.event).contains($0) } == true,
                    "crash at event \(point.event): \(String(describing: state))")
        }
        report("key/dirty tail updates (600)", result)
    }

    @Test func generationUpdates() throws {
        let memory = makeDevice(segments: 3)
        let metadata = try formatDevice(memory)
        var timeline = Timeline()
        timeline.mark(CacheState(metadata), memory)
        let result = memory.exploreCrashes(operation: {
            for n in 1...300 {
                let seg = UInt32(n % 3)
                metadata.persistSegmentGeneration(seg, metadata.segmentGeneration(seg) + 1)
                timeline.mark(CacheState(metadata), memory)
            }
        }) { image, point in
            let state = try? readOnlyState(image)
            #expect(state.map { timeline.allowed(atEvent: point.event).contains($0) } == true,
                    "crash at event \(point.event): \(String(describing: state))")
        }
        report("segment generation updates (300)", result)
    }
}
