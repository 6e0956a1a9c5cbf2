"""`train/last.pt`: the state of every part of the training loop, torch's generators and the run's identity.

Written atomically after each epoch; read with `torch.load(weights_only=True)` (no code in it runs),
and only by the run of the same identity (a hash of everything that determines the numbers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from dcase_effdl.config import NOT_HASHED, TrainConfig, to_dict
from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_open

FORMAT = "dcase_effdl.training.checkpoint/2"


def run_identity(model: torch.nn.Module, cfg: TrainConfig, seed: int, epochs: int, lr: float, select_best: bool,
                 run_hash: str | None) -> str:
    """Hash of everything that determines the training numbers."""
    train = {k: v for k, v in to_dict(cfg).items() if k not in NOT_HASHED}
    arch = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    payload = {"train": train, "seed": seed, "epochs": epochs, "lr": lr, "select_best": select_best, "arch": arch, "run": run_hash}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpoint:
    """`path` for the run `identity`; `parts` are objects with state_dict() / load_state_dict() (None: absent)."""

    def __init__(self, path: Path, identity: str):
        self.path, self.identity = Path(path), identity

    def save(self, epoch: int, parts: dict, device: torch.device) -> None:
        state = {name: part.state_dict() for name, part in parts.items() if part is not None}
        # torch's global generator (dropout) is the only random state outside the per-epoch generators.
        rng = {"torch": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})}
        state.update(format=FORMAT, identity=self.identity, epoch=epoch, rng=rng)
        with atomic_open(self.path) as f:  # a kill leaves the old file or the new one
            torch.save(state, f)

    def resume(self, parts: dict, device: torch.device) -> int:
        """Load every part and the generators from the file; returns the last finished epoch."""
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, bad pickle, ...: all mean "unreadable"
            raise UserError(f"{self.path}: truncated or unreadable checkpoint ({type(exc).__name__}); "
                            "delete it to start over") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise UserError(f"{self.path}: not a training checkpoint of this dcase-effdl version; delete it to start over")
        if state.get("identity") != self.identity:
            raise UserError(
                f"{self.path}: checkpoint of another recipe or model (run hash {state.get('identity')}, this run "
                f"{self.identity}); resume with the recipe that wrote it, or delete it to start over"
            )
        for name, part in parts.items():
            if part is not None:
                part.load_state_dict(state[name])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        return int(state["epoch"])

