"""Hostile inputs (alias bombs, deep nesting) and a subprocess runner that measures what reading them costs."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass


@dataclass
class Measured:
    rc: int
    output: str  # stdout and stderr together
    wall_s: float
    cpu_s: float  # user + system
    peak_rss_mb: float  # MB = 2**20 bytes


def run_measured(args: list[str], timeout_s: float = 60.0) -> Measured:
    """`args` run to the end (killed after `timeout_s`); its own peak RSS from os.wait4.

    os.wait4 gives the rusage of exactly this child, where resource.getrusage(RUSAGE_CHILDREN)
    would report the largest child this test process ever waited for (a training run earlier in
    the session, say).
    """
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
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
