import Testing

@testable import PCacheCore

/// Replay applies keys in log order, so two keys for the same bytes must
/// reach the log in the order they were written, whichever queues wrote them
/// and whenever their key-sets close. Each test builds a case where the
/// wrong routing would put the older key later in the log, then cuts the
/// power and reads back.
@Suite struct KeySetOrderTests {
    @Test func aWriteOverAnUnclosedKeyOfAnotherQueueIsLoggedAfterIt() throws {
        let h = try CacheHarness(queues: 2)
        let older = pattern(41, 4096), newer = pattern(42, 4096)
        #expect(h.write(0, older, queue: 0) == 4096)  // unclosed in queue 0's key-set
        #expect(h.write(0, newer, fua: true, queue: 1) == 4096)
        #expect(h.flush(queue: 0) == 0)  // closes whatever is still open
        try h.crashAndRestart()
        #expect((h.read(0, 4096).1 == newer) == true, "the older write won at replay")
    }

    @Test func writesToOtherBlocksOfTheSameStripeStayInTheirOwnKeySet() throws {
        let h = try CacheHarness(queues: 2)
        #expect(h.write(0, pattern(43, 4096), queue: 0) == 4096)
        #expect(h.write(8192, pattern(44, 4096), queue: 1) == 4096)
        #expect(h.cache.keySets.pendingKeys(in: 0) == 1)
        #expect(h.cache.keySets.pendingKeys(in: 1) == 1, "a key that overlaps nothing unclosed must not join another queue's key-set")
        #expect(h.write(0, pattern(45, 8192), queue: 1) == 8192)  // overlaps queue 0's key
        #expect(h.cache.keySets.pendingKeys(in: 0) == 2)
    }

    @Test func aWriteOverUnclosedKeysOfTwoKeySetsClosesThemFirst() throws {
        let h = try CacheHarness(queues: 2)
        let a = pattern(46, 4096), b = pattern(47, 4096), c = pattern(48, 12288)
        #expect(h.write(0, a, queue: 0) == 4096)
        #expect(h.write(8192, b, queue: 1) == 4096)
        // Covers both: it can follow neither key-set alone. (Appended to
        // queue 0's key-set without closing queue 1's, it would be logged
        // before b at the flush below.)
        #expect(h.write(0, c, queue: 0) == 12288)
        #expect(h.cache.keySets.pendingKeys(in: 1) == 0, "queue 1's key-set must have been closed")
        #expect(h.cache.keySets.pendingKeys(in: 0) == 1, "only the new key is unclosed")
        #expect(h.flush(queue: 0) == 0)
        try h.crashAndRestart()
        #expect((h.read(0, 12288).1 == c) == true)
    }

    @Test func aWriteAfterADiscardOfAnUnclosedKeyIsLoggedAfterIt() throws {
        let h = try CacheHarness(queues: 2)
        let older = pattern(49, 4096), newer = pattern(50, 4096)
        #expect(h.write(0, older, queue: 0) == 4096)
        #expect(h.run(queue: 1) { $0.discard(tag: 0, offset: 0, length: 4096) } == 0)
        // The index no longer shows the older key, but the log must still
        // get it before the newer one.
        #expect(h.write(0, newer, fua: true, queue: 1) == 4096)
        #expect(h.flush(queue: 0) == 0)
        try h.crashAndRestart()
        #expect((h.read(0, 4096).1 == newer) == true, "the discarded older write came back over a newer one")
    }

    @Test func aReadFillOverlapsOnlyItsPlaceholder() throws {
        let h = try CacheHarness(queues: 2)
        #expect(h.write(0, pattern(51, 4096), queue: 0) == 4096)
        #expect(h.read(8192, 4096, queue: 1).0 == 4096)  // a miss: cached as a clean key
        #expect(h.cache.keySets.pendingKeys(in: 1) == 1)
        #expect(h.cache.keySets.pendingKeys(in: 0) == 1)
    }
}
