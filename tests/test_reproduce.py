"""reproduce: the official top ten's complexity columns rebuilt from the shipped recipes, without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dcase_effdl.cli import main
from dcase_effdl.config import load_recipe
from dcase_effdl.errors import UserError
from dcase_effdl.models import build_model
from dcase_effdl.reporting.published import load_published
from dcase_effdl.reporting.reproduce import REPRODUCTIONS, format_reproduction, reproduce, reproduce_variant, stand_in_weights

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TABLE = REPRODUCTIONS["dcase2020_task1b"]


@pytest.fixture(scope="module")
def entries():
    return {e["label"]: e for e in reproduce("dcase2020_task1b")}


@pytest.mark.slow
def test_reproduced_counts_are_exact(entries):
    assert list(entries) == [r["label"] for r in load_published()[:10]]  # the ten official rows, in order
    k2 = entries["Koutini_CPJKU_task1b_2"]["ours"]
    # 265,728 float16 weights pruned to 247,562 non-zero: 495,124 B; masks and batch norm not counted.
    assert (k2["n_params"], k2["n_nonzero"], k2["size_kb"]) == (265_728, 247_562, 483.52)
    assert k2["sparsity"] == pytest.approx(18_166 / 265_728, abs=1e-6)
    k3 = entries["Koutini_CPJKU_task1b_3"]["ours"]
    assert (k3["n_params"], k3["n_nonzero"], k3["size_kb"], k3["sparsity"]) == (242_592, 242_592, 473.81, 0.0)
    for label in ("McDonnell_USA_task1b_3", "McDonnell_USA_task1b_4", "McDonnell_USA_task1b_2"):
        m = entries[label]["ours"]
        assert (m["n_params"], m["n_nonzero"], m["size_kb"]) == (3_987_000, 3_987_000, 486.69), label
    # Differences against the printed numbers, and why.
    assert entries["Koutini_CPJKU_task1b_2"]["diff"] == {"n_params": 265_728 - 345_000, "n_nonzero": 562,
                                                        "size_kb": pytest.approx(0.02)}
    assert "77,824 pruning-mask elements" in entries["Koutini_CPJKU_task1b_2"]["note"]
    assert "cut, not rounded" in entries["McDonnell_USA_task1b_3"]["note"]
    for label in ("Koutini_CPJKU_task1b_4", "Hu_GT_task1b_1", "Hu_GT_task1b_2", "Hu_GT_task1b_3", "Hu_GT_task1b_4"):
        assert entries[label]["ours"] is None and entries[label]["how"] == "not determined", label
        assert entries[label]["note"].startswith("not determined: "), label


@pytest.mark.slow
def test_each_reproduced_recipe_carries_the_label_of_its_row(entries):
    for label, e in entries.items():
        how = TABLE[label]
        if how.recipe is not None:
            assert e["ours"]["label"] == label, label  # the recipe's variant is labelled for the row it reproduces
        elif how.same_as is not None:
            assert TABLE[how.same_as].recipe is not None and e["ours"]["label"] == how.same_as
            assert e["how"].endswith(f"(as {how.same_as})")


def test_no_recipe_carries_a_label_it_does_not_reproduce():
    teams = {tuple(r["label"].split("_")[:2]) for r in load_published()}
    reproduced = {(h.recipe, h.variant): label for label, h in TABLE.items() if h.recipe is not None}
    labelled = {}
    for path in sorted(RECIPES.glob("*.yaml")):
        recipe, _ = load_recipe(path)
        for i, variant in enumerate(recipe.variants):
            label = recipe.variant_label(i)
            if tuple(label.split("_")[:2]) in teams:  # a published team's label
                labelled[(path.stem, variant.name)] = label
    assert labelled == reproduced  # exactly the reproducing variants, each with its own row's label
    assert ("hu", "int8") not in labelled  # Hu's Mobnet alone is none of the Hu_GT rows


@pytest.mark.slow
def test_hu_mobnet_matches_no_hu_row():
    """hu.yaml's int8 Mobnet is no Hu_GT row at any bytes per parameter; the printed sizes are counts x 4 B / 1000."""
    mob = reproduce_variant(RECIPES / "hu.yaml", "int8")
    # 134,384 int8 weights (1 B) + 3,699 float32 biases (4 B): the 3 of conv_out fold its batch norm in, the 48 of
    # conv_head (no batch norm right after it) are the kernel's zeros and not counted: 148,988 B. The float network's
    # 138,032 weights and biases at 1 B each would be 134.80 KB.
    counted = [r for r in mob["rows"] if r["counted"]]
    assert sum(r["n_params"] for r in counted if r["format"] == "int8") == 134_384
    assert sum(r["n_params"] for r in counted if r["format"] == "float32") == 3_699
    assert next(r["n_nonzero"] for r in counted if r["name"] == "conv_head.bias") == 0
    assert (mob["n_params"], mob["n_nonzero"], mob["size_bytes"], mob["size_kb"]) == (138_083, 138_035, 148_988, 145.5)
    assert mob["label"] == "Lastname_INST_task1b_2"
    for row in (r for r in load_published()[:10] if r["label"].startswith("Hu_GT")):
        n, size = row["n_params"], row["size_kb"]
        assert abs(138_032 - n) > 500 and abs(mob["n_params"] - n) > 500, row["label"]  # outside the count's rounding
        for kb in (mob["size_kb"], 138_032 / 1024, 138_032 * 4 / 1024, 138_032 * 4 / 1000):
            assert abs(kb - size) > 1, row["label"]
        # What the printed size is: the count (within its rounding, +-500) at 4 B per parameter, KB of 1000 B.
        assert (n - 500) * 4 / 1000 <= size <= (n + 500) * 4 / 1000, row["label"]
        assert not (n - 500) * 4 / 1024 <= size <= (n + 500) * 4 / 1024, row["label"]
    assert "134,384 int8 weights and 3,651 non-zero float32 biases, batch norm folded in, = 145.50 KB" in TABLE["Hu_GT_task1b_3"].note


def test_stand_in_weights_have_no_zeros():
    model = build_model("cp_resnet", {"width": 8, "n_blocks": [4, 1, 0]}, in_channels=2, n_mels=64, n_frames=64)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any((w == 0).all() for w in weights)  # Fixup zeroes the second conv of each block
    stand_in_weights(model, seed=0)
    assert all((w != 0).all() and (w.half() != 0).all() for w in weights)
    assert all((bn.bias != 0).all() and (bn.running_mean != 0).all() and (bn.running_var > 0).all() for bn in bns)
    again = stand_in_weights(build_model("cp_resnet", {"width": 8, "n_blocks": [4, 1, 0]}, in_channels=2, n_mels=64,
                                         n_frames=64), seed=0)
    assert all(torch.equal(a.weight, b) for a, b in zip((m for m in again.modules() if isinstance(m, torch.nn.Conv2d)), weights))


def test_formats_and_errors(tmp_path):
    entry = {"rank": 1, "label": "Koutini_CPJKU_task1b_2", "how": "recipes/koutini.yaml: prune_fp16", "note": "why",
             "published": {"n_params": 345_000, "n_nonzero": 247_000, "sparsity": 0.284, "size_kb": 483.5,
                           "printed": {"n_params": "345k", "n_nonzero": "247k", "sparsity": "0.284", "size_kb": "483.5"}},
             "ours": {"n_params": 265_728, "n_nonzero": 247_562, "sparsity": 0.06836, "size_kb": 483.52, "label": "x"},
             "diff": {"n_params": -79_272, "n_nonzero": 562, "size_kb": 0.02}}
    md = format_reproduction([entry], "md")
    assert ("| 1 | Koutini_CPJKU_task1b_2 | 345k | 265,728 | 247k | 247,562 | 0.284 | 0.068 | 483.5 | 483.52 | "
            "-79,272 | +562 | +0.02 | recipes/koutini.yaml: prune_fp16 | why |") in md
    text = format_reproduction([entry], "text")
    assert "Koutini_CPJKU_task1b_2: why" in text and "Why they differ" not in text
    assert json.loads(format_reproduction([entry], "json"))[0]["ours"]["n_nonzero"] == 247_562
    with pytest.raises(UserError, match="unknown format"):
        format_reproduction([entry], "xlsx")
    with pytest.raises(UserError, match="recipes folder not found"):
        reproduce("dcase2020_task1b", tmp_path / "nowhere")
    with pytest.raises(UserError, match="no variant 'int4'"):
        reproduce_variant(RECIPES / "koutini_sub3.yaml", "int4")


def test_cli_refuses_an_unknown_table(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "dcase2031"])
    assert "invalid choice" in capsys.readouterr().err
