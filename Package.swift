// swift-tools-version:6.0
// pcache-ublk: a persistent-memory write-back cache served through ublk.
import PackageDescription

let package = Package(
    name: "pcache-ublk",
    products: [
        .executable(name: "pcache-ublk", targets: ["pcache-ublk"]),
    ],
    targets: [
        // C libraries and ABI definitions.
        .systemLibrary(
            name: "CURing", path: "Sources/CURing", pkgConfig: "liburing",
            providers: [.apt(["liburing-dev"])]),
        .systemLibrary(
            name: "CPMem", path: "Sources/CPMem", pkgConfig: "libpmem",
            providers: [.apt(["libpmem-dev"])]),
        .systemLibrary(name: "CUblk", path: "Sources/CUblk"),
        .target(name: "CSupport", path: "Sources/CSupport"),

        // The cache: on-media format, segments, keys, index, I/O paths, writeback, GC, replay.
        .target(name: "PCacheCore", dependencies: ["CURing", "CPMem", "CSupport"]),
        // The ublk control path and the per-queue io_uring threads.
        .target(name: "UblkServer", dependencies: ["PCacheCore", "CURing", "CUblk", "CSupport"]),
        // The command-line tool.
        .executableTarget(name: "pcache-ublk", dependencies: ["UblkServer", "PCacheCore", "CSupport"]),
        // The native benchmark behind `make bench`.
        .executableTarget(
            name: "pcache-bench", dependencies: ["PCacheCore", "CSupport"],
            path: "Benchmarks/pcache-bench"),

        .testTarget(name: "PCacheCoreTests", dependencies: ["PCacheCore", "CSupport"]),
        .testTarget(name: "UblkServerTests", dependencies: ["UblkServer", "PCacheCore", "CUblk"]),
    ]
)
