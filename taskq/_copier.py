"""Copy: large results out of shared memory, on a thread of their own.

    manager thread   OK_SHARED reply, jobs queued -> Copier.put(jobs)  (returns at once)
    copier thread    read: adopt the worker's file, read the result out of it
                     -> post(settled(outcomes))                    (one post a batch)
    manager thread   settle them like any other reply: result, error or retry

A result in shared memory must still be copied into the parent's own memory
(``bytes`` cannot point elsewhere), and fresh memory costs the kernel a page
fault per 4 KiB: 0.3 to 0.5 ms a MiB on the VMs measured. Done on the manager's
thread, that time is taken from dispatching and collecting every other job; done
here, it runs beside them (``pread`` releases the GIL). Measured: 1 MiB echo jobs move
about 25 % more per second (benchmarks/README.md). One thread: with two, the page
faults of two results are taken on two cores at once, but each then interrupts the
other to flush its TLB (copy-on-write pages shared with the fork server), and the
rate swung between 1,600 and 3,400 MiB/s where one thread holds ~3,000.

Who settles a job handed over here: the manager, when the copier posts back;
or, if the manager stops first (its thread failed), ``close``'s caller, which
ends the jobs still here. A batch decoded after ``close`` is dropped.

A result that is one large ``bytes``/``bytearray`` is not copied here but by its
caller's first ``result()`` (``_shared_result.py``), unless a done-callback waits
for it.

A dead worker's leftover result files are removed here too (``then_sweep``),
after the batches handed over before: those replies still have to read theirs.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from typing import Any

from taskq import _segments
from taskq._collect import to_copy
from taskq._job import WorkItem
from taskq._protocol import Frame

Decode = Callable[[WorkItem, Frame], tuple[bool, Any]]
Outcomes = list[tuple[WorkItem, tuple[bool, Any]]]


class Copier:
    """``put`` and ``close`` run on the manager's thread, and so does ``settle``
    (through ``post``); only ``decode`` runs on the copier's own thread."""

    def __init__(
        self,
        decode: Decode,
        post: Callable[[Callable[[], None]], None],
        settle: Callable[[Outcomes], None],
        backlog: Callable[[], bool],
    ):
        self._decode, self._post, self._settle = decode, post, settle
        self._backlog = backlog  # whether jobs wait to be dispatched
        self._inbox: queue.SimpleQueue[list[tuple[WorkItem, Frame]] | str | None]
        self._inbox = queue.SimpleQueue()
        self._pending: set[WorkItem] = set()  # handed over, not settled yet
        self._thread: threading.Thread | None = None  # started with the first large result
        self._closed = False

    def __len__(self) -> int:
        """How many jobs handed over are not settled yet."""
        return len(self._pending)

    def take_shared(self, done: list[tuple[WorkItem, Frame]]) -> list[tuple[WorkItem, Frame]]:
        """Take the replies whose result waits in shared memory (``put``) while jobs wait
        to be dispatched (a copy here runs beside that work; without a backlog the
        hand-off would only add a thread hop to the result's way); return the rest."""
        if not any(to_copy(item, frame) for item, frame in done) or not self._backlog():
            return done  # the common case (small results) costs one pass over the kinds
        inline: list[tuple[WorkItem, Frame]] = []
        handed: list[tuple[WorkItem, Frame]] = []
        for pair in done:
            (handed if to_copy(*pair) else inline).append(pair)
        self.put(handed)
        return inline

    def put(self, done: list[tuple[WorkItem, Frame]]) -> None:
        """Decode these replies on the copier's thread, then settle them."""
        if self._closed:
            raise RuntimeError("the result copier is closed")
        self._pending.update(item for item, _ in done)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="taskq-copier", daemon=True)
            self._thread.start()
        self._inbox.put(done)

    def then_sweep(self, prefix: str) -> None:
        """Remove the result files named ``prefix``*, once the replies handed over so far
        have read theirs (at once if none is pending)."""
        if self._pending and not self._closed:
            self._inbox.put(prefix)
        else:
            _segments.sweep(prefix)

    def close(self) -> list[WorkItem]:
        """Stop the thread; return the jobs handed over and never settled (the caller
        ends them: their outcomes, if they come, are dropped)."""
        self._closed = True
        left = list(self._pending)
        self._pending.clear()
        if self._thread is not None:
            self._inbox.put(None)
        return left

    def _run(self) -> None:
        while (done := self._inbox.get()) is not None:
            if isinstance(done, str):
                _segments.sweep(done)
                continue
            # decode() turns whatever unpickling raises into the job's error; anything
            # else fails the batch's jobs rather than this thread (they would never settle).
            try:
                outcomes = [(item, self._decode(item, frame)) for item, frame in done]
            except BaseException as exc:
                outcomes = [(item, (False, exc)) for item, _ in done]
            self._post(functools.partial(self._settled, outcomes))

    def _settled(self, outcomes: Outcomes) -> None:
        if self._closed:
            return
        self._pending.difference_update(item for item, _ in outcomes)
        self._settle(outcomes)
