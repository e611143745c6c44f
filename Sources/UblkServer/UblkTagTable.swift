import CUblk

/// Who holds each tag of one ublk queue, as the queue thread sees it.
///
/// A tag is *fetching* while its FETCH or COMMIT_AND_FETCH command waits in
/// the kernel, *owned* while its request is with the target, and *retired*
/// once the kernel will not hand it out again: its command ended with
/// UBLK_IO_RES_ABORT (the device is stopping or going away), or failed
/// otherwise. Only an abort means the device is stopping. Any other failure
/// is the kernel refusing that one COMMIT_AND_FETCH (a tag it does not think
/// is ours, say): the request it carried stays with the server as far as the
/// kernel knows, so a stop would wait for it, and the queue counts that as
/// its failure (`UblkQueue.failure`). (Taking it as a stop once failed every
/// deferred write of the queue with EIO while its other tags went on.)
///
/// Queue-thread confined, like the queue's other state.
struct UblkTagTable {
    enum State: UInt8 { case fetching, owned, retired }

    /// What a command's completion means for its tag.
    enum Completion: Equatable {
        /// A request arrived: hand it to the target.
        case request
        /// The kernel aborted the tag: the device is stopping.
        case aborted
        /// The command failed with this errno; the tag is out of service.
        case failed(Int32)
        /// The tag was already retired: nothing to do.
        case ignored
    }

    let depth: Int
    private let states: UnsafeMutablePointer<State>
    private(set) var ownedCount = 0
    private(set) var retiredCount = 0
    /// Tags retired by a failure other than an abort.
    private(set) var failedCount = 0

    init(depth: Int) {
        self.depth = depth
        states = .allocate(capacity: depth)
        states.initialize(repeating: .fetching, count: depth)
    }

    /// Frees the table (the queue's deinit; the table is a value to keep the
    /// hot path free of reference counting).
    func deallocate() { states.deallocate() }

    subscript(tag: Int) -> State { states[tag] }

    /// Every tag retired: no command of this queue is left in the kernel.
    var allRetired: Bool { retiredCount == depth }

    /// A FETCH or COMMIT_AND_FETCH for `tag` completed with `result`.
    mutating func commandCompleted(tag: Int, result: Int32) -> Completion {
        if result == UBLK_IO_RES_OK {
            states[tag] = .owned
            ownedCount += 1
            return .request
        }
        guard states[tag] != .retired else { return .ignored }
        retire(tag)
        if result == UBLK_IO_RES_ABORT { return .aborted }
        failedCount += 1
        return .failed(-result)
    }

    /// The target completed `tag`'s request: it goes back to the kernel with
    /// the result. False if the tag was not with the target (nothing changes).
    mutating func commit(tag: Int) -> Bool {
        guard tag >= 0 && tag < depth && states[tag] == .owned else { return false }
        states[tag] = .fetching
        ownedCount -= 1
        return true
    }

    /// A FETCH the kernel refused while the queue was being set up.
    mutating func retireAtSetup(tag: Int) {
        guard states[tag] != .retired else { return }
        retire(tag)
    }

    private mutating func retire(_ tag: Int) {
        if states[tag] == .owned { ownedCount -= 1 }
        states[tag] = .retired
        retiredCount += 1
    }
}
