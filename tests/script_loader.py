"""Shared by the tests of scripts that are not modules of the package (benchmarks/, docs/gen, examples/):
load one from its file. `tests/` is on pytest's pythonpath."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(path: Path | str, name: str) -> ModuleType:
    """The script at `path` (relative to the repository root, or absolute) run as module `name`. It is
    registered in sys.modules first: dataclasses look their module up there."""
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
