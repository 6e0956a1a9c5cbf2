"""Strict YAML -> dataclass loading: unknown keys and wrong types are errors naming file and key path.

Recipes (`recipes/*.yaml`) and feature definitions (`features/*.yaml`) are plain data. Nothing in a
file is ever executed (safe_yaml: plain data, bounded in size, depth and alias expansion), and `--set a.b=value` overrides pass the same checks.
Model families and compression methods bind their knobs' dataclasses to names in a `Registry`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import operator
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from dcase_effdl import safe_yaml
from dcase_effdl.errors import UserError
from dcase_effdl.task import LABEL_FORMAT, LABEL_RE, SAFE_NAME_RE


# ---------------------------------------------------------------- generic strict loader


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping from `path`, bounded in size, depth and alias expansion (safe_yaml);
    any problem is a UserError naming the file."""
    return safe_yaml.read_mapping(path)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, source: str, keypath: str) -> Any:
    """Check `value` against type `tp` (dataclass, list, dict, Optional, Literal, scalar)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [option for option in args if option is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message, which names the inner key
            return _convert(value, options[0], source, keypath)
        for option in options:
            try:
                return _convert(value, option, source, keypath)
            except UserError:
                pass
        raise UserError(f"{source}: {keypath}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise UserError(f"{source}: {keypath}: expected one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{source}: {keypath}: expected a mapping, got {value!r}")
        return from_dict(tp, value, source, keypath)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{source}: {keypath}: expected a list, got {value!r}")
        (item_tp,) = args or (Any,)
        return [_convert(v, item_tp, source, f"{keypath}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{source}: {keypath}: expected a mapping, got {value!r}")
        key_tp, val_tp = args or (Any, Any)
        return {
            _convert(k, key_tp, source, keypath): _convert(v, val_tp, source, f"{keypath}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        # YAML reads `1e-3` as a string (YAML 1.1 needs a dot), so accept numeric strings too.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config type {tp!r} not supported")
    raise UserError(f"{source}: {keypath}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: dict, source: str, keypath: str = "", key_word: str = "key") -> Any:
    """Build dataclass `cls` from `data`, refusing unknown keys and wrong types (`key_word` names a key in messages)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{keypath}.{key}" if keypath else str(key)
        if key not in fields and key in getattr(cls, "REPLACED_KEYS", {}):
            raise UserError(f"{source}: {cls.REPLACED_KEYS[key]}")
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise UserError(f"{source}: unknown {key_word} '{path}' (known {key_word}s here: {known})")
        kwargs[key] = _convert(value, hints[key], source, path)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f"{keypath}." if keypath else ""
        raise UserError(f"{source}: missing required key '{where}{missing[0]}'")
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise UserError(f"{source}: {keypath + '.' if keypath else ''}{exc.key} {exc}") from None
    except (ValueError, TypeError) as exc:  # raised by a dataclass's __post_init__ checks
        raise UserError(f"{source}: {keypath}: {exc}" if keypath else f"{source}: {exc}") from None


class FieldError(ValueError):
    """A `__post_init__` check that names its field: `from_dict` reports '<file>: <key path> <message>'."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def check_fields(obj: Any, rules: list[tuple[str, bool, str]]) -> None:
    """Raise FieldError 'KEY must be RULE, got VALUE' for the first (key, ok, rule) that is not ok."""
    for key, ok, rule in rules:
        if not ok:
            raise FieldError(key, f"must be {rule}, got {operator.attrgetter(key)(obj)!r}")


SAFE_NAME = "letters, digits, '_' and '-', starting with a letter or digit (it names a folder or file)"


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config dataclass (for the resolved config written to a run folder)."""
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value), the value parsed as YAML (so `3`, `true`, `[1, 2]` work)."""
    if "=" not in text:
        raise UserError(f"--set {text}: expected KEY=VALUE, e.g. train.epochs=2")
    key, raw = text.split("=", 1)
    try:
        value = safe_yaml.loads(raw, f"--set {key}") if raw != "" else ""
    except safe_yaml.BadYAML:
        value = raw  # not YAML: the text itself, which the type check then judges
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--set` overrides onto raw YAML data; the result is then checked like the file."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {text}: '{key}' is not a mapping")
            node = child
        node[keys[-1]] = value
    return data


class Registry:
    """Names bound to entries with a config dataclass (`name`, `config_cls`): model families and compression
    methods, registered by modules imported on first use; `parse` checks an entry's knobs like a recipe."""

    def __init__(self, what: str, modules: list[str], key_word: str = "key"):
        self.what, self.modules, self.key_word = what, list(modules), key_word
        self.entries: dict[str, Any] = {}

    def add(self, entry: Any) -> Any:
        self.entries[entry.name] = entry
        return entry

    def names(self) -> list[str]:
        for module in self.modules:
            importlib.import_module(module)
        return sorted(self.entries)

    def get(self, name: Any, where: str = "") -> Any:
        if name not in self.names():
            prefix = f"{where}: " if where else ""
            raise UserError(f"{prefix}unknown {self.what} {name!r} (known: {', '.join(self.names())})")
        return self.entries[name]

    def parse(self, name: Any, knobs: dict, source: str, keypath: str = "", where: str | None = None) -> Any:
        """Entry `name`'s config from `knobs`; `where` (default `source`) prefixes an unknown-name error."""
        entry = self.get(name, source if where is None else where)
        return from_dict(entry.config_cls, knobs, source, keypath, key_word=self.key_word)


# ---------------------------------------------------------------- feature definition


@dataclass
class FeatureConfig:
    """A log-mel front end. Every parameter that differs between libraries is explicit."""

    name: str
    sample_rate: int = 48000  # Hz; audio at another rate is resampled
    resample: typing.Literal["soxr_hq", "soxr_vhq", "scipy"] = "soxr_hq"  # resampler if rate differs
    channels: typing.Literal["mono", "stereo"] = "mono"  # mono = mean of channels
    duration: Union[float, None] = 10.0  # seconds; clips are zero-padded / cut to it, None = as is
    n_fft: int = 2048  # samples
    win_length: int = 1920  # samples (40 ms at 48 kHz)
    hop_length: int = 960  # samples (20 ms at 48 kHz)
    window: typing.Literal["hamming", "hann"] = "hamming"
    window_periodic: bool = True  # scipy/librosa 'fftbins' (asymmetric) window
    center: bool = True
    pad_mode: typing.Literal["reflect", "constant"] = "reflect"  # librosa < 0.10 default: reflect
    power: float = 1.0  # 1 = magnitude, 2 = power spectrogram
    n_mels: int = 40
    fmin: float = 0.0  # Hz
    fmax: Union[float, None] = None  # Hz; None = sample_rate / 2
    mel_scale: typing.Literal["slaney", "htk"] = "slaney"
    mel_norm: Union[typing.Literal["slaney"], None] = None  # None: no band normalisation
    log: typing.Literal["natural", "db", "none"] = "natural"  # natural: ln(mel + log_eps)
    log_eps: float = 2.220446049250313e-16  # numpy.spacing(1), as in dcase_util
    deltas: int = 0  # 0: none; 2: stack deltas and delta-deltas as extra channels

    def __post_init__(self):
        check_fields(self, [(k, getattr(self, k) >= 1, ">= 1") for k in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels")]
                     + [("duration", self.duration is None or self.duration > 0, "> 0 seconds or null")])
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if self.fmax is not None and self.fmax > self.sample_rate / 2:
            raise ValueError(f"fmax {self.fmax} Hz above Nyquist ({self.sample_rate / 2} Hz)")


def load_features(path: str | Path, overrides: list[str] = ()) -> FeatureConfig:
    data = apply_overrides(read_yaml(path), list(overrides))
    return from_dict(FeatureConfig, data, str(path))


# ---------------------------------------------------------------- recipe


@dataclass
class SyntheticConfig:
    """Generate the dataset root with `make-dataset` when it does not exist yet."""

    clips_per_class: int = 100
    seed: int = 0
    duration: float = 10.0  # seconds
    sample_rate: int = 48000  # Hz

    def __post_init__(self):  # the other values are checked by make_dataset before it writes anything
        check_fields(self, [("seed", self.seed >= 0, ">= 0")])


@dataclass
class DatasetConfig:
    kind: typing.Literal["tau", "digits"] = "tau"  # tau: TAU 2020 layout; digits: sklearn 8x8 images
    root: str = "data/quickstart"  # relative to the current directory
    synthetic: Union[SyntheticConfig, None] = None
    validation_fraction: float = 0.3  # of the training fold's locations, location-disjoint
    on_bad_audio: typing.Literal["stop", "skip"] = "stop"

    def __post_init__(self):
        check_fields(self, [("validation_fraction", 0.0 <= self.validation_fraction < 1.0, "in [0, 1)")])


@dataclass
class ModelConfig:
    name: str = "dcase2020_baseline"
    params: dict[str, Any] = field(default_factory=dict)  # family knobs, checked by the builder


@dataclass
class SpecAugmentConfig:
    """Masks per example and channel: widths U{0..freq_mask-1} mel bands and U{0..time_mask-1} frames."""

    freq_mask: int = 13
    time_mask: int = 40
    n_freq_masks: int = 1
    n_time_masks: int = 1

    def __post_init__(self):
        check_fields(self, [(k, getattr(self, k) >= 0, ">= 0") for k in ("freq_mask", "time_mask", "n_freq_masks", "n_time_masks")])


@dataclass
class FilterAugmentConfig:
    """A random gain curve over the mel bands per example: n_bands parts, gains U(-max_gain, max_gain) normalised units."""

    max_gain: float = 0.3  # about +-6 dB on ambient3's front end (augment.level_shift)
    n_bands: int = 4
    linear: bool = True  # interpolated between the band edges (false: one step per part)

    def __post_init__(self):
        check_fields(self, [("max_gain", 0 <= self.max_gain < math.inf, "a finite number >= 0"), ("n_bands", self.n_bands >= 1, ">= 1")])


@dataclass
class SWAConfig:
    """Stochastic weight averaging: average the weights of every `every`-th epoch from `start_epoch` on."""

    start_epoch: int = 1
    every: int = 1

    def __post_init__(self):
        check_fields(self, [("start_epoch", self.start_epoch >= 1, ">= 1"), ("every", self.every >= 1, ">= 1")])


# Train settings that change neither the numbers nor the plan: a run may resume with other values
# (the run folder's hash, rundir.config_hash, and the checkpoint's identity leave them out).
NOT_HASHED = ("num_workers", "threads", "loader_workers")


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 16
    optimizer: typing.Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0  # feature-extraction processes: 0 = all cores
    threads: int = 0  # torch intra-op threads: 0 = the physical cores this process may use (machine.py)
    # Processes reading and augmenting training batches ahead of the step (0: in the loop). Measured on 2
    # busy cores (benchmarks/memory_scale.py): 2020 baseline 8.3 / 9.2 / 11.9 clips/s with 0 / 1 / 2, a
    # 256-band stereo front end 1.2 with each (the step dominates); 1 takes reading off the step's path
    # without a second process competing with the step's threads on a 2-core machine.
    loader_workers: int = 1
    # Recipe options of dcase_effdl.training.loop (techniques in augment.py, sampling.py, schedules.py).
    nesterov: bool = False  # SGD only
    schedule: typing.Literal["constant", "cosine", "warm_restarts", "linear"] = "constant"  # per mini-batch
    warmup_epochs: float = 0.0  # linear warm-up before the schedule
    min_lr_ratio: float = 0.0  # lowest lr of cosine / warm_restarts / linear, as a fraction of lr
    restart_epochs: float = 10.0  # warm_restarts: first period (epochs)
    restart_mult: float = 2.0  # warm_restarts: period growth factor
    decay_start_epoch: float = 0.0  # linear: epochs at full lr before the decay
    decay_epochs: Union[float, None] = None  # linear: length of the decay (None: until the last epoch)
    mixup_alpha: float = 0.0  # 0 = off; Beta(alpha, alpha) per example
    spec_augment: Union[SpecAugmentConfig, None] = None  # None = off; {} = Hu's 13 bands / 40 frames
    time_roll: int = 0  # max circular shift in frames (0 = off)
    time_crop: int = 0  # random crop length in frames during training (0 = off)
    channel_swap: bool = False  # swap left/right with probability 0.5 (stereo features)
    level_shift: float = 0.0  # max per-example offset added to all normalised values, a random gain (0 = off)
    filter_augment: Union[FilterAugmentConfig, None] = None  # None = off; a random gain curve over the bands
    freq_shift: int = 0  # max shift of the mel bins per example (0 = off)
    balanced_batches: bool = False  # equal class counts per mini-batch
    label_smoothing: float = 0.0  # epsilon of the default cross-entropy
    swa: Union[SWAConfig, None] = None  # None = off
    precision: typing.Literal["auto", "fp32", "bf16", "fp16"] = "fp32"  # training compute (training/precision.py)
    compile: bool = False  # torch.compile the network for training (pays on long runs: benchmarks/train_throughput.py)
    # Keys of earlier versions: a recipe that has one gets this line instead of "unknown key".
    REPLACED_KEYS: typing.ClassVar[dict] = {"amp": "train.amp was replaced by train.precision: amp: true (float16 on CUDA) "
                                                   "-> precision: fp16 or auto; amp: false -> precision: fp32"}

    def __post_init__(self):
        check_fields(self, [
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 2, ">= 2 (batch norm needs two examples)"),
            ("lr", 0 < self.lr < math.inf, "a finite number > 0"),
            ("momentum", 0 <= self.momentum <= 1, "in [0, 1]"),
            ("device", re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "auto, cpu, cuda or cuda:N"),
            *[(k, getattr(self, k) >= 0, ">= 0") for k in ("weight_decay", "num_workers", "threads", "loader_workers", "warmup_epochs",
                                                         "decay_start_epoch", "mixup_alpha", "time_roll", "time_crop",
                                                         "level_shift", "freq_shift")],
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("restart_epochs", self.restart_epochs > 0, "> 0"),
            ("restart_mult", self.restart_mult >= 1, ">= 1 (periods never shrink)"),
            ("decay_epochs", self.decay_epochs is None or self.decay_epochs > 0, "> 0 or null"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("swa.start_epoch", self.swa is None or self.swa.start_epoch <= self.epochs, f"<= train.epochs ({self.epochs})"),
        ])


@dataclass
class VariantConfig:
    """One row of the leaderboard: the trained model after a list of compression steps."""

    name: str
    compress: list[dict[str, Any]] = field(default_factory=list)
    label: Union[str, None] = None  # submission label; default from `submission`

    def __post_init__(self):
        check_fields(self, [("name", SAFE_NAME_RE.fullmatch(self.name) is not None, SAFE_NAME),
                            ("label", self.label is None or LABEL_RE.fullmatch(self.label) is not None, LABEL_FORMAT)])


@dataclass
class SubmissionConfig:
    lastname: str = "Lastname"
    institute: str = "INST"
    task: str = "task1b"

    def __post_init__(self):
        check_fields(self, [(k, SAFE_NAME_RE.fullmatch(getattr(self, k)) is not None, SAFE_NAME) for k in ("lastname", "institute", "task")])


@dataclass
class Recipe:
    name: str
    seed: int = 0
    features: str = "../features/dcase2020_baseline.yaml"  # relative to the recipe file
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    variants: list[VariantConfig] = field(
        default_factory=lambda: [VariantConfig("float32"), VariantConfig("float16", [{"method": "float16"}])]
    )
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    size_policy: str = "dcase2020"
    cache_dir: str = "cache"  # feature cache, relative to the current directory
    out_dir: str = "runs"  # run folders are out_dir/<name> unless --out is given

    def __post_init__(self):
        check_fields(self, [("name", SAFE_NAME_RE.fullmatch(self.name) is not None, SAFE_NAME), ("seed", self.seed >= 0, ">= 0")])
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise FieldError("variants", f"names must be unique, got {names}")
        if not self.variants:
            raise FieldError("variants", "needs at least one variant")
        for i in range(len(self.variants)):
            label = self.variant_label(i)
            if not LABEL_RE.fullmatch(label):  # a default label of a submission.lastname with '_' in it
                raise FieldError(f"variants[{i}].label", f"defaults to '{label}' (from submission), which must be {LABEL_FORMAT}")

    def variant_label(self, index: int) -> str:
        variant = self.variants[index]
        if variant.label:
            return variant.label
        s = self.submission
        return f"{s.lastname}_{s.institute}_{s.task}_{index + 1}"


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[Recipe, FeatureConfig]:
    """Load a recipe and the feature definition it names; both checked strictly."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), list(overrides))
    recipe = from_dict(Recipe, data, str(path))
    feature_path = resolve_features_path(path, recipe.features)
    return recipe, load_features(feature_path)


def resolve_features_path(recipe_path: Path, features: str) -> Path:
    """`features:` is a path relative to the recipe file, or a bare name found in ../features/."""
    candidate = Path(features)
    if candidate.is_absolute():
        return candidate
    if candidate.suffix in (".yaml", ".yml"):
        return (recipe_path.parent / candidate).resolve()
    return (recipe_path.parent.parent / "features" / f"{features}.yaml").resolve()
