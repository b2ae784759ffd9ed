"""Counters in shared memory, and the lock that no dying process can leave held.

The user's named counters are a ``CounterBlock``: a ``RawArray`` of 64-bit
integers guarded by one ``RecordLock``, so an ``add`` is exact under contention
from any number of processes and threads, and a snapshot of the whole block is
never torn. Workers receive the block when they start: a shared ``RawArray``
(and the lock's file) can only be passed on by inheritance, never through a pipe.

Any process may die at any instant, holding the lock or not: a job stopped by
its timeout or by ``pool.kill()``, a crash. A ``multiprocessing.Lock`` would then
stay held for ever and hang every later ``add`` in every process. A
``RecordLock`` is a POSIX record lock (``fcntl``) on one byte of a small unlinked
file, which the kernel releases when its holder dies. The workers' slots
(``_slot.py``) use the same lock, for the same reason.

Record locks belong to a process, not to a thread, so each ``RecordLock`` also
takes a ``threading.Lock`` to exclude the other threads of its own process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from multiprocessing import context, reduction
from multiprocessing.context import BaseContext
from typing import Any, Protocol

# The kernel's deadlock detector sees processes, not threads: with threads it may
# refuse a wait that is no deadlock (EDEADLK). The holder will release: try again.
_FALSE_DEADLOCK_PAUSE = 0.001
_lockf = fcntl.lockf
_EXCLUSIVE, _UNLOCK = fcntl.LOCK_EX, fcntl.LOCK_UN


class LockFile:
    """An unlinked temporary file; each of its bytes can be one ``RecordLock``.

    Beware: closing *any* descriptor of this file in a process releases every
    record lock that process holds on it, so it is opened once per process and
    closed only when no lock of it is in use.
    """

    def __init__(self, fd: int | None = None):
        if fd is None:
            fd, path = tempfile.mkstemp(prefix="taskq-locks-")
            os.unlink(path)
        self.fd = fd
        finalizer = weakref.finalize(self, os.close, fd)
        finalizer.atexit = False  # at exit the process is going away: its locks go with it

    def __reduce__(self) -> tuple[Any, ...]:
        # To a spawn or forkserver child: the descriptor travels with the new process.
        context.assert_spawning(self)
        return _open_passed_lock_file, (reduction.DupFd(self.fd),)


def _open_passed_lock_file(passed: Any) -> LockFile:
    return LockFile(passed.detach())


class RecordLock:
    """A lock on one byte of a ``LockFile``: exclusive among every thread of every
    process, and released by the kernel when the process holding it dies."""

    __slots__ = ("__weakref__", "_fd", "_file", "_offset", "_threads")

    def __init__(self, file: LockFile, offset: int):
        self._file = file  # keeps the descriptor open
        self._fd = file.fd
        self._offset = offset
        self._threads = threading.Lock()
        _all_locks.add(self)

    def acquire(self) -> None:
        self._threads.acquire()
        try:
            while True:
                try:
                    _lockf(self._fd, _EXCLUSIVE, 1, self._offset)
                    return
                except OSError as exc:
                    if exc.errno != errno.EDEADLK:
                        raise
                time.sleep(_FALSE_DEADLOCK_PAUSE)
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        try:
            _lockf(self._fd, _UNLOCK, 1, self._offset)
        finally:
            self._threads.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __reduce__(self) -> tuple[Any, ...]:
        return RecordLock, (self._file, self._offset)

    def _forget_threads(self) -> None:
        # In a forked child only the forking thread exists: a thread that held the
        # threading.Lock at the fork is not there to release it. (The record lock
        # itself is not inherited: the child holds none.)
        self._threads = threading.Lock()


_all_locks: weakref.WeakSet[RecordLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lock in list(_all_locks):
        lock._forget_threads()


os.register_at_fork(after_in_child=_after_fork_in_child)


class CounterBlock:
    """Named 64-bit integers in shared memory, guarded together by one lock."""

    def __init__(self, names: Sequence[str], ctx: BaseContext):
        self.names = tuple(names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._lock = RecordLock(LockFile(), 0)
        self._values: Any = ctx.RawArray("q", max(1, len(self.names)))
        self._bind()

    def _bind(self) -> None:
        # Bound once: ``with lock`` would add two more Python calls to every add.
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
            raise unknown_counter(name, self.names) from None

    def add(self, index: int, amount: int) -> int:
        self._acquire()
        try:
            value: int = self._values[index] + amount
            if not INT64_MIN <= value <= INT64_MAX:  # the cell would wrap around silently
                raise _overflow(self.names[index], value)
            self._values[index] = value
        finally:
            self._release()
        return value

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


def unknown_counter(name: str, names: Sequence[str]) -> KeyError:
    declared = ", ".join(repr(n) for n in names) or "none"
    return KeyError(
        f"unknown counter {name!r}; declared counters: {declared} "
        "(declare them with Pool(counters=(...)))"
    )


class CounterStore(Protocol):
    """Where a pool's counters live: a ``CounterBlock`` in shared memory, or a
    broker's store (``_broker_counters.py``) for a pool with ``broker=``."""

    names: tuple[str, ...]

    def index(self, name: str) -> int: ...
    def add(self, index: int, amount: int) -> int: ...
    def get(self, index: int) -> int: ...
    def snapshot(self) -> tuple[int, ...]: ...


class Counter:
    """A named counter shared by the parent and every worker of a pool.

    ``add`` is atomic and returns the new value; ``value`` reads it.
    """

    __slots__ = ("_block", "_index", "name")

    def __init__(self, block: CounterStore, name: str):
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
_worker_counters: CounterStore | None = None


def install_worker_counters(block: CounterStore) -> None:
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


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a counter's cell is a signed 64-bit integer


def _overflow(name: str, value: int) -> OverflowError:
    return OverflowError(
        f"counter {name!r} would reach {value}, outside a 64-bit integer's range; "
        "it keeps its value"
    )
