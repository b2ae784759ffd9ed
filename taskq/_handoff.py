"""Handing jobs to workers, and taking back the ones a worker has not started.

    dispatch: the Dispatcher's plan -> CALL frames into each worker's pipe
    dispatch_now: the same from a submitting thread, for an idle worker, if the
              manager's lock is free (else the manager is woken to do it)
    revoke:   a worker's unstarted jobs -> back to the queue, in their place
              (a more urgent job waits, a worker is stuck, a job is killed)

A job is taken back only through the worker's slot (``_slot.py``): the
worker claims each job there before starting it, so a job is either started
or taken back, never both. Runs under the manager's lock; a submitting
thread may dispatch too (``dispatch(idle_only=True)``), but only the manager
thread changes the selector or starts processes.
"""

from __future__ import annotations

import selectors
import signal
import time
from collections.abc import Callable

from taskq._dispatch import Dispatcher
from taskq._job import WorkItem
from taskq._ledger import Ledger, cancelled_as, deliver
from taskq._log import log
from taskq._loop import EventLoop
from taskq._process import WorkerHandle
from taskq._protocol import HEADER, Kind, encode
from taskq._queue import WorkQueue
from taskq._shm import SharedCall
from taskq._timeouts import TimeoutWatch
from taskq._workforce import Workforce


class Handoff:
    def __init__(
        self,
        *,
        queue: WorkQueue[WorkItem],
        dispatcher: Dispatcher,
        ledger: Ledger,
        workforce: Workforce,
        timeouts: TimeoutWatch,
        loop: EventLoop,
        max_tasks: int | None,
        terminating: Callable[[], bool],
        stopping: Callable[[], bool],
    ):
        self._queue = queue
        self._dispatcher = dispatcher
        self._ledger = ledger
        self._workforce = workforce
        self._timeouts = timeouts
        self._loop = loop
        self._max_tasks = max_tasks
        self._terminating = terminating
        self._stopping = stopping
        self._rebalance_armed = False

    def dispatch(self, idle_only: bool = False) -> bool:
        """Take back what must make way for a more urgent job, then hand out jobs;
        True if some worker had jobs taken back."""
        depth, head, _ = self._queue.snapshot()
        if not depth:
            return False
        workers = list(self._workforce.workers.values())
        making_way = self._dispatcher.make_way(workers, head)
        for worker in making_way:
            self.revoke(worker)
        for worker, items in self._dispatcher.plan(workers, idle_only):
            self.send(worker, items)
        return bool(making_way)

    def dispatch_now(self, priority: float) -> None:
        """Called right after a job is queued: give it to an idle worker from this thread.

        Nothing to do (the common case under load) when every worker is busy and
        holds nothing less urgent than the new job: the manager tops workers up as
        they reply, and it always dispatches after a reply has freed a worker.
        """
        # Read without the lock (a hint only: the locked dispatch decides). The manager
        # may empty a deque between two reads, hence the IndexError; tuple() copies the
        # workers in one C call, safe while the manager changes the dict.
        for worker in tuple(self._workforce.workers.values()):
            held = worker.outstanding
            try:
                if not held or (len(held) > 1 and held[-1].priority > priority):
                    break
            except IndexError:
                break
        else:
            return
        lock = self._loop.lock
        if not lock.acquire(blocking=False):
            self._loop.wake()  # the manager is busy; make sure it looks again before sleeping
            return
        try:
            if self._stopping():
                self._loop.wake()
                return
            made_way = self.dispatch(idle_only=True)
            if made_way or any(worker.outbox for worker in self._workforce.workers.values()):
                # A worker now finishes its current job and waits for the urgent one: the
                # manager must not sit out a pause (``pause``) before reading its reply.
                # Or a large call is still being written: the manager finishes it.
                self._loop.wake()
        finally:
            outcomes = self._ledger.take_outcomes()
            lock.release()
        deliver(outcomes)

    def send(self, worker: WorkerHandle, items: list[WorkItem]) -> None:
        live = self._ledger.started(items)
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
        worker.outbox.push(call_frames(live))
        self.flush(worker, on_manager=self._loop.on_loop_thread())
        if was_idle:
            self._timeouts.head_changed(worker)

    def _retire(self, worker: WorkerHandle) -> None:
        # Only the manager thread starts processes; a caller's thread leaves it to it.
        if self._loop.on_loop_thread():
            self._workforce.retire(worker)
        else:
            worker.stop_reason = "retire"
            self._loop.post(lambda: self._workforce.replenish(predecessor=worker))

    def flush(self, worker: WorkerHandle, on_manager: bool = True) -> None:
        """Write what waits in the worker's outbox; the rest when its pipe has room."""
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
        if not on_manager or done is not worker.write_watched:
            return  # only the manager thread changes the selector; nothing to change
        if done:
            worker.write_watched = False
            self._loop.selector.unregister(worker.calls_fd)
        else:
            worker.write_watched = True
            self._loop.selector.register(
                worker.calls_fd, selectors.EVENT_WRITE, lambda _: self.flush(worker)
            )

    def revoke(self, worker: WorkerHandle) -> int:
        """Take back the jobs ``worker`` holds but has not started; return the number
        (``wseq``) of the last job it started."""
        started = worker.slot.revoke(worker.sent)
        taken: list[WorkItem] = []
        while worker.outstanding and worker.outstanding[-1].wseq > started:
            taken.append(worker.outstanding.pop())
        worker.revoked += len(taken)
        if worker.stop_reason == "retire" and taken:  # it will not reach max_tasks now
            worker.outbox.push([encode(Kind.STOP)])
            self.flush(worker)
        if taken:
            log.debug("took %d unstarted jobs back from worker %d", len(taken), worker.pid)
            self.release(taken[::-1])
        return started

    def release(self, items: list[WorkItem]) -> None:
        """Jobs a worker held but never started go back to the queue, in their place
        (or are cancelled, when the pool is being terminated)."""
        if not items:
            return
        if self._terminating():
            why = cancelled_as("was cancelled: the pool was terminated")
            self._ledger.ended(items, why, running=True)
            return
        self._ledger.released(items)
        # Newest first: each then goes in front of the one before (the common case:
        # they were taken from the front); oldest first, each would be searched for
        # its place (with 100 jobs held, ~0.5 ms before an urgent job could start).
        for item in reversed(items):
            self._queue.release(item, keep_place=True)

    def rebalance(self) -> None:
        workers = list(self._workforce.workers.values())
        for worker in workers:
            if len(worker.outstanding) > 1:
                break
        else:  # no job waits behind another in a worker: nothing could move
            return
        stuck, recheck = self._dispatcher.stuck(workers, time.monotonic())
        for worker in stuck:
            self.revoke(worker)
        if stuck:
            self.dispatch()  # the idle worker takes them now
        if recheck is not None and not self._rebalance_armed:
            self._rebalance_armed = True
            self._loop.at(recheck, self._rearm_rebalance)

    def _rearm_rebalance(self) -> None:
        self._rebalance_armed = False
        self.rebalance()

    def stop_sending(self, worker: WorkerHandle) -> None:
        """Tell an idle worker to exit (the pool is winding down)."""
        worker.stop_reason = "stop"
        worker.outbox.push([encode(Kind.STOP)])
        self.flush(worker)


SMALL_CALL = 2048  # a smaller call is joined to its header: one buffer, fewer iovecs per writev
_CALL = int(Kind.CALL)


def call_frames(items: list[WorkItem]) -> list[bytes]:
    """The CALL frames of ``items``, as buffers for one ``writev``."""
    buffers: list[bytes] = []
    append, pack = buffers.append, HEADER.pack
    for item in items:
        call = item.call
        if type(call) is SharedCall:  # what the worker reads is a reference to its segment
            call = call.segment.payload()
        header = pack(len(call), _CALL, item.job_id, 0.0)
        if len(call) <= SMALL_CALL:
            append(header + call)
        else:  # never copied to prepend its header
            append(header)
            append(call)
    return buffers
