"""How many jobs a worker may hold at once: the batching policy.

Handing a worker several jobs at once saves a round trip per job, but a job
handed over can no longer be overtaken: a more urgent job submitted later waits
behind everything the workers already hold. So:

* Batches are bounded in *time*, not count: a worker holds at most about
  ``HOLD_BUDGET`` seconds of work, judged by the recent average time per job,

      limit = HOLD_BUDGET / average seconds per job, between 1 and MAX_BATCH

  With 100 µs jobs a worker holds about 20 (2 ms of work); with jobs of a
  second or more, just the one it runs. A fresh pool hands out one job at a time.
* Only a backlog of *equal* priorities is batched. While jobs of several
  priorities wait, workers take one job at a time, when idle, so jobs start
  in queue order across all workers (give or take one per worker).
* A busy worker is topped up only when it replies, never merely because a job
  was queued: jobs queued while every worker is busy wait in the queue, in
  order, until a worker frees up.
* If a worker is stuck on a job far longer than the average while another
  worker is idle, the jobs waiting behind it are taken back (``_slot.py``).

So an urgent job starts within about ``HOLD_BUDGET`` plus a round trip of a
worker freeing up.
"""

from __future__ import annotations

import selectors
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskq._job import State, WorkItem
from taskq._log import log
from taskq._process import WorkerHandle
from taskq._protocol import Kind, encode, encode_parts
from taskq._queue import JobQueue
from taskq._stats import CANCELLED, QUEUED, RUNNING, StatsBlock

# Raising it batches more (fewer wake-ups, more throughput for tiny jobs);
# lowering it lets urgent jobs overtake sooner. 2 ms keeps the urgent-job
# delay well under 5 ms while tiny jobs still travel ~hundreds per write.
HOLD_BUDGET = 0.002
MAX_BATCH = 512
SMOOTHING = 0.2  # weight of the newest measurement in the moving average


class BatchPolicy:
    """Tracks the average time a job takes in a worker and turns it into a hold limit."""

    def __init__(self) -> None:
        self.average: float | None = None

    def observe(self, seconds: float) -> None:
        if self.average is None:
            self.average = seconds
        else:
            self.average += SMOOTHING * (seconds - self.average)

    def limit(self) -> int:
        if self.average is None:
            return 1
        if self.average <= HOLD_BUDGET / MAX_BATCH:
            return MAX_BATCH
        return max(1, int(HOLD_BUDGET / self.average))


# A worker is "stuck" when its job has run this long (and at least STALL_FACTOR times
# the recent average): the jobs queued behind it move to an idle worker. Lower values
# rebalance sooner at the cost of more take-backs of jobs that would have run soon.
STALL_MIN = 0.005
STALL_FACTOR = 4.0
NOT_STARTED_RECHECK = 0.005  # look again at a job its worker has not begun yet


def _held(worker: WorkerHandle) -> int:
    return len(worker.outstanding)


class Dispatcher:
    """The manager's dispatch step: hand queued jobs to workers with room (see above)."""

    _queue: JobQueue[WorkItem]
    _workers: dict[int, WorkerHandle]
    _policy: BatchPolicy
    _stats: StatsBlock
    _max_tasks: int | None
    _selector: selectors.BaseSelector
    _rebalance_armed: bool

    if TYPE_CHECKING:  # provided by the Manager

        def is_manager_thread(self) -> bool: ...
        def _at(self, when: float, action: Callable[..., None], *args: Any) -> None: ...
        def _retire(self, worker: WorkerHandle) -> None: ...
        def _watch_head(self, worker: WorkerHandle) -> None: ...
        def _requeue(self, items: list[WorkItem]) -> None: ...

    def _dispatch(self, idle_only: bool = False) -> None:
        """Hand queued jobs to workers with room, most urgent first.

        A worker busy with jobs is topped up only right after it replies, never
        when a job is merely queued: jobs queued while every worker is busy stay
        in the queue, in priority order, until a worker frees up.
        """
        queue = self._queue
        depth, head, mixed = queue.snapshot()
        if not depth:
            return
        self._make_way(head)
        # With several priorities waiting, workers take one job at a time, when idle:
        # jobs a worker held would otherwise start after more urgent ones taken by
        # other workers. Batching is for a backlog of equals.
        limit = 1 if mixed else self._policy.limit()
        idle_only = idle_only or mixed
        # Idle workers first: a job must not queue behind a busy worker's job while
        # another worker has nothing to do. (A list: _send may start a successor.)
        for worker in sorted(self._workers.values(), key=_held):
            if idle_only and worker.outstanding:
                continue
            room = self._room(worker, limit)
            if room <= 0:
                continue
            items = queue.claim(room, len(self._workers))
            if items:
                self._send(worker, items)
            if not queue.snapshot().depth:
                return

    def _make_way(self, urgent: float | None) -> None:
        """Take back jobs a worker holds but has not started when a more urgent job waits."""
        if urgent is None:
            return
        for worker in self._workers.values():
            held = worker.outstanding
            if len(held) > 1 and held[-1].priority > urgent and worker.accepting:
                self._revoke(worker)

    def _room(self, worker: WorkerHandle, limit: int) -> int:
        if not worker.accepting or worker.predecessor is not None:
            return 0
        held = len(worker.outstanding)
        if held and not worker.reported:
            return 0
        # Two at least: the next job is already there when the worker finishes one.
        cap = max(2, limit) if worker.ready else 1
        if held > cap // 2:
            return 0
        room = cap - held
        if self._max_tasks is not None:
            room = min(room, self._max_tasks - (worker.sent - worker.revoked))
        return room

    def _send(self, worker: WorkerHandle, items: list[WorkItem]) -> None:
        live: list[WorkItem] = []
        for item in items:
            future = item.future
            if not item.claimed:
                if not future.set_running_or_notify_cancel():
                    item.state = State.DONE  # cancelled between take() and now
                    continue
                item.claimed = True
            item.attempts += 1
            future.attempts = item.attempts
            live.append(item)
        cancelled = len(items) - len(live)
        self._stats.add_many([(QUEUED, -len(items)), (RUNNING, len(live)), (CANCELLED, cancelled)])
        if not live:
            return
        was_idle = not worker.outstanding
        for item in live:
            worker.sent += 1
            item.wseq = worker.sent
        worker.outstanding.extend(live)
        worker.reported = False
        if self._max_tasks is not None and worker.sent - worker.revoked >= self._max_tasks:
            self._retire(worker)
        buffers: list[bytes] = []
        for item in live:
            buffers += encode_parts(Kind.CALL, item.job_id, item.call)
        worker.outbox.push(buffers)
        self._flush(worker, register=self.is_manager_thread())
        if was_idle:
            self._watch_head(worker)

    def _flush(self, worker: WorkerHandle, register: bool = True) -> None:
        try:
            done = worker.outbox.flush()
        except OSError as exc:
            # EPIPE: the worker is gone, its sentinel will tell. Anything else leaves
            # the pipe unusable: stop the worker, so its jobs are dealt with as at a crash
            # instead of waiting forever for calls that never arrive.
            if not isinstance(exc, BrokenPipeError):
                log.error("cannot write to worker %d (%r): stopping it", worker.pid, exc)
                worker.signal(signal.SIGKILL)
            done = True
            worker.outbox = type(worker.outbox)(worker.calls_fd)
        if not register:
            return
        key = self._selector.get_map().get(worker.calls_fd)
        if not done and key is None:
            self._selector.register(
                worker.calls_fd, selectors.EVENT_WRITE, lambda _: self._flush(worker)
            )
        elif done and key is not None:
            self._selector.unregister(worker.calls_fd)

    def _rebalance(self) -> None:
        """Take jobs back from a worker stuck on a long job when another worker sits idle.

        Batching hands a worker jobs that then wait behind the one it runs; if that
        one turns out long, they would wait for it while another worker has nothing
        to do. Such jobs return to the queue (in their place) for the idle worker.
        """
        if self._queue.snapshot().depth or not any(
            w.accepting and w.ready and not w.outstanding for w in self._workers.values()
        ):
            return
        now = time.monotonic()
        patience = max(STALL_MIN, STALL_FACTOR * (self._policy.average or 0.0))
        for worker in list(self._workers.values()):
            if len(worker.outstanding) < 2 or not worker.accepting:
                continue
            job_id, started_ns = worker.running_job()
            if job_id == worker.outstanding[0].job_id:
                stuck_at = started_ns / 1e9 + patience
            else:  # between two jobs: look again in a moment
                stuck_at = now + NOT_STARTED_RECHECK
            if now >= stuck_at and job_id:
                if self._revoke(worker) is None:  # its slot was busy: try again shortly
                    stuck_at = now + NOT_STARTED_RECHECK
                self._dispatch()  # the idle worker takes them now
            if now < stuck_at and not self._rebalance_armed:
                self._rebalance_armed = True
                self._at(stuck_at, self._rearm_rebalance)

    def _rearm_rebalance(self) -> None:
        self._rebalance_armed = False
        self._rebalance()

    def _revoke(self, worker: WorkerHandle) -> int | None:
        """Take back the jobs ``worker`` holds but has not started; return the number
        (``wseq``) of the last job it started, or None if its slot could not be locked
        (the worker is dying, or was busy for a moment)."""
        started = worker.slot.revoke(worker.sent)
        if started is None:
            return None
        taken: list[WorkItem] = []
        while worker.outstanding and worker.outstanding[-1].wseq > started:
            taken.append(worker.outstanding.pop())
        worker.revoked += len(taken)
        if worker.stop_reason == "retire" and taken:  # it will not reach max_tasks now
            worker.outbox.push([encode(Kind.STOP)])
            self._flush(worker)
        if taken:
            log.debug("took %d unstarted jobs back from worker %d", len(taken), worker.pid)
            self._requeue(taken[::-1])
        return started
