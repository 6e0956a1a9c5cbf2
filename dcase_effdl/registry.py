"""Names bound to a config dataclass and a handler (model families, compression methods), one convention for both.

    FAMILIES = Registry("model", ["dcase_effdl.models.baseline", ...], key_word="parameter")
    FAMILIES.add(Family("dcase2020_baseline", BaselineConfig, build_baseline))
    cfg = FAMILIES.parse("dcase2020_baseline", {"dropout": 0.2}, "r.yaml", "model.params")

An entry is any object with `name` and `config_cls`; `parse` checks knobs with `config.from_dict`
(unknown keys, wrong types and the config's `__post_init__` range checks are UserErrors naming
the key path). Modules that register entries are imported on first use, not at import time.
"""

from __future__ import annotations

import importlib
from typing import Any, Generic, TypeVar

from dcase_effdl.config import from_dict
from dcase_effdl.errors import UserError

E = TypeVar("E")


class Registry(Generic[E]):
    def __init__(self, what: str, modules: list[str], key_word: str = "key"):
        self.what, self.modules, self.key_word = what, list(modules), key_word
        self.entries: dict[str, E] = {}

    def add(self, entry: E) -> E:
        self.entries[entry.name] = entry
        return entry

    def _load(self) -> None:
        for module in self.modules:
            importlib.import_module(module)

    def names(self) -> list[str]:
        self._load()
        return sorted(self.entries)

    def get(self, name: Any, where: str = "") -> E:
        self._load()
        if name not in self.entries:
            prefix = f"{where}: " if where else ""
            raise UserError(f"{prefix}unknown {self.what} {name!r} (known: {', '.join(sorted(self.entries))})")
        return self.entries[name]

    def parse(self, name: Any, knobs: dict, source: str, keypath: str = "", where: str | None = None) -> Any:
        """Entry `name`'s config from `knobs`; `where` (default `source`) prefixes an unknown-name error."""
        entry = self.get(name, source if where is None else where)
        return from_dict(entry.config_cls, knobs, source, keypath, key_word=self.key_word)
