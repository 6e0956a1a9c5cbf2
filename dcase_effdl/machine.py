"""What this process computes on: CPU model and vector flags, torch build, kernels and threads.

Results of float kernels can differ in the last bits between CPUs (oneDNN and MKL pick other kernels
on AVX-512 / VNNI / AMX than on AVX2) and thread counts, so every benchmark prints this line and every
run folder records it in environment.json.
"""

from __future__ import annotations

import os
import platform
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Environment variables that change which kernels or how many threads torch uses.
KERNEL_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
              "OMP_WAIT_POLICY")


def passive_waiting() -> None:
    """Let OpenMP threads sleep instead of spinning between parallel regions, unless the user chose.

    OpenMP reads this once, when torch first loads it: call before `import torch`. Measured on 2 cores
    shared with other jobs (issue 16): spinning threads ran 2-thread training at half the speed of 1 thread.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """torch (OpenMP, MKL, oneDNN) on the calling thread alone inside the block, this thread's setting put
    back after it; about 0.5 us to set and reset, nothing when it is 1 already."""
    import torch  # here, not at the top: passive_waiting must run before torch is imported

    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (a core's hyper-threads count once), capped
    by a cgroup CPU quota: the default number of torch threads (torch counts a quota-limited container's
    host cores)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for n in cpus:
        try:
            topology = Path(f"/sys/devices/system/cpu/cpu{n}/topology")
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:  # no sysfs topology: count every CPU
            cores.add(n)
    count = len(cores)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def training_threads(setting: int = 0) -> int:
    """train.threads, or (0) the physical cores shared out among torchrun's processes on this machine."""
    return setting or max(1, physical_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


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
