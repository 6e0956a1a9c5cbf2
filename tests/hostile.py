"""Hostile inputs (alias bombs, deep nesting, zip bombs, lying zip headers) and a subprocess runner that measures what reading them costs."""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass


@dataclass
class Measured:
    rc: int
    output: str  # stdout and stderr together
    wall_s: float
    cpu_s: float  # user + system
    peak_rss_mb: float  # MB = 2**20 bytes


def run_measured(args: list[str], timeout_s: float = 60.0, memory_cap_mb: int = 2048) -> Measured:
    """`args` run to the end (killed after `timeout_s`); its own peak RSS from os.wait4.

    The child's address space is capped at `memory_cap_mb` so that a reader which does fall for a
    bomb fails the test instead of taking the machine's memory.

    os.wait4 gives the rusage of exactly this child, where resource.getrusage(RUSAGE_CHILDREN)
    would report the largest child this test process ever waited for (a training run earlier in
    the session, say).
    """
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        cap = memory_cap_mb * 2**20

        def limit_memory():
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit_memory)
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen not to wait again
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return Measured(proc.returncode, text, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)



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
