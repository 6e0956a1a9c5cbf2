"""An unlabeled evaluation-layout copy of a labelled dataset's test fold, named as the DCASE evaluation sets are.

    dcase-effdl make-dataset data/quickstart-eval --evaluation-of data/quickstart [--seed 0]

Writes OUT/audio/0.<ext> ... OUT/audio/<N-1>.<ext> (the source's test-fold clips in a seeded random
order, so that a file's index says nothing about its class), OUT/evaluation_setup/fold1_test.csv
and OUT/meta.csv (both `filename` only, as the 2020 3Class evaluation set ships them): no label, no
city, no device. The audio files are hard links to the source's where the file system allows (the
3Class development test fold is 4,185 clips, 11.6 GB as copies) and copies otherwise. The returned
mapping (new name -> source name) is the key; it is not written into the copy, which holds no labels.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

import numpy as np

from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_write


def make_evaluation_layout(source: str | Path, out: str | Path, seed: int = 0) -> dict[str, str]:
    """Copy `source`'s test fold (fold1_test.csv, else fold1_evaluate.csv) to `out` in the evaluation layout.

    Returns {'audio/<i>.<ext>': source filename}. `out` must not exist or be empty; the source's
    layout is checked first (every listed audio file present), before anything is written.
    """
    from dcase_effdl.data.dataset import check_layout, load_dataset

    source, out = Path(source), Path(out)
    ds = load_dataset(source, folds=())
    fold = "test" if "test" in ds.folds else "evaluate"
    if fold not in ds.folds:
        raise UserError(f"{source}: no evaluation_setup/fold1_test.csv or fold1_evaluate.csv to copy")
    clips = ds.fold(fold)
    check_layout(ds, folds=(fold,))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not empty; choose a new folder for the evaluation-layout copy")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise UserError(f"{out}: inside the source dataset {source}; choose a folder outside it")

    order = np.random.default_rng(seed).permutation(len(clips))
    key = {f"audio/{i}{PurePosixPath(clips[j].filename).suffix}": clips[j].filename for i, j in enumerate(order)}
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for name, original in key.items():
        src, dst = ds.root / original, out / name
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(src, dst)
    listing = "filename\n" + "".join(f"{name}\n" for name in key)
    atomic_write(out / "meta.csv", listing)
    atomic_write(out / "evaluation_setup" / "fold1_test.csv", listing)  # last: the copy is complete once it exists
    return key
