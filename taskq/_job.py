"""The unit of work: a ``JobRecord`` is what a queue stores; a ``WorkItem`` (a record plus
the caller's ``JobFuture``) is how the parent tracks its own jobs.

A job has one name per stage: ``WorkItem`` in the parent (queue, dispatch,
collect), a CALL frame on its way to a worker, an OK/ERROR frame on its way
back (see ``_protocol``).
"""

from __future__ import annotations

import _thread
import collections
import enum
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any, TypeVar

from taskq._errors import UnpicklingFailed
from taskq._shared_result import SharedBytes

R = TypeVar("R")

# Where Future itself logs a failing done-callback (printed to stderr by default).
_callback_log = logging.getLogger("concurrent.futures")


_NO_CALLBACKS: Any = ()  # likewise, for every future without a done-callback
_ENDED = frozenset((CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED))
_NO_WAITERS: Any = ()  # empty and immutable: shared by every condition nobody waits on


class _FutureCondition(_thread.RLock):  # type: ignore[misc]
    """The condition of a ``JobFuture``: a re-entrant lock that is its own condition.

    ``Future`` builds a ``threading.Condition`` over an ``RLock``: two objects,
    a deque, five bound methods stored per instance, and a Python-level
    ``__enter__``/``__exit__`` on every ``with``. A pool keeps thousands of
    futures alive at once, so this is one C object with no ``__init__``:
    ``with`` is the lock's own, and the deque of waiters is made by the first
    ``wait()`` only (most futures are resolved before anyone waits on them).
    ``Condition.wait`` and ``Condition.notify`` run unchanged on it: what they
    need of the lock (``_is_owned``, ``_release_save``, ``_acquire_restore``)
    the C ``RLock`` has. The lock must be re-entrant, as ``Future``'s own is:
    ``wait(FIRST_EXCEPTION)`` holds every future's condition and then calls
    ``f.cancelled()``, which takes it again.
    """

    _waiters: collections.deque[Any] = _NO_WAITERS  # until the first wait()

    def wait(self, timeout: float | None = None) -> bool:
        if self._waiters is _NO_WAITERS:
            self._waiters = collections.deque()
        return _condition_wait(self, timeout)

    def notify_all(self) -> None:
        # Called by every set_result(): with nobody waiting, nothing to check or wake.
        if self._waiters:
            _condition_notify(self, len(self._waiters))

    def notify(self, n: int = 1) -> None:
        _condition_notify(self, n)


_condition_wait: Callable[[Any, float | None], bool] = threading.Condition.wait
_condition_notify: Callable[[Any, int], None] = threading.Condition.notify


class JobFuture(Future[R]):
    """A ``concurrent.futures.Future`` for a taskq job; ``JobFuture[R]`` resolves to an ``R``.

    ``cancel()`` on a queued job removes it from the queue at once (its
    ``maxsize`` slot is freed). Once a worker holds the job, ``cancel()``
    returns False as ``Executor`` requires; use ``pool.kill(future)`` to stop it.
    ``attempts`` counts how many times the job was started. ``job_id`` names the job:
    an ``int`` in an in-memory pool, a ``str`` with a broker (valid in every process,
    for ``pool.job(job_id)``); typed ``Any`` because the pool, not the future, decides.

    A result that is one large ``bytes`` or ``bytearray`` may still be in shared memory
    when the future is done: the first ``result()`` copies it out (in that caller's
    thread), and every later call returns that same object.
    """

    def __init__(self) -> None:
        # Future.__init__'s fields (the same from Python 3.10 to 3.13; a test checks),
        # with a lighter condition.
        self._condition = _FutureCondition()  # type: ignore[assignment]
        self._state = PENDING
        self._result = None
        self._exception = None
        # Future's list of wait()/as_completed() waiters, made by the first of them
        # (the ``_waiters`` property): most futures never have one, and an empty list
        # per future is one more object for the garbage collector to track.
        self._waiter_list: list[Any] = _NO_WAITERS
        # Made by the first add_done_callback(): most futures never get one.
        self._done_callbacks: list[Any] = _NO_CALLBACKS
        self.attempts = 0
        self.job_id: Any = 0
        self._on_cancel: Callable[[WorkItem], bool] | None = None
        self._work: WorkItem | None = None

    def cancel(self) -> bool:
        """Cancel a job that no worker holds yet; True if it is (or was) cancelled.

        Never raises. Whoever takes the job out of the queue decides its fate:
        if this call withdrew it, this call also tells ``wait()``/``as_completed()``
        it is done; if the pool took it first, the pool does that instead (when
        it sees the cancellation, before the job would have run).
        """
        cancelled = super().cancel()
        hook, work = self._on_cancel, self._work
        if cancelled and hook is not None and work is not None:
            self._on_cancel = self._work = None
            if hook(work):  # withdrawn from the queue: no one else will look at it
                self.set_running_or_notify_cancel()
        return cancelled

    @property
    def _waiters(self) -> list[Any]:
        # Only concurrent.futures.wait()/as_completed() (to add or remove a waiter) and
        # Future's cancellation path read it here; set_result/set_exception do not.
        waiters = self._waiter_list
        if waiters is _NO_WAITERS:
            waiters = self._waiter_list = []
        return waiters

    @_waiters.setter
    def _waiters(self, waiters: list[Any]) -> None:
        self._waiter_list = waiters

    def set_result(self, result: R) -> None:
        with self._condition:
            if self._state in _ENDED:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = FINISHED
            for waiter in self._waiter_list:
                waiter.add_result(self)
            self._condition.notify_all()
        self._invoke_callbacks()

    def set_exception(self, exception: BaseException | None) -> None:
        with self._condition:
            if self._state in _ENDED:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._exception = exception
            self._state = FINISHED
            for waiter in self._waiter_list:
                waiter.add_exception(self)
            self._condition.notify_all()
        self._invoke_callbacks()

    def add_done_callback(self, fn: Callable[[Future[R]], object]) -> None:
        with self._condition:
            if self._state not in _ENDED:
                if self._done_callbacks is _NO_CALLBACKS:
                    self._done_callbacks = []
                self._done_callbacks.append(fn)
                return
        super().add_done_callback(fn)  # already done: Future calls it now (and logs its errors)

    def result(self, timeout: float | None = None) -> R:
        value = super().result(timeout)
        if type(value) is SharedBytes:
            return self._read_shared()  # type: ignore[no-any-return]
        return value

    def _read_shared(self) -> Any:
        """A large ``bytes`` result still in shared memory (``_shared_result.py``): the
        first reader copies it out, under the lock; every reader gets that object."""
        with self._condition:
            value = self._result
            if type(value) is SharedBytes:
                try:
                    self._result = value.read()  # type: ignore[assignment]
                except Exception as exc:  # its file is open and sized: should never happen
                    self._result = None
                    self._exception = UnpicklingFailed(
                        f"job {self.job_id}: its result could not be read from shared "
                        f"memory ({exc!r})"
                    )
                    self._exception.__cause__ = exc
            if self._exception is not None:
                raise self._exception
            return self._result

    def __repr__(self) -> str:
        text = super().__repr__()
        value = self._result
        if type(value) is SharedBytes:  # not read yet: say what it is
            text = text.replace("returned SharedBytes", f"returned {value.kind.__name__}")
        return text

    def _invoke_callbacks(self) -> None:
        # Future's own loop logs an Exception from a callback but lets SystemExit or
        # KeyboardInterrupt through, into whichever thread resolved the future (the
        # pool's manager thread, for a job). Guard each callback, and log them all.
        for callback in self._done_callbacks:
            try:
                callback(self)
            except BaseException:
                _callback_log.exception("exception calling callback for %r", self)


class State(enum.Enum):
    QUEUED = "queued"  # in the queue
    WAITING = "waiting"  # waiting out a retry backoff
    CLAIMED = "claimed"  # taken from the queue for a worker (held, or running)
    REMOVED = "removed"  # cancelled while queued or waiting
    DONE = "done"


class JobRecord:
    """A job as a queue stores it: plain data, no future, no worker, no process.

    This is what a queue needs to order and hand out jobs, and what a durable
    broker would persist: the id, the pickled call, the priority and the
    sequence number the queue assigns, the limits, and how many times the job
    was started. ``dump()``/``load()`` turn it into a plain tuple and back.
    """

    __slots__ = (
        "attempts",
        "call",
        "job_id",
        "name",
        "priority",
        "queued_at",
        "retries",
        "retry_delay",
        "retry_on",
        "seq",
        "state",
        "timeout",
    )

    def __init__(
        self,
        job_id: int,
        call: bytes,
        name: str,
        priority: float,
        timeout: float | None,
        retries: int,
        retry_delay: float,
        retry_on: tuple[type[BaseException], ...] | None,
    ):
        self.job_id = job_id
        self.call = call  # pickle((fn, args, kwargs)), made once at schedule() time
        self.name = name  # the function's name, for error messages
        self.priority = priority
        self.seq = 0  # set by the queue: submission order, the tie-breaker
        self.queued_at = 0.0  # set by the queue: when this attempt was queued (its clock)
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.retry_on = retry_on
        self.attempts = 0
        self.state = State.QUEUED

    _FIELDS = ("job_id", "call", "name", "priority", "timeout", "retries", "retry_delay",
               "retry_on", "seq", "attempts", "state", "queued_at")  # fmt: skip

    def dump(self) -> tuple[Any, ...]:
        """The record's fields as a plain tuple (picklable: ``retry_on`` holds types)."""
        return tuple(getattr(self, name) for name in self._FIELDS)

    @classmethod
    def load(cls, fields: tuple[Any, ...]) -> JobRecord:
        record = cls.__new__(cls)
        for name, value in zip(cls._FIELDS, fields, strict=True):
            setattr(record, name, value)
        return record

    def __repr__(self) -> str:
        return f"<job {self.job_id} {self.name} priority={self.priority} {self.state.value}>"


class WorkItem(JobRecord):
    """A job of this process, as the parent tracks it from ``schedule()`` to its outcome:
    the record, plus what only this process has (the caller's future, which worker
    holds it and as its how-manieth job)."""

    __slots__ = ("claimed", "future", "wseq")

    def __init__(
        self,
        job_id: int,
        future: JobFuture[Any],
        call: bytes,
        name: str,
        priority: float,
        timeout: float | None,
        retries: int,
        retry_delay: float,
        retry_on: tuple[type[BaseException], ...] | None,
    ):
        # JobRecord.__init__ inlined (one Python call fewer per submitted job).
        self.job_id = job_id
        self.call = call
        self.name = name
        self.priority = priority
        self.seq = 0
        self.queued_at = 0.0
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.retry_on = retry_on
        self.attempts = 0
        self.state = State.QUEUED
        self.future = future
        self.claimed = False  # its future was moved to RUNNING (first dispatch)
        self.wseq = 0  # its number at the worker holding it (see _slot)
