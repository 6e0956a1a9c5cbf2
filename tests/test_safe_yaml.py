"""Bounded YAML reader: bombs are refused fast and small with one line; normal files load as yaml.safe_load does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from dcase_effdl import safe_yaml
from dcase_effdl.errors import UserError
from hostile import alias_bomb, deep_nesting, run_measured, wall_bound

ROOT = Path(__file__).resolve().parents[1]
# The reader on its own, as a command: exit 2 with the one-line message, as the CLI does.
READ = ("import sys\nfrom dcase_effdl.errors import UserError\nfrom dcase_effdl.safe_yaml import read_mapping\n"
        "try:\n    read_mapping(sys.argv[1])\nexcept UserError as exc:\n    print(exc)\n    sys.exit(2)\n")


def test_alias_bomb_is_refused_in_a_subprocess_within_2_s_and_200_mb(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(depth=9))
    assert bomb.stat().st_size < 1024
    m = run_measured([sys.executable, "-c", READ, str(bomb)], timeout_s=60)
    assert m.rc == 2, m.output
    assert m.output.splitlines() == [
        f"{bomb}: YAML refused (line 6, column 5): this node holds 597,871 values once aliases "
        "are expanded, more than the 100,000 allowed (an alias bomb?)"
    ]
    assert m.cpu_s < 2.0 and m.wall_s < wall_bound(2.0) and m.peak_rss_mb < 200, (m.cpu_s, m.wall_s, m.peak_rss_mb)


def test_deep_nesting_is_refused_without_recursing_to_the_end(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text(deep_nesting(100_000))  # yaml.safe_load: RecursionError
    m = run_measured([sys.executable, "-c", READ, str(deep)], timeout_s=60)
    assert m.rc == 2, m.output
    assert m.output.splitlines() == [f"{deep}: YAML refused (line 1, column 35): nested more than 32 levels deep"]
    assert m.cpu_s < 5.0 and m.wall_s < wall_bound(5.0) and m.peak_rss_mb < 200, (m.cpu_s, m.wall_s, m.peak_rss_mb)
    # Block style, 33 levels of mappings: the same limit.
    text = "".join(f"{' ' * i}k{i}:\n" for i in range(33)) + " " * 33 + "leaf\n"
    with pytest.raises(UserError, match=r"^f.yaml: YAML refused \(line 32, column 32\): nested more than 32 levels"):
        safe_yaml.loads(text, "f.yaml")
    assert safe_yaml.loads(text, "f.yaml", max_depth=40)["k0"]["k1"]["k2"] is not None


def test_aliases_within_the_limits_still_work_and_nest_no_deeper_than_allowed():
    text = "base: &b {lr: 0.001, epochs: 3}\na: *b\nb: {<<: *b, epochs: 5}\nlist: &l [1, 2]\nboth: [*l, *l]\n"
    assert safe_yaml.loads(text, "r.yaml") == yaml.safe_load(text)
    # An alias chain nests deeper than the text shows: each level wraps the one before.
    chain = "l0: &l0 [x]\n" + "".join(f"l{i}: &l{i} [*l{i - 1}]\n" for i in range(1, 40))
    with pytest.raises(UserError, match=r"^c.yaml: YAML refused \(line 32, column 6\): aliases nest this node 33 levels deep"):
        safe_yaml.loads(chain, "c.yaml")
    with pytest.raises(UserError, match=r"^c.yaml: YAML refused \(line 1, column 11\): alias \*a refers to a node that contains it"):
        safe_yaml.loads("a: &a [1, *a]\n", "c.yaml")  # yaml.safe_load builds a list containing itself


def _project_yaml_files() -> list[Path]:
    files = sorted((ROOT / "recipes").glob("*.yaml")) + sorted((ROOT / "features").glob("*.yaml"))
    return files + [ROOT / "dcase_effdl" / "submission" / "submission_info.example.yaml"]


@pytest.mark.parametrize("path", _project_yaml_files(), ids=lambda p: p.name)
def test_project_files_load_exactly_as_safe_load_and_within_limits(path):
    assert safe_yaml.read_mapping(path) == yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(safe_yaml.compose(path.read_bytes(), str(path)), yaml.MappingNode)


def test_a_written_meta_yaml_loads_as_safe_load(tmp_path):
    from dcase_effdl.submission.files import write_meta_yaml

    metrics = {"accuracy": 88.1, "log_loss": 0.41,
               "class_wise": {c: {"accuracy": 80.0, "log_loss": 0.4} for c in ("indoor", "outdoor", "transportation")}}
    size = {"n_params": 115219, "n_nonzero": 115219, "size_kb": 450.07, "complexity_management": None}
    path = write_meta_yaml(tmp_path / "Doe_UNI_task1b_1.meta.yaml", "Doe_UNI_task1b_1", metrics, size)
    text = path.read_text(encoding="utf-8")
    assert safe_yaml.loads(path.read_bytes(), "m") == yaml.safe_load(text) != {}
    assert "&" not in text and "*" not in text.replace("**", "")  # the writer emits no aliases


def test_errors_are_one_line_naming_the_file_and_line(tmp_path):
    cases = {
        "tab.yaml": (b"a:\n\tb: 1\n", r"tab.yaml: malformed YAML \(line 2, column 1\): found character '\\t'"),
        "latin1.yaml": (b"a: 1\nb: caf\xe9\n", r"latin1.yaml: not a UTF-8 text file \(line 2\)$"),
        "bigint.yaml": (b"n: " + b"9" * 5000 + b"\n", r"bigint.yaml: malformed YAML \(line 1, column 4\): unreadable value "
                                                    r"\(Exceeds the limit \(4300 digits\) for integer string conversion: value has 5000 digits\)$"),
        "date.yaml": (b"when: 2020-13-45\n", r"date.yaml: malformed YAML \(line 1, column 7\): unreadable value \(month must be in 1..12\)$"),
        "list.yaml": (b"- 1\n- 2\n", r"list.yaml: expected a mapping at the top level, got list$"),
        "alias.yaml": (b"a: *nowhere\n", r"alias.yaml: malformed YAML \(line 1, column 4\): found undefined alias 'nowhere'$"),
        "huge.yaml": (b"a: 1\n" + b"#" * safe_yaml.MAX_BYTES, r"huge.yaml: 262,149 bytes, more than the 262,144 a YAML file here may have$"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=message) as info:
            safe_yaml.read_mapping(tmp_path / name)
        assert "\n" not in str(info.value)
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert safe_yaml.read_mapping(tmp_path / "empty.yaml") == {}
    with pytest.raises(UserError, match=r"nothing.yaml: file not found"):
        safe_yaml.read_mapping(tmp_path / "nothing.yaml")
    # The position and message apart, for a checker that reports per file and line (the validator).
    with pytest.raises(safe_yaml.BadYAML) as info:
        safe_yaml.loads(b"a: 1\nb: [1,\n", "meta.yaml")
    assert (info.value.line, info.value.message) == (3, "malformed YAML: expected the node content, but found '<stream end>'")
