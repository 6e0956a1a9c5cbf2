"""The published complexity columns rebuilt from shipped recipes, without training, beside the published ones.

    dcase-effdl reproduce dcase2020_task1b [--recipes DIR] [--format md|text|json]

For each official top-ten row whose network the team's own code determines, the recipe that
reproduces it (`REPRODUCTIONS`) is resolved as `run` resolves it (`pipeline.resolve`: the ModelSpec
and the variant's typed compression steps), the network is built and given stand-in weights, and
the variant's steps are applied with nothing trained: pruning to its target, float16, int8
(calibrated on random inputs), 1-bit. The recipe's size policy then counts the result
(`compress.size.size_report`), so the numbers are those a trained run of the recipe reports.
Pruning ranks the stand-in weights by magnitude: which weights go is arbitrary here, how many is
not, and the counts are all this compares. Each row says how its numbers differ from the
published ones and why; a row whose network the team's code does not determine says so.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from dcase_effdl.errors import UserError
from dcase_effdl.reporting.published import PUBLISHED, load_published
from dcase_effdl.task import KB

RECIPES = Path(__file__).resolve().parents[2] / "recipes"  # the shipped recipes of a source checkout
FORMATS = ("md", "text", "json")


@dataclass(frozen=True)
class Reproduction:
    """How one published row is rebuilt: a recipe's variant, the row it shares a network with, or nothing."""

    recipe: str | None = None  # recipes/<recipe>.yaml
    variant: str | None = None  # its variant whose size is the row's
    same_as: str | None = None  # label of the row whose reproduction is this row's too
    note: str = ""  # why ours differs from the published numbers, or why there is no network


HU_NOTE = ("not determined: MihawkHu/DCASE2020_task1 task1b ships two int8 networks, Mobnet (recipes/hu.yaml: "
           "138,032 weights and biases; its int8 variant here stores 134,384 int8 weights and 3,651 non-zero "
           "float32 biases, batch norm folded in, = 145.50 KB) and a small FCNN with channel attention (348,418; "
           "no model family here), and average / logistic-regression fusions of the two "
           "(eval/eval_quantized_fusion_AVG.py, _LR.py), but no network of {n:,} parameters and no submission "
           "labels. The published size is the count at 4 B per parameter in KB of 1000 B ({n:,} x 4 B = "
           "{bytes_4:,} B ~ {size} KB) although the system is int8: the 2020 rule gives {n:,} int8 values = "
           "{int8_kb:.2f} KB.")
MCDONNELL_PRINTED = ("3M is 3,987,000 printed in whole millions (cut, not rounded) and 486.7 is 486.69 as printed; "
                     "batch norm (float32) is not counted in 2020.")
MCDONNELL_NOTE = ("the same network as McDonnell_USA_task1b_3: McDonnell-Lab/DCASE2020_Task1b has one 1-bit network "
                  "(3,987,000 conv weights) and all three McDonnell rows publish 3M / 486.7 KB; what else differs "
                  "between submissions 2-4 the code does not say. " + MCDONNELL_PRINTED)

REPRODUCTIONS = {
    "dcase2020_task1b": {
        "Koutini_CPJKU_task1b_2": Reproduction(
            "koutini", "prune_fp16",
            note="the published 345k counts the 77,824 pruning-mask elements (the team's notebook: 343,552 = "
                 "265,728 weights + 77,824 masks), which the 2020 rule does not count; the official sparsity "
                 "0.284 comes from that count, ours is 18,166 zeros of 265,728 weights; 247k and 483.5 are "
                 "247,562 and 483.52 as printed (counts cut to thousands)."),
        "Koutini_CPJKU_task1b_4": Reproduction(
            note="not determined: kkoutini/cpjku_dcase20 gives commands and released models for submissions "
                 "1-3 only (README 'CP_ResNet Submissions to DCASE 2020 Task 1b'); 249k non-zero of 556k at "
                 "487.1 KB are about 249,400 float16 values of a network the code does not name."),
        "Hu_GT_task1b_3": Reproduction(note=HU_NOTE),
        "McDonnell_USA_task1b_3": Reproduction(
            "mcdonnell", "binary", note=MCDONNELL_PRINTED),
        "Hu_GT_task1b_1": Reproduction(note=HU_NOTE),
        "Hu_GT_task1b_4": Reproduction(note=HU_NOTE),
        "McDonnell_USA_task1b_4": Reproduction(same_as="McDonnell_USA_task1b_3", note=MCDONNELL_NOTE),
        "Koutini_CPJKU_task1b_3": Reproduction(
            "koutini_sub3", "float16",
            note="242k and 473.8 are 242,592 and 473.81 as printed (counts cut to thousands); the README's "
                 "'247,316 trainable parameters' is no count of this network (242,592 conv weights + 3,366 "
                 "batch norm = 245,958)."),
        "Hu_GT_task1b_2": Reproduction(note=HU_NOTE),
        "McDonnell_USA_task1b_2": Reproduction(same_as="McDonnell_USA_task1b_3", note=MCDONNELL_NOTE),
    },
}


# ---------------------------------------------------------------- one recipe variant, without training


@torch.no_grad()
def stand_in_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every conv and linear weight and bias, and every batch norm, non-zero values, as training does.

    A freshly built network holds exact zeros (zero biases, Fixup's zeroed second convs, batch norm
    with zero shift and mean) that a non-zero count would miss, that magnitude pruning would take
    first and that folding a batch norm into a conv would carry into its bias. Stand-ins: weights and
    biases of magnitude uniform in [0.5, 1] x sqrt(3 / fan_in) (about the default init's scale) with
    random signs, so none is zero and none falls below float16's smallest normal value (6.1e-5; the
    largest fan-in of the shipped recipes is 1,872, in mcdonnell.yaml, so the smallest stand-in is
    0.5 x sqrt(3 / 1,872) = 0.020); batch-norm scales and variances in [0.5, 1], shifts and means of
    magnitude [0.05, 0.1].
    """
    g = torch.Generator().manual_seed(seed)

    def draw(shape, low: float, high: float, signed: bool = True) -> torch.Tensor:
        value = low + (high - low) * torch.rand(shape, generator=g)
        sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
        return value * sign if signed else value

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            scale = math.sqrt(3.0 / module.weight[0].numel())
            for p in (module.weight, module.bias):
                if p is not None:
                    p.copy_(draw(p.shape, 0.5 * scale, scale))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.affine:
                module.weight.copy_(draw(module.weight.shape, 0.5, 1.0, signed=False))
                module.bias.copy_(draw(module.bias.shape, 0.05, 0.1))
            if module.track_running_stats:
                module.running_mean.copy_(draw(module.running_mean.shape, 0.05, 0.1))
                module.running_var.copy_(draw(module.running_var.shape, 0.5, 1.0, signed=False))
    return model


def _no_training_context(spec, recipe):
    """A compression context that trains nothing (`dry_run`: a step's size effect, its target and its
    storage format, needs no training) and whose data are two random inputs of the features' shape."""
    from dcase_effdl.compress import CompressContext
    from dcase_effdl.data.bundle import DataBundle

    g = torch.Generator().manual_seed(recipe.seed)
    x = torch.randn(2, *spec.input_shape, generator=g)
    y = torch.arange(2) % spec.n_classes
    bundle = DataBundle([str(c) for c in range(spec.n_classes)], x, y, x, y, x, y, ["random"] * 2)
    return CompressContext(bundle=bundle, train=recipe.train, model_spec=spec, size_policy=recipe.size_policy,
                           seed=recipe.seed, dry_run=True)


def reproduce_variant(recipe_path: str | Path, variant: str) -> dict:
    """The size report of `variant` of a recipe, built and compressed without data or training.

    Also returns `label` (the variant's submission label) and `complexity_management` (its steps).
    """
    from dcase_effdl.compress import apply_steps
    from dcase_effdl.compress.size import size_report
    from dcase_effdl.config import load_recipe
    from dcase_effdl.pipeline import resolve

    recipe_path = Path(recipe_path)
    recipe, feat = load_recipe(recipe_path)
    plan = resolve(recipe, feat, str(recipe_path))
    names = [v.name for v in recipe.variants]
    if variant not in names:
        raise UserError(f"{recipe_path}: no variant '{variant}' (variants: {', '.join(names)})")
    i = names.index(variant)
    torch.manual_seed(recipe.seed)
    model = stand_in_weights(plan.spec.build().eval(), recipe.seed)
    compressed = apply_steps(model, plan.steps[i], _no_training_context(plan.spec, recipe))
    report = size_report(compressed.module, policy=recipe.size_policy)  # the module: no MAC count needed here
    report["label"] = recipe.variant_label(i)
    report["complexity_management"] = compressed.complexity_management
    return report


# ---------------------------------------------------------------- the table


def _published(row: dict) -> dict:
    return {"n_params": row["n_params"], "n_nonzero": row["n_nonzero"], "sparsity": row["sparsity"],
            "size_kb": row["size_kb"], "printed": {k: row["printed"].get(k) for k in ("n_params", "n_nonzero", "sparsity", "size_kb")}}


def _note(how: Reproduction, row: dict) -> str:
    n, size = row["n_params"], row["printed"].get("size_kb")
    return how.note.format(n=n, bytes_4=4 * n, size=size, int8_kb=n / KB)


def reproduce(name: str = "dcase2020_task1b", recipes: str | Path | None = None) -> list[dict]:
    """One entry per official top-ten row: label, rank, published, ours (None if not reproduced), diff,
    how (recipe and variant, the row it shares, or 'not determined') and note."""
    if name not in REPRODUCTIONS:
        raise UserError(f"unknown published leaderboard '{name}' (known: {', '.join(PUBLISHED)})")
    folder = Path(recipes) if recipes is not None else RECIPES
    if not folder.is_dir():
        raise UserError(f"{folder}: recipes folder not found (pass --recipes DIR, the repository's recipes/)")
    rows = [r for r in load_published(name) if r["rank"] is not None]  # the official top rows
    table = REPRODUCTIONS[name]
    missing = [r["label"] for r in rows if r["label"] not in table]
    if missing:
        raise UserError(f"no reproduction entry for {', '.join(missing)}")
    done: dict[tuple[str, str], dict] = {}
    out = []
    for row in rows:
        how = table[row["label"]]
        target = table[how.same_as] if how.same_as else how
        ours, where = None, "not determined"
        if target.recipe is not None:
            key = (target.recipe, target.variant)
            if key not in done:
                print(f"[reproduce] recipes/{target.recipe}.yaml: {target.variant}", file=sys.stderr, flush=True)
                done[key] = reproduce_variant(folder / f"{target.recipe}.yaml", target.variant)
            ours = {k: done[key][k] for k in ("n_params", "n_nonzero", "sparsity", "size_kb", "label")}
            where = f"recipes/{target.recipe}.yaml: {target.variant}"
            if how.same_as:
                where += f" (as {how.same_as})"
        published = _published(row)
        diff = None if ours is None else {k: ours[k] - published[k] for k in ("n_params", "n_nonzero", "size_kb")}
        out.append({"rank": row["rank"], "label": row["label"], "published": published, "ours": ours, "diff": diff,
                    "how": where, "note": _note(how, row)})
    return out


HEADERS = ["Rank", "Submission label", "Parameters (published)", "Parameters (ours)", "Non-zero (published)",
           "Non-zero (ours)", "Sparsity (published)", "Sparsity (ours)", "Size KB (published)", "Size KB (ours)",
           "Δ parameters", "Δ non-zero", "Δ size KB", "Reproduced by", "Why they differ"]


def _cells(entry: dict) -> list[str]:
    pub, ours, diff = entry["published"], entry["ours"], entry["diff"]
    p = pub["printed"]
    cells = [str(entry["rank"]), entry["label"], p["n_params"] or "", "", p["n_nonzero"] or "", "",
             p["sparsity"] or "", "", p["size_kb"] or "", "", "", "", ""]
    if ours is not None:
        cells[3], cells[5] = f"{ours['n_params']:,}", f"{ours['n_nonzero']:,}"
        cells[7], cells[9] = f"{ours['sparsity']:.3f}", f"{ours['size_kb']:.2f}"
        cells[10], cells[11], cells[12] = f"{diff['n_params']:+,}", f"{diff['n_nonzero']:+,}", f"{diff['size_kb']:+.2f}"
    return cells + [entry["how"], entry["note"]]


def format_reproduction(entries: list[dict], fmt: str = "md") -> str:
    """The reproduction as a markdown or aligned text table (notes below it in text), or JSON."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    if fmt == "json":
        return json.dumps(entries, indent=2) + "\n"
    foot = ("Published: the official table as printed (k, M: counts in thousands, millions; the reproduced rows "
            "show them cut, not rounded: 247,562 is printed 247k). Ours: the "
            "recipe's variant built and compressed without training, counted by its size policy (dcase2020: "
            "non-zero weights and biases x stored bits, batch norm not counted, KB = 1024 B). Δ = ours - published.")
    rows = [_cells(e) for e in entries]
    if fmt == "md":
        lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---:" if i in (0, *range(2, 13)) else "---"
                                                            for i in range(len(HEADERS))) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return "\n".join([*lines, "", foot]) + "\n"
    table = [HEADERS[:-1]] + [row[:-1] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    text = ["  ".join(c.ljust(w) if i in (1, 13) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in table]
    notes = [f"{e['label']}: {e['note']}" for e in entries]
    return "\n".join([text[0], "  ".join("-" * w for w in widths), *text[1:], "", *notes, "", foot]) + "\n"
