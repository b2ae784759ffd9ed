"""Jobs between two attempts: each waits out its backoff, then goes back to the queue.

    a job fails -> Collector.retry_delay says whether (and when) it runs again
                -> WAITING, in this room, until its timer fires -> the queue (at
                   the back of its priority: a retry queues like a new job)

The room belongs to the manager's thread: the timer runs there, and so do
``kill`` (a waiting job leaves at once) and shutdown (every waiting job ends).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from taskq._collect import Collector
from taskq._job import State, WorkItem
from taskq._ledger import ErrorFor, Ledger
from taskq._log import log
from taskq._queue import WorkQueue

At = Callable[..., None]  # at(when, action, *args): the manager's timers


class Retries:
    def __init__(
        self,
        queue: WorkQueue[WorkItem],
        ledger: Ledger,
        collector: Collector,
        at: At,
        allowed: Callable[[], bool],
    ):
        self._queue = queue
        self._ledger = ledger
        self._collector = collector
        self._at = at
        self._allowed = allowed  # False once the pool is terminated or broken
        self._waiting: set[WorkItem] = set()

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def settle(self, outcomes: list[tuple[WorkItem, tuple[bool, Any]]]) -> None:
        """Record what running jobs came to: a result, a failure, or another attempt."""
        finals: list[tuple[WorkItem, bool, Any]] = []
        retried: list[WorkItem] = []
        for item, (ok, value) in outcomes:
            if not ok and self._wait(item, value):
                retried.append(item)
            else:
                finals.append((item, ok, value))
        if finals:
            self._queue.acknowledge([item for item, _, _ in finals])
        self._ledger.settled(finals, retried)

    def _wait(self, item: WorkItem, error: BaseException) -> bool:
        if not self._allowed():
            return False
        delay = self._collector.retry_delay(item, error)
        if delay is None:
            return False
        item.state = State.WAITING
        self._waiting.add(item)
        self._at(time.monotonic() + delay, self._requeue, item)
        log.info("job %d (%s) failed on attempt %d (%r); retrying in %.3fs",
                 item.job_id, item.name, item.attempts, error, delay)  # fmt: skip
        return True

    def _requeue(self, item: WorkItem) -> None:
        if item in self._waiting:
            self._waiting.discard(item)
            self._queue.release(item, keep_place=False)

    def withdraw(self, item: WorkItem) -> None:
        """``item`` no longer waits (killed): its timer will find it gone."""
        self._waiting.discard(item)

    def end_all(self, error_for: ErrorFor) -> None:
        """End every job waiting out its backoff, with ``error_for(job)``."""
        waiting = list(self._waiting)
        self._waiting.clear()
        self._ledger.ended(waiting, error_for, running=False)
