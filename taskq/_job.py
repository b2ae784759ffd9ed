"""The unit of work in the parent: a ``WorkItem`` owns the caller's ``JobFuture``.

A job has one name per stage: ``WorkItem`` in the parent (queue, dispatch,
collect), a CALL frame on its way to a worker, an OK/ERROR frame on its way
back (see ``_protocol``).
"""

from __future__ import annotations

import collections
import enum
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import PENDING
from typing import Any


class _FutureCondition(threading.Condition):
    """The condition of a ``JobFuture``: a ``threading.Condition`` over a plain lock,
    built without the five bound methods ``Condition.__init__`` stores per instance.

    A pool keeps thousands of futures alive at once; this makes each one cheaper
    to create and gives the garbage collector fewer objects to scan. A future
    never takes its own condition twice (``wait()`` and ``as_completed()`` take
    each future's once, from a set), so the lock need not be re-entrant, and the
    generic ``Condition`` helpers for plain locks apply.
    """

    def __init__(self) -> None:  # no super().__init__(): that is the point
        self._lock = threading.Lock()
        self._waiters: collections.deque[Any] = collections.deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()


class JobFuture(Future[Any]):
    """A ``concurrent.futures.Future`` for a taskq job.

    ``cancel()`` on a queued job removes it from the queue at once (its
    ``maxsize`` slot is freed). Once a worker holds the job, ``cancel()``
    returns False as ``Executor`` requires; use ``pool.kill(future)`` to stop it.
    ``attempts`` counts how many times the job was started.
    """

    def __init__(self) -> None:
        # Future.__init__'s fields (the same from Python 3.10 to 3.13; a test checks),
        # with a lighter condition.
        self._condition = _FutureCondition()
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []
        self.attempts = 0
        self.job_id = 0
        self._on_cancel: Callable[[WorkItem], None] | None = None
        self._work: WorkItem | None = None

    def cancel(self) -> bool:
        cancelled = super().cancel()
        hook, work = self._on_cancel, self._work
        if cancelled and hook is not None and work is not None:
            self._on_cancel = self._work = None
            hook(work)  # withdraw the job from the queue, freeing its slot
            # What an executor does when it drops a cancelled job: wait() and
            # as_completed() count it as done only from here on.
            self.set_running_or_notify_cancel()
        return cancelled


class State(enum.Enum):
    QUEUED = "queued"  # in the JobQueue
    WAITING = "waiting"  # waiting out a retry backoff
    SENT = "sent"  # handed to a worker (prefetched or running)
    REMOVED = "removed"  # cancelled while queued or waiting
    DONE = "done"


class WorkItem:
    """A job as the parent tracks it, from ``schedule()`` to its final outcome."""

    __slots__ = (
        "attempts",
        "call",
        "claimed",
        "future",
        "job_id",
        "name",
        "priority",
        "retries",
        "retry_delay",
        "retry_on",
        "seq",
        "state",
        "timeout",
        "wseq",
    )

    def __init__(
        self,
        job_id: int,
        future: JobFuture,
        call: bytes,
        name: str,
        priority: float,
        timeout: float | None,
        retries: int,
        retry_delay: float,
        retry_on: tuple[type[BaseException], ...] | None,
    ):
        self.job_id = job_id
        self.future = future
        self.call = call  # pickle((fn, args, kwargs)), made once at schedule() time
        self.name = name  # the function's name, for error messages
        self.priority = priority
        self.seq = 0  # set by the queue: submission order, the tie-breaker
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.retry_on = retry_on
        self.attempts = 0
        self.claimed = False  # its future was moved to RUNNING (first dispatch)
        self.wseq = 0  # its number at the worker holding it (see _slot)
        self.state = State.QUEUED

    def __repr__(self) -> str:
        return f"<job {self.job_id} {self.name} priority={self.priority} {self.state.value}>"
