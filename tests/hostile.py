"""Hostile inputs (alias bombs, deep nesting, zip bombs, lying zip headers) and a subprocess runner that measures what reading them costs."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path


def wall_bound(seconds: float) -> float:
    """`seconds` on an idle machine, stretched by how overloaded the cores are right now.

    The issue's bounds are wall times; on a CI machine that runs nothing else they hold as stated.
    When other jobs share the cores (load average above the core count), a process gets only its
    share of them, so the bound grows by load / cores. CPU time is bounded separately, unstretched.
    """
    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


@dataclass
class Measured:
    rc: int
    output: str  # stdout and stderr together
    wall_s: float
    cpu_s: float  # user + system
    peak_rss_mb: float  # MB = 2**20 bytes


# Runs the command and writes its cost to a file. A child's ru_maxrss includes the memory of the
# process it was forked from (Linux folds the old address space's peak in at exec): forked from a
# pytest process that has imported torch, a 20 MB command reads as 227 MB. Forked from this small
# launcher instead, it reads as itself plus ~10 MB.
_LAUNCHER = """
import json, os, resource, subprocess, sys, threading, time
result, timeout_s, cap = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # inherited by the command
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[4:])
killer = threading.Timer(timeout_s, proc.kill)
killer.start()
_, status, usage = os.wait4(proc.pid, 0)
killer.cancel()
proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
with open(result, "w") as fh:
    json.dump([proc.returncode, time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss], fh)
"""


def run_measured(args: list[str], timeout_s: float = 60.0, memory_cap_mb: int = 2048) -> Measured:
    """`args` run to the end (killed after `timeout_s`), with their own wall time, CPU time and peak RSS.

    The rusage comes from os.wait4 on exactly that process (resource.getrusage(RUSAGE_CHILDREN)
    would report the largest child ever waited for, a training run earlier in the session, say).
    Its address space is capped at `memory_cap_mb` so that a reader which does fall for a bomb
    fails the test instead of taking the machine's memory.
    """
    with tempfile.TemporaryDirectory() as tmp:
        result, log = Path(tmp) / "result.json", Path(tmp) / "output.txt"
        with open(log, "wb") as out:
            subprocess.run([sys.executable, "-c", _LAUNCHER, str(result), str(timeout_s), str(memory_cap_mb * 2**20), *args],
                           stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s + 30, check=True)
        rc, wall, cpu, maxrss_kb = json.loads(result.read_text())
        return Measured(rc, log.read_text(encoding="utf-8", errors="replace"), wall, cpu, maxrss_kb / 1024)


def alias_bomb(depth: int = 9, width: int = 9) -> str:
    """"Billion laughs": level i holds `width` aliases of level i - 1; width**(depth + 1) strings
    once expanded (3.5 billion at depth 9), in under 1 KB of YAML."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def deep_nesting(levels: int = 100_000) -> str:
    """`[[[...]]]`: 200 KB that a recursive composer follows down to a RecursionError (or a crash)."""
    return "x: " + "[" * levels + "]" * levels + "\n"


def deflated_zeros(n_bytes: int, piece: int = 16 * 2**20) -> tuple[bytes, int]:
    """(raw deflate stream, CRC-32) of `n_bytes` zero bytes, made without holding them: one piece is
    compressed once and repeated (a full flush ends each piece on a byte boundary with a fresh
    dictionary, so every piece compresses to the same bytes). About 1,000:1."""
    assert n_bytes % piece == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(piece)) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc, zeros = 0, bytes(piece)
    for _ in range(n_bytes // piece):
        crc = zlib.crc32(zeros, crc)
    return block * (n_bytes // piece) + compressor.flush(), crc


def raw_zip(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip written byte by byte from (name, stored bytes, CRC-32, size its headers declare,
    method), so that a test can make the headers say what it likes (zipfile would not)."""
    out, central = bytearray(), bytearray()
    date, time_ = (2020 - 1980) << 9 | 1 << 5 | 1, 0
    for name, data, crc, size, method in entries:
        encoded = name.encode("utf-8")
        offset = len(out)
        out += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, method, time_, date, crc, len(data), size, len(encoded), 0)
        out += encoded + data
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, method, time_, date, crc, len(data), size,
                               len(encoded), 0, 0, 0, 0, 0o644 << 16, offset)
        central += encoded
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    return bytes(out + central + end)
