"""Per-job timeouts: when the job a worker runs has run too long, say so.

A job's clock starts when its worker begins it (the worker's slot records the
moment), not when it was queued or handed over. Each worker has at most one
pending check, and the check holds the worker, never a job: a job that
finishes early leaves nothing behind, so memory does not grow with
throughput x timeout. A check that finds the head job not begun yet, or not
due yet, sets the next one at the earliest moment it could be due.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from taskq._job import WorkItem
from taskq._process import WorkerHandle

Expired = Callable[[WorkerHandle, WorkItem], None]
At = Callable[..., None]  # at(when, action, *args): the manager's timer (wakes it)


class TimeoutWatch:
    def __init__(self, at: At, expired: Expired, watching: Callable[[WorkerHandle], bool]):
        self._at = at
        self._expired = expired  # called with the worker and its job that ran too long
        self._watching = watching  # False once the worker is gone or being stopped
        self._pending: dict[WorkerHandle, float] = {}

    def head_changed(self, worker: WorkerHandle) -> None:
        """The worker's next (or current) job changed: watch that one's timeout."""
        if worker.outstanding:
            timeout = worker.outstanding[0].timeout
            if timeout is not None:
                self._check_at(worker, time.monotonic() + timeout)

    def forget(self, worker: WorkerHandle) -> None:
        self._pending.pop(worker, None)

    def _check_at(self, worker: WorkerHandle, when: float) -> None:
        pending = self._pending.get(worker)
        if pending is not None and pending <= when:
            return  # an earlier check will look at whatever job is at the head then
        self._pending[worker] = when
        self._at(when, self._check, worker, when)

    def _check(self, worker: WorkerHandle, when: float) -> None:
        if self._pending.get(worker) != when:
            return  # superseded by an earlier check
        del self._pending[worker]
        if not worker.outstanding or not self._watching(worker):
            return
        head = worker.outstanding[0]
        if head.timeout is None:
            return
        job_id, started_ns = worker.running_job()
        now = time.monotonic()
        if job_id != head.job_id:  # not begun yet: its clock has not started
            self._check_at(worker, now + head.timeout)
        elif now < started_ns / 1e9 + head.timeout:
            self._check_at(worker, started_ns / 1e9 + head.timeout)
        else:
            self._expired(worker, head)
