import Synchronization

/// The target is not part of this build (the cache is registered by the
/// executable; see `UblkTargetFactory.registerCacheTarget`).
public struct UblkTargetUnavailable: Error, CustomStringConvertible {
    public init() {}
    public var description: String { "cache target not available in this build" }
}

/// Builds targets from what `add` / `recover` were given.
///
/// The cache lives outside this module. The executable registers it once at
/// start-up, before dispatching the command line:
///
///     UblkTargetFactory.registerCacheTarget { table in try PCacheTarget(table: table) }
///
/// The closure receives a table already parsed and validated against the
/// devices (`PCacheTable.parse`), runs in the serving process (the child of
/// `add`, or `recover`), and throws to refuse (its error is shown to the user).
public enum UblkTargetFactory {
    public typealias CacheTargetMaker = @Sendable (PCacheTable) throws -> any UblkTarget

    private static let cacheMaker = Mutex<CacheTargetMaker?>(nil)

    public static func registerCacheTarget(_ make: @escaping CacheTargetMaker) {
        cacheMaker.withLock { $0 = make }
    }

    public static var hasCacheTarget: Bool { cacheMaker.withLock { $0 != nil } }

    public static func makeCacheTarget(_ table: PCacheTable) throws -> any UblkTarget {
        guard let make = cacheMaker.withLock({ $0 }) else { throw UblkTargetUnavailable() }
        return try make(table)
    }

    /// The target for a recorded spec: the null target, or the cache for a
    /// table (parsed and validated first).
    public static func makeTarget(_ spec: TargetSpec) throws -> any UblkTarget {
        switch spec {
        case .null(let bytes):
            return NullTarget(bytes: bytes)
        case .table(let text):
            guard hasCacheTarget else { throw UblkTargetUnavailable() }
            return try makeCacheTarget(PCacheTable.parse(text))
        }
    }
}
