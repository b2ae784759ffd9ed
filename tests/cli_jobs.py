"""Job functions for tests/test_cli.py, imported by the ``taskq`` command as ``tests.cli_jobs``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def add(a: float, b: float) -> float:
    return a + b


def echo(value: Any) -> Any:
    return value


def scale(value: float, *, factor: float = 1) -> float:
    return value * factor


def nap(seconds: float, value: Any = None) -> Any:
    """Sleep, then return ``value``: a job that holds its worker for a while."""
    time.sleep(seconds)
    return value


def fail(message: str) -> None:
    raise ValueError(message)


def not_json() -> set[int]:
    return {1, 2}


def record_pid(path: str, seconds: float) -> int:
    """Append this worker's pid to ``path``, then sleep: for checking that workers are stopped."""
    with open(path, "a") as pids:
        pids.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


def flaky(marker: str) -> str:
    """Fail on the first attempt (no ``marker`` file yet), succeed on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return "second attempt worked"
