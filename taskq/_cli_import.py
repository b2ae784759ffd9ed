"""Importing code named on the command line, so that worker processes can import it too.

Used by ``taskq run`` (its ``MODULE:FUNCTION`` target) and ``taskq bench`` (the suite in the
source checkout).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskq._cli_exit import UsageError

__all__ = ["load_target", "prepend_import_path"]


def load_target(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNCTION``, where MODULE is a module name or a path to a ``.py`` file."""
    module_part, _, name = spec.rpartition(":")
    if not module_part or not name:
        raise UsageError(
            f"expected MODULE:FUNCTION, e.g. mypackage.jobs:resize or jobs.py:resize, not {spec!r}"
        )
    if module_part.endswith(".py") or os.sep in module_part:
        module = _import_file(Path(module_part))
    else:
        prepend_import_path(os.getcwd())  # as `python -m` does, also for the console script
        module = _import_module(module_part)
    try:
        target = functools.reduce(getattr, name.split("."), module)
    except AttributeError:
        raise UsageError(f"{module_part} has no attribute {name!r}") from None
    if not callable(target):
        raise UsageError(f"{spec} is not callable: it is a {type(target).__name__}")
    return target  # type: ignore[no-any-return]


def _import_file(path: Path) -> Any:
    """Import a ``.py`` file under its stem, its directory on the import path.

    Workers started with spawn or forkserver unpickle the job function by module name, so the
    file must be importable by that name in every process, not loaded privately: its directory
    goes first on ``sys.path`` (which spawn hands to its children) and on ``PYTHONPATH``.
    """
    path = path.resolve()
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    prepend_import_path(str(path.parent))
    module = _import_module(path.stem)
    loaded = getattr(module, "__file__", None)
    if loaded is None or Path(loaded).resolve() != path:
        raise UsageError(
            f"cannot import {path} as module {path.stem!r}: that name is already taken by "
            f"{loaded or 'a built-in module'}; rename the file"
        )
    return module


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise UsageError(f"cannot import {name}: {type(exc).__name__}: {exc}") from exc


def prepend_import_path(directory: str) -> None:
    """Put ``directory`` first on the import path of this process and of the ones it starts."""
    if directory not in sys.path:
        sys.path.insert(0, directory)
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if directory not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([directory, *filter(None, entries)])
