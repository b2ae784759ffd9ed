"""Counters in shared memory: one block of 64-bit integers behind one Lock.

The user's named counters are a ``CounterBlock``.
Each block is a ``RawArray`` guarded by a single ``multiprocessing.Lock``, so an
``add`` is exact under contention from any number of processes, and a snapshot
of the whole block is never torn (``multiprocessing.Value(lock=True)`` would
lock each value on its own). Workers receive the block when they start: a
shared ``RawArray`` can only be passed on by inheritance, never through a pipe.
"""

from __future__ import annotations

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
