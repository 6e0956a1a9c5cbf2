"""Strict configuration: unknown keys, wrong types, overrides, and every shipped YAML."""

from pathlib import Path

import pytest
import yaml

from dcase_effdl.config import FeatureConfig, Recipe, from_dict, load_features, load_recipe, read_yaml
from dcase_effdl.errors import UserError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
FEATURES = sorted((REPO / "features").glob("*.yaml"))


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_key_names_file_and_key_path(tmp_path):
    path = write(tmp_path, "name: x\ntrain:\n  epochz: 3\n")
    with pytest.raises(UserError, match=r"r\.yaml: unknown key 'train\.epochz'"):
        from_dict(Recipe, read_yaml(path), str(path))


def test_wrong_type_names_key_path(tmp_path):
    path = write(tmp_path, "name: x\ntrain:\n  epochs: many\n")
    with pytest.raises(UserError, match=r"train\.epochs: expected int, got 'many'"):
        from_dict(Recipe, read_yaml(path), str(path))


def test_bool_is_not_an_int(tmp_path):
    path = write(tmp_path, "name: x\ntrain:\n  batch_size: true\n")
    with pytest.raises(UserError, match="train.batch_size"):
        from_dict(Recipe, read_yaml(path), str(path))


def test_malformed_yaml_gives_line(tmp_path):
    path = write(tmp_path, "name: x\ntrain: [1, 2\n")
    with pytest.raises(UserError, match=r"r\.yaml: malformed YAML \(line \d+"):
        read_yaml(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="nope.yaml: file not found"):
        read_yaml(tmp_path / "nope.yaml")


def test_list_item_key_path(tmp_path):
    path = write(tmp_path, "name: x\nvariants:\n  - name: a\n    compres: []\n")
    with pytest.raises(UserError, match=r"unknown key 'variants\[0\]\.compres'"):
        from_dict(Recipe, read_yaml(path), str(path))


def test_overrides_pass_the_same_checks(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "recipes").mkdir()
    (tmp_path / "features" / "f.yaml").write_text("name: f\n")
    recipe_path = write(tmp_path / "recipes", "name: x\nfeatures: ../features/f.yaml\n")
    recipe, feat = load_recipe(recipe_path, ["train.epochs=3", "dataset.synthetic.clips_per_class=7"])
    assert recipe.train.epochs == 3 and recipe.dataset.synthetic.clips_per_class == 7
    assert feat.name == "f" and feat.n_mels == 40
    with pytest.raises(UserError, match="train.epochs: expected int"):
        load_recipe(recipe_path, ["train.epochs=soon"])
    with pytest.raises(UserError, match="unknown key 'train.nope'"):
        load_recipe(recipe_path, ["train.nope=1"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_recipe(recipe_path, ["train.epochs"])


def test_feature_checks(tmp_path):
    path = write(tmp_path, "name: f\nsample_rate: 16000\nfmax: 12000\n")
    with pytest.raises(UserError, match="fmax 12000.0 Hz above Nyquist"):
        load_features(path)
    path = write(tmp_path, "name: f\nmel_scale: bark\n")
    with pytest.raises(UserError, match=r"mel_scale: expected one of \['slaney', 'htk'\]"):
        load_features(path)


def _walk_strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_strings(v)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load_strictly(path):
    recipe, feat = load_recipe(path)
    assert isinstance(recipe, Recipe) and isinstance(feat, FeatureConfig)
    from dcase_effdl.pipeline import resolve

    plan = resolve(recipe, feat, str(path))  # typed model knobs and steps, model built, steps dry-run
    assert [[s.method for s in steps] for steps in plan.steps] == [[s["method"] for s in v.compress] for v in recipe.variants]
    for text in _walk_strings(yaml.safe_load(path.read_text())):
        assert not text.startswith("/"), f"{path.name}: absolute path {text}"


@pytest.mark.parametrize("path", FEATURES, ids=lambda p: p.name)
def test_shipped_features_load_strictly(path):
    feat = load_features(path)
    assert feat.n_mels > 0
    for text in _walk_strings(yaml.safe_load(path.read_text())):
        assert not text.startswith("/"), f"{path.name}: absolute path {text}"


def test_shipped_yaml_exists():
    assert (REPO / "recipes" / "quickstart.yaml") in RECIPES
    assert (REPO / "features" / "dcase2020_baseline.yaml") in FEATURES
