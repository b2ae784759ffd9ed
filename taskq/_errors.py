"""taskq's exceptions: one root, one "Raised when..." line each.

A job's own exception is not wrapped: ``Future.result()`` re-raises it as its
own type, with the worker-side traceback chained as ``__cause__``.
"""

from __future__ import annotations

import concurrent.futures
import pickle
import queue
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "Full",
    "InitializerError",
    "JobLost",
    "JobTimeout",
    "PicklingFailed",
    "PoolBroken",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "StoreError",
    "TaskqError",
    "UnpicklingFailed",
    "WorkerCrashed",
]


class TaskqError(Exception):
    """Root of every error taskq raises itself."""


class Full(TaskqError, queue.Full):
    """Raised by ``schedule(..., block=False)`` when ``maxsize`` jobs are already queued."""


class WorkerCrashed(TaskqError, BrokenProcessPool):
    """Raised on a job whose worker process died while holding it.

    ``pid`` and ``exitcode`` describe the dead worker (``exitcode`` is the
    negative signal number when a signal killed it). Only this job fails: the
    pool starts a replacement worker and keeps serving.
    """

    def __init__(self, message: str, *, pid: int | None, exitcode: int | None, job_id: int):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.job_id = job_id

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crash, (str(self), self.pid, self.exitcode, self.job_id), self.__dict__)


def _rebuild_crash(
    message: str, pid: int | None, exitcode: int | None, job_id: int
) -> WorkerCrashed:
    return WorkerCrashed(message, pid=pid, exitcode=exitcode, job_id=job_id)


_TIMEOUT_BASES: tuple[type[BaseException], ...] = (TimeoutError,)
_FUTURES_TIMEOUT: type[BaseException] = concurrent.futures.TimeoutError
if _FUTURES_TIMEOUT is not TimeoutError:  # Python 3.10 has a separate class
    _TIMEOUT_BASES += (_FUTURES_TIMEOUT,)


class JobTimeout(TaskqError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """Raised on a job that ran longer than its ``timeout``; its worker was stopped and replaced."""

    def __init__(self, message: str, *, timeout: float | None = None):
        super().__init__(message)
        self.timeout = timeout

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_timeout, (str(self), self.timeout), self.__dict__)


def _rebuild_timeout(message: str, timeout: float | None) -> JobTimeout:
    return JobTimeout(message, timeout=timeout)


class SerializationError(TaskqError):
    """Raised on a job whose call or result could not be pickled or unpickled.

    Each instance is also of the type ``ProcessPoolExecutor`` code catches for
    the same failure: ``pickle.PicklingError`` when something could not be
    pickled, ``BrokenProcessPool`` when it could not be unpickled. Only the job
    concerned fails; the pool serves on.
    """


class PicklingFailed(SerializationError, pickle.PicklingError):
    """Raised on a job whose call (in the caller) or result (in the worker) could not be
    pickled."""


class UnpicklingFailed(SerializationError, BrokenProcessPool):
    """Raised on a job whose call (in the worker) or result (in the parent) could not be
    unpickled."""


class RemoteError(TaskqError):
    """Raised for a job exception that could not cross the process boundary as itself.

    Carries what could be saved: the original ``type_name``, ``message`` and
    the worker-side ``traceback_text``.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[object, ...]:
        return (RemoteError, (self.type_name, self.message, self.traceback_text), self.__dict__)


class InitializerError(TaskqError, BrokenProcessPool):
    """Raised on jobs sent to a worker whose ``initializer`` failed: it raised (the text
    holds its traceback) or the process died before it was ready. A
    ``BrokenProcessPool``, as ``ProcessPoolExecutor`` raises then; the pool
    retries starting workers and breaks only after several failures in a row."""


class PoolBroken(TaskqError, BrokenProcessPool):
    """Raised when the pool can no longer run jobs (its workers keep failing to start)."""


class JobLost(TaskqError):
    """Raised on a durable job given up after its lease expired too many times: each
    serving process that took it died or stopped renewing its lease while it ran
    (the job itself may be what kills them)."""


class StoreError(TaskqError):
    """Raised when a broker's store cannot be used (not a taskq store, a newer schema,
    a missing directory, no permission); the message names the file or URL."""


class BrokerUnavailable(StoreError):
    """Raised when a broker's store cannot be reached for now (Redis down, the SQLite
    file locked too long); a serving pool retries with backoff."""


class RemoteTraceback(Exception):
    """The traceback text of a job's exception, chained as ``__cause__`` in the caller."""

    def __init__(self, traceback_text: str):
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    @property
    def tb(self) -> str:
        """The traceback text (the name ``ProcessPoolExecutor``'s own class uses)."""
        return self.traceback_text

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback_text}"""'
