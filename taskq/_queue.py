"""The job queue: the one place that decides what runs next.

``queue.PriorityQueue`` semantics: **the smaller priority number runs first**,
and jobs of equal priority run in submission order (a sequence number breaks
ties). ``order="fifo"`` and ``order="lifo"`` ignore priorities and behave like
``queue.Queue`` and ``queue.LifoQueue``.

With ``maxsize > 0`` at most ``maxsize`` jobs wait here; ``put`` blocks or
raises ``Full``. A cancelled job is removed lazily: it is marked, its slot is
freed at once, and ``take`` skips it later.

Locking follows ``Lib/queue.py``: public methods take the lock, helpers whose
names start with ``_`` are only called with it held.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time

from taskq._errors import Full
from taskq._job import State, WorkItem

ORDERS = ("priority", "fifo", "lifo")


class QueueClosed(RuntimeError):
    """Raised by ``put`` once the pool is shutting down."""


class JobQueue:
    def __init__(self, order: str = "priority", maxsize: int = 0):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
        self.order = order
        self.maxsize = maxsize
        self._heap: list[tuple[float, int, WorkItem]] = []
        self._live = 0  # entries in the heap that are not REMOVED
        self._seq = itertools.count(1)
        self._closed = False
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)

    def __len__(self) -> int:
        return self._live

    def put(
        self,
        item: WorkItem,
        *,
        block: bool = True,
        timeout: float | None = None,
        force: bool = False,
    ) -> None:
        """Queue a new job. Raises ``Full`` (``block=False`` or after ``timeout``) and
        ``QueueClosed`` after ``close()``. ``force`` ignores ``maxsize``."""
        with self._not_full:
            if self.maxsize > 0 and not force:
                self._wait_for_room(block, timeout)
            if self._closed:
                raise QueueClosed("cannot schedule new jobs after shutdown")
            item.seq = next(self._seq)
            self._push(item)

    def requeue(self, item: WorkItem, *, keep_place: bool) -> None:
        """Put back a job that left the queue, ignoring ``maxsize`` (it was admitted once).

        ``keep_place`` keeps its original submission order (a job a dead worker
        never started); otherwise it queues behind its equals (a retry).
        """
        with self._lock:
            if not keep_place:
                item.seq = next(self._seq)
            self._push(item)

    def take(self, limit: int) -> list[WorkItem]:
        """Up to ``limit`` jobs in the order they must run, removed from the queue."""
        taken: list[WorkItem] = []
        with self._lock:
            heap = self._heap
            while heap and len(taken) < limit:
                item = heapq.heappop(heap)[2]
                if item.state is State.QUEUED:
                    item.state = State.SENT
                    taken.append(item)
            if taken:
                self._live -= len(taken)
                self._not_full.notify(len(taken))
        return taken

    def remove(self, item: WorkItem) -> bool:
        """Withdraw a queued job (cancelled); True if it was still waiting here."""
        with self._lock:
            if item.state is not State.QUEUED:
                return False
            item.state = State.REMOVED
            self._live -= 1
            self._not_full.notify()
            if len(self._heap) > 64 and self._live < len(self._heap) // 2:
                self._compact()
            return True

    def drain(self) -> list[WorkItem]:
        """Remove and return every waiting job (shutdown with cancel_futures, broken pool)."""
        with self._lock:
            items = [entry[2] for entry in sorted(self._heap) if entry[2].state is State.QUEUED]
            for item in items:
                item.state = State.REMOVED
            self._heap.clear()
            self._live = 0
            self._not_full.notify_all()
            return items

    def close(self) -> None:
        """Refuse new jobs from now on; wake writers blocked on a full queue."""
        with self._lock:
            self._closed = True
            self._not_full.notify_all()

    # -- helpers, called with the lock held -----------------------------------

    def _key(self, item: WorkItem) -> tuple[float, int]:
        if self.order == "priority":
            return (item.priority, item.seq)
        return (0, item.seq if self.order == "fifo" else -item.seq)

    def _push(self, item: WorkItem) -> None:
        item.state = State.QUEUED
        heapq.heappush(self._heap, (*self._key(item), item))
        self._live += 1

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
        self._heap = [entry for entry in self._heap if entry[2].state is State.QUEUED]
        heapq.heapify(self._heap)
