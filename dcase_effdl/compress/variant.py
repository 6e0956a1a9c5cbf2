"""A compressed model and its file: safetensors in each tensor's real storage format + JSON metadata.

File layout (`Variant.save(path)`, `load_variant(path)`):
- tensors: the stored values of all tensors concatenated per storage dtype into a few flat
  safetensors entries (`blob.int8`, `blob.float16`, `blob.float32`, `blob.uint8`, ...), so the file
  size follows the accounted size even for models with hundreds of small tensors. Each tensor is
  stored in its format: float16 as float16, int8 codes as int8, 1-bit (+-1) tensors packed 8 per
  byte (uint8), and a tensor with enough exact zeros to pay for it as its non-zero values plus a
  packed 1-bit mask.
- metadata 'dcase_effdl' (readable JSON): `model_spec` (`models.ModelSpec` as plain data: rebuilds
  the float architecture), `steps` (the compression steps as recipe dicts), `history`, `sha256`;
  'dcase_effdl_index' (zlib-compressed JSON, base64): per tensor {format, role, dtype, shape,
  encoding, parts: {part: [blob, offset, length]}} and `step_meta` (what each step's `rebuild`
  needs). Loading rebuilds the module structure, decodes the tensors into it and checks the digest
  (over the blobs, the index, the model spec and the steps): nothing in the file is executed, and a
  truncated or edited file is an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dcase_effdl.compress.registry import StepConfig, get_method, parse_step
from dcase_effdl.compress.storage import DTYPE_FORMATS, FORMAT_BITS, StoredTensor, stored_tensors
from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_write
from dcase_effdl.models import ModelSpec

FILE_FORMAT = "dcase_effdl.variant"
FILE_VERSION = 1
META_KEY = "dcase_effdl"
INDEX_KEY = "dcase_effdl_index"

_TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_FORMATS.items()}


@dataclass
class Variant:
    """A compressed model: `module` (eval mode, forward(x float32 (B, C, F, T)) -> logits) and its recipe."""

    module: nn.Module
    steps: list[StepConfig] = field(default_factory=list)
    model_spec: ModelSpec | None = None
    step_meta: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # per step: size before/after (dcase2020 rule)
    path: Path | None = None  # the file it was loaded from / saved to

    @property
    def complexity_management(self) -> str:
        """Leaderboard text, e.g. 'pruning + float16'; 'none' for the uncompressed parent."""
        if not self.steps:
            return "none"
        return " + ".join(s.describe() or get_method(s.method).label for s in self.steps)

    @property
    def precisions(self) -> set[str]:
        """Storage formats of the weights, e.g. {'int8'} (what a following step may refuse)."""
        return {t.format for t in stored_tensors(self.module) if t.role == "weight"}

    def save(self, path: str | Path) -> Path:
        """Write the variant file (see the module docstring); returns the path."""
        from safetensors.torch import save

        if self.model_spec is None:
            raise UserError(f"{path}: cannot save a variant without model_spec (needed to rebuild the architecture)")
        pieces: dict[str, list[torch.Tensor]] = {}
        lengths: dict[str, int] = {}
        tensors: dict[str, dict] = {}
        for t in stored_tensors(self.module):
            parts, info = _encode(t)
            info["parts"] = {}
            for part, x in parts.items():
                blob = str(x.dtype).replace("torch.", "")
                offset = lengths.get(blob, 0)
                pieces.setdefault(blob, []).append(x.reshape(-1))
                lengths[blob] = offset + x.numel()
                info["parts"][part] = [blob, offset, x.numel()]
            tensors[t.name] = info
        entries = {f"blob.{blob}": torch.cat(xs) for blob, xs in pieces.items() if lengths[blob] > 0}
        step_meta = list(self.step_meta) or [{} for _ in self.steps]
        index = base64.b64encode(zlib.compress(json.dumps({"tensors": tensors, "step_meta": step_meta},
                                                          separators=(",", ":")).encode(), 9)).decode()
        spec_data, steps_data = self.model_spec.to_dict(), [s.to_dict() for s in self.steps]
        digest = _digest(entries, index, json.dumps(spec_data, sort_keys=True), json.dumps(steps_data, sort_keys=True))
        meta = {"format": FILE_FORMAT, "version": FILE_VERSION, "model_spec": spec_data, "steps": steps_data,
                "history": list(self.history), "sha256": digest}
        self.path = Path(path)
        atomic_write(self.path, save(entries, metadata={META_KEY: json.dumps(meta), INDEX_KEY: index}))
        return self.path


# ---------------------------------------------------------------- per-tensor encoding


def _pack_bits(flags: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(flags.reshape(-1).numpy().astype(np.uint8)))


def _unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=n).astype(bool))


def _encode(t: StoredTensor) -> tuple[dict[str, torch.Tensor], dict]:
    """Stored entries and their description for one tensor."""
    x = t.tensor.detach().cpu().contiguous()
    info = {"format": t.format, "role": t.role, "dtype": str(x.dtype).replace("torch.", ""), "shape": list(x.shape)}
    if t.format == "binary":
        if not bool(((x == 1) | (x == -1)).all()):
            raise UserError(f"tensor '{t.name}' is marked 'binary' but holds values other than +-1")
        info["encoding"] = "bits"
        return {"bits": _pack_bits(x > 0)}, info
    dtype = _TORCH_DTYPES.get(t.format)
    stored = x.to(dtype)
    if stored.dtype != x.dtype and not torch.equal(stored.to(x.dtype), x):
        # A step after float16 changed the values: storing would silently change predictions.
        raise UserError(f"tensor '{t.name}' is marked {t.format} but its values are not exactly representable in it")
    nonzero = stored != 0
    n, nnz = stored.numel(), int(nonzero.sum())
    bits = FORMAT_BITS[t.format]
    if t.format != "bool" and n > 0 and nnz * bits + n < n * bits:  # values + 1-bit mask is smaller
        info["encoding"] = "sparse"
        return {"values": stored[nonzero].contiguous(), "mask": _pack_bits(nonzero)}, info
    info["encoding"] = "dense"
    return {"data": stored}, info


def _parts(info: dict, blobs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for part, (blob, offset, length) in info["parts"].items():
        offset, length = int(offset), int(length)
        if length == 0:  # empty tensors leave no blob behind
            out[part] = torch.empty(0, dtype=_TORCH_DTYPES[blob])
            continue
        data = blobs[f"blob.{blob}"]
        if offset < 0 or length < 0 or offset + length > data.numel():
            raise ValueError(f"part '{part}' lies outside blob.{blob}")
        out[part] = data[offset : offset + length]
    return out


def _decode(name: str, info: dict, blobs: dict[str, torch.Tensor], source: str) -> torch.Tensor:
    try:
        entries = _parts(info, blobs)
        shape = [int(s) for s in info["shape"]]
        dtype = _TORCH_DTYPES[info["dtype"]]
        n = int(np.prod(shape)) if shape else 1
        if info["encoding"] == "bits":
            flags = _unpack_bits(entries["bits"], n)
            return torch.where(flags, 1.0, -1.0).to(dtype).reshape(shape)
        if info["encoding"] == "sparse":
            mask = _unpack_bits(entries["mask"], n)
            values = entries["values"]
            if int(mask.sum()) != values.numel():
                raise ValueError(f"{values.numel()} values for {int(mask.sum())} mask bits")
            out = torch.zeros(n, dtype=values.dtype)
            out[torch.from_numpy(mask.numpy())] = values
            return out.to(dtype).reshape(shape)
        if info["encoding"] == "dense":
            return entries["data"].to(dtype).reshape(shape)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise UserError(f"{source}: tensor '{name}' cannot be decoded ({type(exc).__name__}: {exc})") from None
    raise UserError(f"{source}: tensor '{name}' has unknown encoding {info.get('encoding')!r}")


def _digest(entries: dict[str, torch.Tensor], *texts: str) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
    for key in sorted(entries):
        x = entries[key].contiguous()
        h.update(key.encode())
        h.update(str(x.dtype).encode())
        h.update(str(list(x.shape)).encode())
        h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------- load


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path}: variant file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            entries = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error type for a bad header or short file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable variant file (truncated or corrupt safetensors: {first})") from None
    if META_KEY not in header or INDEX_KEY not in header:
        raise UserError(f"{path}: safetensors file without dcase_effdl metadata (not a variant file)")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: variant metadata is not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
        raise UserError(f"{path}: not a dcase_effdl variant file")
    if meta.get("version") != FILE_VERSION:
        raise UserError(f"{path}: variant file version {meta.get('version')!r}, this program reads {FILE_VERSION}")
    for key in ("model_spec", "steps", "sha256"):
        if key not in meta:
            raise UserError(f"{path}: variant metadata lacks '{key}'")
    texts = (header[INDEX_KEY], json.dumps(meta["model_spec"], sort_keys=True), json.dumps(meta["steps"], sort_keys=True))
    if _digest(entries, *texts) != meta["sha256"]:
        raise UserError(f"{path}: checksum mismatch: the file was changed after it was written")
    try:
        index = json.loads(zlib.decompress(base64.b64decode(header[INDEX_KEY])))
        meta["tensors"], meta["step_meta"] = dict(index["tensors"]), list(index["step_meta"])
    except (ValueError, zlib.error, KeyError, TypeError) as exc:
        raise UserError(f"{path}: variant tensor index is unreadable ({type(exc).__name__})") from None
    return meta, entries


def load_variant(path: str | Path) -> Variant:
    """Rebuild a saved variant; its predictions equal those of the variant that was saved."""
    path = Path(path)
    meta, entries = _read(path)
    spec = ModelSpec.from_dict(meta["model_spec"], str(path))
    module = spec.build()
    steps, step_meta = [], list(meta["step_meta"])
    if len(step_meta) != len(meta["steps"]):
        raise UserError(f"{path}: {len(meta['steps'])} steps but {len(step_meta)} step_meta entries")
    for j, (data, smeta) in enumerate(zip(meta["steps"], step_meta)):
        cfg = parse_step(data, f"{path}: steps[{j}]")
        method = get_method(cfg.method)
        if method.rebuild is not None:
            module = method.rebuild(module, cfg, smeta)
        steps.append(cfg)
    state = {name: _decode(name, info, entries, str(path)) for name, info in meta["tensors"].items()}
    expected = {t.name: t.format for t in stored_tensors(module)}
    stored = {name: info["format"] for name, info in meta["tensors"].items()}
    if expected != stored:
        diff = sorted(set(expected.items()) ^ set(stored.items()))[:3]
        raise UserError(f"{path}: stored tensors do not match the rebuilt model (first differences: {diff})")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path}: tensors do not fit the rebuilt model ({str(exc).splitlines()[-1].strip()})") from None
    module.eval()
    return Variant(module, steps, spec, step_meta, list(meta.get("history", [])), path)
