"""Counters in shared memory: one block of 64-bit integers behind one Lock.

The pool's statistics and the user's named counters are each a ``CounterBlock``.
Each block is a ``RawArray`` guarded by a single ``multiprocessing.Lock``, so an
``add`` is exact under contention from any number of processes, and a snapshot
of the whole block is never torn (``multiprocessing.Value(lock=True)`` would
lock each value on its own). Workers receive the block when they start: a
shared ``RawArray`` can only be passed on by inheritance, never through a pipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from multiprocessing.context import BaseContext
from typing import Any


class CounterBlock:
    """Named 64-bit integers in shared memory, guarded together by one lock."""

    def __init__(self, names: Sequence[str], ctx: BaseContext):
        self.names = tuple(names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._lock = ctx.Lock()
        self._values: Any = ctx.RawArray("q", max(1, len(self.names)))
        self._bind()

    def _bind(self) -> None:
        # The lock's C-level acquire/release: ``with lock`` adds two Python calls.
        self._acquire = self._lock.acquire
        self._release = self._lock.release

    def __getstate__(self) -> dict[str, Any]:
        # Sent to a starting worker: the lock and array go, their bound methods cannot.
        state = self.__dict__.copy()
        del state["_acquire"], state["_release"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bind()

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            declared = ", ".join(repr(n) for n in self.names) or "none"
            raise KeyError(
                f"unknown counter {name!r}; declared counters: {declared} "
                "(declare them with Pool(counters=(...)))"
            ) from None

    def add(self, index: int, amount: int) -> int:
        self._acquire()
        try:
            value: int = self._values[index] + amount
            self._values[index] = value
        finally:
            self._release()
        return value

    def add_many(self, deltas: Iterable[tuple[int, int]]) -> None:
        values = self._values
        self._acquire()
        try:
            for index, amount in deltas:
                values[index] += amount
        finally:
            self._release()

    def get(self, index: int) -> int:
        self._acquire()
        try:
            value: int = self._values[index]
        finally:
            self._release()
        return value

    def snapshot(self) -> tuple[int, ...]:
        self._acquire()
        try:
            return tuple(self._values[: len(self.names)])
        finally:
            self._release()


class Counter:
    """A named counter shared by the parent and every worker of a pool.

    ``add`` is atomic and returns the new value; ``value`` reads it.
    """

    __slots__ = ("_block", "_index", "name")

    def __init__(self, block: CounterBlock, name: str):
        self._block = block
        self._index = block.index(name)
        self.name = name

    @property
    def value(self) -> int:
        return self._block.get(self._index)

    def add(self, amount: int = 1) -> int:
        """Add ``amount`` (may be negative) atomically; return the new value."""
        if not isinstance(amount, int):
            raise TypeError(f"counter {self.name!r} holds integers; cannot add {amount!r}")
        return self._block.add(self._index, amount)

    def __repr__(self) -> str:
        return f"<taskq.Counter {self.name!r} value={self.value}>"


# Set in each worker process at start-up; ``counter()`` reads it.
_worker_counters: CounterBlock | None = None


def install_worker_counters(block: CounterBlock) -> None:
    global _worker_counters
    _worker_counters = block


def counter(name: str) -> Counter:
    """The pool's shared counter ``name``, from inside a job running in a worker.

    In the parent process use ``pool.counter(name)`` instead.
    """
    if _worker_counters is None:
        raise RuntimeError(
            "taskq.counter() works inside a job running on a taskq worker; "
            "in the parent process use pool.counter(name)"
        )
    return Counter(_worker_counters, name)


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
