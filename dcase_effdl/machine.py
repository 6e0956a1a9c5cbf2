"""What this process computes on: CPU model and vector flags, torch build, kernels and threads.

Results of float kernels can differ in the last bits between CPUs (oneDNN and MKL pick other kernels
on AVX-512 / VNNI / AMX than on AVX2) and thread counts, so every benchmark prints this line and every
run folder records it in environment.json.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

# Environment variables that change which kernels or how many threads torch uses.
KERNEL_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu() -> tuple[str, str]:
    """(CPU model name, its AVX2 / AVX-512 / VNNI / AMX flags space-separated), from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", text, re.M).group(1).strip()
        all_flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M).group(1).split()
        flags = {f for f in all_flags if f == "avx2" or f.startswith(("avx512", "amx")) or "vnni" in f}
    except (OSError, AttributeError):  # not Linux, or an unusual cpuinfo: the model name from platform
        pass
    return model, " ".join(sorted(flags)) or "(none of avx2/avx512/vnni/amx)"


def machine() -> dict:
    """CPU model and flags, core count, torch version, torch's chosen kernels and intra-op threads."""
    import torch

    model, flags = cpu()
    return {
        "cpu": model, "cpu_flags": flags, "cores": os.cpu_count(),
        "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
    }


def describe(m: dict | None = None) -> str:
    """One line for a benchmark's output: `CPU: MODEL (N cores), flags: ...; torch V (kernels: K, T threads)`."""
    m = m or machine()
    return (f"CPU: {m['cpu']} ({m['cores']} cores), flags: {m['cpu_flags']}; torch {m['torch']} "
            f"(kernels: {m['torch_cpu_capability']}, {m['torch_threads']} intra-op threads)"
            + (f", env {m['env']}" if m["env"] else ""))
