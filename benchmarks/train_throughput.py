"""Training throughput (clips per second) of the project's loop against a plain PyTorch loop and the official Keras baseline.

    python benchmarks/train_throughput.py                          # quickstart recipe (2020 baseline), batch 16
    python benchmarks/train_throughput.py --rounds 7 --compile     # + a torch.compile row and its compile time
    python benchmarks/train_throughput.py --recipe recipes/hu_fast.yaml --batch 0 --no-keras

Every row trains the recipe's network on the same cached features (extracted or read first, not
timed), with the same batch size, Adam or the recipe's optimiser, and the same number of threads:

    Keras baseline      the official DCASE 2020 Task 1B baseline, TensorFlow `model.fit` (keras_baseline.py,
                        in a subprocess so that its thread pools never run beside torch's; only for the
                        2020 baseline network, and only when `tensorflow` is installed: the [bench] extra)
    plain PyTorch       a textbook loop (randperm, forward, cross-entropy, Adam), float32, standard layout;
                        and with channels_last + torch.autocast("cpu", torch.bfloat16)
    project             training.loop.fit (the recipe's batch plan and augmentations, channels_last) at
                        train.precision fp32 and bf16; with --compile also train.compile

One round trains one epoch of every row, in an order rotated each round, so that a change of the
machine's load hits every row alike; the first round warms up and is not counted. Each row's number
is the median over the rounds (validation excluded); ratios are of those medians, from this one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from dcase_effdl.machine import passive_waiting, training_threads

KERAS_SCRIPT = Path(__file__).with_name("keras_baseline.py")


class KerasRow:
    """The Keras baseline in its own process: one epoch per `epoch()` call."""

    def __init__(self, x, y, batch: int, threads: int, workdir: str):
        import numpy as np

        data = Path(workdir) / "keras_data.npz"
        np.savez(data, x=x.permute(0, 2, 3, 1).contiguous().numpy(), y=y.numpy())  # Keras is channels-last
        self.proc = subprocess.Popen([sys.executable, str(KERAS_SCRIPT), str(data), "--threads", str(threads), "--batch", str(batch)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise SystemExit(f"{KERAS_SCRIPT.name} did not start (exit status {self.proc.wait()})")
        self.name = f"Keras baseline (TF {ready[1]}, Keras {ready[2]}, model.fit, fp32)"

    def epoch(self) -> tuple[float, float | None]:
        self.proc.stdin.write("epoch\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline()), None

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


class PlainRow:
    """A plain PyTorch loop over the whole split in memory."""

    def __init__(self, name: str, model, x, y, batch: int, lr: float, bf16: bool, channels_last: bool):
        import torch

        self.torch, self.name, self.x, self.y, self.batch, self.bf16 = torch, name, x, y, batch, bf16
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.fmt)
        self.opt = torch.optim.Adam(self.model.parameters(), lr)
        self.gen = torch.Generator().manual_seed(0)

    def epoch(self) -> tuple[float, float | None]:
        torch = self.torch
        self.model.train()
        start = time.perf_counter()
        order = torch.randperm(len(self.x), generator=self.gen)
        for i in range(0, len(order), self.batch):
            idx = order[i : i + self.batch]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(self.x[idx].contiguous(memory_format=self.fmt))
            loss = torch.nn.functional.cross_entropy(logits.float(), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return time.perf_counter() - start, None


class ProjectRow:
    """training.loop.fit, one epoch per call, continuing from the model's weights."""

    def __init__(self, name: str, model, bundle, cfg, seed: int):
        self.name, self.model, self.bundle, self.cfg, self.seed = name, model, bundle, cfg, seed

    def epoch(self) -> tuple[float, float | None]:
        from dcase_effdl.training.loop import FineTune, fit

        row = fit(self.model, self.bundle, self.cfg, seed=self.seed, tune=FineTune(epochs=1), desc=self.name).epochs[0]
        return row["train_seconds"], row["data_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--data", default=None, help="dataset root (default: the recipe's)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (+1 warm-up)")
    parser.add_argument("--batch", type=int, default=16, help="batch size of every row (0: the recipe's)")
    parser.add_argument("--threads", type=int, default=0, help="threads of every row (0: the physical cores)")
    parser.add_argument("--compile", action="store_true", help="add a train.compile row (and its compile time)")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras baseline")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    passive_waiting()  # before torch loads OpenMP: every row, Keras's process included, inherits it
    import torch

    from dcase_effdl.config import load_recipe
    from dcase_effdl.machine import describe
    from dcase_effdl.pipeline import prepare_data, resolve

    recipe, feat = load_recipe(args.recipe, args.set)
    spec = resolve(recipe, feat, args.recipe).spec
    threads = training_threads(args.threads)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    bundle = prepare_data(recipe, feat, args.data)
    prep = time.perf_counter() - start
    cfg = replace(recipe.train, device="cpu", batch_size=args.batch or recipe.train.batch_size)
    n = len(bundle.x_train)
    x, y = bundle.x_train[torch.arange(n)], bundle.y_train

    def model():
        torch.manual_seed(recipe.seed)
        return spec.build()

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        if args.no_keras:
            keras_note = "Keras baseline: skipped (--no-keras)"
        elif spec.family != "dcase2020_baseline":
            keras_note = f"Keras baseline: skipped (it is the dcase2020_baseline network, this recipe trains {spec.family})"
        elif importlib.util.find_spec("tensorflow") is None:
            keras_note = "Keras baseline: skipped (tensorflow is not installed: pip install 'dcase-effdl[bench]')"
        else:
            rows.append(KerasRow(x, y, cfg.batch_size, threads, workdir))
            keras_note = f"Keras baseline: TensorFlow intra-op and inter-op threads {threads}, {KERAS_SCRIPT.name} in a subprocess"
        rows += [
            PlainRow("plain PyTorch loop, fp32", model(), x, y, cfg.batch_size, cfg.lr, bf16=False, channels_last=False),
            PlainRow("plain PyTorch loop, bf16 + channels_last", model(), x, y, cfg.batch_size, cfg.lr, bf16=True, channels_last=True),
            ProjectRow("project fit, precision fp32", model(), bundle, replace(cfg, precision="fp32"), recipe.seed),
            ProjectRow("project fit, precision bf16", model(), bundle, replace(cfg, precision="bf16"), recipe.seed),
        ]
        if args.compile:
            rows.append(ProjectRow("project fit, fp32 + compile", model(), bundle, replace(cfg, precision="fp32", compile=True), recipe.seed))
        times = {row.name: [] for row in rows}
        for r in range(args.rounds + 1):
            shift = r % len(rows)
            for row in rows[shift:] + rows[:shift]:
                times[row.name].append(row.epoch())
        for row in rows:
            if isinstance(row, KerasRow):
                row.close()

    print(describe())
    print(f"recipe {args.recipe}: model {spec.family}, input {tuple(bundle.input_shape)}, batch {cfg.batch_size}, {n} training "
          f"clips, {threads} threads; one epoch per row in each of {args.rounds} rounds (+1 warm-up), medians "
          f"(features ready in {prep:.1f} s, not timed)")
    print(keras_note)
    speed = {name: n / statistics.median(s for s, _ in t[1:]) for name, t in times.items()}
    ref_name = rows[0].name if isinstance(rows[0], KerasRow) else "plain PyTorch loop, fp32"
    print(f"{'row':<62} {'clips/s':>8} {'range':>13} {'vs ' + ref_name.split(' (')[0].split(',')[0]:>18} {'data %':>7}")
    for name, t in times.items():
        per_round = [n / s for s, _ in t[1:]]
        data = [d / s for s, d in t[1:] if d is not None]
        print(f"{name:<62} {speed[name]:8.1f} {min(per_round):6.1f}-{max(per_round):<6.1f} {speed[name] / speed[ref_name]:17.2f}x "
              f"{(f'{100 * statistics.median(data):6.1f}%') if data else '':>7}")
    if args.compile:
        name = "project fit, fp32 + compile"
        first, steady = times[name][0][0], statistics.median(s for s, _ in times[name][1:])
        gain = n / steady / speed["project fit, precision fp32"]
        print(f"torch.compile: first epoch {first:.1f} s against {steady:.2f} s later (compile ~{first - steady:.0f} s), "
              f"then {gain:.2f}x fp32's speed per epoch")
    best = max(("project fit, precision fp32", "project fit, precision bf16"), key=speed.get)
    if isinstance(rows[0], KerasRow):
        verdict = "met" if speed[best] >= speed[ref_name] else "NOT met"
        print(f"closing note: project fp32 {speed['project fit, precision fp32'] / speed[ref_name]:.2f}x and bf16 "
              f"{speed['project fit, precision bf16'] / speed[ref_name]:.2f}x the Keras baseline's clips/s; "
              f"target (project >= Keras, same model, batch {cfg.batch_size}, Adam): {verdict}")


if __name__ == "__main__":
    main()
