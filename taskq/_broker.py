"""The broker contract: what a durable store must do for a pool to run its jobs.

A pool with ``broker=URL`` keeps its jobs in a store instead of its own memory,
so they outlive the process that submitted them, and any process serving the
same store may run them. The store is the one place that decides a job's fate:

* ``put`` commits a new job; it gets a place in line from the store itself (a
  sequence, never a client clock): smaller ``rank`` first, ties by that sequence.
  ``send`` puts without waiting for the store's reply where a store can (Redis):
  ``done`` hears it later, and ``sync`` waits for every answer due. What ``send``
  wrote must outlive the sending process (Redis: ``_redis_puts.py``).
* ``claim`` moves the most urgent queued jobs to RUNNING under a *lease* held by
  one serving process, in one atomic step (``before=rank``: only jobs ranked
  before it, so a full server can still take an urgent job). The holder ``renew``s its leases
  with a heartbeat; when a lease expires (its holder died or hung),
  ``reclaim_expired`` puts the job back in its original place, or fails it
  for good after ``max_lost`` lost leases.
* ``finish`` stores an outcome: **the first outcome wins**, a late one (from a
  holder whose lease already expired) is discarded.
* ``step`` is ``finish`` then ``claim``, in one round trip where the store can.
* ``cancel`` withdraws a queued job; exactly one of cancel and claim wins.
* ``request_kill`` asks the holder of a running job to stop it; the holder
  reads ``kill_requests`` with its heartbeat.

``SqliteBroker`` (``_sqlite_broker.py``) and ``RedisBroker`` (``_redis_broker.py``)
implement it. What a
broker stores for a job is a ``NewJob`` going in, a ``ClaimedJob`` coming out
to a server, and an ``Outcome`` for whoever waits.
"""

from __future__ import annotations

import enum
import itertools
import os
import pickle
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Any, NamedTuple, Protocol

from taskq._errors import JobLost, RemoteTraceback, UnpicklingFailed
from taskq._protocol import PackedError, dumps, unpack_exception

DEFAULT_LEASE = 5.0  # seconds a claim lasts without a heartbeat (renewed every third of it)
DEFAULT_RESULT_TTL = 86400.0  # seconds an outcome is kept after the job ends
DEFAULT_MAX_LOST = 3  # lost leases before a job is given up (it may be killing its server)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"  # claimed by a serving process, under its lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"  # lost its lease too often: given up (dead-lettered)


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEAD})


class _JobIds:
    """Job ids valid in every process and across restarts: 64 random bits drawn once per
    process, then a counter (no system call per job, and a store's index of ids grows
    at its end rather than at random places)."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._count = itertools.count()

    def __call__(self) -> str:
        if self._pid != os.getpid():  # a forked child must not repeat its parent's ids
            self._pid, self._prefix = os.getpid(), uuid.uuid4().hex[:16]
            self._count = itertools.count()
        return f"{self._prefix}{next(self._count):016x}"


new_job_id = _JobIds()


class JobOptions(NamedTuple):
    """How to run a job: what ``schedule()`` was given, stored with it (pickled)."""

    timeout: float | None
    retries: int
    retry_delay: float
    retry_on: tuple[type[BaseException], ...] | None


class NewJob(NamedTuple):
    """A job going into the store."""

    job_id: str
    name: str
    priority: float
    rank: float  # what the store orders by: the priority (0 for every job under "fifo")
    call: bytes  # pickle((fn, args, kwargs))
    options: bytes  # pickle(JobOptions)
    aging: float | None = None  # the store adds (its clock at put) / aging to the rank


class ClaimedJob(NamedTuple):
    """A job a serving process took from the store, under its lease."""

    job_id: str
    name: str
    priority: float
    call: bytes
    options: bytes
    attempts: int  # claims so far, this one included
    rank: float = 0.0  # its place in the store's order (the priority, plus aging)


class OutcomeKind(str, enum.Enum):
    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"


class Outcome(NamedTuple):
    """How a job ended, as stored: a pickled result, or a packed exception."""

    kind: OutcomeKind
    payload: bytes  # pickled result (OK), PackedError (ERROR), reason text (CANCELLED)
    attempts: int

    def dump(self) -> bytes:
        return dumps((self.kind.value, self.payload, self.attempts))

    @classmethod
    def load(cls, data: bytes) -> Outcome:
        kind, payload, attempts = pickle.loads(data)
        return cls(OutcomeKind(kind), payload, attempts)

    @classmethod
    def of_result(cls, result: object, attempts: int) -> Outcome:
        return cls(OutcomeKind.OK, dumps(result), attempts)

    @classmethod
    def of_error(cls, exc: BaseException, attempts: int) -> Outcome:
        return cls(OutcomeKind.ERROR, pack_stored_exception(exc), attempts)

    @classmethod
    def cancelled(cls, reason: str, attempts: int = 0) -> Outcome:
        return cls(OutcomeKind.CANCELLED, reason.encode(), attempts)

    def value(self, job_id: str) -> tuple[bool, object]:
        """``(True, exception)`` or ``(False, result)``, unpickled here."""
        if self.kind is OutcomeKind.ERROR:
            return True, unpack_exception(self.payload)
        try:
            return False, pickle.loads(self.payload)
        except BaseException as exc:  # user code: a class that no longer imports, ...
            error = UnpicklingFailed(
                f"the result of job {job_id} could not be unpickled in this process "
                f"({type(exc).__name__}: {exc}); is its class importable here?"
            )
            error.__cause__ = exc
            return True, error


def lost_lease_outcome(
    job_id: str, lost: int, attempts: int, owner: str | None, path: str
) -> Outcome:
    """The outcome of a job given up after ``lost`` expired leases."""
    error = JobLost(
        f"job {job_id} in {path} was given up: its lease expired {lost} times (each "
        f"serving process that ran it died or stopped renewing its lease; the last was "
        f"{owner}). If the job itself kills its process (memory, a crash), fix it and "
        "submit it again"
    )
    return Outcome.of_error(error, attempts)


def pack_stored_exception(exc: BaseException) -> bytes:
    """Pack an exception a job ended with, keeping the worker's traceback text.

    The exception came back from a worker with that text as its ``__cause__``
    (``RemoteTraceback``); that is the traceback a waiting client should see.
    """
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        tb_text = cause.traceback_text
    else:
        tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        message = str(exc)
    except BaseException:
        message = repr(type(exc))
    exc_bytes: bytes | None
    try:
        exc_bytes = dumps(exc)
        pickle.loads(exc_bytes)
    except BaseException:
        exc_bytes = None
    return dumps(PackedError(exc_bytes, type_name, message, tb_text))


class JobStatus(NamedTuple):
    """What ``Broker.job_status`` knows of one job."""

    state: JobState
    outcome: Outcome | None  # set once the job is in a final state


class StoreStatus(NamedTuple):
    """What ``taskq status`` shows: one consistent read of a queue."""

    queued_by_priority: dict[float, int]
    running: list[tuple[str, str, str | None, float | None]]  # id, name, owner, since
    succeeded: int
    failed: int
    cancelled: int
    dead: int
    workers: list[dict[str, Any]]  # owner, host, pid, processes, started, heartbeat
    refused: int = 0  # jobs whose payload failed signature verification (dead-lettered)


class Broker(Protocol):
    """The contract a store implements (see the module docstring)."""

    url: str
    queue: str
    can_block: bool  # finished_since(block=...) waits in the store (else: poll it)
    result_ttl: float  # seconds an outcome is kept
    # Called (on the listener's thread) when a put wakes this process's server (it had
    # no job, or ``step(watch=True)`` and the job is more urgent than those it holds);
    # a store that cannot block never calls it (its server polls).
    on_new_jobs: Callable[[], None]

    def put(self, job: NewJob, *, maxsize: int = 0) -> None: ...
    def send(self, job: NewJob, done: Callable[[BaseException | None], None]) -> None: ...
    def sync(self) -> None: ...
    def claim(
        self, owner: str, limit: int, lease: float, before: float | None = None
    ) -> list[ClaimedJob]: ...
    def renew(self, owner: str, job_ids: Sequence[str], lease: float) -> set[str]: ...
    def finish(self, owner: str, outcomes: Sequence[tuple[str, Outcome]]) -> list[str]: ...
    def step(
        self,
        owner: str,
        outcomes: Sequence[tuple[str, Outcome]],
        limit: int,
        lease: float,
        before: float | None = None,
        watch: bool = False,
    ) -> tuple[list[str], list[ClaimedJob]]: ...
    def release(
        self, owner: str, job_ids: Sequence[str], *, started: Collection[str] = ()
    ) -> None: ...
    def cancel(self, job_id: str) -> bool: ...
    def request_kill(self, job_id: str) -> JobState | None: ...
    def kill_requests(self, owner: str) -> list[str]: ...
    def reclaim_expired(self, max_lost: int) -> int: ...
    def current_cursor(self) -> str: ...
    def finished_since(
        self, cursor: str, block: float = 0
    ) -> tuple[str, list[tuple[str, Outcome | None]]]: ...
    def job_status(self, job_id: str) -> JobStatus: ...
    def outcomes(self, job_ids: Sequence[str]) -> dict[str, JobStatus]: ...
    def queued_count(self) -> int: ...
    def queued_by_priority(self) -> dict[float, int]: ...
    def counter_add(self, name: str, amount: int) -> int: ...
    def counter_values(self, names: Sequence[str]) -> dict[str, int]: ...
    def register_server(self, owner: str, processes: int) -> None: ...
    def heartbeat(self, owner: str) -> None: ...
    def unregister_server(self, owner: str) -> None: ...
    def purge_expired(self) -> int: ...
    def status(self) -> StoreStatus: ...
    def close(self) -> None: ...


def open_broker(
    url: str, queue: str, *, result_ttl: float = DEFAULT_RESULT_TTL, secret: str | None = None
) -> Broker:
    """The broker for ``url``: ``sqlite:///relative.db``, ``sqlite:////absolute.db``,
    ``redis://[user:password@]host:6379/0``, ``rediss://...`` (TLS), ``unix:///path.sock``."""
    if not isinstance(url, str):
        raise TypeError(f"broker must be a URL string such as 'sqlite:///jobs.db'; got {url!r}")
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"queue must be a non-empty string; got {queue!r}")
    if not result_ttl > 0:
        raise ValueError(f"result_ttl must be a positive number of seconds; got {result_ttl!r}")
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "sqlite":
        from taskq._sqlite_broker import SqliteBroker

        if secret is not None:
            raise ValueError(
                "secret= signs payloads in a shared Redis; a SQLite store is "
                "protected by its file permissions instead"
            )
        return SqliteBroker(url, queue, result_ttl=result_ttl)
    if scheme in ("redis", "rediss", "unix"):
        from taskq._redis_broker import RedisBroker

        return RedisBroker(url, queue, result_ttl=result_ttl, secret=secret)
    raise ValueError(
        f"unsupported broker URL {url.split('@')[-1]!r}: use sqlite:///relative/path.db, "
        "sqlite:////absolute/path.db, redis://host:6379/0, rediss://... or unix:///path.sock"
    )
