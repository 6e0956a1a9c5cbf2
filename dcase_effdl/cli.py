"""Command line: `dcase-effdl COMMAND ...` (also `python -m dcase_effdl COMMAND ...`).

    dcase-effdl make-dataset data/quickstart --clips-per-class 100 --seed 0
    dcase-effdl make-dataset data/quickstart-eval --evaluation-of data/quickstart
    dcase-effdl run recipes/quickstart.yaml [--data DIR] [--out RUNDIR] [--set train.epochs=2] [--seeds 0 1 2]
    dcase-effdl evaluate runs/quickstart --data DIR [--json]
    dcase-effdl size dcase2020_baseline|RUNDIR [--policy dcase2020] [--json]
    dcase-effdl reproduce dcase2020_task1b [--format md|text|json]
    dcase-effdl download tau2020-3class-development --to data [--mirror URL]
    dcase-effdl check-data DIR [--json]
    dcase-effdl export RUNDIR [--variant NAME] [--format onnx|tflite] [--frontend]

Each command is one small function; problems the user can fix print one line (no traceback
unless --debug) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dcase_effdl.errors import UserError
from dcase_effdl.machine import passive_waiting


def cmd_make_dataset(args) -> int:
    if args.evaluation_of:
        from dcase_effdl.data.evaluation_layout import make_evaluation_layout

        key = make_evaluation_layout(args.evaluation_of, args.out, seed=args.seed)
        print(f"wrote an unlabeled evaluation-layout copy of {args.evaluation_of}'s test fold ({len(key)} clips) to {args.out}")
        return 0
    from dcase_effdl.data.synthetic import make_dataset

    out = make_dataset(Path(args.out), clips_per_class=args.clips_per_class, seed=args.seed,
                       duration=args.duration, sample_rate=args.sample_rate)
    print(f"wrote synthetic dataset to {out}")
    return 0


def cmd_run(args) -> int:
    from dcase_effdl.pipeline import run
    from dcase_effdl.seeds import run_seeds

    if args.seeds is not None:
        run_seeds(args.recipe, args.seeds, data=args.data, out=args.out, overrides=args.set, resume=args.resume,
                  restart=args.restart)
        return 0
    run(args.recipe, data=args.data, out=args.out, overrides=args.set, resume=args.resume, restart=args.restart)
    return 0


def cmd_evaluate(args) -> int:
    from dcase_effdl.evaluation.evaluate import evaluate_run

    results = evaluate_run(args.run_dir, args.data, out=args.out)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for name, m in results.items():
        if "output" in m:  # evaluation set without labels: predictions only
            print(f"{name:<16} {m['n_clips']} clips, no labels: wrote {m['output']}")
            continue
        classes = ", ".join(f"{c} {v['accuracy']:.1f}" for c, v in m["class_wise"].items() if v["accuracy"] is not None)
        print(f"{name:<16} macro accuracy {m['accuracy']:5.1f} %  log loss {m['log_loss']:.3f}  "
              f"({m['n_clips']} clips; {classes})")
    return 0


def _size_reports(target: str, policy: str) -> dict:
    """One report for a model name, or one per variant for a run folder."""
    from dcase_effdl.compress import size

    path = Path(target)
    if path.is_dir():
        from dcase_effdl.compress import load_variant
        from dcase_effdl.rundir import RunDir

        return {v.name: size.size_report(load_variant(v.model_path), policy=policy) for v in RunDir(path).variants()}
    return {None: size.size_report_from_spec(target, policy=policy)}


def cmd_size(args) -> int:
    from dcase_effdl.compress.size import format_size_table

    reports = _size_reports(args.target, args.policy)
    keys = ("n_params", "n_nonzero", "size_bytes", "size_kb")
    if args.json:
        if list(reports) == [None]:
            out = {k: reports[None][k] for k in keys}
        else:
            out = {name: {k: r[k] for k in keys} for name, r in reports.items()}
        print(json.dumps(out, indent=2))
        return 0
    for name, report in reports.items():
        if name is not None:
            print(f"== {name}")
        print(format_size_table(report))
    return 0


def cmd_download(args) -> int:
    from dcase_effdl.data import download

    catalog = download.load_catalog(args.catalog)
    if args.name is None or args.name not in catalog:
        if args.name is not None:
            raise UserError(f"unknown dataset '{args.name}'; available: {', '.join(catalog)}")
        print(download.format_catalog(catalog))
        return 0
    if args.to is None:
        raise UserError("download: --to DIR is required (the dataset is extracted into DIR/<folder>)")
    content = args.content.split(",") if args.content else None
    download.download_dataset(catalog[args.name], args.to, mirror=args.mirror, content=content,
                              delete_zips=args.delete_zips, retries=args.retries,
                              space_check=not args.no_space_check)
    return 0


def cmd_check_data(args) -> int:
    from dcase_effdl.data.check_data import check_data, format_report

    report = check_data(args.root, workers=args.workers)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def cmd_validate(args) -> int:
    from dcase_effdl.submission.validate import dataset_test_files, format_report, validate_package

    expected = dataset_test_files(args.dataset) if args.dataset else None
    report = validate_package(args.package, expected)
    print(format_report(report))
    return 0 if report.ok else 1


def cmd_submit(args) -> int:
    from dcase_effdl.submission.package import build_package, load_submission_info

    info = load_submission_info(args.info) if args.info else None
    pkg = build_package(args.variants, args.out, labels=args.label or None, info=info, dataset=args.dataset,
                        outputs=args.outputs)
    for w in pkg.report.warnings:
        print(f"warning: {w}")
    print(f"wrote {', '.join(pkg.labels)} ({pkg.outputs} outputs) to {pkg.out_dir / 'task1'} and {pkg.zip_path} "
          f"(validated against {pkg.expected})")
    return 0


def cmd_leaderboard(args) -> int:
    from dcase_effdl.reporting.published import format_leaderboard, merged_rows

    text = format_leaderboard(merged_rows(args.run_dirs, args.published, args.accuracy), args.format)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_reproduce(args) -> int:
    from dcase_effdl.reporting.reproduce import format_reproduction, reproduce

    print(format_reproduction(reproduce(args.name, args.recipes), args.format), end="")
    return 0


def cmd_plot(args) -> int:
    from dcase_effdl.reporting.plots import write_comparison_plots

    paths = write_comparison_plots(args.run_dirs, args.out, None if args.no_published else args.published)
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def cmd_report(args) -> int:
    from dcase_effdl.reporting.report import write_comparison_report, write_report

    published = None if args.no_published else args.published
    if len(args.run_dirs) == 1:
        path = write_report(args.run_dirs[0], published, out=args.out)
    elif not args.out:
        raise UserError("a report on several runs needs --out FILE.html")
    else:
        path = write_comparison_report(args.run_dirs, args.out, published)
    print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    from dcase_effdl.deploy.export import export_frontend, export_run

    export_run(args.run_dir, variant=args.variant, fmt=args.format)
    if args.frontend:
        export_frontend(args.run_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcase-effdl", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-dataset", help="write a synthetic dataset in the TAU 2020 3Class layout")
    p.add_argument("out")
    p.add_argument("--clips-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    p.add_argument("--sample-rate", type=int, default=48000, help="Hz")
    p.add_argument("--evaluation-of", metavar="DATASET", help="instead: an unlabeled evaluation-layout copy of DATASET's "
                   "test fold (audio/0.wav ..., fold1_test.csv), in an order shuffled with --seed")
    p.set_defaults(func=cmd_make_dataset)

    p = sub.add_parser("run", help="run a recipe end to end")
    p.add_argument("recipe")
    p.add_argument("--data", help="dataset root (replaces the recipe's dataset.root)")
    p.add_argument("--out", help="run folder (default: <out_dir>/<recipe name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted training from <run>/train/last.pt")
    again.add_argument("--restart", action="store_true", help="train an interrupted run again from epoch 1 "
                       "(the old train/last.pt is kept as last.pt.bak)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="N", help="run once per training seed into <run>-seed<N>/, "
                   "then print mean +- std per variant and write <run>-seeds.csv")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("evaluate", help="evaluate a finished run on fold1_evaluate of another dataset")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="folder for the output files of an unlabeled evaluation set "
                                 "(default: <run>/<variant>/evaluation/)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="export each variant of a run to an edge runtime's format, checked against PyTorch")
    p.add_argument("run_dir")
    p.add_argument("--variant", help="only this variant (default: every finished one)")
    p.add_argument("--format", default="onnx", help="onnx (run by onnxruntime; needs pip install -e \".[deploy]\") or tflite (full-integer int8 "
                   "for int8 variants, run by LiteRT; needs \".[litert]\")")
    p.add_argument("--frontend", action="store_true", help="also the log-mel front end (audio -> features) as "
                   "<run>/export/frontend.onnx, checked against the training features")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("size", help="model size table for a model name or each variant of a run")
    p.add_argument("target", help="model name (e.g. dcase2020_baseline) or run folder")
    p.add_argument("--policy", default="dcase2020")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_size)

    p = sub.add_parser("download", help="download, verify and extract an official DCASE dataset")
    p.add_argument("name", nargs="?", help="dataset name; omit to list the available ones")
    p.add_argument("--to", help="folder to download and extract into")
    p.add_argument("--mirror", help="base URL to fetch the files from (default: $DCASE_EFFDL_MIRROR or Zenodo)")
    p.add_argument("--content", help="comma-separated subset of documentation,meta,audio (default: all)")
    p.add_argument("--delete-zips", action="store_true", help="delete each zip once extracted")
    p.add_argument("--retries", type=int, default=5, help="resume attempts per file after a broken connection")
    p.add_argument("--no-space-check", action="store_true", help="do not stop when the disk looks too small")
    p.add_argument("--catalog", help="a JSON file list in the format of dcase_effdl/data/downloads.json")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("check-data", help="check a dataset folder: layout, audio headers, summary")
    p.add_argument("root", help="dataset root (the folder with meta.csv)")
    p.add_argument("--workers", type=int, default=0, help="header-reading threads (0: automatic)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("validate", help="check a DCASE 2020 Task 1B submission package (zip or folder)")
    p.add_argument("package", help="package zip or folder (task1/<label>/...)")
    p.add_argument("--dataset", help="expect the test split of this dataset (default: the 8,640 evaluation files)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("submit", help="build a DCASE 2020 Task 1B submission package (validated) from variants")
    p.add_argument("variants", nargs="+", metavar="RUNDIR/VARIANT", help="1 to 4 finished variant folders")
    p.add_argument("--out", required=True, help="package folder (task1/<label>/... and the zip go here)")
    p.add_argument("--label", action="append", default=[], help="Lastname_INST_task1b_N, once per variant "
                   "(default: the label of the variant's output file, from the recipe)")
    p.add_argument("--info", help="submission info YAML (authors, description); see dcase_effdl/submission/submission_info.example.yaml")
    p.add_argument("--dataset", help="check the outputs against this dataset's test split (default: the evaluation set "
                   "`evaluate` used, else the run's dataset, else the 8,640 evaluation files)")
    p.add_argument("--outputs", choices=["auto", "evaluation", "development"], default="auto",
                   help="package <variant>/evaluation/ outputs (from evaluate) or the development test split's "
                        "(default auto: evaluation where there)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("leaderboard", help="leaderboard table of runs, optionally beside the published rows")
    p.add_argument("run_dirs", nargs="*", metavar="RUNDIR")
    p.add_argument("--published", choices=["dcase2020_task1b"], help="merge the published results of this task")
    p.add_argument("--accuracy", choices=["eval", "dev"], default="eval",
                   help="which published accuracy to rank by (default: eval, the official one)")
    p.add_argument("--format", choices=["md", "csv", "html", "text"], default="md")
    p.add_argument("--out", help="write to this file instead of printing")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("reproduce", help="the published complexity columns rebuilt from shipped recipes, without training")
    p.add_argument("name", choices=["dcase2020_task1b"])
    p.add_argument("--recipes", help="folder of the recipes (default: the repository's recipes/)")
    p.add_argument("--format", choices=["md", "text", "json"], default="md")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("plot", help="plots comparing runs: accuracy vs size, training curves, confusion matrices")
    p.add_argument("run_dirs", nargs="+", metavar="RUNDIR")
    p.add_argument("--out", required=True, help="folder for the PNG and SVG files")
    p.add_argument("--published", choices=["dcase2020_task1b"], default="dcase2020_task1b")
    p.add_argument("--no-published", action="store_true", help="own rows only")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("report", help="self-contained HTML report of a run (or a comparison of runs)")
    p.add_argument("run_dirs", nargs="+", metavar="RUNDIR")
    p.add_argument("--out", help="HTML file (default for one run: RUNDIR/report.html)")
    p.add_argument("--published", choices=["dcase2020_task1b"], default="dcase2020_task1b")
    p.add_argument("--no-published", action="store_true", help="own rows only")
    p.set_defaults(func=cmd_report)

    return parser


def main(argv: list[str] | None = None) -> int:
    passive_waiting()  # before any command imports torch
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
