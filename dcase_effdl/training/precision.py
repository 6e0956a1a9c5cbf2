"""What `train.precision` means on a device: the autocast dtype, the gradient scaler and the memory format.

    fp32  float32 everywhere (the default: the same numbers on every run of a recipe on one machine)
    bf16  bfloat16 autocast (matmuls and convolutions in bf16, weights, loss and optimiser in float32)
    fp16  float16 autocast with a gradient scaler (CUDA only)
    auto  bf16 on CPUs with native bf16 (AMX or AVX512_BF16) and on CUDA GPUs that support it,
          fp16 on other CUDA GPUs, fp32 otherwise

`auto` is not the default because it would change a recipe's numbers from one machine to the next
(bf16 keeps 8 significant bits of each product's inputs), and because bf16 does not pay for every
family: training steps per second, bf16 against float32, both channels_last, 2 threads of an AMX CPU,
each family at its fast recipe's shape: dcase2020_baseline 2.2x, digits_cnn 2.1x, preact_resnet 1.15x,
cp_resnet 0.96x, mobnet 0.76x (the depthwise convolutions of the small widths there gain nothing).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from dcase_effdl.errors import UserError
from dcase_effdl.machine import cpu

# CPU flags of oneDNN's native bf16 kernels. Without them oneDNN converts bf16 to and from float32 around
# float32 kernels, which cannot be faster than float32 alone (not measured: no AVX2-only CPU here), so
# auto keeps float32 there; an explicit bf16 still runs.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision ('fp32', 'bf16' or 'fp16') on a device type ('cpu' or 'cuda')."""

    name: str
    device_type: str

    def autocast(self):
        """The forward pass's context (the loss is computed in float32 outside it)."""
        dtype = DTYPES[self.name]
        return torch.autocast(self.device_type, dtype=dtype) if dtype is not None else nullcontext()

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16, whose small gradients underflow; bf16 has float32's exponent range."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def native_bf16(cpu_flags: str) -> bool:
    return any(flag in cpu_flags.split() for flag in NATIVE_BF16_FLAGS)


def resolve(setting: str, device: torch.device, cpu_flags: str | None = None) -> Precision:
    """`train.precision` on `device` (`cpu_flags`: machine.cpu()'s flags; None: this CPU's)."""
    kind = device.type
    if setting == "auto":
        if kind == "cuda":
            setting = "bf16" if _cuda_bf16(device) else "fp16"
        else:
            setting = "bf16" if native_bf16(cpu()[1] if cpu_flags is None else cpu_flags) else "fp32"
    elif setting not in DTYPES:
        raise UserError(f"train.precision: expected auto, fp32, bf16 or fp16, got {setting!r}")
    elif setting == "fp16" and kind != "cuda":
        raise UserError(f"train.precision: fp16 trains on CUDA GPUs only, but this training runs on {kind}; "
                        "use bf16, fp32 or auto")
    elif setting == "bf16" and kind == "cuda" and not _cuda_bf16(device):
        raise UserError(f"train.precision: bf16 needs a GPU with bfloat16 support, which {torch.cuda.get_device_name(device)} "
                        "lacks; use fp16, fp32 or auto")
    return Precision(setting, kind)


def _cuda_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


# Networks and inputs train in channels_last (NHWC), whose convolutions oneDNN runs without reorders.
# Training steps per second against the standard layout, same precision, 2 threads of an AMX CPU
# (each family at its fast recipe's shape and batch, medians of 5 rounds, all in one run):
#   family (input, batch)               fp32    bf16
#   dcase2020_baseline (1x40x500, 16)  1.26x   2.02x   (bf16 + channels_last: 2.74x fp32)
#   digits_cnn (1x40x500, 32)          1.28x   1.56x
#   preact_resnet (2x256x128, 16)      1.24x   1.03x
#   cp_resnet (2x256x128, 10)          1.01x   1.23x
#   mobnet (6x128x128, 16)             0.98x   1.21x
# It pays or is even (within the rounds' spread) for every family, so every family uses it.
MEMORY_FORMAT = torch.channels_last
