"""`dcase-effdl submit`: build a DCASE 2020 Task 1B submission package from finished variants.

    dcase-effdl evaluate runs/quickstart --data EVALSET        # writes <variant>/evaluation/<label>.output.csv
    dcase-effdl submit runs/quickstart/float32 runs/quickstart/float16 --info submission_info.yaml \\
        --out submission [--label Doe_UNI_task1b_1 --label Doe_UNI_task1b_2] [--dataset DIR] [--outputs auto]

Writes `<out>/task1/<label>/<label>.output.csv` and `<label>.meta.yaml` for up to four systems and
`<out>/<Lastname>_<INST>_task1b.zip`, whose members sit under one root folder
(`Lastname_INST_task1b/task1/<label>/...`): the official 2020 checker reads the label from the
third path component of each zip member. Authors and the system description come from a YAML the
user fills once (template: dcase_effdl/submission/submission_info.example.yaml); sizes and results from the
variant's size.json and metrics.json (the development results). The outputs are the variant's outputs
on the evaluation set when `evaluate` wrote them (`<variant>/evaluation/`), else its test-split outputs. The package is built in a staging folder and checked with
`dcase_effdl.submission.validate` first: a package the validator rejects is never written.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from dcase_effdl.config import from_dict, read_yaml
from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_open
from dcase_effdl.rundir import RunDir, VariantDir, file_sha256
from dcase_effdl.submission.files import DESCRIPTION_DEFAULTS, write_meta_yaml
from dcase_effdl.submission.validate import (Report, check_label, dataset_test_files, evaluation_set_files, file_max_bytes,
                                             validate_package)
from dcase_effdl.task import ABBREVIATION_MAX, EVAL_FILE_COUNT, MAX_SYSTEMS

# ---------------------------------------------------------------- the user's submission info


@dataclass
class Affiliation:
    abbreviation: str
    institute: str
    department: Union[str, None] = None
    location: Union[str, None] = None


@dataclass
class Author:
    lastname: str
    firstname: str
    email: str
    affiliation: Affiliation
    corresponding: bool = False


@dataclass
class ExternalDataset:
    name: str
    url: str
    total_audio_length: Union[float, None] = None  # minutes, as the 2020 template says


@dataclass
class SystemOverride:
    """Per-system values, keyed in `systems:` by variant folder name or submission label."""

    name: Union[str, None] = None
    abbreviation: Union[str, None] = None
    description: dict[str, Any] = field(default_factory=dict)


@dataclass
class SubmissionInfo:
    """What `submit` cannot know from a run folder: who submits and how the system is described."""

    authors: list[Author]
    name: str = "{label}"  # {label}, {variant} and {index} (the label's N) are filled in
    abbreviation: Union[str, None] = None  # at most 10 characters after filling in; default Lastname_N
    description: dict[str, Any] = field(default_factory=dict)  # system.description fields
    external_datasets: Union[list[ExternalDataset], None] = None  # none (null or []) is written as []
    source_code: Union[str, None] = None
    technical_report: Union[str, None] = None  # PDF path, relative to the info file
    systems: dict[str, SystemOverride] = field(default_factory=dict)

    def __post_init__(self):
        if not self.authors:
            raise ValueError("authors: at least one author is needed")
        n = sum(a.corresponding for a in self.authors)
        if n != 1:
            raise ValueError(f"authors: exactly one author needs 'corresponding: true', found {n}")
        for where, desc in [("description", self.description)] + [
            (f"systems.{k}.description", s.description) for k, s in self.systems.items()
        ]:
            unknown = sorted(set(desc) - set(DESCRIPTION_DEFAULTS))
            if unknown:
                raise ValueError(f"{where}: unknown field '{unknown[0]}' (known: {', '.join(DESCRIPTION_DEFAULTS)})")


def load_submission_info(path: str | Path) -> SubmissionInfo:
    """Read and strictly check the submission info YAML (unknown keys and wrong types are errors)."""
    path = Path(path)
    info = from_dict(SubmissionInfo, read_yaml(path), str(path))
    if info.technical_report:
        report = Path(info.technical_report)
        report = report if report.is_absolute() else path.parent / report
        if not report.is_file():
            raise UserError(f"{path}: technical_report: file not found: {report}")
        if report.suffix.lower() != ".pdf":
            raise UserError(f"{path}: technical_report: expected a .pdf file, got {report.name}")
        info.technical_report = str(report)
    return info


# ---------------------------------------------------------------- one system


OUTPUTS = ("auto", "evaluation", "development")  # which outputs `submit` packages (auto: evaluation when there)


@dataclass
class System:
    variant_dir: Path
    label: str
    output: Path
    metrics: dict
    size: dict
    evaluation: dict | None = None  # evaluation.json of evaluation-set outputs; None: the development test split's


def _evaluation_output(variant: VariantDir) -> tuple[Path, dict]:
    """The variant's evaluation-set output and its record, checked against the variant's model file."""
    evaluation = variant.evaluation
    if not evaluation.finished:
        raise UserError(f"{evaluation.path}: no evaluation-set outputs (run `dcase-effdl evaluate {variant.path.parent} "
                        "--data EVALSET` first, or pass --outputs development)")
    info, output = evaluation.info(), evaluation.output
    if output is None:
        raise UserError(f"{evaluation.path}: evaluation.json but no <label>.output.csv; run evaluate again")
    if info["model_sha256"] != file_sha256(variant.model_path):
        raise UserError(f"{output}: made by an older {variant.model_path.name} (the variant was made again since); "
                        "run evaluate again")
    return output, info


def _system(variant_dir: Path, label: str | None, outputs: str = "auto") -> System:
    variant = VariantDir(variant_dir)
    if not variant_dir.is_dir():
        raise UserError(f"{variant_dir}: variant folder not found (give RUNDIR/VARIANT, e.g. runs/quickstart/float16)")
    if outputs not in OUTPUTS:
        raise UserError(f"outputs must be one of {', '.join(OUTPUTS)}, got '{outputs}'")
    if variant.output is None:
        raise UserError(f"{variant_dir}: no <label>.output.csv (has this variant finished?)")
    output, evaluation = variant.output, None
    if outputs == "evaluation" or (outputs == "auto" and variant.evaluation.finished):
        output, evaluation = _evaluation_output(variant)
    label = label or variant.label
    report = Report(str(variant_dir))
    if not check_label(label, str(variant_dir), None, report):
        raise UserError(f"{report.problems[0].message} (give --label Lastname_INST_task1b_N)")
    metrics = variant.metrics()
    for key in ("accuracy", "log_loss", "class_wise"):
        if metrics.get(key) is None:
            raise UserError(f"{variant.metrics_path}: no '{key}' (results on labelled development data are required)")
    return System(variant_dir, label, output, metrics, variant.size(), evaluation)


def _run_description(run: RunDir) -> dict:
    """system.description values a run folder knows: input channels and sampling rate."""
    features = run.features()
    return {"input_sampling_rate": f"{features.sample_rate / 1000:g}kHz",
            "input_channels": "mono" if features.channels == "mono" else "binaural"}


def _expected_files(systems: list[System], dataset: str | Path | None) -> tuple[list[str], str]:
    """File names the outputs must cover: --dataset; else, for evaluation-set outputs, the set they were
    made on; else the run's dataset's test split; else the 2020 evaluation set."""
    if len({s.evaluation is None for s in systems}) > 1:
        raise UserError("some variants have evaluation-set outputs and some do not; a package holds one set's outputs "
                        "(run evaluate for all of them, or pass --outputs development)")
    if dataset is not None:
        return dataset_test_files(dataset), f"test split of {dataset}"
    if systems[0].evaluation is not None:
        roots = sorted({s.evaluation["data"] for s in systems})
        if len(roots) > 1:
            raise UserError(f"the variants' evaluation-set outputs come from different sets ({', '.join(roots)})")
        root = Path(roots[0])
        if (root / "evaluation_setup" / "fold1_test.csv").is_file():
            return dataset_test_files(root), f"the evaluation set {root}"
        if systems[0].evaluation["n_clips"] == EVAL_FILE_COUNT:
            return evaluation_set_files(), "the 2020 3Class evaluation set"
        raise UserError(f"{root}: the evaluation set the outputs were made on is not there any more; pass --dataset DIR")
    root = Path(VariantDir(systems[0].variant_dir).run.recipe().dataset.root)
    if (root / "evaluation_setup" / "fold1_test.csv").is_file():
        return dataset_test_files(root), f"test split of {root}"
    return evaluation_set_files(), "the 2020 3Class evaluation set"


def _fill(template: str, system: System) -> str:
    index = system.label.rsplit("_", 1)[1]
    try:
        return template.format(label=system.label, variant=system.variant_dir.name, index=index)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"name/abbreviation '{template}': only {{label}}, {{variant}} and {{index}} can be filled in ({exc})") from None


def write_system_meta(path: Path, system: System, info: SubmissionInfo | None) -> Path:
    """`<label>.meta.yaml` from metrics, size and the submission info (placeholder author without it)."""
    description = _run_description(VariantDir(system.variant_dir).run)
    if info is None:
        return write_meta_yaml(path, system.label, system.metrics, system.size, description)
    override = info.systems.get(system.label) or info.systems.get(system.variant_dir.name) or SystemOverride()
    description.update(info.description)
    description.update(override.description)
    name = _fill(override.name or info.name, system)
    template = override.abbreviation or info.abbreviation
    abbreviation = _fill(template, system) if template else None
    if abbreviation is not None and len(abbreviation) > ABBREVIATION_MAX:  # write_meta_yaml's message would not name the system
        raise UserError(f"abbreviation '{abbreviation}' of {system.label} is {len(abbreviation)} characters; "
                        f"at most {ABBREVIATION_MAX} allowed")
    authors = [
        {"lastname": a.lastname, "firstname": a.firstname, "email": a.email,
         **({"corresponding": True} if a.corresponding else {}),
         "affiliation": {k: v for k, v in vars(a.affiliation).items() if v is not None}}
        for a in info.authors
    ]
    external = [vars(d) for d in info.external_datasets or []]
    return write_meta_yaml(path, system.label, system.metrics, system.size, description, name=name,
                           abbreviation=abbreviation, authors=authors, external_datasets=external,
                           source_code=info.source_code)


# ---------------------------------------------------------------- the package


@dataclass
class Package:
    out_dir: Path
    zip_path: Path
    labels: list[str]
    expected: str  # which file list the outputs were checked against
    report: Report
    outputs: str = "evaluation set"  # the outputs it holds: of the evaluation set or of the development test split


def _stage_and_move(systems: list[System], out_dir: Path, info: SubmissionInfo | None, team: tuple[str, str],
                    expected: list[str], expected_what: str, hint: str) -> Report:
    """Write the systems' files into a staging folder beside `out_dir`, validate them, and only if the
    validator accepts them move them into `out_dir/task1/` (UserError otherwise, `out_dir` untouched)."""
    lastname, institute = team
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=out_dir.parent) as tmp:
        staging = Path(tmp)
        for s in systems:
            folder = staging / "task1" / s.label
            folder.mkdir(parents=True)
            shutil.copyfile(s.output, folder / f"{s.label}.output.csv")
            write_system_meta(folder / f"{s.label}.meta.yaml", s, info)
        if info is not None and info.technical_report:
            shutil.copyfile(info.technical_report, staging / "task1" / f"{lastname}_{institute}_task1.technical_report.pdf")
        report = validate_package(staging, expected)
        if not report.ok:
            # File-level problems (missing files, counts, meta fields) say most; then the first rows.
            problems = sorted(report.problems, key=lambda p: p.line is not None)
            shown = "; ".join(str(p).replace(str(staging) + "/", "") for p in problems[:5])
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise UserError(f"{out_dir}: package not written, the validator rejects it "
                            f"(expected files: {expected_what}{hint}): {shown}{more}")
        for w in report.warnings:  # name the package as it will be, not the staging folder
            w.file = w.file.replace(str(staging), str(out_dir))
        if info is None:
            report.warn("meta.yaml", None, "authors are placeholders: pass --info with your submission info YAML")

        # Only now touch the output folder: replace these labels' folders, then write the zip.
        (out_dir / "task1").mkdir(parents=True, exist_ok=True)
        for item in sorted((staging / "task1").iterdir()):
            target = out_dir / "task1" / item.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(item), str(target))
    return report


def build_package(
    variant_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    labels: list[str] | None = None,
    info: SubmissionInfo | None = None,
    dataset: str | Path | None = None,
    outputs: str = "auto",
) -> Package:
    """Build, validate, then write the package; raises UserError (writing nothing) if it is invalid.

    `outputs`: 'evaluation' packages each variant's outputs on an unlabeled evaluation set
    (`<variant>/evaluation/`, from `dcase-effdl evaluate`), 'development' its test-split outputs,
    'auto' the evaluation ones where the variants have them. meta.yaml's results are the
    development results (metrics.json) either way."""
    out_dir = Path(out_dir)
    variant_dirs = [Path(p) for p in variant_dirs]
    if not 1 <= len(variant_dirs) <= MAX_SYSTEMS:
        raise UserError(f"a package holds 1 to {MAX_SYSTEMS} systems, got {len(variant_dirs)} variant folders")
    if labels and len(labels) != len(variant_dirs):
        raise UserError(f"{len(labels)} --label values for {len(variant_dirs)} variant folders: give one per variant")
    systems = [_system(d, labels[i] if labels else None, outputs) for i, d in enumerate(variant_dirs)]
    seen = [s.label for s in systems]
    dup = next((lab for i, lab in enumerate(seen) if lab in seen[:i]), None)
    if dup:
        raise UserError(f"label '{dup}' used for two systems: give distinct labels (--label Lastname_INST_task1b_N)")
    teams = {tuple(s.label.split("_")[:2]) for s in systems}
    if len(teams) != 1:
        raise UserError(f"labels {seen} belong to different teams (Lastname_INST must be the same in a package)")
    expected, expected_what = _expected_files(systems, dataset)
    for s in systems:  # the run's own file named, not its staging copy
        what, limit = file_max_bytes(s.output.name, len(expected))
        size = s.output.stat().st_size
        if size > limit:
            raise UserError(f"{s.output}: {size:,} bytes, over the limit of {limit:,} for {what}; refused")

    lastname, institute = next(iter(teams))
    zip_name = f"{lastname}_{institute}_task1b.zip"
    created = [p for p in (out_dir.parent, *out_dir.parent.parents) if not p.exists()]  # the deepest first
    out_dir.parent.mkdir(parents=True, exist_ok=True)  # the staging folder sits beside out_dir: moves are renames
    hint = "; pass --dataset DIR to check against a dataset's test split" if dataset is None else ""
    try:
        report = _stage_and_move(systems, out_dir, info, (lastname, institute), expected, expected_what, hint)
    except BaseException:
        for folder in created:  # a refused package leaves no folder behind
            if any(folder.iterdir()):
                break
            folder.rmdir()
        raise
    zip_path = out_dir / zip_name
    root = zip_path.stem
    members = [out_dir / "task1" / s.label for s in systems]
    pdf = out_dir / "task1" / f"{lastname}_{institute}_task1.technical_report.pdf"
    with atomic_open(zip_path) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for folder in members:
            for member in sorted(folder.iterdir()):
                z.write(member, f"{root}/{member.relative_to(out_dir).as_posix()}")
        if info is not None and info.technical_report and pdf.is_file():
            z.write(pdf, f"{root}/{pdf.relative_to(out_dir).as_posix()}")
    if systems[0].evaluation is None:
        report.warn(str(zip_path), None, "development test-split outputs: a DCASE submission holds the outputs on the "
                                         "evaluation set (the official checker reads only its names, audio/N.wav); run "
                                         "`dcase-effdl evaluate RUN --data EVALSET`, then submit again")
    report.package = str(zip_path)
    packaged = "development test split" if systems[0].evaluation is None else "evaluation set"
    return Package(out_dir, zip_path, [s.label for s in systems], expected_what, report, packaged)
