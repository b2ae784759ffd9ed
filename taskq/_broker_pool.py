"""``Pool(broker=URL)``: the same pool API over a durable store.

How a job flows with a broker::

    submit/schedule/map ── pickle, put ──▶ the store (_sqlite_broker.py, _redis_broker.py)
      │ (returns once committed, or sent)                            │ claim under a lease
      ▼                                                              ▼
    BrokerFuture ◀── Waiters.resolve ◀── outcome ── Server (_serve.py) in any process
    (_broker_client.py)   (own server: at once;        serving the store: a local Pool
                           others': a poll of the      runs the job, the outcome is
                           store's finished jobs)      stored (first one wins)

The thread that serves and waits is in ``_broker_loop.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.context import BaseContext
from typing import Any

from taskq import _exit, _map
from taskq._broker import (
    DEFAULT_LEASE,
    DEFAULT_MAX_LOST,
    DEFAULT_RESULT_TTL,
    JobOptions,
    JobState,
    NewJob,
    Outcome,
    OutcomeKind,
    new_job_id,
    open_broker,
)
from taskq._broker_client import BrokerFuture, Waiters
from taskq._broker_counters import StoreCounters
from taskq._broker_loop import BrokerLoop
from taskq._broker_stats import broker_pool_stats
from taskq._counters import Counter
from taskq._errors import Full, PicklingFailed
from taskq._job import JobFuture
from taskq._log import log
from taskq._options import (
    check_aging,
    check_client_workers,
    check_delay,
    check_options,
    check_timeout,
    serving_context,
)
from taskq._pool import Pool
from taskq._protocol import dump_call, dumps
from taskq._redis_url import safe_url
from taskq._serve import Server, init_worker
from taskq._stats import PoolStats

FULL_BACKOFF = (0.001, 0.05)  # waiting for room in a bounded store queue


class BrokerPool(Pool):
    """A ``Pool`` whose jobs live in a broker's store (``Pool(broker="sqlite:///jobs.db")``).

    Differences from the in-memory pool:

    * ``schedule``/``submit`` return once the job is committed to the store
      (SQLite), or written to the store's connection in a way that survives this
      process's death (Redis: ``_redis_puts.py``; with ``maxsize``, once
      committed). ``job_id`` is a string; ``pool.job(job_id)`` gives a future for
      any job of the store, from any process.
    * ``max_workers=0`` makes a client that only submits and waits; the jobs are
      run by other processes serving the store (``taskq worker URL``).
    * A serving process holds each job under a lease renewed by a heartbeat
      (``lease`` seconds); if the process dies, the job goes back to the queue in
      its place and runs elsewhere. After ``max_lost`` lost leases it fails with
      ``JobLost``. Outcomes are kept ``result_ttl`` seconds: the storing process's
      (``taskq worker --result-ttl`` for the jobs it runs).
    * ``shutdown(wait=True)`` waits for this process's own jobs; the serving
      side then stops claiming and leaves other jobs in the store.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        max_tasks_per_child: int | None = None,
        *,
        maxsize: int = 0,
        counters: Iterable[str] = (),
        order: str = "priority",
        job_timeout: float | None = None,
        retry_delay: float = 0.1,
        broker: str | None = None,
        queue: str = "default",
        lease: float | None = None,
        result_ttl: float | None = None,
        max_lost: int | None = None,
        secret: str | None = None,
        aging: float | None = None,
    ):
        assert broker is not None
        lease = DEFAULT_LEASE if lease is None else lease
        result_ttl = DEFAULT_RESULT_TTL if result_ttl is None else result_ttl
        max_lost = DEFAULT_MAX_LOST if max_lost is None else max_lost
        workers = check_client_workers(max_workers)
        names = check_options(
            max(1, workers), initializer, max_tasks_per_child, maxsize, counters, order
        )
        if order == "lifo":
            raise ValueError("order='lifo' is not supported with a broker: use priorities")
        if not (isinstance(lease, (int, float)) and lease > 0):
            raise ValueError(f"lease must be a positive number of seconds; got {lease!r}")
        if not (isinstance(max_lost, int) and max_lost >= 1):
            raise ValueError(f"max_lost must be an int >= 1; got {max_lost!r}")
        self._order = order
        self._aging = check_aging(aging)
        if self._aging is not None and order != "priority":
            raise ValueError("aging applies to order='priority' only")
        self._maxsize = maxsize
        self._job_timeout = check_timeout(job_timeout, "job_timeout")
        self._retry_delay = check_delay(retry_delay)
        self._max_workers = workers
        self._broker = open_broker(broker, queue, result_ttl=result_ttl, secret=secret)
        self._store_counters = StoreCounters(broker, queue, names, secret)
        self._counts = {kind: 0 for kind in OutcomeKind}
        self._submitted = 0
        self._counts_lock = threading.Lock()
        self._waiters = Waiters(self._broker, self._count_outcome)
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._unstarted_maps = _map.UnstartedMaps()
        self._broken: BaseException | None = None
        self._local: Pool | None = None
        self._server: Server | None = None
        wake = threading.Event()
        if workers:
            ctx = mp_context if mp_context is not None else serving_context(broker)
            self._local = Pool(
                workers,
                ctx,
                init_worker,
                (self._store_counters, initializer, tuple(initargs)),
                max_tasks_per_child,
                retry_delay=self._retry_delay,
            )
            self._server = server = Server(
                self._broker,
                self._local,
                workers,
                lease=lease,
                max_lost=max_lost,
                wake=wake.set,
                delivered=self._waiters.resolve,
            )
            self._waiters.delivered_here = server.holds
        self._loop = BrokerLoop(
            self._broker, self._waiters, self._server, self._local, wake, self._set_broken
        )
        self._loop.on_close.append(self._store_counters.close)
        _exit_hooks.add(self)
        weakref.finalize(self, self._loop.wake.set)
        log.debug("broker pool started: %s queue %r, %d workers", safe_url(broker), queue, workers)

    # -- submitting -------------------------------------------------------------

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
        self._check_open()
        try:
            call = dump_call(fn, args, kwargs)
            options = _options_blob(JobOptions(timeout, retries, retry_delay, retry_on))
        except PicklingFailed as exc:
            return self._failed_job(exc)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            return self._failed_job(PicklingFailed(f"cannot pickle the retry_on types: {exc}"))
        if name is None:
            name = getattr(fn, "__qualname__", "?")
        rank = priority if self._order == "priority" else 0
        job = NewJob(new_job_id(), name, priority, rank, call, options, self._aging)
        future = self._waiters.new(job.job_id)
        try:
            self._put(job, block, future)
        except BaseException:
            self._waiters.forget(job.job_id)
            raise
        with self._counts_lock:
            self._submitted += 1
        wake = self._loop.wake
        if self._server is not None and not wake.is_set():  # its own server may claim it now
            wake.set()
        return future

    def _put(self, job: NewJob, block: bool, future: BrokerFuture) -> None:
        # A callback on this pool's thread must not wait for room: only that thread's
        # server frees it (when it is the only one), so it would wait for ever.
        maxsize = 0 if threading.current_thread() is self._loop.thread else self._maxsize
        if not maxsize:  # no room to check: the store's answer may come later
            self._broker.send(job, functools.partial(self._acknowledged, future))
            return
        delay = FULL_BACKOFF[0]
        while True:
            try:
                self._broker.put(job, maxsize=maxsize)
                future._stored = True
                return
            except Full:
                if not block:
                    raise
            self._check_open()
            time.sleep(delay)
            delay = min(delay * 2, FULL_BACKOFF[1])

    def _acknowledged(self, future: BrokerFuture, error: BaseException | None) -> None:
        """The store's reply to a job sent: stored, or refused (its future fails)."""
        if error is None:
            future._stored = True
        else:
            self._waiters.resolve(future.job_id, Outcome.of_error(error, 0))

    def _failed_job(self, error: BaseException) -> JobFuture[Any]:
        future: JobFuture[Any] = JobFuture()
        future.set_running_or_notify_cancel()
        future.set_exception(error)
        return future

    def _check_open(self) -> None:
        if self._broken is not None:
            raise self._broken
        if self._shutdown:
            raise RuntimeError(
                "cannot schedule new futures after interpreter shutdown"
                if _exit.exiting
                else "cannot schedule new futures after shutdown"
            )

    def _window_size(self) -> int:
        return 4 * max(2, self._max_workers)  # a client's map still reads ahead a little

    def job(self, job_id: str) -> JobFuture[Any]:
        """A future for the job ``job_id`` of this store, submitted by any process,
        before or after a restart; ``KeyError`` if the store has no such job (or its
        outcome expired after ``result_ttl``)."""
        if not isinstance(job_id, str):
            raise TypeError(f"job ids of a broker pool are strings; got {job_id!r}")
        future = self._waiters.existing(job_id)
        self._loop.wake.set()
        return future

    # -- control ----------------------------------------------------------------

    def kill(self, future: JobFuture[Any]) -> bool:
        """Stop the job wherever it is, in any process serving the store: a queued job
        is removed; a running one is stopped by its server (SIGTERM, then SIGKILL)
        and its future raises ``CancelledError``. True if it had not finished."""
        if not isinstance(future, BrokerFuture):
            raise ValueError(f"{future!r} belongs to another pool: call kill() on that pool")
        store = future._store_waiters.broker
        if (store.url, store.queue) != (self._broker.url, self._broker.queue):
            raise ValueError(
                f"{future!r} belongs to another pool (store {safe_url(store.url)}, queue "
                f"{store.queue!r}): call kill() on a pool of that store"
            )
        job_id = str(future.job_id)
        state = self._broker.request_kill(job_id)
        if state is JobState.QUEUED:
            self._waiters.resolve(job_id, Outcome.cancelled("killed while queued"))
            return True
        self._loop.wake.set()
        return state is JobState.RUNNING

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting jobs. Unless ``cancel_futures`` (which removes this process's
        queued jobs from the store), this process's jobs, and those looked up with
        ``job()``, run to the end first, on its own workers or elsewhere; then its
        workers stop. Other jobs stay in the store. With ``wait=True``, return once all
        that is done."""
        if not cancel_futures:
            self._unstarted_maps.run_all()
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            if self._server is not None:  # first: none of them may be claimed meanwhile
                self._server.stop_claiming()
                self._server.release_unstarted()  # claimed, not started: cancelled below
            for job_id in self._waiters.pending_ids():
                self._waiters.cancel_queued(job_id)
        self._loop.shut_down()
        if wait:
            self._loop.join()

    def terminate(self) -> None:
        """Stop now: this process's queued jobs are removed from the store, the jobs its
        workers run are stopped (their futures raise ``CancelledError``)."""
        with self._shutdown_lock:
            self._shutdown = True
        if self._server is not None:
            self._server.stop_claiming()
            self._server.release_unstarted()
        for job_id in self._waiters.pending_ids():
            self._waiters.cancel_queued(job_id)
        self._loop.terminate()
        self._loop.join()

    def stop_serving(self, grace: float) -> None:
        """What ``taskq worker`` does on SIGTERM: claim nothing more, put the jobs not
        started back in the store, let running jobs finish within ``grace`` seconds
        (then stop them and put them back too), and return."""
        with self._shutdown_lock:
            self._shutdown = True
        self._loop.stop_serving(grace)
        self._loop.join()

    def _set_broken(self, exc: BaseException) -> None:
        self._broken = exc

    @property
    def broken(self) -> BaseException | None:
        """Why this pool can no longer serve or wait (its workers cannot start, the store
        failed for good); None while it works."""
        return self._broken

    # -- observing ------------------------------------------------------------------

    def _count_outcome(self, kind: OutcomeKind) -> None:
        with self._counts_lock:
            self._counts[kind] += 1

    def stats(self) -> PoolStats:
        """This process's jobs (submitted, succeeded, failed, cancelled); what waits in
        the store's queue (``queued``, and per priority in ``priorities``); this
        process's workers, the jobs they hold, and their statistics (wait and run times
        of the jobs they ran: the wait counts from the claim by this process)."""
        local = self._local.stats() if self._local is not None else None
        with self._counts_lock:
            submitted, counts = self._submitted, dict(self._counts)
        queued = self._broker.queued_by_priority()
        held = self._server.held if self._server is not None else 0
        return broker_pool_stats(submitted, counts, queued, held, local)

    def served_stats(self) -> PoolStats:
        """What this process's workers ran (every counter of the local pool), with the
        store's queue (``queued`` and ``priorities``): the view of a ``taskq worker``,
        which submits nothing itself."""
        if self._local is None:
            raise ValueError("a pool with max_workers=0 serves nothing: use stats()")
        own = self.stats()
        return dataclasses.replace(
            self._local.stats(), queued=own.queued, priorities=own.priorities
        )

    def counter(self, name: str) -> Counter:
        """The counter ``name``, kept in the store: exact across every process using it."""
        return Counter(self._store_counters, name)

    def counters(self) -> dict[str, int]:
        return dict(zip(self._store_counters.names, self._store_counters.snapshot(), strict=True))

    def __repr__(self) -> str:
        return (
            f"<taskq.Pool broker={safe_url(self._broker.url)!r} queue={self._broker.queue!r} "
            f"workers={self._max_workers}{' shut down' if self._shutdown else ''}>"
        )


@functools.lru_cache(maxsize=64)  # most jobs of a program share a few option sets
def _options_blob(options: JobOptions) -> bytes:
    return dumps(options)


_exit_hooks: weakref.WeakSet[BrokerPool] = weakref.WeakSet()


def _finish_at_exit() -> None:
    """At interpreter exit a serving pool runs to the end this process's jobs that it can
    run itself (queued, or held here), as a local pool would; jobs that run in another
    process, or that nothing serves, stay in the store, where they are safe: exit does
    not wait for them. A client leaves its jobs in the store."""
    for pool in list(_exit_hooks):
        pool._unstarted_maps.run_all()  # before refusing new jobs: they were asked for
        with pool._shutdown_lock:
            pool._shutdown = True
        if pool._server is None:
            pool._waiters.fail_all(RuntimeError("the interpreter exited before the outcome"))
        pool._loop.at_exit()
    for pool in list(_exit_hooks):
        pool._loop.join()


threading._register_atexit(_finish_at_exit)  # type: ignore[attr-defined]
