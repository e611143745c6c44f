#!/usr/bin/env python3
"""Writes self-describing 4 KiB blocks to a block device and checks them later
against what was durable (VM fault scenarios 3x-6x).

    blockcheck.py write DEV --log FILE --iter I --writer W [options]
    blockcheck.py verify DEV --logs FILE... [--kills FILE] [--strict-kills]

Every block written carries {magic, iteration, writer, seq, lba} repeated
over the block and a CRC-32 in its last 4 bytes, so a block read back names
the write it came from, and a torn or foreign block is recognised. Writer W
of N owns blocks [base + W*per, base + (W+1)*per), per = blocks // N, and
writes them in an order drawn from a seeded generator: the verifier draws
the same sequence again, so it knows every write that may have happened.

The writer logs (one write() each, so a power cut keeps every complete line):
    H <iter> <writer> <writers> <blocks> <base> <seed>   header
    B <seq>            writes up to <seq> may be issued from now on
    F <seq> <t0> <t1>  fsync() started at t0 and returned at t1 (time.time()):
                       every write up to <seq> completed before it
    U <seq>            write <seq> was a FUA write (O_DSYNC) and completed
    E <seq> <errno>    write or fsync failed
    DONE <seq>         all writes done and fsynced

The verifier takes every log of a device (all iterations), and for each block
the newest write that was durable (covered by a completed fsync, or a
completed FUA write): that version, or a newer write of the same block, must
be read back; an older version, zeros, or anything that is not one of our
writes of that block is a failure. --kills names a file of "K <t0> <t1>"
lines (a server was killed between t0 and t1): a lost write whose covering
fsync ran across a kill is reported as such, and counted as a failure only
with --strict-kills.
"""
import argparse
import errno
import mmap
import os
import random
import struct
import sys
import time
import zlib

BLOCK = 4096
MAGIC = b"PCBLKv01"
HEADER = struct.Struct("<8sIIQQ")  # magic, iteration, writer, seq, lba


def block_bytes(iteration, writer, seq, lba):
    header = HEADER.pack(MAGIC, iteration, writer, seq, lba)
    body = (header * (BLOCK // HEADER.size))[: BLOCK - 4]
    return body + struct.pack("<I", zlib.crc32(body))


def parse_block(data):
    """None for an all-zero block, a (iteration, writer, seq, lba) tuple, or 'corrupt'."""
    if data.count(0) == BLOCK:
        return None
    body = data[: BLOCK - 4]
    (crc,) = struct.unpack_from("<I", data, BLOCK - 4)
    if zlib.crc32(body) != crc or data[:8] != MAGIC:
        return "corrupt"
    magic, iteration, writer, seq, lba = HEADER.unpack_from(data, 0)
    return (iteration, writer, seq, lba)


def lba_stream(seed, writer, writers, blocks, base):
    per = blocks // writers
    first = base + writer * per
    rng = random.Random(seed * 1000003 + writer)
    while True:
        yield first + rng.randrange(per)


def cmd_write(a):
    per = a.blocks // a.writers
    assert per > 0
    flags = os.O_RDWR | os.O_DIRECT
    fd = os.open(a.dev, flags)
    fua_fd = os.open(a.dev, flags | os.O_DSYNC) if a.fua_every else -1
    log = os.open(a.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    buf = mmap.mmap(-1, BLOCK)

    def record(line):
        os.write(log, (line + "\n").encode())

    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    record(f"H {a.iter} {a.writer} {a.writers} {a.blocks} {a.base} {seed}")
    rng = random.Random(seed ^ 0x5EED)
    lbas = lba_stream(seed, a.writer, a.writers, a.blocks, a.base)
    deadline = time.time() + a.seconds if a.seconds else None
    seq = 0
    pending_fua = []
    try:
        while True:
            if a.count and seq >= a.count:
                break
            if deadline and time.time() >= deadline:
                break
            if a.until and os.path.exists(a.until):
                break
            batch = rng.randint(max(1, a.fsync_every // 4), a.fsync_every)
            if a.count:
                batch = min(batch, a.count - seq)
            record(f"B {seq + batch}")
            for _ in range(batch):
                seq += 1
                lba = next(lbas)
                buf.seek(0)
                buf.write(block_bytes(a.iter, a.writer, seq, lba))
                fua = a.fua_every and seq % a.fua_every == 0
                try:
                    n = os.pwritev(fua_fd if fua else fd, [buf], lba * BLOCK)
                except OSError as e:
                    record(f"E {seq} {e.errno}")
                    print(f"writer {a.writer}: write {seq} (block {lba}) failed: {e}", file=sys.stderr)
                    return 1
                if n != BLOCK:
                    record(f"E {seq} short")
                    return 1
                if fua:
                    pending_fua.append(seq)
            for s in pending_fua:
                record(f"U {s}")
            pending_fua = []
            t0 = time.time()
            try:
                os.fsync(fd)
            except OSError as e:
                record(f"E {seq} {e.errno}")
                print(f"writer {a.writer}: fsync after {seq} failed: {e}", file=sys.stderr)
                return 1
            record(f"F {seq} {t0:.6f} {time.time():.6f}")
    finally:
        buf.close()
    record(f"DONE {seq}")
    return 0


class WriterLog:
    def __init__(self, path):
        self.path = path
        self.header = None
        self.bound = 0
        self.durable = 0
        self.fua = set()
        self.fsyncs = []  # (seq, t0, t1)
        self.errors = []
        self.done = False
        with open(path) as f:
            for line in f:
                w = line.split()
                if not w or not line.endswith("\n"):
                    continue  # a torn last line
                if w[0] == "H":
                    self.header = tuple(int(x) for x in w[1:7])
                elif w[0] == "B":
                    self.bound = max(self.bound, int(w[1]))
                elif w[0] == "F":
                    self.durable = max(self.durable, int(w[1]))
                    self.fsyncs.append((int(w[1]), float(w[2]), float(w[3])))
                elif w[0] == "U":
                    self.fua.add(int(w[1]))
                elif w[0] == "E":
                    self.errors.append(line.strip())
                elif w[0] == "DONE":
                    self.done = True
                    self.bound = max(self.bound, int(w[1]))

    def is_durable(self, seq):
        return seq <= self.durable or seq in self.fua

    def covering_fsync_window(self, seq):
        """(start, end) of the time between the fsync before seq's and the one covering it."""
        prev_end = 0.0
        for s, t0, t1 in self.fsyncs:
            if s >= seq:
                return prev_end, t1
            prev_end = t1
        return prev_end, float("inf")


def cmd_verify(a):
    logs = [WriterLog(p) for p in a.logs]
    logs = [l for l in logs if l.header]
    kills = []
    if a.kills and os.path.exists(a.kills):
        with open(a.kills) as f:
            for line in f:
                w = line.split()
                if len(w) == 3 and w[0] == "K":
                    kills.append((float(w[1]), float(w[2])))
    if not logs:
        print("verify: no writer logs: nothing to check")
        return 0
    geometry = {l.header[2:5] for l in logs}
    if len(geometry) != 1:
        print(f"verify: writer logs disagree on the layout: {geometry}")
        return 2
    writers, blocks, base = geometry.pop()
    per = blocks // writers
    by_key = {}
    candidates = {}  # lba -> [(iteration, writer, seq)] in write order
    for l in sorted(logs, key=lambda l: (l.header[0], l.header[1])):
        iteration, writer, _, _, _, seed = l.header
        by_key[(iteration, writer)] = l
        lbas = lba_stream(seed, writer, writers, blocks, base)
        for seq in range(1, l.bound + 1):
            candidates.setdefault(next(lbas), []).append((iteration, writer, seq))

    fd = os.open(a.dev, os.O_RDONLY | os.O_DIRECT)
    chunk = 256
    buf = mmap.mmap(-1, chunk * BLOCK)
    region_first, region_end = base, base + per * writers
    stats = dict(blocks=0, written=0, required=0, newer=0, lost=0, lost_kill=0, corrupt=0, foreign=0, unwritten=0)
    problems = []
    lba = region_first
    while lba < region_end:
        n = min(chunk, region_end - lba)
        view = memoryview(buf)[: n * BLOCK]
        try:
            got = os.preadv(fd, [view], lba * BLOCK)
        except OSError as e:
            print(f"verify: read of blocks {lba}..{lba + n - 1} failed: {e}")
            return 1
        if got != n * BLOCK:
            print(f"verify: short read at block {lba}: {got} bytes")
            return 1
        for i in range(n):
            b = lba + i
            stats["blocks"] += 1
            cands = candidates.get(b, [])
            found = parse_block(bytes(view[i * BLOCK : (i + 1) * BLOCK]))
            required = None
            for k in range(len(cands) - 1, -1, -1):
                it, wr, s = cands[k]
                if by_key[(it, wr)].is_durable(s):
                    required = k
                    break
            if required is not None:
                stats["required"] += 1
            if found is None:
                stats["unwritten"] += 1
                if required is not None:
                    problems.append((b, "zeros", cands[required], "lost"))
                continue
            if found == "corrupt":
                stats["corrupt"] += 1
                problems.append((b, "a torn or foreign block (bad CRC or magic)", None, "corrupt"))
                continue
            it, wr, s, hdr_lba = found
            if hdr_lba != b or (it, wr, s) not in cands:
                stats["foreign"] += 1
                problems.append((b, f"write {it}/{wr}/{s} of block {hdr_lba}, never written here", None, "foreign"))
                continue
            stats["written"] += 1
            k = cands.index((it, wr, s))
            if required is not None and k < required:
                problems.append((b, f"older write {it}/{wr}/{s}", cands[required], "lost"))
            elif required is None or k > required:
                stats["newer"] += 1
        lba += n

    failures = 0
    shown = 0
    for b, what, need, kind in problems:
        note = ""
        if kind == "lost":
            it, wr, s = need
            start, end = by_key[(it, wr)].covering_fsync_window(s)
            across = [k for k in kills if k[0] < end and k[1] > start]
            if across and s not in by_key[(it, wr)].fua:
                stats["lost_kill"] += 1
                note = " (acknowledged before a server kill, fsynced after the recover)"
                if not a.strict_kills:
                    if shown < 10:
                        print(f"   lost across a kill: block {b}: expected write {it}/{wr}/{s} or newer, read {what}")
                        shown += 1
                    continue
            stats["lost"] += 1
            what = f"expected write {it}/{wr}/{s} (durable) or newer, read {what}"
        elif kind == "corrupt":
            what = f"read {what}"
        failures += 1
        if failures <= 20:
            print(f"   FAIL block {b}: {what}{note}")
    errors = [e for l in logs for e in l.errors]
    print(
        f"verify {a.dev}: {stats['blocks']} blocks of {len(logs)} writer log(s); "
        f"{stats['required']} must hold a durable write: "
        f"{stats['required'] - stats['lost'] - stats['lost_kill']} do; "
        f"{stats['newer']} show a newer unflushed write; {stats['unwritten']} never written; "
        f"lost {stats['lost']}, lost across a server kill {stats['lost_kill']}, "
        f"torn/corrupt {stats['corrupt']}, foreign {stats['foreign']}"
    )
    if a.summary:
        with open(a.summary, "w") as f:
            for k, v in stats.items():
                f.write(f"{k} {v}\n")
            f.write(f"writer_errors {len(errors)}\n")
    for e in errors[:5]:
        print(f"   writer error logged: {e}")
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("dev")
    w.add_argument("--log", required=True)
    w.add_argument("--iter", type=int, default=0)
    w.add_argument("--writer", type=int, default=0)
    w.add_argument("--writers", type=int, default=1)
    w.add_argument("--blocks", type=int, default=16384, help="blocks of the region, all writers")
    w.add_argument("--base", type=int, default=0, help="first block of the region")
    w.add_argument("--seed", type=int)
    w.add_argument("--fsync-every", type=int, default=32, help="at most this many writes between fsyncs")
    w.add_argument("--fua-every", type=int, default=0, help="every Nth write is O_DSYNC (FUA)")
    w.add_argument("--seconds", type=float, default=0)
    w.add_argument("--count", type=int, default=0)
    w.add_argument("--until", help="stop (after a last fsync) once this file exists")
    v = sub.add_parser("verify")
    v.add_argument("dev")
    v.add_argument("--logs", nargs="+", required=True)
    v.add_argument("--kills")
    v.add_argument("--strict-kills", action="store_true")
    v.add_argument("--summary", help="write the counts as 'name value' lines to this file")
    a = p.parse_args()
    return cmd_write(a) if a.cmd == "write" else cmd_verify(a)


if __name__ == "__main__":
    sys.exit(main())
