"""Every change of a job's state, with the statistics it moves, in one place.

    submitted ──▶ QUEUED ──claim──▶ CLAIMED ──reply──▶ DONE (succeeded / failed)
                    ▲  │                │  │
     released ──────┘  │ withdrawn      │  └─exit──▶ DONE (crashed / timed out / killed)
     (never started)   ▼ drained        ▼ retry
                      DONE            WAITING ──backoff──▶ QUEUED

The manager decides; the ``Ledger`` records. Each method moves a group of
jobs from one state to another and updates ``PoolStats`` in one batch, so
``submitted == succeeded + failed + cancelled`` whenever the pool is idle.
Outcomes are collected under the manager's lock and handed to ``deliver``
once it is released: done-callbacks are user code and never run under it.

Who owns a job's future: the caller's ``cancel()`` if it withdraws the job
from the queue; otherwise the pool, which makes the future's one
``set_running_or_notify_cancel()`` call when it hands the job to a worker
(``started``) or, for a job that never got that far, in ``deliver``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, InvalidStateError
from typing import TYPE_CHECKING, Any

from taskq._job import State, WorkItem
from taskq._stats import (
    CANCELLED,
    CRASHED,
    FAILED,
    QUEUED,
    RESTARTS,
    RETRIED,
    RUNNING,
    SUBMITTED,
    SUCCEEDED,
    TIMED_OUT,
    WORKERS,
    StatsBlock,
)

if TYPE_CHECKING:
    from taskq._protocol import Frame

Outcome = tuple[WorkItem, bool, Any]  # (job, succeeded, result or exception)
ErrorFor = Callable[[WorkItem], BaseException]  # a new exception for each job

_REFUSED = ((SUBMITTED, 1), (FAILED, 1))
_WITHDRAWN = ((QUEUED, -1), (CANCELLED, 1))


class Ledger:
    def __init__(self, stats: StatsBlock):
        self.stats = stats
        self._outcomes: list[Outcome] = []
        # A job queued at this priority (from callers' threads; no lock: see _stats.py).
        self.submitted: Callable[[float], None] = stats.submitted

    # -- from callers' threads (statistics only) ------------------------------------

    def refused(self) -> None:
        """A job that failed before it was queued (its call could not be pickled)."""
        self.stats.add_many(_REFUSED)

    def withdrawn(self, item: WorkItem) -> None:
        """Its caller cancelled it while it was queued (the queue said so)."""
        item.state = State.DONE
        self.stats.add_many(_WITHDRAWN, ((item.priority, -1),))

    # -- from the manager, under its lock --------------------------------------------

    def started(self, items: list[WorkItem]) -> list[WorkItem]:
        """Jobs claimed for a worker: the ones still wanted, each attempt counted.

        A job whose caller cancelled it after the claim drops out here: the
        pool owns its future and tells it so (``set_running_or_notify_cancel``).
        """
        live: list[WorkItem] = []
        for item in items:
            if not item.claimed:
                if not item.future.set_running_or_notify_cancel():
                    item.state = State.DONE
                    continue
                item.claimed = True
            item.attempts += 1
            item.future.attempts = item.attempts
            live.append(item)
        dropped = len(items) - len(live)
        self.stats.add_many(
            [(QUEUED, -len(items)), (RUNNING, len(live)), (CANCELLED, dropped)],
            _each(items, -1),
        )
        return live

    def ran(self, replies: Sequence[tuple[WorkItem, Frame]]) -> None:
        """Jobs whose replies just arrived: their wait and run times (``PoolStats``)."""
        # A job started about its run time before its reply arrived (now); a wait so
        # estimated may come out a little below zero: stats clamps it when read.
        now = time.monotonic()
        self.stats.ran([
            (item.priority, now - frame.seconds - item.queued_at, frame.seconds)
            for item, frame in replies
        ])  # fmt: skip

    def released(self, items: list[WorkItem]) -> None:
        """Jobs a worker held but never started, going back to the queue: that
        attempt did not happen."""
        for item in items:
            item.attempts -= 1
            item.future.attempts = item.attempts
        self.stats.add_many([(RUNNING, -len(items)), (QUEUED, len(items))], _each(items, 1))

    def settled(self, finals: list[Outcome], retried: Sequence[WorkItem]) -> None:
        """Replies (and crash outcomes) of running jobs: ``finals`` are done, ``retried``
        failed and wait for another attempt."""
        succeeded = 0
        for item, ok, _ in finals:  # finish() unrolled: this runs for every reply
            item.state = State.DONE
            succeeded += ok
        self._outcomes.extend(finals)
        self.stats.add_many([
            (RUNNING, -len(finals) - len(retried)), (SUCCEEDED, succeeded),
            (FAILED, len(finals) - succeeded), (RETRIED, len(retried)), (QUEUED, len(retried)),
        ], _each(retried, 1) if retried else ())  # fmt: skip

    def ended(self, items: Iterable[WorkItem], error_for: ErrorFor, *, running: bool) -> None:
        """Jobs that will not run (again): queued or waiting ones (``running=False``)
        or ones a worker held. A ``CancelledError`` counts them as cancelled."""
        items = list(items)
        errors = [error_for(item) for item in items]
        cancelled = sum(1 for error in errors if isinstance(error, CancelledError))
        self.stats.add_many([
            (RUNNING if running else QUEUED, -len(items)),
            (CANCELLED, cancelled), (FAILED, len(items) - cancelled),
        ], () if running else _each(items, -1))  # fmt: skip
        for item, error in zip(items, errors, strict=True):
            self.finish(item, False, error)

    def timed_out(self) -> None:
        self.stats.add_many(((TIMED_OUT, 1),))

    def crashed(self) -> None:
        self.stats.add_many(((CRASHED, 1),))

    def worker_started(self, replacement: bool) -> None:
        self.stats.add_many(((WORKERS, 1), (RESTARTS, int(replacement))))

    def worker_exited(self) -> None:
        self.stats.add_many(((WORKERS, -1),))

    def finish(self, item: WorkItem, ok: bool, value: Any) -> None:
        """Decide a job's outcome; its future is resolved by ``deliver`` later."""
        item.state = State.DONE
        self._outcomes.append((item, ok, value))

    def take_outcomes(self) -> list[Outcome]:
        outcomes, self._outcomes = self._outcomes, []
        return outcomes


def _each(items: Sequence[WorkItem], amount: int) -> Sequence[tuple[float, int]]:
    """Per-priority queue depth changes: ``amount`` for each job's priority."""
    if not items:
        return ()
    # Usually one priority (a claim takes from one level): one entry, not one per job.
    first = items[0].priority
    if all(item.priority == first for item in items):
        return ((first, amount * len(items)),)
    return [(item.priority, amount) for item in items]


def deliver(outcomes: list[Outcome]) -> None:
    """Resolve futures with the outcomes decided under the manager's lock.

    Runs with no lock held: done-callbacks are user code. A job that never
    reached a worker still has a PENDING future, and the pool, which took it
    from the queue, makes its one ``set_running_or_notify_cancel()`` call here
    (its caller may have cancelled it meanwhile: then that is all there is to do).
    """
    for item, ok, value in outcomes:
        future = item.future
        future._work = future._on_cancel = None  # no reference cycle left for the GC
        if not item.claimed:
            item.claimed = True
            if isinstance(value, CancelledError):
                future.cancel()
                future.set_running_or_notify_cancel()
                continue
            if not future.set_running_or_notify_cancel():
                continue  # its caller cancelled it first
        try:
            if ok:
                future.set_result(value)
            else:
                if item.attempts > 1:
                    _note_attempts(value, item.attempts)
                future.set_exception(value)
        except InvalidStateError:  # already resolved (a cancel won a race)
            pass


def _note_attempts(error: BaseException, attempts: int) -> None:
    try:
        error.attempts = attempts  # type: ignore[attr-defined]
    except AttributeError:
        pass
    if hasattr(error, "add_note"):
        error.add_note(f"taskq: the job failed on each of its {attempts} attempts")


def copy_error(error: BaseException) -> BaseException:
    """A new instance of ``error`` for one future: many futures must not share (and
    annotate) one exception object."""
    fresh = copy.copy(error)
    fresh.__cause__ = error.__cause__
    return fresh


def cancelled_as(why: str) -> ErrorFor:
    """A ``CancelledError`` for each job, saying ``why``."""
    return lambda item: CancelledError(f"job {item.job_id} ({item.name}) {why}")
