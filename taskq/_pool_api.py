"""What every taskq pool offers its callers: ``submit``, ``schedule``, ``map``,
``imap_unordered``, with their arguments checked here, once.

The in-memory ``Pool`` (``_pool.py``) and the pool over a broker's store
(``_broker_pool.py``) differ in where a job goes, not in how it is asked for:
each implements ``_enqueue`` (pickle the call, queue or store it, return its
future) and says how far ahead a ``map`` may read (``_window_size``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any, ParamSpec, TypeVar

from taskq import _map
from taskq._job import JobFuture
from taskq._options import (
    RetryOn,
    check_callable,
    check_chunksize,
    check_delay,
    check_priority,
    check_retries,
    check_retry_on,
    check_timeout,
)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class PoolAPI(Executor):
    """The callers' side of a pool (see the module docstring)."""

    _job_timeout: float | None  # the pool's default limit per job (None: no limit)
    _retry_delay: float  # the pool's default base of the retry backoff
    _max_workers: int
    _unstarted_maps: _map.UnstartedMaps

    def _enqueue(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        priority: float,
        timeout: float | None,
        retries: int = 0,
        retry_delay: float = 0.1,
        retry_on: tuple[type[BaseException], ...] | None = None,
        block: bool = True,
        name: str | None = None,
    ) -> JobFuture[Any]:
        """Queue the call (checked already); return its future."""
        raise NotImplementedError

    # -- submitting -----------------------------------------------------------

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> JobFuture[R]:
        """Queue ``fn(*args, **kwargs)`` at priority 0; wait for room if the queue is full."""
        if not callable(fn):
            check_callable(fn, "submit")
        return self._enqueue(
            fn, args, kwargs, priority=0, timeout=self._job_timeout, retry_delay=self._retry_delay
        )

    def schedule(
        self,
        fn: Callable[..., R],
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        priority: float = 0,
        timeout: float | None = None,
        retries: int = 0,
        retry_delay: float | None = None,
        retry_on: RetryOn = None,
        block: bool = True,
    ) -> JobFuture[R]:
        """Queue ``fn(*args, **kwargs)``; return its future.

        priority:    **the smaller number runs first** (any int or float; equal
                     priorities run in submission order), as in ``queue.PriorityQueue``.
        timeout:     stop the job if it runs longer (seconds; queueing time does
                     not count): its worker is terminated and replaced, and the
                     future raises ``JobTimeout``. Default: the pool's ``job_timeout``.
        retries:     run it again up to this many times after an exception, a
                     crash or a timeout, with exponential backoff and jitter.
        retry_delay: base of that backoff (default: the pool's ``retry_delay``).
        retry_on:    exception types that are retried (default: every Exception,
                     which includes ``WorkerCrashed`` and ``JobTimeout``).
        block:       with a full queue (``maxsize``), wait for room (True) or
                     raise ``Full`` at once (False).
        """
        check_callable(fn, "schedule")
        if isinstance(args, (str, bytes, dict)):  # would be split into characters, or keys
            raise TypeError(f"args must be a tuple or list of arguments, e.g. ({args!r},)")
        check_priority(priority)
        timeout = check_timeout(timeout, "timeout")
        return self._enqueue(
            fn,
            tuple(args),
            {} if kwargs is None else dict(kwargs),
            priority=priority,
            timeout=self._job_timeout if timeout is None else timeout,
            retries=check_retries(retries),
            retry_delay=self._retry_delay if retry_delay is None else check_delay(retry_delay),
            retry_on=check_retry_on(retry_on),
            block=block,
        )

    # -- map --------------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        priority: float = 0,
        progress: bool = False,
    ) -> Iterator[R]:
        """Like ``map(fn, *iterables)``, run on the pool; results in input order.

        Lazy: input is read only as results are taken (a bounded number of
        chunks is in flight), so endless iterables work. A map nobody has
        started reading when the pool shuts down is run to the end of its input
        first, as ``Executor.map`` (which queues everything at once) would have:
        so never leave a map over *endless* input unread at shutdown. Leaving a
        loop over it early cancels the chunks not started. ``timeout`` counts
        from this call; the first exception is raised when its result is
        reached. ``chunksize=1`` lets taskq group short items adaptively; a
        larger value is used as given. ``priority`` applies to every chunk.
        ``progress=True`` shows a progress bar on stderr.
        """
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        deadline = None if timeout is None else time.monotonic() + timeout
        star = len(iterables) > 1
        items = zip(*iterables, strict=False) if star else iter(iterables[0])
        feeder = self._feeder(items, chunksize)
        window = _map.MapWindow(
            self._chunk_submitter(fn, star, priority), feeder, self._window_size()
        )
        self._unstarted_maps.add(window)
        started = self._unstarted_maps.started(window)
        results = _map.ordered_results(window, feeder, deadline, started)
        return self._with_progress(results, progress, _map.length_hint(iterables))

    def imap_unordered(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int = 1,
        *,
        priority: float = 0,
        progress: bool = False,
    ) -> Iterator[R]:
        """Like ``map(fn, iterable)`` but yields results as they complete (lazy too)."""
        feeder = self._feeder(iter(iterable), chunksize)
        window, done = _map.unordered_window(
            self._chunk_submitter(fn, False, priority), feeder, self._window_size()
        )
        self._unstarted_maps.add(window)
        started = self._unstarted_maps.started(window)
        results = _map.unordered_results(window, done, feeder, started)
        return self._with_progress(results, progress, _map.length_hint((iterable,)))

    def _chunk_submitter(
        self, fn: Callable[..., Any], star: bool, priority: float
    ) -> Callable[[list[Any]], JobFuture[Any]]:
        check_callable(fn, "map")
        check_priority(priority)
        make_call = _map.chunk_call(fn, star)
        name = getattr(fn, "__qualname__", repr(fn))

        def submit_chunk(chunk: list[Any]) -> JobFuture[Any]:
            runner, args = make_call(chunk)
            return self._enqueue(
                runner, args, {}, priority=priority, timeout=self._job_timeout, name=name
            )

        return submit_chunk

    def _feeder(self, items: Iterator[Any], chunksize: int) -> _map.ChunkFeeder:
        # A pool-wide job_timeout is a limit per item: items are not grouped then,
        # or several short items could add up past it.
        adaptive = chunksize == 1 and self._job_timeout is None
        return _map.ChunkFeeder(items, check_chunksize(chunksize), adaptive=adaptive)

    def _window_size(self) -> int:
        return _map.WINDOW_PER_WORKER * self._max_workers

    @staticmethod
    def _with_progress(results: Iterator[Any], progress: bool, total: int | None) -> Iterator[Any]:
        if not progress:
            return results
        from taskq._progress import track

        return track(results, total)
