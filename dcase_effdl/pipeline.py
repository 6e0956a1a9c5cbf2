"""`dcase-effdl run RECIPE`: dataset -> features -> training -> compressed variants -> submission rows.

    dcase-effdl run recipes/quickstart.yaml [--data DIR] [--out RUNDIR] [--set train.epochs=2]

The stages run in order, each leaving an artifact in the run folder that the next one reads:

1. data      dataset root (generated when the recipe asks for synthetic data), layout check
2. features  log-mel cache (cache/<feature hash>/), one packed file per split read a batch at a time,
             normalisation statistics from the training fold
3. train     train/best.safetensors, train/history.json (skipped when already done for this config)
4. variants  <variant>/model.safetensors, metrics.json, size.json, <label>.output.csv, <label>.meta.yaml
5. rows      leaderboard.csv, the printed table, plots and report.html
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from dcase_effdl.config import FeatureConfig, Recipe, load_recipe
from dcase_effdl.data.bundle import DataBundle
from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_write
from dcase_effdl.machine import training_threads
from dcase_effdl.models import ModelSpec
from dcase_effdl.rundir import RunDir, VariantDir, config_hash
from dcase_effdl.task import CLASSES


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- stage 1 + 2: data and features


def ensure_dataset(recipe: Recipe, root: Path) -> Path:
    """Generate the synthetic dataset at `root` when the recipe asks for one and it is not there."""
    from dcase_effdl.data.synthetic import make_dataset

    syn = recipe.dataset.synthetic
    if syn is not None and not (root / "meta.csv").is_file():
        log(f"[data] generating synthetic dataset in {root} ({syn.clips_per_class} clips per class)")
        make_dataset(root, clips_per_class=syn.clips_per_class, seed=syn.seed, duration=syn.duration, sample_rate=syn.sample_rate)
    return root


def extract(root: Path, filenames: list[str], feat: FeatureConfig, recipe: Recipe):
    from dcase_effdl.features.cache import extract_features

    store = extract_features(
        root, filenames, feat, Path(recipe.cache_dir), workers=recipe.train.num_workers,
        on_bad_audio=recipe.dataset.on_bad_audio,
    )
    log(f"[features] {store.summary()}")
    problems = list(getattr(store, "problems", []) or [])
    if problems:
        log(f"[features] skipped {len(problems)} unreadable file(s):")
        for name, reason in problems[:10]:
            log(f"  {name}: {reason}")
        if len(problems) > 10:
            log(f"  ... and {len(problems) - 10} more")
    return store, {name for name, _ in problems}


def tau_bundle(recipe: Recipe, feat: FeatureConfig, root: Path, stats: dict | None = None) -> DataBundle:
    """Features of the TAU layout at `root`: train/val split of fold1_train, test = fold1_evaluate.

    Each split is packed into one file of the feature cache (`features.packed`) and read a batch at a
    time; `stats` (the run's normalization.json, given to torchrun's other ranks) skips the pass that
    computes them from the training fold.
    """
    from dcase_effdl.data.bundle import Features, normalization_stats
    from dcase_effdl.data.dataset import check_layout, load_dataset, validation_split
    from dcase_effdl.features.packed import pack

    ds = load_dataset(root)
    check_layout(ds)
    train_clips, val_clips = validation_split(ds.fold("train"), recipe.dataset.validation_fraction, recipe.seed)
    test_clips = ds.fold("evaluate")
    names = sorted({c.filename for c in train_clips + val_clips + test_clips})
    log(f"[features] {len(names)} clips, definition '{feat.name}'")
    store, bad = extract(root, names, feat, recipe)
    train_clips, val_clips, test_clips = ([c for c in clips if c.filename not in bad] for clips in (train_clips, val_clips, test_clips))
    if not train_clips or not test_clips:
        raise UserError("no clips left in a split after dropping unreadable audio")

    train, val, test = (pack(store, [c.filename for c in clips]) for clips in (train_clips, val_clips, test_clips))
    stats = stats if stats is not None else normalization_stats(train)
    return DataBundle(
        classes=list(ds.classes),
        x_train=Features(train, stats),
        y_train=torch.as_tensor(ds.labels(train_clips), dtype=torch.long),
        x_val=Features(val, stats),
        y_val=torch.as_tensor(ds.labels(val_clips), dtype=torch.long),
        x_test=Features(test, stats),
        y_test=torch.as_tensor(ds.labels(test_clips), dtype=torch.long),
        test_filenames=[c.filename for c in test_clips],
        normalization=stats,
    )


def prepare_data(recipe: Recipe, feat: FeatureConfig, data: str | None, stats: dict | None = None) -> DataBundle:
    if recipe.dataset.kind == "digits":
        from dcase_effdl.data.digits import load_digits_bundle

        return load_digits_bundle(recipe.seed, recipe.dataset.validation_fraction)
    root = Path(data if data is not None else recipe.dataset.root)
    if data is None:
        ensure_dataset(recipe, root)
    return tau_bundle(recipe, feat, root, stats)


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Plan:
    """A recipe resolved into typed configs and checked, before any data or run folder is touched."""

    spec: ModelSpec
    steps: list[list]  # per variant (the recipe's order): its compression steps, compress.StepConfig each


def resolve(recipe: Recipe, feat: FeatureConfig, source: str) -> Plan:
    """Type the model knobs and every variant's steps and check what needs no data: build the model on a
    dummy input shaped like the features, check the training options against that shape, and dry-run
    each step sequence on the model, so that a bad value fails in seconds, not after extraction."""
    from dcase_effdl.compress import parse_steps
    from dcase_effdl.compress.apply import dry_run
    from dcase_effdl.compress.size import get_policy
    from dcase_effdl.data.digits import INPUT_SHAPE, N_CLASSES
    from dcase_effdl.features.logmel import feature_shape
    from dcase_effdl.models import model_params
    from dcase_effdl.training import distributed, precision
    from dcase_effdl.training.options import check_crop, check_options

    n_classes, shape = (N_CLASSES, INPUT_SHAPE) if recipe.dataset.kind == "digits" else (len(CLASSES), feature_shape(feat))
    params = model_params(recipe.model.name, recipe.model.params, source, "model.params")
    spec = ModelSpec(recipe.model.name, params, n_classes, *shape)
    try:
        get_policy(recipe.size_policy)
        model = spec.build().eval()
        with torch.no_grad():
            model(torch.zeros(2, *shape))
        check_options(recipe.train, shape)
        check_crop(model, recipe.train, shape)
        precision.resolve(recipe.train.precision, distributed.resolve_device(recipe.train.device))
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    except RuntimeError as exc:
        raise UserError(f"{source}: model '{spec.family}' cannot take inputs of shape {shape} "
                        f"({str(exc).strip().splitlines()[0]})") from None
    plan = Plan(spec, [parse_steps(vc.compress, f"{source}: variants[{i}].compress") for i, vc in enumerate(recipe.variants)])
    for steps in plan.steps:
        dry_run(model, steps, spec, recipe.size_policy, recipe.train)
    return plan


# ---------------------------------------------------------------- stage 3: training


def train_parent(recipe: Recipe, bundle: DataBundle, spec: ModelSpec, run_dir: Path, resume: bool = False,
                 run_hash: str | None = None, restart: bool = False) -> torch.nn.Module:
    """Train the float32 parent, or load it when this run folder already finished training.

    `resume` continues from train/last.pt (written every epoch), `restart` starts over and keeps the
    old one as last.pt.bak; under torchrun every rank trains and rank 0 alone writes.
    """
    from dcase_effdl.training.distributed import current
    from dcase_effdl.training.loop import fit, seed_everything

    train_dir = run_dir / "train"
    best = train_dir / "best.safetensors"
    seed_everything(recipe.seed)
    model = spec.build()
    if best.is_file():
        log(f"[train] reusing {best}")
        try:
            model.load_state_dict(load_file(str(best)))
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise UserError(f"{best}: cannot be read ({exc}); delete it to retrain") from None
        return model.eval()
    last = train_dir / "last.pt"
    if restart and last.is_file() and current().is_main:
        os.replace(last, last.with_name("last.pt.bak"))
        log(f"[train] starting over; the unfinished training's checkpoint is kept as {last}.bak")
    n_bn = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               for p in m.parameters(recurse=False))
    n_params = sum(p.numel() for p in model.parameters()) - n_bn
    log(f"[train] {spec.family}: {n_params:,} parameters (+ {n_bn:,} batch norm), {recipe.train.epochs} epochs, "
        f"{len(bundle.x_train)} train / {len(bundle.x_val)} validation clips")
    history = fit(model, bundle, recipe.train, seed=recipe.seed, out_dir=train_dir, resume=resume, run_hash=run_hash)
    row = history.epochs[history.best_epoch - 1] if history.epochs else {}
    if len(bundle.x_val):
        log(f"[train] best epoch {history.best_epoch}: validation macro accuracy {row.get('val_accuracy', float('nan')):.1f} %")
    else:
        kept = "SWA's averaged weights" if history.swa else f"the weights of the last epoch ({history.best_epoch})"
        log(f"[train] no validation split: {kept} are kept")
    if not current().is_main:
        return model.eval()
    atomic_write(best, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model.eval()


# ---------------------------------------------------------------- stage 4: variants


@dataclass
class VariantResult:
    name: str
    label: str
    metrics: dict
    size: dict


def make_context(recipe: Recipe, bundle: DataBundle, spec: ModelSpec, run_dir: Path, variant_name: str):
    from dcase_effdl.compress import CompressContext

    work_dir = run_dir / "work"
    work_dir.mkdir(exist_ok=True)
    return CompressContext(
        bundle=bundle, train=recipe.train, model_spec=spec, size_policy=recipe.size_policy, seed=recipe.seed,
        log=lambda m: log(f"[{variant_name}] {m}"), work_dir=work_dir, name=variant_name,
    )


def write_variant_outputs(variant_dir: Path, label: str, variant, bundle: DataBundle, recipe: Recipe) -> VariantResult:
    from dcase_effdl.metrics import compute_metrics
    from dcase_effdl.compress.size import size_report
    from dcase_effdl.training.loop import predict

    probs = predict(variant.module, bundle.x_test, recipe.train.batch_size)  # memory: one training batch
    metrics = compute_metrics(bundle.y_test.numpy(), probs, bundle.classes)
    size = size_report(variant, policy=recipe.size_policy)
    VariantDir(variant_dir).write_results(label, metrics, size, bundle.test_filenames, probs, bundle.classes)
    return VariantResult(variant_dir.name, label, metrics, size)


def make_variants(recipe: Recipe, plan: Plan, parent: torch.nn.Module, bundle: DataBundle, spec: ModelSpec,
                  run_dir: Path) -> list[VariantResult]:
    from dcase_effdl.compress import apply_steps

    results = []
    for i, (vc, steps) in enumerate(zip(recipe.variants, plan.steps)):
        variant_dir = run_dir / vc.name
        variant_dir.mkdir(exist_ok=True)
        log(f"[{vc.name}] compress: {' -> '.join(s.method for s in steps) or 'none'}")
        variant = apply_steps(parent, steps, make_context(recipe, bundle, spec, run_dir, vc.name))
        variant.save(variant_dir / "model.safetensors")
        results.append(write_variant_outputs(variant_dir, recipe.variant_label(i), variant, bundle, recipe))
        m, s = results[-1].metrics, results[-1].size
        log(f"[{vc.name}] macro accuracy {m['accuracy']:.1f} %, log loss {m['log_loss']:.3f}, "
            f"{s['size_kb']:.2f} KB")
    return results


# ---------------------------------------------------------------- stage 5: rows


def write_rows(run_dir: Path) -> str:
    from dcase_effdl.reporting.leaderboard import format_table, rows_from_run, write_leaderboard_csv

    rows = rows_from_run(run_dir)
    write_leaderboard_csv(run_dir / "leaderboard.csv", rows)
    return format_table(rows)


def write_pictures(run_dir: Path) -> None:
    """Plots and report.html; a failure here never loses the numbers already written."""
    try:
        from dcase_effdl.reporting.plots import write_run_plots
        from dcase_effdl.reporting.report import write_report
    except ImportError:
        return
    write_run_plots(run_dir)
    write_report(run_dir)


def run(recipe_path: str | Path, data: str | None = None, out: str | None = None, overrides: list[str] = (),
        resume: bool = False, restart: bool = False) -> Path:
    """Run a recipe end to end and return its run folder (`resume`: continue train/last.pt; `restart`:
    train again from epoch 1, keeping the old checkpoint as last.pt.bak).

    Under `torchrun --nproc_per_node N -m dcase_effdl run RECIPE` the N processes train the parent
    together (DistributedDataParallel); rank 0 alone prepares features first, writes files and
    runs the later stages.
    """
    from dcase_effdl.training import distributed

    recipe, feat = load_recipe(recipe_path, overrides)
    plan = resolve(recipe, feat, str(recipe_path))  # every check that needs no data, before any work
    torch.set_num_threads(training_threads(recipe.train.threads))
    run_dir = Path(out) if out else Path(recipe.out_dir) / recipe.name
    data_root = data if data is not None else recipe.dataset.root
    last = run_dir / "train" / "last.pt"
    if last.is_file() and not (run_dir / "train" / "best.safetensors").is_file() and not (resume or restart):
        raise UserError(f"{last}: this run folder holds an unfinished training; continue it with --resume, or start "
                        "over with --restart (which keeps it as last.pt.bak)")

    ctx = distributed.setup(recipe.train.device)
    digest = config_hash(recipe, feat, data_root)
    # Rank 0 holds the run folder's lock from before the data work until the last file is written.
    with RunDir(run_dir).lock(log) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:  # the other ranks wait, then read the features rank 0 cached
            RunDir(run_dir).check(digest)  # a folder of another configuration is refused before the data work
            bundle = prepare_data(recipe, feat, data)
            RunDir(run_dir).prepare(recipe, feat, digest, data_root)
            RunDir(run_dir).write_normalization(bundle.normalization)
        ctx.barrier()
        if not ctx.is_main:  # the same packed files; the statistics rank 0 computed
            bundle = prepare_data(recipe, feat, data, RunDir(run_dir).normalization())
        # The data's class count and shape rule (a TAU-layout dataset may have other classes than the task's).
        spec = replace(plan.spec, n_classes=bundle.n_classes, in_channels=bundle.input_shape[0],
                       n_mels=bundle.input_shape[1], n_frames=bundle.input_shape[2])
        parent = train_parent(recipe, bundle, spec, run_dir, resume=resume, run_hash=digest, restart=restart)
        distributed.teardown()
        if not ctx.is_main:
            return run_dir
        make_variants(recipe, plan, parent, bundle, spec, run_dir)
        table = write_rows(run_dir)
        write_pictures(run_dir)
    log("")
    log(table)
    log(f"\nrun folder: {run_dir}")
    return run_dir
