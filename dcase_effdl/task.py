"""The facts of DCASE 2020 Task 1B that every stage shares: classes, size limit, labels, the evaluation set."""

from __future__ import annotations

import re

TASK = "task1b"
# Alphabetical, as the official metadata and output files order them (the output.csv columns).
CLASSES = ("indoor", "outdoor", "transportation")
KB = 1024  # bytes: the task's "KB" (500 KB = 512,000 B)
SIZE_LIMIT_KB = 500.0  # non-zero parameters x stored bits / 8, batch norm excluded
SIZE_LIMIT_BYTES = int(SIZE_LIMIT_KB * KB)
MAX_SYSTEMS = 4  # submissions per team
ABBREVIATION_MAX = 10  # characters of a system's abbreviation in its meta.yaml
EVAL_FILE_COUNT = 8640  # TAU Urban Acoustic Scenes 2020 3Class evaluation set: audio/0.wav ... audio/8639.wav
# A submission label is Lastname_INSTITUTE_task1b_N. A part is letters and digits with hyphens inside
# (e.g. Lopez-Meyer), no underscore; task and index are matched loosely so a checker can say which is off.
LABEL_PART = r"[^\W_](?:[^\W_]|-)*"
LABEL_RE = re.compile(rf"^(?P<lastname>{LABEL_PART})_(?P<institute>{LABEL_PART})_(?P<task>task\d[a-z]?)_(?P<index>\d+)$")
LABEL_FORMAT = f"Lastname_INST_{TASK}_N with N = 1..{MAX_SYSTEMS}"
# Any name that becomes a path part (recipe, variant, label, lastname, institute): no separators, no dots.
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
