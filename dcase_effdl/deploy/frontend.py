"""The log-mel front end as an ONNX model (STFT, mel matmul, log, deltas), so a deployed model takes audio.

    dcase-effdl export runs/quickstart --frontend      # also <run>/export/frontend.onnx + frontend.json

Input: audio (batch, channels, samples) float32 as `features.audio.load_audio` leaves it (resampled
to the definition's rate, mixed to mono or kept stereo, padded or cut to `duration`); output: the
features `features.logmel.logmel_batch` computes, float32 (batch, C * (1 + deltas), n_mels, frames).
The same window and mel basis (`frontend_arrays`), the ONNX STFT operator, computed in float64
throughout: the PyTorch front end recomputes bands too quiet for float32 in float64 per clip, a
branch a static graph would take for every clip, so the graph takes float64 always (measured: 7e-7
natural-log units = 6e-6 dB from the training features on 10 s noise, 48 kHz).
Not exported: resampling and reading the file (the device's audio driver delivers samples).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from dcase_effdl.config import FeatureConfig
from dcase_effdl.features.logmel import magnitude

MAX_DB_DIFF = 1e-3  # issue 15: the exported front end agrees with the training features within 1e-3 dB


class LogMelFrontEnd(nn.Module):
    """audio (B, C, samples) float32 -> log-mel features (B, C * (1 + deltas), n_mels, frames) float32."""

    def __init__(self, cfg: FeatureConfig, n_frames: int):
        from dcase_effdl.features.logmel import _check, _delta_operator, frontend_arrays

        super().__init__()
        _check(cfg)
        self.cfg = cfg
        window, mel = frontend_arrays(cfg)
        self.register_buffer("window", torch.from_numpy(window.copy()))
        self.register_buffer("mel", torch.from_numpy(mel.copy()))
        for order in range(1, cfg.deltas + 1):
            self.register_buffer(f"delta{order}", _delta_operator(n_frames, order, torch.device("cpu"), torch.float64))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, c, n = audio.shape
        x = audio.reshape(b * c, n).double()
        spec = torch.stft(x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.n_fft, window=self.window,
                          center=cfg.center, pad_mode=cfg.pad_mode, normalized=False, onesided=True, return_complex=True)
        feats = torch.matmul(self.mel, magnitude(spec, cfg.power)[0])
        if cfg.log == "natural":
            feats = torch.log(feats + cfg.log_eps)
        elif cfg.log == "db":
            feats = (20.0 / cfg.power) * torch.log10(torch.clamp(feats, min=cfg.log_eps))
        feats = feats.reshape(b, c, cfg.n_mels, -1)
        if cfg.deltas:
            feats = torch.cat([feats] + [torch.matmul(feats, getattr(self, f"delta{o}")) for o in range(1, cfg.deltas + 1)],
                              dim=1)
        return feats.float()


def db_scale(cfg: FeatureConfig) -> float:
    """dB per feature unit: 20 / power / ln 10 for natural-log features (log of |X|**power), 1 for 'db' ones."""
    if cfg.log == "natural":
        return 20.0 / cfg.power / np.log(10.0)
    if cfg.log == "db":
        return 1.0
    raise ValueError(f"feature definition '{cfg.name}': log {cfg.log!r} has no dB scale")
