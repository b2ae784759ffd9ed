"""The pool's statistics: counters, per-priority queue depths, and recent wait and run
times, kept in the parent and read as one frozen snapshot.

Only the parent's threads touch them (workers never do), so a ``threading.Lock``
is enough: no shared memory, no cross-process lock on the hot path. Every update
is a batch applied under that lock, so a snapshot is never torn between two
related fields (``queued`` is always the sum of the per-priority ``queued``).

Times are recorded when a job's reply arrives: its run time is what the worker
measured, and its wait is from when that attempt was queued to when it started
(estimated as the reply's arrival minus the run time). On the hot path a job
costs one tuple appended to the window (per batch of replies: one lock, one
``deque.extend``); the histograms take the window's new entries in bulk, and
the percentiles are computed only when someone reads a snapshot.

A submitted job costs its caller no lock at all: its priority is appended to a
deque of *arrivals* (one atomic C call), which every other update and every read
folds into the counters first, under the lock. So a snapshot still counts every
job queued before it was taken, and the manager's own update for a job it
claimed always comes after that job's arrival.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import math
import operator
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

WINDOW = 1000
"""Percentiles are over the last ``WINDOW`` jobs that replied (all priorities together):
bounded memory, and recent enough to show what the queue does now."""

BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
           2.5, 5.0, 10.0, 30.0, 60.0, 300.0)  # fmt: skip
"""Upper bounds (seconds) of the wait and run time histograms: from 100 µs (a no-op
job's round trip) to minutes."""


@dataclasses.dataclass(frozen=True)
class Histogram:
    """How many jobs took at most each bound, since the pool started (Prometheus style)."""

    bounds: tuple[float, ...]
    """Upper bounds in seconds, ascending (``BUCKETS``); an implicit last one is +inf."""
    cumulative: tuple[int, ...]
    """``cumulative[i]``: jobs that took ``<= bounds[i]``; one more entry, the total."""
    sum: float
    """Seconds, summed over those jobs."""

    @property
    def count(self) -> int:
        return self.cumulative[-1]


EMPTY_HISTOGRAM = Histogram(BUCKETS, (0,) * (len(BUCKETS) + 1), 0.0)


@dataclasses.dataclass(frozen=True)
class PriorityStats:
    """One priority level: what waits now, and how the recent jobs of that level fared.

    Percentiles are nearest-rank over this level's jobs among the last ``WINDOW``
    jobs that replied; None when it has none there.
    """

    queued: int
    """Jobs of this priority waiting for a worker now (retries in backoff included)."""
    recent: int
    """Jobs of this priority among the last ``WINDOW`` that replied."""
    wait_p50: float | None
    """Median seconds from being queued to starting."""
    wait_p99: float | None
    """99th percentile of that wait."""
    run_p50: float | None
    """Median seconds a job ran in its worker."""
    run_p99: float | None
    """99th percentile of the run time."""


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
    # hash=False: a dict is unhashable, and PoolStats was hashable before this field.
    priorities: Mapping[float, PriorityStats] = dataclasses.field(default_factory=dict, hash=False)
    """Per priority level that has jobs queued or among the last ``WINDOW`` that
    replied, in ascending order (the most urgent first)."""
    wait_seconds: Histogram = EMPTY_HISTOGRAM
    """Queue wait (queued to started) of every attempt that replied since the start."""
    run_seconds: Histogram = EMPTY_HISTOGRAM
    """Run time in the worker of every attempt that replied since the start."""


# The integer counters, in PoolStats order; their indexes in the statistics block.
STAT_FIELDS = ("submitted", "queued", "running", "succeeded", "failed", "cancelled", "retried",
               "timed_out", "crashed", "worker_restarts", "workers")  # fmt: skip
(SUBMITTED, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, RETRIED, TIMED_OUT, CRASHED,
 RESTARTS, WORKERS) = range(len(STAT_FIELDS))  # fmt: skip

Timing = tuple[float, float, float]  # (priority, wait, run) of one job that replied


class StatsBlock:
    """Named integers, queue depth per priority and recent timings, updated in batches
    under one lock."""

    __slots__ = (
        "_arrivals", "_lock", "_queued", "_recent", "_run", "_unfolded", "_values", "_wait",
        "submitted",
    )  # fmt: skip

    def __init__(self, size: int = len(STAT_FIELDS)):
        self._values = [0] * size
        self._arrivals: deque[float] = deque()  # priorities of jobs submitted, not yet counted
        # One job queued, at this priority: from any thread, without a lock (see above).
        self.submitted: Callable[[float], None] = self._arrivals.append
        self._queued: dict[float, int] = {}
        self._recent: deque[Timing] = deque(maxlen=WINDOW)
        self._unfolded = 0  # the newest entries of _recent not yet in the histograms
        self._wait = _Buckets()
        self._run = _Buckets()
        self._lock = threading.Lock()

    def add_many(
        self, deltas: Iterable[tuple[int, int]], queued: Iterable[tuple[float, int]] = ()
    ) -> None:
        """Add ``deltas`` (index, amount) to the counters and ``queued`` (priority,
        amount) to the per-priority depths."""
        values, depths = self._values, self._queued
        with self._lock:
            if self._arrivals:
                self._fold_arrivals()
            for index, amount in deltas:
                values[index] += amount
            for priority, amount in queued:
                left = depths.get(priority, 0) + amount
                if left:
                    depths[priority] = left
                else:
                    del depths[priority]

    def _fold_arrivals(self) -> None:
        # Called with the lock held. Appends may go on meanwhile: take exactly the
        # ones counted now, oldest first (popleft and append are atomic).
        arrivals = self._arrivals
        popleft = arrivals.popleft
        taken = [popleft() for _ in range(len(arrivals))]
        count = len(taken)
        self._values[SUBMITTED] += count
        self._values[QUEUED] += count
        depths = self._queued
        first = taken[0]
        if taken.count(first) == count:  # usually a single priority
            levels: Iterable[tuple[float, int]] = ((first, count),)
        else:
            levels = collections.Counter(taken).items()
        for priority, amount in levels:
            left = depths.get(priority, 0) + amount
            if left:
                depths[priority] = left
            else:  # a claim was counted before this arrival (see Ledger.submitted)
                del depths[priority]

    def ran(self, timings: list[Timing]) -> None:
        """Record ``(priority, wait, run)`` of jobs whose replies just arrived.

        Only appended here (the hot path); they are added to the histograms in
        bulk, before they would leave the window or when someone reads."""
        with self._lock:
            if self._arrivals:
                self._fold_arrivals()
            if self._unfolded + len(timings) > WINDOW:
                self._fold()
            if len(timings) > WINDOW:  # more than the window holds: count them now
                self._add_to_histograms(timings)
            else:
                self._unfolded += len(timings)
            self._recent.extend(timings)

    def snapshot(self) -> tuple[int, ...]:
        with self._lock:
            if self._arrivals:
                self._fold_arrivals()
            return tuple(self._values)

    def read(self) -> PoolStats:
        """Everything, read under the lock once; the percentiles computed after."""
        with self._lock:
            if self._arrivals:
                self._fold_arrivals()
            self._fold()
            values = tuple(self._values)
            depths = dict(self._queued)
            recent = list(self._recent)
            wait, run = self._wait.histogram(), self._run.histogram()
        counters: dict[str, Any] = dict(zip(STAT_FIELDS, values, strict=True))
        return PoolStats(
            **counters, priorities=by_priority(depths, recent), wait_seconds=wait, run_seconds=run
        )

    def _fold(self) -> None:
        # Called with the lock held.
        if self._unfolded:
            start = len(self._recent) - self._unfolded
            self._add_to_histograms(list(itertools.islice(self._recent, start, None)))
            self._unfolded = 0

    def _add_to_histograms(self, timings: list[Timing]) -> None:
        self._wait.add_all(map(_WAIT, timings))
        self._run.add_all(map(_RUN, timings))


_WAIT, _RUN = operator.itemgetter(1), operator.itemgetter(2)


class _Buckets:
    __slots__ = ("cumulative", "sum")

    def __init__(self) -> None:
        self.cumulative = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def add_all(self, seconds: Iterable[float]) -> None:
        # Sorting runs in C (about 0.1 µs a value); then one bisect per bound, not per value.
        values = sorted(seconds)
        for index, bound in enumerate(BUCKETS):
            self.cumulative[index] += bisect.bisect_right(values, bound)
        self.cumulative[-1] += len(values)
        # A wait is estimated (reply time minus run time): never count one below zero.
        self.sum += math.fsum(values[bisect.bisect_left(values, 0.0) :])

    def histogram(self) -> Histogram:
        return Histogram(BUCKETS, tuple(self.cumulative), self.sum)


def by_priority(
    depths: Mapping[float, int], recent: Iterable[Timing]
) -> dict[float, PriorityStats]:
    """PriorityStats for every level queued now or in ``recent``, most urgent first."""
    waits: dict[float, list[float]] = {}
    runs: dict[float, list[float]] = {}
    for priority, waited, seconds in recent:
        waits.setdefault(priority, []).append(max(0.0, waited))  # estimated: see ran()
        runs.setdefault(priority, []).append(seconds)
    levels = sorted(set(depths) | set(waits))
    return {
        level: PriorityStats(
            depths.get(level, 0),
            len(waits.get(level, ())),
            *percentiles(waits.get(level, [])),
            *percentiles(runs.get(level, [])),
        )
        for level in levels
    }


def percentiles(values: list[float]) -> tuple[float | None, float | None]:
    """Nearest-rank p50 and p99: the smallest value with at least that share at or below."""
    if not values:
        return None, None
    values.sort()
    n = len(values)
    return values[-(-50 * n // 100) - 1], values[-(-99 * n // 100) - 1]
