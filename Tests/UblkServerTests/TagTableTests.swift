import CUblk
import Glibc
import Testing

@testable import UblkServer

/// The queue thread's view of its tags (UblkTagTable): what a command's
/// completion means, and when the queue is done.
@Suite struct TagTableTests {
    @Test func requestsAndCommits() {
        var tags = UblkTagTable(depth: 4)
        defer { tags.deallocate() }
        let r1 = tags.commandCompleted(tag: 2, result: UBLK_IO_RES_OK)
        #expect(r1 == .request)
        #expect(tags[2] == .owned && tags.ownedCount == 1)
        let r2 = tags.commit(tag: 2)
        #expect(r2)
        #expect(tags[2] == .fetching && tags.ownedCount == 0)
        // A second completion for the same request, or one for a tag the
        // target never had, changes nothing.
        let r3 = tags.commit(tag: 2)
        #expect(!r3)
        let r4 = tags.commit(tag: 1)
        #expect(!r4)
        let r5 = tags.commit(tag: 4)
        #expect(!r5)
        let r6 = tags.commit(tag: -1)
        #expect(!r6)
        #expect(tags.ownedCount == 0 && tags.retiredCount == 0)
    }

    /// Only an abort means the device is stopping; a command the kernel
    /// refuses takes its tag out of service and leaves the rest serving.
    @Test func aFailedCommandRetiresOnlyItsTag() {
        var tags = UblkTagTable(depth: 3)
        defer { tags.deallocate() }
        let r7 = tags.commandCompleted(tag: 0, result: UBLK_IO_RES_OK)
        #expect(r7 == .request)
        let r8 = tags.commandCompleted(tag: 1, result: UBLK_IO_RES_OK)
        #expect(r8 == .request)
        let r9 = tags.commit(tag: 0)
        #expect(r9)
        let r10 = tags.commandCompleted(tag: 0, result: -EINVAL)
        #expect(r10 == .failed(EINVAL))
        #expect(tags[0] == .retired && tags.failedCount == 1 && tags.retiredCount == 1)
        #expect(!tags.allRetired)
        // The other tags go on.
        let r11 = tags.commit(tag: 1)
        #expect(r11)
        let r12 = tags.commandCompleted(tag: 1, result: UBLK_IO_RES_OK)
        #expect(r12 == .request)
        let r13 = tags.commandCompleted(tag: 2, result: UBLK_IO_RES_OK)
        #expect(r13 == .request)
        #expect(tags.ownedCount == 2)
        // The device stops: the kernel aborts what it still holds.
        let r14 = tags.commandCompleted(tag: 1, result: UBLK_IO_RES_ABORT)
        #expect(r14 == .aborted)
        let r15 = tags.commandCompleted(tag: 2, result: UBLK_IO_RES_ABORT)
        #expect(r15 == .aborted)
        #expect(tags.ownedCount == 0 && tags.allRetired && tags.failedCount == 1)
        // A late completion of a retired tag is ignored, and counted once.
        let r16 = tags.commandCompleted(tag: 2, result: UBLK_IO_RES_ABORT)
        #expect(r16 == .ignored)
        let r17 = tags.commandCompleted(tag: 0, result: -EBUSY)
        #expect(r17 == .ignored)
        #expect(tags.retiredCount == 3 && tags.failedCount == 1)
    }

    @Test func fetchesRefusedAtSetup() {
        var tags = UblkTagTable(depth: 2)
        defer { tags.deallocate() }
        tags.retireAtSetup(tag: 1)
        tags.retireAtSetup(tag: 1)
        #expect(tags.retiredCount == 1 && tags.failedCount == 0 && !tags.allRetired)
        tags.retireAtSetup(tag: 0)
        #expect(tags.allRetired)
    }
}
