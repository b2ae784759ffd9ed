"""``taskq.Pool``: a priority job queue over a pool of worker processes.

How a job flows::

    caller threads                manager thread (_loop.py, one)              worker processes
    ──────────────                ──────────────────────────────              ────────────────
    submit/schedule/map
      │ pickle the call (an unpicklable call fails its future here)
      ▼
    WorkQueue ── what runs next ──▶ dispatch: claim the most urgent  ──CALL──▶ run_worker
    (_queue.py: priority, FIFO,    jobs for workers with room          pipe   (_worker.py)
     LIFO, maxsize, cancel)        (_dispatch.py decides,                     claims the job
      │                             _handoff.py writes)                       in its slot,
      └ dispatch_now: an idle worker                                           │ fn(*args)
        gets the job from the                                                  ▼
        caller's thread            collect: OK / ERROR frames      ◀─OK/ERR─ one reply per
                                   and exits (sentinels)             pipe    job, in order
    JobFuture ◀── resolve ──────── (_collect.py decides, _ledger.py
    (_job.py)     (no lock held:    records; a crash fails that job
                   callbacks run    only, a replacement starts:
                   here)            _workforce.py)

    commands ── call/post + wake-up pipe ──▶ kill, shutdown, terminate (run on the manager)
    timers   (_timers.py) ──▶ job timeouts (_timeouts.py), retry backoffs, SIGKILL after
                              SIGTERM, take-back re-checks
    shared memory: the user's counters (_counters.py) and one slot per worker saying
    which job it is on and since when (_slot.py); the pool's stats stay in the parent.

Bytes move through ``_channel.py`` (framing over OS pipes); what the frames
mean is in ``_protocol.py``.

* ``schedule()`` pickles the call in the caller's thread, puts a ``WorkItem``
  in the queue, and hands it to an idle worker right away if the manager's
  lock is free (otherwise the manager does, woken by the wake-up pipe).
* A busy worker is topped up only when it replies, with as many jobs as fit
  its time budget: jobs queued meanwhile keep their priority order.
* A worker replies to each job before starting the next, and claims each job
  in its slot before starting it, so when one dies the manager knows exactly
  which job it was running: that job fails (or is retried); the jobs it had not
  started go back to the queue in their place.
"""

from __future__ import annotations

import inspect
import itertools
import multiprocessing
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.context import BaseContext
from typing import Any, ParamSpec, TypeVar

from taskq import _exit, _map
from taskq._counters import Counter, CounterBlock
from taskq._errors import PicklingFailed
from taskq._job import JobFuture, WorkItem
from taskq._ledger import Ledger
from taskq._log import log
from taskq._manager import Manager
from taskq._options import (
    check_aging,
    check_context,
    check_delay,
    check_options,
    check_timeout,
)
from taskq._pool_api import PoolAPI
from taskq._protocol import dump_call
from taskq._queue import JobQueue, QueueClosed, WorkQueue
from taskq._segments import SegmentCache
from taskq._shm import SharedCall
from taskq._stats import (
    PoolStats,
    StatsBlock,
)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Pool(PoolAPI):
    """A pool of worker processes fed by a priority queue; a drop-in ``Executor``.

    The first five parameters mean what they mean for
    ``concurrent.futures.ProcessPoolExecutor``; ``max_tasks_per_child`` works
    under every start method, ``fork`` included. The keyword-only options:

    maxsize:     at most this many jobs wait in the queue (0: no bound); running
                 jobs don't count. ``schedule(block=False)`` raises ``Full`` when
                 it is reached, ``submit`` and ``map`` wait for room.
    counters:    names of shared integer counters, see ``counter()``.
    order:       "priority" (default: smaller number first, ties in submission
                 order), "fifo" or "lifo".
    job_timeout: default run-time limit of each job, in seconds.
    retry_delay: base delay of the exponential retry backoff, in seconds.
    aging:       None (default: strict priority order), or seconds: a waiting job's
                 priority improves by one level per ``aging`` seconds it has waited,
                 so a stream of urgent jobs cannot starve the others. Jobs are
                 ordered by ``priority + queued_at / aging``, ties in submission
                 order. Example, ``aging=10``: a priority-5 job queued at t=0 (key 5)
                 runs before every priority-0 job queued after t=50 (key > 5), so
                 newcomers overtake it for at most 5 x 10 = 50 seconds.
    broker:      None (default): jobs wait in this process's memory. A URL such as
                 ``"sqlite:///jobs.db"``: jobs are kept in that durable store and
                 outlive this process; see ``taskq._broker_pool.BrokerPool`` for
                 what changes (``max_workers=0``, ``job(id)``, leases, ...).
    queue:       the name of the queue inside the broker's store.
    lease, result_ttl, max_lost, secret: with a broker only (see ``BrokerPool``).
    """

    def __new__(cls, *args: Any, broker: str | None = None, **kwargs: Any) -> Pool:
        # Pool(broker=URL) is a pool over a durable store: the same API, another class.
        if broker is not None and cls is Pool:
            from taskq._broker_pool import BrokerPool

            return super().__new__(BrokerPool)
        return super().__new__(cls)

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
        aging: float | None = None,
        broker: str | None = None,
        queue: str = "default",
        lease: float | None = None,
        result_ttl: float | None = None,
        max_lost: int | None = None,
        secret: str | None = None,
    ):
        broker_only = (lease, result_ttl, max_lost, secret)
        if broker is not None or queue != "default" or broker_only != (None,) * 4:
            raise ValueError(
                "queue, lease, result_ttl, max_lost and secret apply to a broker's store: "
                "pass broker= too"
            )
        max_workers = _default_workers() if max_workers is None else max_workers
        counter_names = check_options(
            max_workers, initializer, max_tasks_per_child, maxsize, counters, order
        )
        self._job_timeout = check_timeout(job_timeout, "job_timeout")
        self._retry_delay = check_delay(retry_delay)
        ctx = mp_context if mp_context is not None else multiprocessing.get_context()
        check_context(ctx)
        self._max_workers = max_workers
        self._queue: WorkQueue[WorkItem] = JobQueue(order, maxsize, check_aging(aging))
        self._stats = StatsBlock()
        self._counters = CounterBlock(counter_names, ctx)
        self._manager = Manager(
            ctx=ctx,
            max_workers=max_workers,
            queue=self._queue,
            stats=self._stats,
            counters=self._counters,
            initializer=initializer,
            initargs=initargs,
            max_tasks=max_tasks_per_child,
        )
        self._job_ids = itertools.count(1)
        # Large arguments' shared memory (_shm.py); kept segments are freed on the
        # manager's timers (a callable holding no reference to the pool).
        self._segments = SegmentCache(later=self._manager.later)
        # One hook for every job's future, holding no reference to the pool: a pool
        # dropped after shutdown() is freed at once (no cycle to wait for the GC).
        self._withdraw_hook = _Withdraw(self._queue, self._manager.ledger)
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._unstarted_maps = _map.UnstartedMaps()
        self._ledger = self._manager.ledger
        self._manager.start()
        self._pid = os.getpid()
        _exit.running.add(self._manager)
        _exit.open_pools.add(self)
        # A pool dropped without shutdown() still stops its workers once jobs are done.
        weakref.finalize(self, self._manager.post, self._manager.request_stop)
        log.debug("pool started: %d workers (%s)", max_workers, ctx.get_start_method())

    # -- submitting (submit, schedule: _pool_api.py) ---------------------------
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
        """Pickle the call and queue it; a call that cannot be pickled fails its future."""
        if self._shutdown or self._manager.broken is not None:
            self._check_open()
        try:
            call = dump_call(fn, args, kwargs, self._segments)
        except PicklingFailed as exc:
            return self._failed_job(exc)
        if name is None:
            name = getattr(fn, "__qualname__", "?")
        return self._queue_call(
            call, name, priority, timeout, retries, retry_delay, retry_on, block=block
        )

    def _queue_call(
        self,
        call: bytes,
        name: str,
        priority: float,
        timeout: float | None,
        retries: int,
        retry_delay: float,
        retry_on: tuple[type[BaseException], ...] | None,
        *,
        block: bool = True,
    ) -> JobFuture[Any]:
        """Queue an already pickled call (a broker's server hands its jobs in this way)."""
        future: JobFuture[Any] = JobFuture()
        job_id = future.job_id = next(self._job_ids)
        item = WorkItem(
            job_id, future, call, name, priority, timeout, retries, retry_delay, retry_on
        )
        future._work = item
        future._on_cancel = self._withdraw_hook
        if type(call) is SharedCall:  # its shared memory lives as long as the job
            future.add_done_callback(call.segment.release)
        # A done-callback runs on the manager thread, which is what frees room:
        # waiting there would deadlock, so a job queued from a callback skips maxsize.
        force = self._queue.maxsize > 0 and self._manager.is_manager_thread()
        try:
            self._queue.put(item, block=block, force=force)
        except QueueClosed:
            if self._manager.broken is not None:  # it broke while we waited for room
                raise self._manager.broken from None
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        # Queued: from here on the future is the answer, even if the pool breaks now
        # (the manager then fails it like every queued job).
        self._ledger.submitted(priority)
        self._manager.dispatch_now(priority)
        return future

    def _failed_job(self, error: BaseException) -> JobFuture[Any]:
        """A job that fails before it is queued still gets a future, like any other job."""
        self._check_open()
        future: JobFuture[Any] = JobFuture()
        future.set_running_or_notify_cancel()
        future.set_exception(error)
        self._ledger.refused()
        return future

    def _check_open(self) -> None:
        if self._manager.broken is not None:
            raise self._manager.broken
        if self._shutdown:
            raise RuntimeError(
                "cannot schedule new futures after interpreter shutdown"
                if _exit.exiting
                else "cannot schedule new futures after shutdown"
            )

    def job(self, job_id: str) -> JobFuture[Any]:
        """A future for a job kept in a broker's store, by its id (``broker=`` pools only:
        an in-memory pool's jobs are known by their futures alone)."""
        raise TypeError(
            "pool.job(job_id) looks a job up in a broker's store: create the pool with "
            "broker='sqlite:///jobs.db' or broker='redis://...'"
        )

    # -- control ----------------------------------------------------------------

    def kill(self, future: JobFuture[Any]) -> bool:
        """Stop one job wherever it is; True if it had not finished.

        A queued job is cancelled. A running job's worker is terminated
        (SIGTERM, then SIGKILL) and replaced; the future raises ``CancelledError``
        unless the job finished first.
        """
        if not isinstance(future, JobFuture):
            raise TypeError(f"kill() takes a future this pool returned; got {future!r}")
        hook, item = future._on_cancel, future._work
        if item is None or hook is None:
            return False  # finished
        if hook is not self._withdraw_hook:
            raise ValueError(f"{future!r} belongs to another pool: call kill() on that pool")
        if future.cancel():
            return True
        answer: bool = self._manager.call(lambda: self._manager.kill(item))
        return answer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting jobs; run what is queued (unless ``cancel_futures``), then stop
        the workers. With ``wait=True``, return once every worker has exited."""
        if not cancel_futures:
            self._unstarted_maps.run_all()  # before the queue closes: they were asked for
        with self._shutdown_lock:
            first = not self._shutdown
            self._shutdown = True
        self._queue.close()
        if cancel_futures:
            self._manager.call(self._manager.cancel_queued)
        if first:
            log.debug("pool shutting down (wait=%s, cancel_futures=%s)", wait, cancel_futures)
            self._manager.post(self._manager.request_stop)
        if wait:
            self._manager.join()
        self._segments.close()  # no new job will need one; those in use go as their jobs end

    def terminate(self) -> None:
        """Stop now: cancel queued jobs, kill running ones (their futures raise
        ``CancelledError``) and wait for every worker to exit."""
        with self._shutdown_lock:
            self._shutdown = True
        self._queue.close()
        self._manager.call(self._manager.terminate)
        self._manager.join()
        self._segments.close()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        # Ctrl-C inside the block must not wait for long jobs: stop them.
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.terminate()
        else:
            self.shutdown(wait=True)

    # -- observing ----------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A consistent snapshot of the pool's statistics (see ``PoolStats``)."""
        return self._stats.read()

    def counter(self, name: str) -> Counter:
        """The shared counter ``name`` declared with ``Pool(counters=...)``."""
        return Counter(self._counters, name)

    def counters(self) -> dict[str, int]:
        """A consistent snapshot of every user counter."""
        return dict(zip(self._counters.names, self._counters.snapshot(), strict=True))

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<taskq.Pool workers={s.workers} queued={s.queued} running={s.running} "
            f"done={s.succeeded + s.failed + s.cancelled}{' shut down' if self._shutdown else ''}>"
        )


class _Withdraw:
    """``JobFuture.cancel()`` hook: free the queue slot of a cancelled job.

    True if it was still queued; False if the pool had already taken it (the
    pool then sees the cancellation and drops the job itself).
    """

    __slots__ = ("_ledger", "_queue")

    def __init__(self, queue: WorkQueue[WorkItem], ledger: Ledger):
        self._queue, self._ledger = queue, ledger

    def __call__(self, item: WorkItem) -> bool:
        if not self._queue.cancel(item):
            return False
        self._ledger.withdrawn(item)
        return True


# ``inspect.signature(Pool)`` would show ``__new__``'s catch-all (which only picks the
# class); what users pass is ``__init__``'s parameters.
_init_params = list(inspect.signature(Pool.__init__).parameters.values())[1:]
setattr(Pool, "__signature__", inspect.Signature(_init_params))  # noqa: B010
