"""The job queue: the one place that decides what runs next.

``queue.PriorityQueue`` semantics: **the smaller priority number runs first**,
and jobs of equal priority run in submission order (a sequence number the
queue assigns breaks ties). ``order="fifo"`` and ``order="lifo"`` ignore
priorities and behave like ``queue.Queue`` and ``queue.LifoQueue``.

**Aging** (``aging=seconds``, priority order only) keeps a steady stream of
urgent jobs from starving the others: a waiting job's effective priority
improves by one level for every ``aging`` seconds it has waited. Its place is
then ordered by ``priority + wait / aging``; since every waiting job's wait
grows at the same rate, that is the same order as the fixed key

    key = priority + queued_at / aging      (ties: submission order)

which a heap (or a durable broker's index) can hold. Worked example, with
``aging=10``: a priority-5 job queued at t=0 has key 5.0; a priority-0 job
queued at t=30 has key 3.0 and runs first, one queued at t=50 has key 5.0 and
ties (the earlier submission, the priority-5 job, runs first), one queued at
t=60 has key 6.0 and runs after it. So a job is overtaken only by jobs queued
less than ``(its priority - theirs) * aging`` seconds after it, and never
starves. ``aging=None`` (the default) is plain priority order.

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
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, TypeVar

from taskq._errors import Full
from taskq._job import JobRecord, State

ORDERS = ("priority", "fifo", "lifo")
_QUEUED = State.QUEUED

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

    With ``aging``, a bucket's jobs are still in key order (their keys grow
    with submission), so only the buckets' *first* jobs compete: a heap of
    ``(key, seq, priority)`` entries for them replaces the heap of priorities.
    An entry is pushed whenever a bucket's first job changes and checked when
    it reaches the top (a stale one is dropped), so no entry is ever updated
    in place. ``clock`` (seconds) stamps ``queued_at``; tests may pass their own.
    """

    def __init__(
        self,
        order: str = "priority",
        maxsize: int = 0,
        aging: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
        if aging is not None and order != "priority":
            raise ValueError(f"aging applies to order='priority' only; got order={order!r}")
        self.order = order
        self.maxsize = maxsize
        self.aging = aging
        self._clock = clock
        self._heads: list[tuple[float, int, float]] = []  # aging only: see above
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
        if self.aging is not None:
            return self._aged_snapshot()
        levels = self._levels
        try:
            head = levels[0] if levels and self.order == "priority" else None
        except IndexError:
            head = None
        return QueueSnapshot(self._live, head, len(levels) > 1)

    def _aged_snapshot(self) -> QueueSnapshot:
        # The head is the *priority* of the job with the smallest key (the dispatcher
        # compares it with held jobs' priorities); the top entry may be stale: a hint.
        heads = self._heads
        try:
            head = heads[0][2] if heads else None
        except IndexError:
            head = None
        return QueueSnapshot(self._live, head, len(self._buckets) > 1)

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
            item.queued_at = self._clock()
            item.state = _QUEUED
            # The bucket of its level, looked up inline: this runs for every job.
            bucket = self._buckets.get(item.priority if self.order == "priority" else 0)
            if bucket is None:
                bucket = self._bucket(item)
            bucket.append(item)
            self._live += 1
            if self.aging is not None and len(bucket) == 1:
                self._push_head(bucket)

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
                    item.queued_at = self._clock()  # a retry's wait counts from now
                bucket.append(item)
            self._live += 1
            if self.aging is not None and bucket[0] is item:
                self._push_head(bucket)

    def claim(self, limit: int, share: int = 1) -> list[R]:
        """Up to ``limit`` jobs in the order they must run, removed from the queue.

        A worker handed several jobs runs them in a row, so jobs handed to
        different workers start interleaved. To keep that close to the queue's
        order, only jobs of one priority are taken together, and at most a
        ``1/share`` part of them (``share``: the number of workers).
        """
        taken: list[R] = []
        with self._lock:
            if self.aging is not None:
                taken = self._claim_aged(limit, share)
            while self._levels and not taken:
                level = self._levels[0]
                bucket = self._buckets[level]
                pop = bucket.pop if self.order == "lifo" else bucket.popleft
                room = min(limit, -(-len(bucket) // share))  # 1 at least: bucket is not empty
                while bucket and len(taken) < room:
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
            for level in sorted(self._buckets):
                bucket = self._buckets[level]
                ordered = reversed(bucket) if self.order == "lifo" else bucket
                items.extend(item for item in ordered if item.state is State.QUEUED)
            if self.aging is not None:
                items.sort(key=self._key)
            for item in items:
                item.state = State.REMOVED
            self._buckets.clear()
            self._levels.clear()
            self._heads.clear()
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
            if self.aging is None:  # with aging, _heads orders the buckets
                heapq.heappush(self._levels, level)
        return bucket

    def _key(self, item: R) -> tuple[float, int]:
        assert self.aging is not None
        return item.priority + item.queued_at / self.aging, item.seq

    def _push_head(self, bucket: deque[R]) -> None:
        first = bucket[0]
        heapq.heappush(self._heads, (*self._key(first), first.priority))

    def _next_aged(self) -> deque[R] | None:
        """The bucket whose first job has the smallest key, its entry on top of the heap."""
        heads = self._heads
        while heads:
            _, seq, level = heads[0]
            bucket = self._buckets.get(level)
            if not bucket or bucket[0].seq != seq:
                heapq.heappop(heads)  # stale: that bucket's first job has its own entry
                continue
            if bucket[0].state is State.QUEUED:
                return bucket
            heapq.heappop(heads)  # a cancelled first job: drop it (and any behind it)
            self._drop_removed(bucket)
            if bucket:
                self._push_head(bucket)
            else:
                del self._buckets[level]
        return None

    def _drop_removed(self, bucket: deque[R]) -> None:
        while bucket and bucket[0].state is not State.QUEUED:
            bucket.popleft()
            self._removed -= 1

    def _claim_aged(self, limit: int, share: int) -> list[R]:
        """``claim`` under aging: from the bucket first in key order, only while its
        jobs stay ahead of every other bucket's first job."""
        taken: list[R] = []
        bucket = self._next_aged()
        if bucket is None:
            return taken
        heads = self._heads
        level = heapq.heappop(heads)[2]
        limit = min(limit, -(-len(bucket) // share))
        while bucket and len(taken) < limit:
            item = bucket[0]
            if item.state is not State.QUEUED:
                bucket.popleft()
                self._removed -= 1
                continue
            # A stale rival entry is never later than that bucket's real first job,
            # so comparing with it can only stop early, never take out of order.
            if taken and heads and self._key(item) > heads[0][:2]:
                break
            item.state = State.CLAIMED
            taken.append(bucket.popleft())
        if bucket:
            self._push_head(bucket)
        else:
            del self._buckets[level]
        return taken

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
        # A bucket left empty goes with its level: claim() expects none (and an empty
        # bucket at the head would make it take nothing).
        for level, bucket in list(self._buckets.items()):
            kept = deque(item for item in bucket if item.state is State.QUEUED)
            if kept:
                self._buckets[level] = kept
            else:
                del self._buckets[level]
        self._removed = 0
        if self.aging is None:
            levels = list(self._buckets)
            heapq.heapify(levels)
            self._levels = levels  # a new list: snapshot() reads the old one unlocked
        else:  # first jobs changed: one fresh entry per bucket
            self._heads.clear()
            for bucket in self._buckets.values():
                self._push_head(bucket)


def _insert_in_order(bucket: deque[R], item: R) -> None:
    """Insert by submission order; usually at the front, where a requeued job was taken."""
    if not bucket or bucket[0].seq > item.seq:
        bucket.appendleft(item)
        return
    index = bisect.bisect_left(bucket, item.seq, key=lambda queued: queued.seq)
    bucket.insert(index, item)
