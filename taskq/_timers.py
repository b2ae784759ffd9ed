"""The manager's timers: a heap of (when, action) it runs between two ``select`` calls.

Timeouts, retry backoffs, the SIGKILL after a SIGTERM grace, a take-back
re-check: each is an action due at a monotonic time. The manager sleeps in
``select`` until the first one is due (``next_delay``) and runs the due ones
after handling its events (``run_due``). Only the manager thread runs them.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

# The longest the manager sleeps without looking at its timers: select()/epoll take at
# most ~24.8 days, and a timer may be due in a year (or never: a timeout of inf).
LONGEST = 3600.0


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()  # equal times run in the order they were set

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action, args))

    def next_delay(self) -> float | None:
        """Seconds until the first timer is due (0 if overdue, at most ``LONGEST``), None
        if there is none."""
        if not self._heap:
            return None
        return min(max(0.0, self._heap[0][0] - time.monotonic()), LONGEST)

    def run_due(self) -> None:
        now = time.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, action, args = heapq.heappop(heap)
            action(*args)
