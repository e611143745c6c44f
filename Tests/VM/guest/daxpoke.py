#!/usr/bin/env python3
"""Finds and flips bytes of cached data on a device-DAX cache (VM scenario 65).

    daxpoke.py locate DUMP_JSON BYTE_OFFSET   device offset of the cached byte:
                                              the newest key covering it in
                                              `pcache-ublk dump --keys --json`
    daxpoke.py flip DEV DEVICE_OFFSET          xor one byte with 0xff (twice restores it)
    daxpoke.py read DEV DEVICE_OFFSET LENGTH   hex of LENGTH bytes

Device DAX allows only mmap, in 2 MiB-aligned pieces; a second mapper (the
running server has one) sees the same memory.
"""
import json
import mmap
import os
import sys

SEGMENTS_OFFSET = 20480  # PCacheLayout.segmentsOffset
SEGMENT_SIZE = 16 << 20
SEGMENT_DATA_OFFSET = 12288
ALIGN = 2 << 20


def locate(dump_path, off):
    d = json.load(open(dump_path))
    physical = {s["cache_seg_id"]: s["physical"] for s in d["segments"]}
    found = None
    for ks in d.get("ksets", []):
        for k in ks.get("keys", []):
            if k["off"] <= off < k["off"] + k["len"]:
                found = k  # later in the log wins
    if found is None:
        sys.exit(f"no key covers byte {off}")
    seg = found["cache_seg_id"]
    dev_off = SEGMENTS_OFFSET + physical[seg] * SEGMENT_SIZE + SEGMENT_DATA_OFFSET + found["cache_seg_off"]
    print(dev_off + (off - found["off"]), found["off"], found["len"], seg, found["cache_seg_off"])


def window(dev, offset):
    fd = os.open(dev, os.O_RDWR)
    base = offset - offset % ALIGN
    m = mmap.mmap(fd, ALIGN, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=base)
    os.close(fd)
    return m, offset - base


def main():
    cmd = sys.argv[1]
    if cmd == "locate":
        locate(sys.argv[2], int(sys.argv[3]))
    elif cmd == "flip":
        m, i = window(sys.argv[2], int(sys.argv[3]))
        old = m[i]
        m[i] = old ^ 0xFF  # no msync: device DAX refuses it (EINVAL), stores reach the media
        print(f"byte at {sys.argv[3]}: {old:#04x} -> {m[i]:#04x}")
    elif cmd == "read":
        m, i = window(sys.argv[2], int(sys.argv[3]))
        print(m[i : i + int(sys.argv[4])].hex())
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
