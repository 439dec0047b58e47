"""Stage packages that import a rule's module only when its entry is first read (PEP 562).

Every job imports its rule's entry from the stage package (`from leukoflow.detection import
fit_oof`). Importing every entry eagerly made each job pay for its stage's heaviest module
(torch, ultralytics, timm: several seconds per job); with `lazy_entries` a job imports the one
module that defines its entry. `leukoflow.<stage>.<entry>`, `from ... import`, `dir()` and
`__all__` keep working.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_entries(package: str, entry_modules: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package`, given entry name -> module of the package defining it."""

    def __getattr__(name: str) -> Any:
        module = entry_modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        entry = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, entry)  # later reads are plain attribute reads
        return entry

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *entry_modules})

    return __getattr__, __dir__
