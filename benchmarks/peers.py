"""Peer adapters: one small class per pool library, one job per method.

Scenarios talk only to :class:`Adapter`, so each scenario is written once and runs
against taskq and every peer.  An adapter's third-party import happens in
:meth:`Adapter.open`, and :meth:`Adapter.version` reports a missing package, so a
peer that is not installed is skipped instead of crashing the suite.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import importlib.metadata
import multiprocessing
import multiprocessing.pool
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

from benchmarks._jobs import noop as _noop

Fn = Callable[..., Any]


class NotSupported(Exception):
    """The peer has no way to express this operation."""


class Adapter:
    """Uniform face of a process pool.  Subclasses override what their library offers."""

    key: ClassVar[str] = ""
    label: ClassVar[str] = ""
    distribution: ClassVar[str] = ""  # the PyPI distribution whose version is recorded
    honours_start_method: ClassVar[bool] = True

    def __init__(self, workers: int, start_method: str) -> None:
        self.workers = workers
        self.start_method = start_method

    # -- identity ---------------------------------------------------------------------------
    @classmethod
    def version(cls) -> str:
        """Installed version of the peer; raises ImportError when it is missing."""
        if not cls.distribution:
            import platform

            return platform.python_version()
        try:
            return importlib.metadata.version(cls.distribution)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ImportError(f"{cls.distribution} is not installed") from exc

    def start_method_used(self) -> str:
        """The start method this peer's workers really use."""
        return self.start_method if self.honours_start_method else "loky"

    def context(self) -> multiprocessing.context.BaseContext:
        return multiprocessing.get_context(self.start_method)

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        """Create the pool."""
        raise NotImplementedError

    def close(self) -> None:
        """Shut the pool down gracefully, waiting for its workers."""
        raise NotImplementedError

    def abort(self) -> None:
        """Shut the pool down now, dropping queued jobs (running ones may finish)."""
        self.close()

    def terminate(self) -> None:
        """Stop the pool after a failure or a hang: running jobs are killed too."""
        self.abort()

    # -- single jobs ------------------------------------------------------------------------
    def submit(self, fn: Fn, *args: Any) -> Any:
        """Queue one job; return a handle for :meth:`result`."""
        raise NotSupported(f"{self.label} has no asynchronous submit")

    def result(self, handle: Any, timeout: float | None = None) -> Any:
        """Wait for a handle returned by :meth:`submit` or :meth:`schedule`."""
        return handle.result(timeout)

    def done(self, handle: Any) -> bool:
        """Whether the job behind ``handle`` has finished (or was cancelled)."""
        return bool(handle.done())

    def warm(self, count: int) -> list[Any]:
        """Run ``count`` no-op jobs (0, 1, ...) so every worker has started; their results."""
        return self.run_all(_noop, list(range(count)))

    def call(self, fn: Fn, *args: Any) -> Any:
        """Run one job and wait for it."""
        return self.result(self.submit(fn, *args))

    def run_all(self, fn: Fn, args: Sequence[Any]) -> list[Any]:
        """Submit ``fn(a)`` for every ``a``, then wait for all; results in order."""
        handles = [self.submit(fn, a) for a in args]
        return [self.result(h) for h in handles]

    def schedule(self, fn: Fn, args: tuple[Any, ...], priority: int) -> Any:
        """Queue a job at ``priority``; FIFO peers ignore the priority."""
        return self.submit(fn, *args)

    def schedule_with_timeout(self, fn: Fn, args: tuple[Any, ...], timeout: float) -> Any:
        """Queue a job that the pool must stop after ``timeout`` seconds."""
        raise NotSupported(f"{self.label} has no per-job timeout")

    def is_timeout(self, exc: BaseException) -> bool:
        """Whether ``exc`` is how this peer reports a job stopped by its timeout."""
        return False

    def is_worker_death(self, exc: BaseException) -> bool:
        """Whether ``exc`` is how this peer reports that a job's worker died."""
        return False

    # -- many items -------------------------------------------------------------------------
    def map(self, fn: Fn, items: Sequence[Any], chunksize: int | None) -> Iterable[Any]:
        """``map`` over a finite sequence; ``chunksize=None`` means the library default."""
        raise NotSupported(f"{self.label} has no map")

    def stream(self, fn: Fn, items: Iterator[Any]) -> Iterator[Any]:
        """Lazily map over a (possibly endless) iterator."""
        raise NotSupported(f"{self.label} cannot map lazily")


class TaskqAdapter(Adapter):
    key = "taskq"
    label = "taskq"
    distribution = "taskq"

    @classmethod
    def version(cls) -> str:
        try:
            return importlib.metadata.version("taskq")
        except importlib.metadata.PackageNotFoundError:
            module = importlib.import_module("taskq")  # importable from a source checkout
            return str(getattr(module, "__version__", "source checkout"))

    def open(self) -> None:
        import taskq

        self._taskq = taskq
        self.pool = taskq.Pool(self.workers, mp_context=self.context())

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def terminate(self) -> None:
        # The documented way to stop running jobs: leaving the block on KeyboardInterrupt.
        self.pool.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)

    def submit(self, fn: Fn, *args: Any) -> Any:
        return self.pool.submit(fn, *args)

    def schedule(self, fn: Fn, args: tuple[Any, ...], priority: int) -> Any:
        return self.pool.schedule(fn, args, priority=priority)

    def schedule_with_timeout(self, fn: Fn, args: tuple[Any, ...], timeout: float) -> Any:
        return self.pool.schedule(fn, args, timeout=timeout)

    def is_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, self._taskq.JobTimeout)

    def is_worker_death(self, exc: BaseException) -> bool:
        return isinstance(exc, self._taskq.WorkerCrashed)

    def map(self, fn: Fn, items: Sequence[Any], chunksize: int | None) -> Iterable[Any]:
        if chunksize is None:
            return self.pool.map(fn, items)
        return self.pool.map(fn, items, chunksize=chunksize)

    def stream(self, fn: Fn, items: Iterator[Any]) -> Iterator[Any]:
        return iter(self.pool.map(fn, items))


class ExecutorAdapter(Adapter):
    """concurrent.futures.ProcessPoolExecutor."""

    key = "ppe"
    label = "ProcessPoolExecutor"

    def open(self) -> None:
        self.pool = cf.ProcessPoolExecutor(self.workers, mp_context=self.context())

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def terminate(self) -> None:
        processes = list(getattr(self.pool, "_processes", {}).values())  # no public API
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()

    def submit(self, fn: Fn, *args: Any) -> Any:
        return self.pool.submit(fn, *args)

    def is_worker_death(self, exc: BaseException) -> bool:
        return isinstance(exc, cf.process.BrokenProcessPool)

    def map(self, fn: Fn, items: Sequence[Any], chunksize: int | None) -> Iterable[Any]:
        if chunksize is None:
            return self.pool.map(fn, items)
        return self.pool.map(fn, items, chunksize=chunksize)


class MpPoolAdapter(Adapter):
    """multiprocessing.Pool (apply_async / map / imap)."""

    key = "mp_pool"
    label = "multiprocessing.Pool"
    stream_chunksize: ClassVar[int] = 1000

    def open(self) -> None:
        self.pool: multiprocessing.pool.Pool = self.context().Pool(self.workers)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

    def abort(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def submit(self, fn: Fn, *args: Any) -> Any:
        return self.pool.apply_async(fn, args)

    def result(self, handle: Any, timeout: float | None = None) -> Any:
        return handle.get(timeout)

    def done(self, handle: Any) -> bool:
        return bool(handle.ready())

    def map(self, fn: Fn, items: Sequence[Any], chunksize: int | None) -> Iterable[Any]:
        return self.pool.map(fn, items, chunksize)

    def stream(self, fn: Fn, items: Iterator[Any]) -> Iterator[Any]:
        # imap's default chunksize is 1 (one IPC message per item); 1000 keeps it usable.
        return self.pool.imap(fn, items, chunksize=self.stream_chunksize)


class LokyAdapter(Adapter):
    """loky.ProcessPoolExecutor (its own "loky" start method: fork + exec)."""

    key = "loky"
    label = "loky"
    distribution = "loky"
    honours_start_method = False

    def open(self) -> None:
        import loky  # type: ignore[import-untyped]

        self._loky = loky
        self.pool = loky.ProcessPoolExecutor(self.workers)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def abort(self) -> None:
        self.pool.shutdown(wait=True, kill_workers=True)

    def terminate(self) -> None:
        self.pool.shutdown(wait=False, kill_workers=True)

    def submit(self, fn: Fn, *args: Any) -> Any:
        return self.pool.submit(fn, *args)

    def map(self, fn: Fn, items: Sequence[Any], chunksize: int | None) -> Iterable[Any]:
        results: Iterable[Any] = self.pool.map(fn, items, chunksize=chunksize or 1)
        return results


class PebbleAdapter(Adapter):
    """pebble.ProcessPool (schedule / map; per-job timeouts; survives worker death)."""

    key = "pebble"
    label = "pebble"
    distribution = "pebble"

    def open(self) -> None:
        import pebble

        self._pebble = pebble
        self.pool = pebble.ProcessPool(max_workers=self.workers, context=self.context())

    def close(self) -> None:
        self.pool.close()  # type: ignore[no-untyped-call]
        self.pool.join()

    def abort(self) -> None:
        self.pool.stop()  # type: ignore[no-untyped-call]
        self.pool.join()

    def submit(self, fn: Fn, *args: Any) -> Any:
        return self.pool.schedule(fn, args=args)

    def schedule_with_timeout(self, fn: Fn, args: tuple[Any, ...], timeout: float) -> Any:
        return self.pool.schedule(fn, args=args, timeout=timeout)

    def is_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, cf.TimeoutError)

    def is_worker_death(self, exc: BaseException) -> bool:
        return isinstance(exc, self._pebble.ProcessExpired)

    def map(self, fn: Fn, items: Sequence[Any], chunksize: int | None) -> Iterable[Any]:
        future = self.pool.map(fn, items, chunksize=chunksize or 1)
        results: Iterable[Any] = future.result()
        return results


class MpireAdapter(Adapter):
    """mpire.WorkerPool with keep_alive (apply_async / map / imap)."""

    key = "mpire"
    label = "mpire"
    distribution = "mpire"

    def open(self) -> None:
        from mpire.pool import WorkerPool

        self.pool = WorkerPool(n_jobs=self.workers, start_method=self.start_method, keep_alive=True)
        self._applied = False

    def _before_map(self) -> None:
        # mpire cannot run map/imap on kept-alive workers that served apply_async
        # (TypeError in the worker); it needs its workers restarted in between.
        if self._applied:
            self.pool.stop_and_join()
            self._applied = False

    def warm(self, count: int) -> list[Any]:
        self._before_map()
        return list(self.pool.map(_noop, list(range(count)), chunk_size=1))

    def close(self) -> None:
        self.pool.stop_and_join()
        self.pool.terminate()

    def abort(self) -> None:
        self.pool.terminate()

    def submit(self, fn: Fn, *args: Any) -> Any:
        self._applied = True
        return self.pool.apply_async(fn, args=args)

    def result(self, handle: Any, timeout: float | None = None) -> Any:
        return handle.get(timeout)

    def done(self, handle: Any) -> bool:
        return bool(handle.ready())

    def map(self, fn: Fn, items: Sequence[Any], chunksize: int | None) -> Iterable[Any]:
        # mpire unpacks tuple/dict items into arguments; the benchmark items are ints/bytes.
        self._before_map()
        results: Iterable[Any] = self.pool.map(fn, items, chunk_size=chunksize)
        return results

    def stream(self, fn: Fn, items: Iterator[Any]) -> Iterator[Any]:
        self._before_map()
        return self.pool.imap(fn, items, chunk_size=1000)


class JoblibAdapter(Adapter):
    """joblib.Parallel(backend="loky") - a batch API, no asynchronous submit."""

    key = "joblib"
    label = "joblib"
    distribution = "joblib"
    honours_start_method = False

    def open(self) -> None:
        import joblib  # type: ignore[import-untyped]

        self._joblib = joblib
        self.parallel = joblib.Parallel(n_jobs=self.workers, backend="loky")
        self.parallel.__enter__()

    def close(self) -> None:
        self.parallel.__exit__(None, None, None)
        from joblib.externals.loky import reusable_executor  # type: ignore[import-untyped]

        executor = reusable_executor._executor
        if executor is not None:
            executor.shutdown(wait=True)

    def call(self, fn: Fn, *args: Any) -> Any:
        return self.parallel([self._joblib.delayed(fn)(*args)])[0]

    def run_all(self, fn: Fn, args: Sequence[Any]) -> list[Any]:
        delayed = self._joblib.delayed
        return list(self.parallel(delayed(fn)(a) for a in args))

    def map(self, fn: Fn, items: Sequence[Any], chunksize: int | None) -> Iterable[Any]:
        delayed = self._joblib.delayed
        if chunksize is None:
            return list(self.parallel(delayed(fn)(x) for x in items))
        parallel = self._joblib.Parallel(n_jobs=self.workers, backend="loky", batch_size=chunksize)
        return list(parallel(delayed(fn)(x) for x in items))


ALL_ADAPTERS: tuple[type[Adapter], ...] = (
    TaskqAdapter,
    ExecutorAdapter,
    MpPoolAdapter,
    LokyAdapter,
    PebbleAdapter,
    MpireAdapter,
    JoblibAdapter,
)
PEER_KEYS: tuple[str, ...] = tuple(a.key for a in ALL_ADAPTERS if a is not TaskqAdapter)


def adapter_class(key: str) -> type[Adapter]:
    for cls in ALL_ADAPTERS:
        if cls.key == key:
            return cls
    raise KeyError(key)
