"""Model size under named challenge rules (`dcase2020` ... `micronet`), with a per-tensor table.

    report = size_report(variant_or_module, policy="dcase2020")
    print(format_size_table(report))

Every tensor of the model's state_dict is one row (like the `Param | NZ Param | Size | NZ Size`
table of toni-heittola/dcase2020_task1_baseline:model_size_calculation.py), stored in its real
format (`compress.storage`: float32 = 32 bits, float16 = 16, int8 = 8 (never 2 bytes: the official
script once had that bug), binary = 1). A row is counted or says why not: batch norm (2020 only),
quantisation scales and zero points, pruning masks and other buffers are reported separately and
never counted as parameters. An unknown dtype is an error. KB = 1024 bytes.

Policies (DCASE.md):
  dcase2020  non-zero weights and biases x stored bits, batch norm excluded, limit 512,000 B (500 KB)
  dcase2021  non-zero parameters x stored bits, batch norm counted, limit 131,072 B (128 KB)
  dcase2022  all parameters (zeros count) incl. batch norm, <= 131,072 (128K) parameters, int8 ->
             128 KB, <= 30 M MACs per model input
  dcase2024  bytes of all parameters incl. batch norm <= 128,000 B, <= 30 M MACs per 1-s clip
             (pass `input_shape` of 1 s of features; otherwise MACs are for the model's own input)
  micronet   parameter storage / reference parameters + math operations / reference operations:
             a b-bit value counts b/32, a tensor with zeros stored sparse adds a 1-bit mask per
             element (whichever is smaller), multiplies and adds count separately (ops = 2 x MACs,
             x b/32 for layers computing in b bits); reference CIFAR-100 WideResNet-28-10
             (36.5 M parameters, 10.49 B operations) or ImageNet MobileNetV2 (6.9 M, 1170 M).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from dcase_effdl.compress.storage import PARAMETER_ROLES, stored_tensors
from dcase_effdl.errors import UserError
from dcase_effdl.task import KB, SIZE_LIMIT_BYTES



@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    count_bn: bool  # batch norm (weight, bias, running mean and variance) counts as parameters
    count_zeros: bool  # zeros count too (False: only non-zero values)
    limit_bytes: int | None = None
    limit_params: int | None = None
    limit_macs: int | None = None
    micronet: bool = False


POLICIES = {
    "dcase2020": Policy("dcase2020", "DCASE 2020 Task 1B: non-zero weights and biases x stored bits, batch norm "
                        "not counted, 500 KB (512,000 B)", count_bn=False, count_zeros=False, limit_bytes=SIZE_LIMIT_BYTES),
    "dcase2021": Policy("dcase2021", "DCASE 2021 Task 1A: non-zero parameters incl. batch norm x stored bits, "
                        "128 KB (131,072 B)", count_bn=True, count_zeros=False, limit_bytes=131_072),
    "dcase2022": Policy("dcase2022", "DCASE 2022 Task 1: all parameters incl. zeros and batch norm, <= 128K "
                        "(131,072) parameters in int8 (128 KB), <= 30 M MACs", count_bn=True, count_zeros=True,
                        limit_bytes=131_072, limit_params=131_072, limit_macs=30_000_000),
    "dcase2024": Policy("dcase2024", "DCASE 2024/2025 Task 1: bytes of all parameters incl. batch norm "
                        "<= 128,000 B, <= 30 M MACs per 1-s clip", count_bn=True, count_zeros=True,
                        limit_bytes=128_000, limit_macs=30_000_000),
    "micronet": Policy("micronet", "MicroNet challenge score: storage / reference parameters + operations / "
                       "reference operations (b/32 per b-bit value, 1-bit mask per element when sparse)",
                       count_bn=True, count_zeros=True, micronet=True),
}

MICRONET_REFERENCES = {
    "cifar100": {"model": "WideResNet-28-10", "params": 36_500_000, "ops": 10_490_000_000},
    "imagenet": {"model": "MobileNetV2", "params": 6_900_000, "ops": 1_170_000_000},
}

_REASONS = {
    "bn": "batch norm (not counted by {policy})",
    "scale": "quantisation scale (reported separately)",
    "zero_point": "quantisation zero point (reported separately)",
    "mask": "pruning mask (reported separately)",
    "buffer": "buffer, not a parameter",
}


def get_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise UserError(f"unknown size policy '{name}' (known: {', '.join(POLICIES)})")
    return POLICIES[name]


def _bytes(bits: int) -> int | float:
    return bits // 8 if bits % 8 == 0 else bits / 8


def _input_shape(obj, input_shape) -> tuple | None:
    """(C, F, T) of one example: given, or the variant's model_spec input; None if unknown."""
    if input_shape is not None:
        return tuple(input_shape)
    spec = getattr(obj, "model_spec", None)
    if spec is not None:
        return spec.input_shape
    return None


def size_report(obj, policy: str = "dcase2020", *, input_shape: tuple | None = None,
                micronet_reference: str = "cifar100", assume_dense: bool = False) -> dict:
    """Size of a `Variant` or an `nn.Module` under `policy` (see the module docstring for the keys' rules).

    Keys: n_params, n_nonzero, size_bytes, size_kb, sparsity (fraction of counted values that are
    zero), limit_bytes, within_limit, policy, rows (per tensor: name, role, format, n_params,
    n_nonzero, bits, size_bytes, counted, reason), not_counted (per reason: n_tensors, n_values,
    size_bytes), complexity_management, and where known macs / file_size_bytes / micronet.
    `input_shape` (C, F, T) of one example for MACs; by default the variant's model_spec input.
    `assume_dense` counts every value as non-zero: the size of an architecture once trained (a
    freshly initialised model has all-zero biases, which a non-zero rule would not count).
    """
    pol = get_policy(policy)
    module = obj if isinstance(obj, nn.Module) else getattr(obj, "module", None)
    if not isinstance(module, nn.Module):
        raise TypeError(f"size_report needs a Variant or nn.Module, got {type(obj).__name__}")

    rows = []
    for t in stored_tensors(module):
        n = t.tensor.numel()
        nnz = n if assume_dense else int((t.tensor != 0).sum())
        counted = t.role in PARAMETER_ROLES or (t.role == "bn" and pol.count_bn)
        values = n if pol.count_zeros else nnz
        rows.append({
            "name": t.name,
            "role": t.role,
            "format": t.format,
            "n_params": n,
            "n_nonzero": nnz,
            "bits": t.bits,
            "size_bytes": _bytes(values * t.bits),
            "dense_size_bytes": _bytes(n * t.bits),
            "counted": counted,
            "reason": "" if counted else _REASONS[t.role].format(policy=pol.name),
        })

    counted_rows = [r for r in rows if r["counted"]]
    n_params = sum(r["n_params"] for r in counted_rows)
    n_nonzero = sum(r["n_nonzero"] for r in counted_rows)
    size_bits = sum((r["n_params"] if pol.count_zeros else r["n_nonzero"]) * r["bits"] for r in counted_rows)
    size_bytes = _bytes(size_bits)
    not_counted: dict[str, dict] = {}
    for r in rows:
        if not r["counted"]:
            group = not_counted.setdefault(r["reason"], {"reason": r["reason"], "n_tensors": 0, "n_values": 0, "size_bytes": 0})
            group["n_tensors"] += 1
            group["n_values"] += r["n_params"]
            group["size_bytes"] = _bytes(int(group["size_bytes"] * 8) + r["n_params"] * r["bits"])

    report = {
        "policy": pol.name,
        "description": pol.description,
        "n_params": n_params,
        "n_nonzero": n_nonzero,
        "size_bytes": size_bytes,
        "size_kb": round(size_bytes / KB, 2),
        "sparsity": round(1.0 - n_nonzero / n_params, 6) if n_params else 0.0,
        "limit_bytes": pol.limit_bytes,
        "limit_kb": round(pol.limit_bytes / KB, 2) if pol.limit_bytes else None,
        "within_limit": True,
        "rows": rows,
        "not_counted": list(not_counted.values()),
        "complexity_management": getattr(obj, "complexity_management", "none") if obj is not module else "none",
    }
    failures = []
    if pol.limit_bytes is not None and size_bytes > pol.limit_bytes:
        failures.append(f"size {size_bytes:,} B > {pol.limit_bytes:,} B")
    if pol.limit_params is not None:
        report["limit_params"] = pol.limit_params
        if n_params > pol.limit_params:
            failures.append(f"{n_params:,} parameters > {pol.limit_params:,}")

    shape = _input_shape(obj, input_shape)
    if shape is not None:
        from dcase_effdl.compress.macs import count_macs

        macs = count_macs(module, shape)
        report["macs"] = macs["macs"]
        report["macs_input_shape"] = list(shape)
        report["mac_layers"] = macs["layers"]
    if pol.limit_macs is not None:
        report["limit_macs"] = pol.limit_macs
        if "macs" not in report:
            failures.append("MACs unknown (no input shape)")
        elif report["macs"] > pol.limit_macs:
            failures.append(f"{report['macs']:,} MACs > {pol.limit_macs:,}")
    if pol.micronet:
        report["micronet"] = _micronet(rows, report, module, micronet_reference)
    report["within_limit"] = not failures
    report["limit_failures"] = failures

    path = getattr(obj, "path", None)
    if path is not None and hasattr(path, "stat") and path.exists():
        report["file_size_bytes"] = path.stat().st_size
    return report


def _micronet(rows: list[dict], report: dict, module: nn.Module, reference: str) -> dict:
    if reference not in MICRONET_REFERENCES:
        raise UserError(f"unknown MicroNet reference '{reference}' (known: {', '.join(MICRONET_REFERENCES)})")
    ref = MICRONET_REFERENCES[reference]
    storage = 0.0  # in 32-bit parameter equivalents
    for r in rows:
        if not r["counted"]:
            continue
        dense = r["n_params"] * r["bits"] / 32
        sparse = r["n_nonzero"] * r["bits"] / 32 + r["n_params"] / 32  # values + 1-bit mask per element
        storage += min(dense, sparse)
    out = {"reference": reference, "reference_model": ref["model"], "storage_params": storage,
           "reference_params": ref["params"], "reference_ops": ref["ops"]}
    if "macs" in report:
        modules = dict(module.named_modules())
        ops = 0.0
        for layer in report["mac_layers"]:
            bits = getattr(modules.get(layer["name"]), "op_bits", 32)
            ops += 2 * layer["macs"] * bits / 32  # a multiply and an add per MAC
        out["ops"] = ops
        out["score"] = storage / ref["params"] + ops / ref["ops"]
    else:
        out["ops"] = None
        out["score"] = None
    return out


def size_report_from_spec(name: str, params: dict | None = None, policy: str = "dcase2020", *, n_classes: int = 3,
                          in_channels: int = 1, n_mels: int = 40, n_frames: int = 500) -> dict:
    """Size of model family `name` in float32 once trained (all values non-zero; no data needed), with
    MACs for its input shape. The baseline gives 115,219 parameters, 460,876 B = 450.07 KB."""
    from dcase_effdl.models import build_model

    model = build_model(name, params or {}, n_classes=n_classes, in_channels=in_channels, n_mels=n_mels, n_frames=n_frames)
    report = size_report(model, policy, input_shape=(in_channels, n_mels, n_frames), assume_dense=True)
    report["complexity_management"] = "none (untrained architecture, all values counted as non-zero)"
    return report


def _fmt_bytes(b) -> str:
    return f"{b / KB:,.2f} KB"


def format_size_table(report: dict) -> str:
    """The per-tensor table (Param | NZ Param | Bits | Size | NZ Size), totals and what is not counted."""
    rows = report["rows"]
    width = max([len("Tensor")] + [len(r["name"]) for r in rows])
    head = f"{'Tensor':<{width}}  {'Format':<8} {'Param':>10} {'NZ Param':>10} {'Bits':>4} {'Size':>12} {'NZ Size':>12}  Counted"
    lines = [f"Model size, policy {report['policy']}: {report['description']}", head, "-" * len(head)]
    for r in rows:
        nz_bytes = _bytes(r["n_nonzero"] * r["bits"])
        counted = "yes" if r["counted"] else f"no: {r['reason']}"
        lines.append(
            f"{r['name']:<{width}}  {r['format']:<8} {r['n_params']:>10,} {r['n_nonzero']:>10,} {r['bits']:>4} "
            f"{_fmt_bytes(r['dense_size_bytes']):>12} {_fmt_bytes(nz_bytes):>12}  {counted}"
        )
    lines.append("-" * len(head))
    limit = f" / limit {report['limit_kb']:,.2f} KB" if report["limit_bytes"] else ""
    status = "OK" if report["within_limit"] else "OVER: " + "; ".join(report["limit_failures"])
    lines.append(
        f"Counted: {report['n_params']:,} parameters, {report['n_nonzero']:,} non-zero "
        f"(sparsity {100 * report['sparsity']:.2f} %), {report['size_bytes']:,} B = {report['size_kb']:,.2f} KB{limit}  {status}"
    )
    if "macs" in report:
        lines.append(f"MACs per input {tuple(report['macs_input_shape'])}: {report['macs']:,} (conv and linear layers)")
    if "micronet" in report:
        m = report["micronet"]
        score = f"{m['score']:.6f}" if m["score"] is not None else "unknown (no input shape)"
        lines.append(f"MicroNet score vs {m['reference_model']}: {score} (storage {m['storage_params']:,.1f} "
                     f"32-bit parameter equivalents)")
    for group in report["not_counted"]:
        lines.append(f"Not counted: {group['reason']}: {group['n_tensors']} tensors, {group['n_values']:,} values, "
                     f"{group['size_bytes']:,} B")
    if "file_size_bytes" in report:
        lines.append(f"File on disk: {report['file_size_bytes']:,} B = {report['file_size_bytes'] / KB:,.2f} KB")
    if report.get("complexity_management") not in (None, "", "none"):
        lines.append(f"Complexity management: {report['complexity_management']}")
    return "\n".join(lines)
