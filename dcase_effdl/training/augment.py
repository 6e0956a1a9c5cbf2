"""Training-time augmentation of feature batches (B, C, F, T): mixup, SpecAugment masks, time crop/roll, gains, shifts, L/R swap.

Every function draws its random numbers from an explicit `torch.Generator`, so a seeded run gives
the same batches every time (and a resumed run the same as an uninterrupted one). Inputs are
normalised log-mel batches; nothing here changes them in place.

Published settings these reproduce:
- mixup: Koutini alpha 0.3, Hu and McDonnell 0.4; one lambda per example (as all three did).
- SpecAugment: Hu: one frequency mask of width U{0..12} bands and one time mask of U{0..39} frames per
  channel, filled with 0.
- time roll: Koutini: circular shift by U{-50..50} frames. Time crop: McDonnell: 400 of 469 frames.
- level shift: a random recording level per example (see `level_shift`).
- FilterAugment: Nam et al. 2022: a random gain curve over frequency per example, n bands with random
  edges and gains U(-g, g), step-wise or linear between the band edges (see `filter_augment`).
- frequency shift: each example's mel bins moved by U{-k..k} bins, edge bins repeated (see `freq_shift`).
- channel swap: Hu and McDonnell: exchange left and right with probability 0.5 (statics, deltas and
  delta-deltas together; features are ordered L, R, dL, dR, ddL, ddR).
- label smoothing: cross-entropy against (1 - eps) x target + eps / n_classes; accepts soft targets.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from `generator` (numpy has the Beta sampler torch lacks a generator for)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return np.random.default_rng(seed)


def one_hot(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Integer labels (B,) -> float one-hot (B, n_classes); soft targets (B, n_classes) pass through."""
    if y.dim() == 2:
        return y.float()
    return F.one_hot(y.long(), n_classes).float()


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, n_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each example with a random partner: (x, soft targets (B, n_classes), lambda (B,)).

    lambda ~ Beta(alpha, alpha) per example; x' = lambda x + (1 - lambda) x[partner] and the targets
    likewise, so the targets are soft and sum to 1. The partner is a random permutation of the batch.
    """
    lam, partner = mixup_draw(x.shape[0], alpha, generator)
    partner = partner.to(x.device)
    x_mixed, y_mixed = mix(x, y, x[partner], y[partner], lam, n_classes)
    return x_mixed, y_mixed, lam.to(x.dtype).to(x.device)


def mixup_draw(batch: int, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup's draws for a batch of `batch` examples: (lambda (B,) float64 ~ Beta(alpha, alpha), partner permutation (B,))."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    lam = torch.from_numpy(_numpy_rng(generator).beta(alpha, alpha, size=batch))
    return lam, torch.randperm(batch, generator=generator)


def mix(x: torch.Tensor, y: torch.Tensor, x_partner: torch.Tensor, y_partner: torch.Tensor, lam: torch.Tensor,
        n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup's convex combinations: (lam x + (1 - lam) x_partner, the same of the one-hot or soft targets)."""
    lam = lam.to(x.dtype).to(x.device)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    x_mixed = lam.view(shape) * x + (1 - lam.view(shape)) * x_partner
    targets, partner_targets = one_hot(y, n_classes).to(x.device), one_hot(y_partner, n_classes).to(x.device)
    lam_t = lam.to(targets.dtype).view(-1, 1)
    return x_mixed, lam_t * targets + (1 - lam_t) * partner_targets


def _mask(x: torch.Tensor, axis: int, max_width: int, n_masks: int, generator: torch.Generator, value: float) -> torch.Tensor:
    """Zero (set to `value`) n_masks bands of width U{0..max_width-1} along `axis`, per example and channel."""
    out = x.clone()
    batch, channels, size = x.shape[0], x.shape[1], x.shape[axis]
    max_width = min(max_width, size)
    for _ in range(n_masks):
        widths = torch.randint(0, max_width, (batch, channels), generator=generator)
        # start in [0, size - width): as random.randrange(0, size - width) in Hu's code
        starts = (torch.rand(batch, channels, generator=generator) * (size - widths).clamp(min=1)).long()
        pos = torch.arange(size)
        mask = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])  # (B, C, size)
        mask = mask.unsqueeze(-1) if axis == 2 else mask.unsqueeze(2)
        out = out.masked_fill(mask.to(x.device), value)
    return out


def spec_augment(
    x: torch.Tensor,
    generator: torch.Generator,
    freq_mask: int = 13,
    time_mask: int = 40,
    n_freq_masks: int = 1,
    n_time_masks: int = 1,
    value: float = 0.0,
) -> torch.Tensor:
    """SpecAugment frequency and time masking on (B, C, F, T); widths up to freq_mask-1 bands / time_mask-1 frames."""
    if freq_mask > 0 and n_freq_masks > 0:
        x = _mask(x, 2, freq_mask, n_freq_masks, generator, value)
    if time_mask > 0 and n_time_masks > 0:
        x = _mask(x, 3, time_mask, n_time_masks, generator, value)
    return x


def time_roll(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Circularly shift each example along time by U{-max_shift..max_shift} frames."""
    shifts = torch.randint(-max_shift, max_shift + 1, (x.shape[0],), generator=generator)
    t = x.shape[-1]
    index = (torch.arange(t)[None, :] - shifts[:, None]) % t  # out[..., j] = x[..., j - shift]
    index = index.to(x.device).view(x.shape[0], 1, 1, t).expand_as(x)
    return torch.gather(x, 3, index)


def time_crop(x: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """A random window of `length` frames per example: (B, C, F, T) -> (B, C, F, length)."""
    t = x.shape[-1]
    if length > t:
        raise ValueError(f"time crop of {length} frames from inputs of {t} frames")
    starts = torch.randint(0, t - length + 1, (x.shape[0],), generator=generator)
    index = (starts[:, None] + torch.arange(length)[None, :]).to(x.device)
    index = index.view(x.shape[0], 1, 1, length).expand(x.shape[0], x.shape[1], x.shape[2], length)
    return torch.gather(x, 3, index)


def level_shift(x: torch.Tensor, max_shift: float, generator: torch.Generator) -> torch.Tensor:
    """Add one offset ~ U(-max_shift, max_shift) to every value of each example (normalised units).

    A gain of g dB adds g ln(10) / 20 = 0.115 g to every band of a natural-log magnitude mel
    spectrogram, i.e. 0.115 g / std_b after per-band standardisation: the same offset in every band
    when the bands' standard deviations are alike (2.1-2.3 ln units on ambient3's 16 kHz front end,
    so 0.5 is about +-10 dB). Values at the log floor (digital silence) move too; a real gain would
    leave them.
    """
    offsets = (torch.rand(x.shape[0], generator=generator) * 2 - 1) * max_shift
    return x + offsets.to(x.device, x.dtype).view(-1, *(1,) * (x.dim() - 1))


def filter_augment(x: torch.Tensor, max_gain: float, n_bands: int, generator: torch.Generator,
                   linear: bool = True) -> torch.Tensor:
    """Add a random gain curve over the F bands of each example (normalised units), the same for every channel and frame.

    The F bands are cut at n_bands - 1 edges ~ U(0, F) per example. Step-wise: each part gets one gain ~
    U(-max_gain, max_gain); linear: the gains sit at the n_bands + 1 edges (0 and F included) and are
    interpolated between them at the band centres, so the curve has no jumps (Nam et al.'s linear type).
    A microphone's or room's colouration is such a curve; 0.3 is about +-6 dB (see `level_shift`).
    """
    if n_bands < 1:
        raise ValueError(f"filter augment needs >= 1 band, got {n_bands}")
    batch, bands = x.shape[0], x.shape[2]
    edges = torch.sort(torch.rand(batch, n_bands - 1, generator=generator, dtype=torch.float64) * bands, dim=1).values
    gains = (torch.rand(batch, n_bands + int(linear), generator=generator, dtype=torch.float64) * 2 - 1) * max_gain
    centres = torch.arange(bands, dtype=torch.float64) + 0.5
    part = (edges[:, None, :] <= centres[None, :, None]).sum(-1)  # (B, F): the part each band centre falls in
    if linear:
        knots = torch.cat([torch.zeros(batch, 1, dtype=torch.float64), edges, torch.full((batch, 1), float(bands), dtype=torch.float64)], 1)
        left, right = knots.gather(1, part), knots.gather(1, part + 1)
        w = (centres[None, :] - left) / (right - left).clamp(min=1e-12)
        curve = gains.gather(1, part) * (1 - w) + gains.gather(1, part + 1) * w
    else:
        curve = gains.gather(1, part)
    return x + curve.to(x.device, x.dtype).view(batch, 1, bands, 1)


def freq_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Move each example's bands up or down by U{-max_shift..max_shift} bins; the edge band fills the bins left open."""
    shifts = torch.randint(-max_shift, max_shift + 1, (x.shape[0],), generator=generator)
    f = x.shape[2]
    index = (torch.arange(f)[None, :] - shifts[:, None]).clamp(0, f - 1)  # out[:, :, j] = x[:, :, j - shift]
    index = index.to(x.device).view(x.shape[0], 1, f, 1).expand_as(x)
    return torch.gather(x, 2, index)


def swap_permutation(n_channels: int, audio_channels: int = 2) -> list[int]:
    """Channel order after swapping left and right: [1, 0, 3, 2, 5, 4] for stereo + deltas."""
    if audio_channels != 2 or n_channels % 2:
        raise ValueError(f"left/right swap needs stereo features (an even channel count), got {n_channels} channels")
    return [c + 1 if c % 2 == 0 else c - 1 for c in range(n_channels)]


def channel_swap(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Exchange left and right channels (in every feature group) of each example with probability p."""
    perm = torch.tensor(swap_permutation(x.shape[1]), device=x.device)
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x[:, perm], x)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy against integer labels (B,) or soft targets (B, K), with label smoothing eps.

    The target becomes (1 - eps) x target + eps / K. With eps = 0 and integer labels this equals
    F.cross_entropy.
    """
    n_classes = logits.shape[1]
    target = one_hot(targets, n_classes).to(logits.dtype)
    if smoothing:
        target = (1.0 - smoothing) * target + smoothing / n_classes
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
