"""Waiting for jobs in a store: futures resolved from stored outcomes.

A ``BrokerFuture`` stands for a job in the store; ``Waiters`` holds the ones
this process waits on and resolves each **once**, whoever learns the outcome
first: this process's own server (at once, when it stored the outcome) or a
poll of the store (outcomes stored by other processes, read in the order the
store numbered them, so none is missed).

Who decides: resolving takes the future out of ``Waiters`` under its lock; a
future can be taken out once, so a late duplicate of an outcome (or a cancel
racing the outcome) finds nothing to do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, RUNNING
from typing import Any

from taskq._broker import Broker, Outcome, OutcomeKind
from taskq._errors import StoreError
from taskq._job import JobFuture

RECONCILE_EVERY = 2.0  # seconds between direct reads of the pending jobs' states
FOREIGN_EVERY = 0.05  # ... of jobs submitted by another process and waited for here


class BrokerFuture(JobFuture[Any]):
    """The future of a job kept in a broker's store; ``job_id`` is a string valid in
    every process (``pool.job(job_id)`` returns a future for it anywhere).

    It stays pending until the job's outcome is stored (it does not report
    ``running()`` while a server runs the job). ``cancel()`` asks the store: it
    succeeds only for a job still queued, which is then removed from the store.
    """

    def __init__(self, job_id: str, waiters: Waiters, own: bool = True):
        super().__init__()
        self._own = own  # submitted by this pool (counted in its stats)
        self._stored = not own  # committed to the store (a job looked up by id already is)
        self.job_id: str = job_id
        self._store_waiters = waiters

    def cancel(self) -> bool:
        with self._condition:
            if self._state in (RUNNING, FINISHED):
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
        if not self._store_waiters.broker.cancel(self.job_id):
            return self.cancelled()  # it was claimed, or ended, first
        self._store_waiters.resolve(self.job_id, Outcome.cancelled("cancelled while queued"))
        return True


class Waiters:
    """The futures this process waits on, by job id (see the module docstring)."""

    def __init__(self, broker: Broker, on_resolved: Callable[[OutcomeKind], None]):
        self.broker = broker
        self._futures: dict[str, BrokerFuture] = {}
        self._lock = threading.Lock()
        self._on_resolved = on_resolved  # statistics
        self._cursor = broker.current_cursor()  # outcomes stored before us: not ours
        self._last_reconcile = self._last_foreign = time.monotonic()
        self._foreign: set[str] = set()  # jobs looked up by id: submitted elsewhere
        # Jobs this process's own server holds: it hands their outcomes over itself.
        self.delivered_here: Callable[[str], bool] = lambda job_id: False

    def __len__(self) -> int:
        return len(self._futures)

    def new(self, job_id: str, own: bool = True) -> BrokerFuture:
        future = BrokerFuture(job_id, self, own)
        with self._lock:
            self._futures[job_id] = future
        return future

    def forget(self, job_id: str) -> None:
        """Stop waiting for a job that never made it into the store."""
        with self._lock:
            self._futures.pop(job_id, None)

    def cancel_queued(self, job_id: str) -> None:
        """Remove the job from the store if it is still queued, and cancel its future."""
        with self._lock:
            future = self._futures.get(job_id)
        if future is not None:
            future.cancel()

    def existing(self, job_id: str) -> BrokerFuture:
        """A future for a job submitted anywhere; ``KeyError`` if the store has no such job."""
        with self._lock:
            future = self._futures.get(job_id)
        if future is not None:
            return future
        # Waiting first: an outcome stored meanwhile is then not missed.
        future = self.new(job_id, own=False)
        with self._lock:
            self._foreign.add(job_id)
        try:
            status = self.broker.job_status(job_id)
        except KeyError:
            with self._lock:
                self._futures.pop(job_id, None)
                self._foreign.discard(job_id)
            raise
        if status.outcome is not None:
            self.resolve(job_id, status.outcome)
        return future

    def resolve(self, job_id: str, outcome: Outcome) -> None:
        """Settle the future of ``job_id`` (once; later calls do nothing)."""
        with self._lock:
            future = self._futures.pop(job_id, None)
            self._foreign.discard(job_id)
        if future is None:
            return
        future.attempts = outcome.attempts
        if future._own:  # counted first: nothing may hold the result once it is handed out
            self._on_resolved(outcome.kind)
        if outcome.kind is OutcomeKind.CANCELLED:
            Future.cancel(future)  # PENDING -> CANCELLED (not our cancel(): the store is done)
            future.set_running_or_notify_cancel()
        elif future.set_running_or_notify_cancel():
            _settle(future, *outcome.value(job_id))

    def poll(self, block: float = 0) -> int:
        """Resolve the futures whose outcome another process stored; how many were.
        ``block``: wait up to that long for one (a store that can wake readers)."""
        if not self._futures and not block:
            return 0
        self._cursor, ended = self.broker.finished_since(self._cursor, block)
        local = self.delivered_here
        with self._lock:
            ours = [(j, o) for j, o in ended if j in self._futures and not local(j)]
        if not ours:
            return 0
        to_read = [job_id for job_id, outcome in ours if outcome is None]
        for job_id, outcome in ours:
            if outcome is not None:  # the store sent it with the notice
                self.resolve(job_id, outcome)
        if to_read:
            for job_id, status in self.broker.outcomes(to_read).items():
                if status.outcome is not None:
                    self.resolve(job_id, status.outcome)
        return len(ours)

    def reconcile(self, every: float = RECONCILE_EVERY) -> None:
        """Read the state of pending jobs directly: every ``every`` seconds all of them
        (an outcome whose notice was missed still arrives), and every
        ``FOREIGN_EVERY`` the jobs submitted elsewhere and looked up here by id (a
        store may notify only the client that submitted a job)."""
        now = time.monotonic()
        with self._lock:  # only jobs known to be in the store (put() has returned)
            if now - self._last_reconcile >= every:
                self._last_reconcile = self._last_foreign = now
                pending = [job_id for job_id, f in self._futures.items() if f._stored]
            elif self._foreign and now - self._last_foreign >= FOREIGN_EVERY:
                self._last_foreign = now
                pending = [job_id for job_id in self._foreign if job_id in self._futures]
            else:
                return
        self._read_directly(pending)

    def _read_directly(self, pending: list[str]) -> None:
        found = self.broker.outcomes(pending)
        for job_id, status in found.items():
            if status.outcome is not None:
                self.resolve(job_id, status.outcome)
        for job_id in set(pending) - set(found):  # deleted from the store by someone
            error = StoreError(
                f"job {job_id} is no longer in the store {self.broker.url} (deleted or "
                "expired while this process waited for it); its outcome is lost"
            )
            self.resolve(job_id, Outcome.of_error(error, 0))

    def pending_ids(self) -> list[str]:
        with self._lock:
            return list(self._futures)

    def fail_all(self, error: BaseException) -> None:
        with self._lock:
            futures, self._futures = list(self._futures.values()), {}
            self._foreign.clear()
        for future in futures:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)


def _settle(future: BrokerFuture, is_error: bool, value: object) -> None:
    # A frame of its own, gone as soon as the future holds the value: a caller that
    # drops the result may count on it being freed (map drops each result it hands out).
    if is_error:
        future.set_exception(value)  # type: ignore[arg-type]
    else:
        future.set_result(value)
