/// Builds targets from what `add` / `recover` were given.
public enum UblkTargetFactory {
    /// The target for a recorded spec: the null target, or the cache for a
    /// table (parsed and checked against the devices first).
    public static func makeTarget(_ spec: TargetSpec) throws -> any UblkTarget {
        switch spec {
        case .null(let bytes):
            return NullTarget(bytes: bytes)
        case .table(let text):
            return try PCacheTarget(table: PCacheTable.parse(text))
        }
    }
}
