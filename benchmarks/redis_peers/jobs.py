"""Plain job functions of the Redis benchmark, run in the workers of every contestant.

Each peer wraps them in its own task object (``rq_peer.py``, ``celery_peer.py``, ...);
taskq and RQ pickle them by reference.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def noop(x: int) -> int:
    """Return the argument: the cheapest verifiable job."""
    return x


def probe(tag: int) -> tuple[int, float]:
    """Return ``(tag, time.monotonic() at start)``; CLOCK_MONOTONIC is system-wide."""
    return tag, time.monotonic()


def checked(i: int, spin_us: int = 200) -> int:
    """Busy-loop about ``spin_us`` µs (so that kills land mid-job), return ``i * i + 7``."""
    end = time.perf_counter() + spin_us / 1e6
    while time.perf_counter() < end:
        pass
    return i * i + 7


def first_run_sleeps(tag: str, seconds: float, marker_dir: str) -> tuple[str, int, float]:
    """Mark its start in ``marker_dir``; the first run of ``tag`` sleeps ``seconds``
    (long enough to be killed in), a re-run returns at once.
    Returns ``(tag, pid, time.monotonic() at this run's start)``."""
    started = time.monotonic()
    folder = Path(marker_dir)
    again = any(folder.glob(f"{tag}.*"))
    (folder / f"{tag}.{os.getpid()}").write_text(repr(started))
    if not again:
        time.sleep(seconds)
    return tag, os.getpid(), started
