"""The job queue: the one place that decides what runs next.

``queue.PriorityQueue`` semantics: **the smaller priority number runs first**,
and jobs of equal priority run in submission order (a sequence number the
queue assigns breaks ties). ``order="fifo"`` and ``order="lifo"`` ignore
priorities and behave like ``queue.Queue`` and ``queue.LifoQueue``.

``WorkQueue`` is the contract the pool's manager relies on; ``JobQueue``, a
bucket per priority in this process, is its first implementation. A durable
broker (a SQLite table, a Redis sorted set) implements the same calls over the
same ``JobRecord`` fields.

Locking follows ``Lib/queue.py``: public methods take the lock (``snapshot``
excepted: a hint, read without it), helpers whose names start with ``_`` are
only called with it held.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple, Protocol, TypeVar

from taskq._errors import Full
from taskq._job import JobRecord, State

ORDERS = ("priority", "fifo", "lifo")

R = TypeVar("R", bound=JobRecord)


class QueueClosed(RuntimeError):
    """Raised by ``put`` once the pool is shutting down."""


class QueueSnapshot(NamedTuple):
    """What the dispatcher needs to know about the queue, read in one call."""

    depth: int
    """Jobs waiting (not counting cancelled ones)."""
    head: float | None
    """The priority of the next job to run (priority order only; None if empty)."""
    mixed: bool
    """More than one priority is waiting, so the order between them matters."""


class WorkQueue(Protocol[R]):
    """The contract between the pool and a queue of ``JobRecord``s.

    * ``put`` admits a new job: it assigns ``record.seq`` (the tie-breaker) and
      sets its state to QUEUED; it blocks or raises ``Full`` at ``maxsize``
      (unless ``force``), and raises ``QueueClosed`` after ``close()``.
    * ``claim(limit, share)`` takes up to ``limit`` jobs, in the order they
      must run, for one worker; a claimed job's state is CLAIMED. Its holder
      later either ``acknowledge``s it (its outcome is final) or ``release``s it.
    * ``release(record, keep_place=True)`` puts back a claimed job that never
      started, in its original place; ``keep_place=False`` queues it again
      behind its equals (a retry). Released jobs ignore ``maxsize``: they were
      admitted once.
    * ``cancel(record)`` withdraws a queued job; True only if it was still
      queued. **Claim and cancel race, and the queue decides**: exactly one of
      them wins, atomically; the loser sees False (cancel) or never gets the
      job (claim). The winner owns the job's fate from then on.
    * ``drain()`` removes and returns every queued job (shutdown, broken pool).
    * ``snapshot()`` is one cheap read of depth, head priority and mix: a hint
      for the dispatcher, which may be stale by the time it acts (``claim``
      decides); a broker answers it in one round trip.
    * ``close()`` refuses new jobs and wakes writers blocked on a full queue.
    """

    maxsize: int

    def put(
        self, item: R, *, block: bool = True, timeout: float | None = None, force: bool = False
    ) -> None: ...
    def claim(self, limit: int, share: int = 1) -> list[R]: ...
    def acknowledge(self, items: Sequence[R]) -> None: ...
    def release(self, item: R, *, keep_place: bool) -> None: ...
    def cancel(self, item: R) -> bool: ...
    def drain(self) -> list[R]: ...
    def snapshot(self) -> QueueSnapshot: ...
    def close(self) -> None: ...


class JobQueue(WorkQueue[R]):
    """Jobs waiting for a worker in this process's memory, in the order they must run.

    Jobs are kept in one FIFO bucket per distinct priority, and a heap holds
    the priorities that have jobs: most jobs share a few priorities, so taking
    the next job costs O(1) instead of a heap operation per job. (With every
    priority distinct it degrades gracefully to a plain heap.)
    """

    def __init__(self, order: str = "priority", maxsize: int = 0):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
        self.order = order
        self.maxsize = maxsize
        self._buckets: dict[float, deque[R]] = {}
        self._levels: list[float] = []  # heap of the priorities that have a bucket
        self._live = 0  # queued jobs, not counting REMOVED ones still in a bucket
        self._removed = 0
        self._seq = itertools.count(1)
        self._closed = False
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)

    def __len__(self) -> int:
        return self._live

    def snapshot(self) -> QueueSnapshot:
        # Read without the lock: it is called on every dispatch and is a hint only
        # (claim() decides). A concurrent claim may empty the levels under us.
        levels = self._levels
        try:
            head = levels[0] if levels and self.order == "priority" else None
        except IndexError:
            head = None
        return QueueSnapshot(self._live, head, len(levels) > 1)

    def put(
        self,
        item: R,
        *,
        block: bool = True,
        timeout: float | None = None,
        force: bool = False,
    ) -> None:
        """Queue a new job. Raises ``Full`` (``block=False`` or after ``timeout``) and
        ``QueueClosed`` after ``close()``. ``force`` ignores ``maxsize``."""
        with self._lock:
            if self.maxsize > 0 and not force:
                self._wait_for_room(block, timeout)  # may wait on _not_full (same lock)
            if self._closed:
                raise QueueClosed("cannot schedule new futures after shutdown")
            item.seq = next(self._seq)
            item.state = State.QUEUED
            self._bucket(item).append(item)
            self._live += 1

    def release(self, item: R, *, keep_place: bool) -> None:
        """Put back a job that left the queue, ignoring ``maxsize`` (it was admitted once).

        ``keep_place`` keeps its original submission order (a job a dead worker
        never started); otherwise it queues behind its equals (a retry).
        """
        with self._lock:
            item.state = State.QUEUED
            bucket = self._bucket(item)
            if keep_place and self.order != "lifo":
                _insert_in_order(bucket, item)
            else:
                if not keep_place:
                    item.seq = next(self._seq)
                bucket.append(item)
            self._live += 1

    def claim(self, limit: int, share: int = 1) -> list[R]:
        """Up to ``limit`` jobs in the order they must run, removed from the queue.

        A worker handed several jobs runs them in a row, so jobs handed to
        different workers start interleaved. To keep that close to the queue's
        order, only jobs of one priority are taken together, and at most a
        ``1/share`` part of them (``share``: the number of workers).
        """
        taken: list[R] = []
        with self._lock:
            while self._levels and not taken:
                level = self._levels[0]
                bucket = self._buckets[level]
                pop = bucket.pop if self.order == "lifo" else bucket.popleft
                limit = min(limit, -(-len(bucket) // share))
                while bucket and len(taken) < limit:
                    item = pop()
                    if item.state is State.QUEUED:
                        item.state = State.CLAIMED
                        taken.append(item)
                    else:
                        self._removed -= 1
                if not bucket:
                    heapq.heappop(self._levels)
                    del self._buckets[level]
            if taken:
                self._live -= len(taken)
                self._not_full.notify(len(taken))
        return taken

    def cancel(self, item: R) -> bool:
        """Withdraw a queued job (cancelled); True if it was still waiting here.

        It is marked and left in its bucket (``claim`` skips it), so this is O(1);
        its ``maxsize`` slot is freed at once."""
        with self._lock:
            if item.state is not State.QUEUED:
                return False
            item.state = State.REMOVED  # left in its bucket; take() skips it
            self._live -= 1
            self._removed += 1
            self._not_full.notify()
            if self._removed > 64 and self._removed > self._live:
                self._compact()
            return True

    def acknowledge(self, items: Sequence[R]) -> None:
        """Nothing to do in memory: a claimed job already left the queue."""

    def drain(self) -> list[R]:
        """Remove and return every waiting job, in order (shutdown, broken pool)."""
        with self._lock:
            items: list[R] = []
            for level in sorted(self._levels):
                bucket = self._buckets[level]
                ordered = reversed(bucket) if self.order == "lifo" else bucket
                items.extend(item for item in ordered if item.state is State.QUEUED)
            for item in items:
                item.state = State.REMOVED
            self._buckets.clear()
            self._levels.clear()
            self._live = self._removed = 0
            self._not_full.notify_all()
            return items

    def close(self) -> None:
        """Refuse new jobs from now on; wake writers blocked on a full queue."""
        with self._lock:
            self._closed = True
            self._not_full.notify_all()

    # -- helpers, called with the lock held -----------------------------------

    def _bucket(self, item: R) -> deque[R]:
        level = item.priority if self.order == "priority" else 0
        bucket = self._buckets.get(level)
        if bucket is None:
            bucket = self._buckets[level] = deque()
            heapq.heappush(self._levels, level)
        return bucket

    def _wait_for_room(self, block: bool, timeout: float | None) -> None:
        if self._live < self.maxsize or self._closed:
            return
        if not block:
            raise Full(f"the queue already holds maxsize={self.maxsize} jobs")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._live >= self.maxsize and not self._closed:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Full(f"the queue still held maxsize={self.maxsize} jobs after {timeout}s")
            self._not_full.wait(remaining)

    def _compact(self) -> None:
        for level, bucket in self._buckets.items():
            self._buckets[level] = deque(item for item in bucket if item.state is State.QUEUED)
        self._removed = 0


def _insert_in_order(bucket: deque[R], item: R) -> None:
    """Insert by submission order; usually at the front, where a requeued job was taken."""
    if not bucket or bucket[0].seq > item.seq:
        bucket.appendleft(item)
        return
    index = bisect.bisect_left(bucket, item.seq, key=lambda queued: queued.seq)
    bucket.insert(index, item)
