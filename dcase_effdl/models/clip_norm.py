"""Per-clip input normalisation as the network's first layer, so training, evaluation and export all apply it."""

from __future__ import annotations

import torch
import torch.nn as nn

CLIP_NORMS = ("none", "band_mean")


class ClipBandMean(nn.Module):
    """Subtract each clip's own mean over time, per channel and mel band: (B, C, F, T) -> same shape.

    A recording gain g multiplies every band's magnitude by g, i.e. adds ln g to each log-mel value
    (exactly, up to log_eps), and a fixed microphone or channel response adds a constant per band;
    both vanish here, whatever per-band standardisation ran before (an affine map per band keeps a
    per-band constant a per-band constant). What is left is how each band moves in time. No
    parameters: nothing to store, nothing the size rules count.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=-1, keepdim=True)


def clip_norm_layer(kind: str) -> nn.Module:
    """The input layer of `kind` ('none': identity)."""
    if kind == "band_mean":
        return ClipBandMean()
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"clip_norm must be one of {list(CLIP_NORMS)}, got {kind!r}")
