"""Job functions of the SQLite broker benchmark (importable by forked workers and by a
``taskq worker`` subprocess started in the repository root)."""

from __future__ import annotations

import os
import time


def noop(x: int) -> int:
    return x


def sleep_ms(x: int) -> int:
    time.sleep(0.001)
    return x


def once_slow(marker: str, x: int) -> int:
    """First run: leave ``marker`` (it is running now) and hang; any later run: return ``x``."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        with open(marker + ".runs", "a") as f:
            f.write("again\n")
        return x
    os.close(fd)
    time.sleep(600)
    return x
