"""Serving a store: a local pool's workers run the jobs a broker holds.

``Server`` is stepped by the broker pool's thread (``_broker_pool.py``); one
step, in order:

1. renew this process's leases when a third of the lease has passed, and give
   up the jobs whose lease was lost (their outcome will be discarded);
2. stop the jobs someone asked to kill (``pool.kill`` in any process);
3. put back the jobs of dead servers (expired leases), now and then;
4. in one call to the store (``Broker.step``): store the outcomes of jobs that
   ended since the last step, and claim as many jobs as the workers can start
   soon (``ClaimPace``), queueing them on the local pool. A server that holds
   enough still takes any job ranked before the ones it holds (an urgent job
   submitted after them): the local pool runs it next.

The local pool does the rest as for any job: priorities among what it holds,
timeouts, retries, a crashed worker failing its job. Its futures' callbacks
(on its manager thread) turn each ending into an ``Outcome`` and wake the step.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any

from taskq._broker import Broker, ClaimedJob, JobOptions, Outcome
from taskq._claim_pace import ClaimPace
from taskq._counters import CounterStore, install_worker_counters
from taskq._errors import PoolBroken, UnpicklingFailed
from taskq._job import JobFuture
from taskq._pool import Pool

log = logging.getLogger("taskq")

RECLAIM_EVERY = 0.25  # seconds between looks for expired leases (recovery = lease + this)
STALL_AFTER = 0.05  # seconds without an ending job before jobs claimed ahead go back
KILL_CHECK_EVERY = 0.02  # seconds between looks for kill requests (how soon kill() acts)
PURGE_EVERY = 60.0  # seconds between deletions of expired outcomes


class Server:
    """Claims a store's jobs for a local pool and stores their outcomes (see above)."""

    def __init__(
        self,
        broker: Broker,
        pool: Pool,
        workers: int,
        *,
        lease: float,
        max_lost: int,
        wake: Callable[[], None],
        delivered: Callable[[str, Outcome], None],
    ):
        self.broker = broker
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pool = pool
        self._lease = lease
        self._max_lost = max_lost
        self._wake = wake
        self._delivered = delivered  # an outcome this process stored (its waiters may care)
        self._pace = ClaimPace(workers, lambda: pool._manager.average_job_seconds)
        self._held: dict[str, JobFuture[Any]] = {}  # claimed job id -> the local pool's future
        self._releasing: set[str] = set()  # unstarted jobs being given back: no outcome
        self._ended: collections.deque[tuple[str, Outcome]] = collections.deque()
        self._lock = threading.Lock()  # _held and _releasing: the step vs callbacks
        self._claim_lock = threading.Lock()  # a step's claim vs stop_claiming()
        self._claiming = True
        now = time.monotonic()
        self._next_renew = now + lease / 3
        self._next_reclaim = now
        self._next_purge = now
        self._next_kill_check = now
        self._last_ended = now  # when a held job last ended (or the server started)
        self._last_rank: float | None = None  # of the last jobs claimed
        self._noticed = False  # a put woke this server (see notice_new_jobs)
        broker.register_server(self.owner, workers)

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def saturated(self) -> bool:
        """More jobs held than workers: some wait here, a backlog is being worked off."""
        return len(self._held) > self._pace.workers

    def holds(self, job_id: str) -> bool:
        """True while this server holds the job (it will hand the outcome over itself)."""
        return job_id in self._held

    def step(self) -> bool:
        """One round (see the module docstring); True if it did anything. Raises the
        local pool's ``PoolBroken`` once it broke: the jobs held here did not fail, this
        process did (the broker loop gives them back to the store)."""
        broken = self._pool._manager.broken
        if broken is not None:
            raise broken
        now = time.monotonic()
        if now >= self._next_renew:
            self._renew(now)
        if self._held and now >= self._next_kill_check:
            self._next_kill_check = now + KILL_CHECK_EVERY
            self._kill_requested()
        if self._stalled(now) and len(self._held) > self._pace.workers:
            # Jobs claimed ahead wait behind one that runs long: let other servers have
            # them (they go back in their place); no more are claimed ahead meanwhile.
            self._last_ended = now
            self.release_unstarted()
        busy = self._exchange(now)
        if now >= self._next_purge:
            self._next_purge = now + min(PURGE_EVERY, max(0.1, self.broker.result_ttl / 2))
            self.broker.purge_expired()
        return busy

    # -- the steps ------------------------------------------------------------

    def _stalled(self, now: float) -> bool:
        return bool(self._held) and now - self._last_ended > STALL_AFTER

    def _exchange(self, now: float) -> bool:
        """Store the outcomes that came in and claim what the workers can take, in one
        call to the store; True if anything moved."""
        with self._claim_lock:  # stop_claiming() waits for a claim in flight
            ended, stored, claimed = self._exchange_locked(now)
        # Outside the lock: handing outcomes over runs callbacks, which may shut down.
        self._stored(ended, stored)
        return bool(ended or claimed)

    def _exchange_locked(self, now: float) -> tuple[list[tuple[str, Outcome]], set[str], int]:
        ended = self._take_ended()
        limit, before, watch = (
            self._claim_plan(now, len(ended)) if self._claiming else (0, None, False)
        )
        if not ended and not limit:
            return [], set(), 0
        if ended:
            self._last_ended = now
        try:
            if limit and before is None and now >= self._next_reclaim:
                self._next_reclaim = now + RECLAIM_EVERY
                if self.broker.reclaim_expired(self._max_lost):
                    log.info("put back jobs whose server stopped renewing its lease")
            stored, jobs = self.broker.step(self.owner, ended, limit, self._lease, before, watch)
        except BaseException:  # the store is unreachable: keep them for the next step
            self._ended.extendleft(reversed(ended))
            raise
        self._start_all(jobs)
        return ended, set(stored), len(jobs)

    def _take_ended(self) -> list[tuple[str, Outcome]]:
        ended = []
        while self._ended:
            ended.append(self._ended.popleft())
        return ended

    def _start_all(self, jobs: list[ClaimedJob]) -> None:
        for job in jobs:
            self._start(job)
        if jobs:  # one rank per claim: a later, more urgent job must come before it
            self._last_rank = jobs[-1].rank

    def _claim_plan(self, now: float, ending: int) -> tuple[int, float | None, bool]:
        """How many jobs to claim, the rank they must come before (None: any), and
        whether to be woken for a more urgent job than those claimed (when holding
        more than the workers run)."""
        noticed, self._noticed = self._noticed, False
        with self._lock:
            held = len(self._held) - ending
        room = self._pace.room(held, self._stalled(now))
        if room > 0:
            return room, None, held + room > self._pace.workers
        if (ending or noticed) and self._last_rank is not None:
            # Full: only a job more urgent than those held, looked for while storing
            # outcomes anyway, or when a put of one woke this server.
            return self._pace.workers, self._last_rank, True
        return 0, None, False

    def notice_new_jobs(self) -> None:
        """A put woke this server: it had room, or the job is more urgent than those held.
        Called on the listener's thread, which claims at once unless the broker thread
        is in a step (saving that thread's wake-up); outcomes stay the broker thread's."""
        self._noticed = True
        if self._claiming and self._claim_lock.acquire(blocking=False):
            try:
                self._claim_now()
                return  # nothing left for the broker thread (waking it would only compete)
            except BaseException:  # the broker thread's next step retries, and reports
                pass
            finally:
                self._claim_lock.release()
        self._wake()

    def _claim_now(self) -> None:
        now = time.monotonic()
        if not self._claiming or self._pool._manager.broken is not None:
            raise RuntimeError("not claiming here")  # the broker thread decides
        limit, before, watch = self._claim_plan(now, 0)
        if limit:
            _, jobs = self.broker.step(self.owner, (), limit, self._lease, before, watch)
            self._start_all(jobs)

    def _stored(self, ended: list[tuple[str, Outcome]], stored: set[str]) -> None:
        with self._lock:
            for job_id, _ in ended:
                self._held.pop(job_id, None)
        for job_id, outcome in ended:
            if job_id in stored:
                self._delivered(job_id, outcome)
            else:
                log.warning(
                    "job %s: outcome discarded: its lease had expired and the "
                    "job was given to another server",
                    job_id,
                )

    def _renew(self, now: float) -> None:
        self._next_renew = now + self._lease / 3
        with self._lock:
            ids = list(self._held)
        kept = self.broker.renew(self.owner, ids, self._lease) if ids else set()
        if not ids:
            self.broker.heartbeat(self.owner)
        for job_id in set(ids) - kept:  # lost (e.g. this process was stopped too long)
            log.warning("job %s: lease lost; stopping it here (it runs elsewhere)", job_id)
            self._stop(job_id)

    def _kill_requested(self) -> None:
        for job_id in self.broker.kill_requests(self.owner):
            self._stop(job_id)

    def _stop(self, job_id: str) -> None:
        with self._lock:
            future = self._held.get(job_id)
        if future is not None:
            self._pool.kill(future)  # its callback stores a CANCELLED outcome

    def _start(self, job: ClaimedJob) -> None:
        try:
            options: JobOptions = pickle.loads(job.options)
        except BaseException as exc:  # a retry_on type that no longer imports, ...
            error = UnpicklingFailed(
                f"job {job.job_id} ({job.name}) in {self.broker.url}: its options could "
                f"not be unpickled ({type(exc).__name__}: {exc}); was its code changed?"
            )
            with self._lock:
                self._held[job.job_id] = JobFuture()
            self._ended.append((job.job_id, Outcome.of_error(error, job.attempts)))
            return
        try:
            future = self._pool._queue_call(
                job.call,
                job.name,
                _local_priority(job),
                options.timeout,
                options.retries,
                options.retry_delay,
                options.retry_on,
            )
        except BaseException:  # the local pool broke: the job never started here
            self.broker.release(self.owner, [job.job_id])
            raise
        with self._lock:
            self._held[job.job_id] = future
        # A partial, not a lambda over `future`: no reference cycle per job for the GC.
        future.add_done_callback(functools.partial(self._ended_locally, job))

    def _ended_locally(self, job: ClaimedJob, future: Future[Any]) -> None:
        """A local future ended (on the local pool's manager thread): keep its outcome."""
        with self._lock:
            if job.job_id in self._releasing:
                self._releasing.discard(job.job_id)
                self._held.pop(job.job_id, None)
                return
        if not future.cancelled() and isinstance(future.exception(), PoolBroken):
            self._wake()  # this process cannot run jobs: the job goes back (see step)
            return
        attempts = job.attempts - 1 + max(1, getattr(future, "attempts", 1))
        try:
            outcome = _outcome_of(job, future, attempts, self.broker.url)
        except BaseException as exc:  # the result cannot be pickled for the store
            outcome = Outcome.of_error(exc, attempts)
        self._ended.append((job.job_id, outcome))
        self._wake()

    # -- stopping -------------------------------------------------------------------

    def stop_claiming(self) -> None:
        """Claim no more; returns once a claim in flight (on the broker thread) is over,
        so the jobs it took are in ``_held`` (``release_unstarted`` gives them back)."""
        if self._claiming:
            with self._claim_lock:
                self._claiming = False

    def release_unstarted(self) -> None:
        """Give back the jobs held but not started, in their original place."""
        with self._lock:
            held = list(self._held.items())
        back = []
        for job_id, future in held:
            with self._lock:
                self._releasing.add(job_id)
            if future.cancel():
                back.append(job_id)
            else:
                with self._lock:
                    self._releasing.discard(job_id)
        if back:
            self.broker.release(self.owner, back)
            with self._lock:
                for job_id in back:
                    self._held.pop(job_id, None)

    def release_all_after(self, stop: Callable[[], None]) -> None:
        """Store the outcomes already in, then ``stop`` the local pool and give back
        every job still held: a job stopped mid-run will run again elsewhere."""
        self.flush()
        with self._lock:
            started = {job_id: future.attempts > 0 for job_id, future in self._held.items()}
            self._releasing.update(started)
        stop()
        with self._lock:
            self._held.clear()
            self._releasing.clear()
        self._ended.clear()  # ended between the flush and the stop: run again elsewhere
        if started:  # one call: a start counts as an attempt, a claim alone does not
            ran = {job_id for job_id, did in started.items() if did}
            self.broker.release(self.owner, list(started), started=ran)

    def flush(self) -> None:
        """Store whatever outcomes are waiting (at shutdown)."""
        ended = self._take_ended()
        if ended:
            try:
                stored = self.broker.finish(self.owner, ended)
            except BaseException:
                self._ended.extendleft(reversed(ended))
                raise
            self._stored(ended, set(stored))

    def close(self) -> None:
        self.broker.unregister_server(self.owner)


def _outcome_of(job: ClaimedJob, future: Future[Any], attempts: int, url: str) -> Outcome:
    if future.cancelled():
        return Outcome.cancelled("stopped by pool.kill()", attempts)
    try:
        return Outcome.of_result(future.result(), attempts)
    except CancelledError:
        return Outcome.cancelled("stopped by pool.kill()", attempts)
    except BaseException as exc:
        if isinstance(exc, UnpicklingFailed) and hasattr(exc, "add_note"):  # 3.11+
            exc.add_note(
                f"job {job.job_id} ({job.name}) from the store {url}: was its code "
                "changed or removed since it was submitted?"
            )
        return Outcome.of_error(exc, attempts)


def init_worker(
    counters: CounterStore | None,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    """A serving pool's worker set-up: the store's counters, then the user's initializer."""
    if counters is not None:
        install_worker_counters(counters)
    if initializer is not None:
        initializer(*initargs)


def _local_priority(job: ClaimedJob) -> float:
    """Where a claimed job goes in the local queue, so that jobs claimed together keep
    the store's order: by priority, except under ``order="fifo"``, whose every rank is
    0 (claim order; sorting by priority would undo it). Aged ranks keep the priority:
    each would be a level of its own, and jobs claimed ahead are a few ms of work."""
    return 0.0 if job.rank == 0 else job.priority
