import CURing
import Testing

@testable import PCacheCore

/// `IOURing.forEachCompletion(lookingAhead:)`: the ublk queue's way of
/// telling the cache which requests come next.
@Suite struct IOURingTests {
    /// Queues `count` NOPs whose user data is their number, and submits them.
    func submitNops(_ ring: IOURing, _ count: Int) throws {
        for n in 0..<count {
            let sqe = ring.nextSQE()
            io_uring_prep_nop(sqe)
            sqe.pointee.user_data = UInt64(n)
        }
        try ring.submit()
    }

    @Test func everyCompletionIsHandledOnceInOrderAfterItsLookAheads() throws {
        let ring = try IOURing(entries: 64, completionEntries: 128)
        // More than one peek's worth (32), so a batch boundary is crossed.
        let count = 50
        try submitNops(ring, count)
        var handled: [UInt64] = []
        var hints: [(userData: UInt64, distance: Int, beforeHandling: Int)] = []
        let total = ring.forEachCompletion(lookingAhead: 3, { userData, result, distance in
            #expect(result == 0)
            hints.append((userData, distance, handled.count))
        }) { userData, result, _ in
            #expect(result == 0)
            handled.append(userData)
        }
        #expect(total == count)
        #expect(handled == (0..<UInt64(count)).map { $0 })
        #expect(!ring.hasCompletion, "every completion was marked seen")
        // Each hint names a completion `distance` places after the next one handled.
        for hint in hints {
            #expect(hint.distance >= 1 && hint.distance <= 3)
            #expect(hint.userData == UInt64(hint.beforeHandling + hint.distance))
        }
        // Inside a peek, every completion but the first three hears all three steps.
        for n in 3..<32 {
            #expect(hints.filter { $0.userData == UInt64(n) }.map(\.distance) == [3, 2, 1], "completion \(n)")
        }
    }

    @Test func noLookAheadWithDistanceZero() throws {
        let ring = try IOURing(entries: 8)
        try submitNops(ring, 5)
        var hints = 0
        var handled = 0
        ring.forEachCompletion(lookingAhead: 0, { _, _, _ in hints += 1 }) { _, _, _ in handled += 1 }
        #expect(handled == 5)
        #expect(hints == 0)
    }
}
