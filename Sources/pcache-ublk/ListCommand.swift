import Glibc
import PCacheCore
import UblkServer

/// `pcache-ublk list`: the ublk devices and what serves them.
enum ListCommand {
    static let summary = "list ublk devices (--json for a machine-readable list)"
    static let usage = "pcache-ublk list [--json]"
    static let valuedOptions: [String: String] = [:]

    struct Entry {
        var id: UInt32
        var info: UblkDeviceInfo
        var bytes: UInt64?
        var record: DeviceRecord?
        var serverAlive: Bool
    }

    static func run(_ args: [String]) throws -> Int32 {
        if UblkCLI.wantsHelp(args, valued: valuedOptions) {
            UblkCLI.printOut("usage: \(usage)\n\nLists every ublk device the kernel has: id, state, server pid, queues, size and target.")
            return 0
        }
        return UblkCLI.run("list", usage: usage) {
            let parsed = try UblkCLI.Arguments(args, valued: valuedOptions, flags: ["--json": "json"])
            guard parsed.positional.isEmpty else {
                throw UblkCLI.UsageError("unexpected argument '\(parsed.positional[0])'")
            }
            try UblkCLI.requireDriver()
            let entries = try collect()
            UblkCLI.printOut(parsed.has("json") ? json(entries) : table(entries))
            return 0
        }
    }

    static func collect() throws -> [Entry] {
        let ids = UblkCLI.deviceIDs()
        if ids.isEmpty { return [] }
        let control = try UblkControl()
        var entries: [Entry] = []
        for id in ids {
            guard let info = try? control.deviceInfo(id) else { continue }  // deleted meanwhile
            entries.append(Entry(
                id: id, info: info, bytes: try? control.deviceBytes(id),
                record: info.isOurs ? RuntimeFiles.readRecord(id) : nil,
                serverAlive: info.state != .dead && UblkCLI.isAlive(info.serverPID)))
        }
        return entries
    }

    static func targetName(_ e: Entry) -> String {
        guard e.info.isOurs else { return "(other server)" }
        return e.record?.target.kind ?? "?"
    }

    static func table(_ entries: [Entry]) -> String {
        if entries.isEmpty { return "no ublk devices" }
        var rows = [["DEVICE", "STATE", "PID", "QUEUES", "DEPTH", "SIZE", "TARGET"]]
        for e in entries {
            rows.append([
                DeviceNodes.blockDevicePath(e.id),
                e.info.stateName + (e.info.state == .quiesced && !e.serverAlive ? " (server gone)" : ""),
                e.info.serverPID > 0 ? "\(e.info.serverPID)" : "-",
                "\(e.info.queueCount)", "\(e.info.queueDepth)",
                e.bytes.map(UblkCLI.formatSize) ?? "-",
                targetName(e),
            ])
        }
        var widths = [Int](repeating: 0, count: rows[0].count)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        return rows.map { row in
            row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count + 2)
            }.joined()
        }.joined(separator: "\n")
    }

    static func json(_ entries: [Entry]) -> String {
        let items = entries.map { e -> String in
            var fields = [
                "\"id\":\(e.id)",
                "\"device\":\(quote(DeviceNodes.blockDevicePath(e.id)))",
                "\"state\":\(quote(e.info.stateName.lowercased()))",
                "\"pid\":\(e.info.serverPID)",
                "\"server_alive\":\(e.serverAlive)",
                "\"queues\":\(e.info.queueCount)",
                "\"depth\":\(e.info.queueDepth)",
                "\"bytes\":\(e.bytes.map { "\($0)" } ?? "null")",
                "\"target\":\(quote(targetName(e)))",
                "\"recovery\":\(e.info.supportsRecovery)",
            ]
            if case .table(let t)? = e.record?.target { fields.append("\"table\":\(quote(t))") }
            return "{" + fields.joined(separator: ",") + "}"
        }
        return "[" + items.joined(separator: ",") + "]"
    }

    /// A JSON string literal (the inspector's JSON writer does the escaping).
    static func quote(_ s: String) -> String {
        JSONValue.string(s).serialized()
    }
}
