"""The pool's statistics: a block of integers in the parent, read as a frozen snapshot.

Only the parent's threads touch them (workers never do), so a ``threading.Lock``
over a list is enough: no shared memory, no cross-process lock on the hot path.
Every update is a batch of ``(index, delta)`` pairs applied under that lock, so
a snapshot is never torn between two related fields.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable


class StatsBlock:
    """Named integers updated in batches under one lock."""

    __slots__ = ("_lock", "_values")

    def __init__(self, size: int):
        self._values = [0] * size
        self._lock = threading.Lock()

    def add_many(self, deltas: Iterable[tuple[int, int]]) -> None:
        values = self._values
        with self._lock:
            for index, amount in deltas:
                values[index] += amount

    def snapshot(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(self._values)


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """A consistent snapshot of a pool's statistics (all fields read under one lock).

    Whenever the pool is idle, ``submitted == succeeded + failed + cancelled``
    and ``queued == running == 0``.
    """

    submitted: int
    """Jobs accepted by submit/schedule (map counts one job per chunk)."""
    queued: int
    """Jobs waiting for a worker, including retries waiting out their backoff."""
    running: int
    """Jobs handed to a worker and not yet finished."""
    succeeded: int
    """Jobs that returned a result."""
    failed: int
    """Jobs that ended with an exception (after their last attempt)."""
    cancelled: int
    """Jobs cancelled before they ran, or stopped by ``pool.kill``."""
    retried: int
    """Attempts that failed and were queued again."""
    timed_out: int
    """Attempts stopped because they ran past their timeout."""
    crashed: int
    """Workers that died while holding a job."""
    worker_restarts: int
    """Workers started to replace one that exited (crash, timeout, kill, recycling)."""
    workers: int
    """Worker processes alive now (a successor started early for a worker retiring under
    ``max_tasks_per_child`` counts too)."""


STAT_FIELDS = tuple(f.name for f in dataclasses.fields(PoolStats))

# Indexes of the fields in the pool's statistics block, in PoolStats order.
(SUBMITTED, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, RETRIED, TIMED_OUT, CRASHED,
 RESTARTS, WORKERS) = range(len(STAT_FIELDS))  # fmt: skip
