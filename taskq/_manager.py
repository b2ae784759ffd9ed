"""The manager: owns the workers and every job once it leaves the queue.

It runs on one thread (``_loop.py``), asleep in a single ``select`` on the
wake-up pipe, each worker's result pipe and process sentinel (a dead worker
wakes it at once), a worker's call pipe while a large call is being written,
and its timers (job timeouts, retry backoffs, the SIGKILL after a SIGTERM
grace, take-back re-checks). Each step, under its lock: ready events ->
commands posted by other threads (kill, shutdown, terminate) -> due timers ->
dispatch -> finish writing calls -> wind down if stopping -> take back jobs
from a stuck worker; then, with the lock released, the futures decided
meanwhile are resolved (``_ledger.deliver``): user callbacks never run under it.

It is composed of parts with one job each, and applies what they decide:

    Dispatcher   which worker gets which queued jobs           (_dispatch.py)
    Handoff      CALL frames into pipes; take-backs           (_handoff.py)
    Collector    what replies and exits mean for held jobs    (_collect.py)
    Copier       large results read off this thread           (_copier.py)
    Retries      jobs waiting out a backoff before another try (_retries.py)
    TimeoutWatch which running job ran too long               (_timeouts.py)
    Workforce    starting, replacing, stopping processes      (_workforce.py)
    Ledger       every job state change, with its statistics  (_ledger.py)

A submitting thread may also dispatch (``dispatch_now``): it takes the lock
without waiting and hands the job to an idle worker; when the lock is busy
it only wakes the manager.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from multiprocessing.context import BaseContext
from typing import Any

from taskq import _slot
from taskq._collect import Collector, decode, init_error, read
from taskq._copier import Copier
from taskq._counters import CounterBlock
from taskq._dispatch import BatchPolicy, Dispatcher, pause, spin
from taskq._errors import PoolBroken
from taskq._handoff import Handoff
from taskq._job import State, WorkItem
from taskq._ledger import Ledger, cancelled_as, copy_error, deliver
from taskq._log import log
from taskq._loop import EventLoop
from taskq._process import WorkerHandle, WorkerLauncher
from taskq._protocol import Frame
from taskq._queue import WorkQueue
from taskq._retries import Retries
from taskq._stats import StatsBlock
from taskq._timeouts import TimeoutWatch
from taskq._workforce import STOPPED, Workforce


class Manager:
    """Owns the workers and every job from the moment it leaves the queue."""

    def __init__(
        self,
        *,
        ctx: BaseContext,
        max_workers: int,
        queue: WorkQueue[WorkItem],
        stats: StatsBlock,
        counters: CounterBlock,
        initializer: Callable[..., object] | None,
        initargs: Sequence[Any],
        max_tasks: int | None,
    ):
        self._queue = queue
        self._max_tasks = max_tasks
        self._loop = EventLoop(
            work=self._work,
            after=self._deliver,
            keep_running=self._keep_running,
            failed=self._failed,
            closing=self._closing,
            pace=self._pace,
            spin=self._spin,
        )
        self._selector = self._loop.selector
        self._at = self._loop.at
        self.call, self.post, self.join = self._loop.call, self._loop.post, self._loop.join
        self.is_manager_thread = self._loop.on_loop_thread
        self._ledger = Ledger(stats)
        policy = BatchPolicy()
        self._dispatcher = Dispatcher(queue, policy, max_tasks, lambda: len(self._copier))
        self._collector = Collector(policy, sweep=lambda prefix: self._copier.then_sweep(prefix))
        self._timeouts = TimeoutWatch(self._at, self._expired, self._watching)
        # Twice the workers: a retiring worker (max_tasks_per_child) keeps its slot
        # until it exits, while its replacement already starts.
        slots: Any = ctx.RawArray("q", _slot.WIDTH * 2 * max_workers)
        self._lifeline_read, self._lifeline_write = ctx.Pipe(duplex=False)
        # Created before the manager thread starts: under fork, the launcher forks
        # its workers from a process with no threads (see _process.py).
        launcher = WorkerLauncher(
            ctx,
            lifeline=self._lifeline_read,
            lifeline_write_fd=self._lifeline_write.fileno(),
            slots=slots,
            counters=counters,
            initializer=initializer,
            initargs=initargs,
            max_tasks=max_tasks,
        )
        self._workforce = Workforce(
            launcher,
            max_workers,
            selector=self._selector,
            at=self._at,
            ledger=self._ledger,
            on_results=self._on_results,
            on_exit=self._on_exit,
            needed=self._need_workers,
            give_up=self._give_up,
        )
        self._workers = self._workforce.workers  # index -> worker, the same dict
        self._max_workers = max_workers
        self._retries = Retries(
            queue,
            self._ledger,
            self._collector,
            self._at,
            allowed=lambda: not self._terminating and self.broken is None,
        )
        self._copier = Copier(  # large results, read on a thread of their own
            read, self.post, self._retries.settle, lambda: self._queue.snapshot().depth > 0
        )
        self._stopping = False
        self._terminating = False
        self.broken: PoolBroken | None = None
        self._handoff = Handoff(
            queue=queue,
            dispatcher=self._dispatcher,
            ledger=self._ledger,
            workforce=self._workforce,
            timeouts=self._timeouts,
            loop=self._loop,
            max_tasks=max_tasks,
            terminating=lambda: self._terminating,
            stopping=lambda: self._stopping,
        )
        # A submitting thread hands its job to an idle worker itself (see Handoff).
        self.dispatch_now = self._handoff.dispatch_now

    def later(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` on the manager thread in ``delay`` seconds (from any thread:
        the timer is set by the manager, under its lock)."""
        when = time.monotonic() + delay
        self.post(lambda: self._at(when, action))

    @property
    def average_job_seconds(self) -> float | None:
        """The recent average time a job takes in a worker (None before the first)."""
        return self._dispatcher.policy.average

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    # -- called from other threads ------------------------------------------------

    def start(self) -> None:
        for index in range(self._max_workers):
            if not self._workforce.start(index):
                break  # retried with backoff by the manager
        self._loop.start()

    def kill_workers(self) -> None:
        """Last resort at interpreter exit: SIGKILL and reap every worker still alive."""
        self._workforce.kill_all()

    @property
    def alive(self) -> bool:
        return self._loop.alive

    # -- the loop's hooks -------------------------------------------------------------

    def _work(self) -> None:
        self._handoff.dispatch()
        for worker in self._workers.values():
            if worker.outbox:
                self._handoff.flush(worker)
        if self._stopping:
            self._wind_down()
        self._handoff.rebalance()

    def _pace(self, busy: float) -> float:
        if self._stopping:
            return 0.0
        policy, queued = self._dispatcher.policy, self._queue.snapshot().depth
        return pause(self._workers.values(), policy.average, queued, busy, policy.moves_data)

    def _spin(self) -> float:
        average, queued = self._dispatcher.policy.average, self._queue.snapshot().depth
        return 0.0 if self._stopping else spin(average, queued)

    def _deliver(self) -> None:
        deliver(self._ledger.take_outcomes())

    def _failed(self, exc: BaseException) -> None:
        log.exception("taskq manager thread failed")
        error = PoolBroken(
            f"taskq's manager thread failed ({exc!r}); this is a bug in taskq, please "
            "report it with the traceback chained to this error. Create a new Pool."
        )
        error.__cause__ = exc
        self._give_up(error)
        for worker in self._workers.values():
            held = list(worker.outstanding)
            worker.outstanding.clear()
            self._ledger.ended(held, lambda _: copy_error(error), running=True)
        self._ledger.ended(self._copier.close(), lambda _: copy_error(error), running=True)

    def _closing(self) -> None:
        self._copier.close()  # empty by now, unless the thread failed (then _failed ended them)
        self._workforce.close()
        self._lifeline_write.close()
        self._lifeline_read.close()
        log.debug("taskq manager stopped")

    def _keep_running(self) -> bool:
        if self._workers or not self._stopping or self._retries or self._copier:
            return True
        # No worker left: go on only if queued jobs will get one (a respawn is pending).
        depth = self._queue.snapshot().depth
        return bool(depth) and self._need_workers() and bool(self._loop.timers)

    def _need_workers(self) -> bool:
        if self.broken is not None or self._terminating:
            return False
        return not self._stopping or self._queue.snapshot().depth > 0 or bool(self._retries)

    # -- collect: replies and exits -------------------------------------------------

    def _on_results(self, worker: WorkerHandle) -> None:
        try:
            frames = worker.reader.read()
        except BlockingIOError:
            return
        except (EOFError, OSError):  # the worker is exiting; its sentinel will tell
            self._workforce.unregister(worker.results_fd)
            return
        self._take_replies(worker, frames)

    def _take_replies(self, worker: WorkerHandle, frames: list[Frame]) -> None:
        if worker.stop_reason == "protocol":
            return
        replies = self._collector.take_replies(worker, frames)
        if replies.ready:
            self._workforce.started_well()
        if replies.out_of_step is not None:
            # A reply for a job the worker was not running: never settle the wrong
            # future. Stop the worker; its exit is handled like a crash.
            log.error("worker %d replied for job %d out of order; this is a bug in taskq: "
                      "stopping the worker", worker.pid, replies.out_of_step.job_id)  # fmt: skip
            worker.stop_reason = "protocol"
            self._workforce.unregister(worker.results_fd)
            worker.signal(signal.SIGKILL)
        if replies.done:
            self._timeouts.head_changed(worker)
            self._ledger.ran(replies.done)  # wait and run times for stats()
            inline = self._copier.take_shared(replies.done)
            if inline:
                self._retries.settle([(item, decode(item, frame)) for item, frame in inline])

    def _on_exit(self, worker: WorkerHandle) -> None:
        self._drain(worker)
        self._workforce.remove(worker)
        self._timeouts.forget(worker)
        running_id, _ = worker.running_job()
        exitcode = worker.process.exitcode
        plan = self._collector.exit_plan(worker, running_id, exitcode)
        text = plan.init_failure
        if text is not None:  # it never became ready: what it held fails with the reason
            self._ledger.ended(plan.release, lambda item: init_error(item, text), running=True)
            self._workforce.failed_to_start(worker, text)
            return
        self._handoff.release(plan.release)
        if plan.blamed is not None:
            self._blame(worker, plan.blamed, exitcode)
        elif worker.stop_reason is None and exitcode != 0:
            log.warning("worker %d (pid %d) exited with %s between jobs",
                        worker.index, worker.pid, exitcode)  # fmt: skip
        self._workforce.replenish()

    def _drain(self, worker: WorkerHandle) -> None:
        """Take in every reply the dead worker wrote before it died."""
        while worker.stop_reason != "protocol":
            try:
                frames = worker.reader.read()
            except (BlockingIOError, EOFError, OSError):
                return
            self._take_replies(worker, frames)

    def _blame(self, worker: WorkerHandle, item: WorkItem, exitcode: int | None) -> None:
        error = self._collector.blamed_error(worker, item, exitcode)
        if isinstance(error, CancelledError):  # pool.kill(): no retry
            self._ledger.ended([item], lambda _: error, running=True)
            return
        if worker.stop_reason == "timeout" and worker.stop_job is item:
            self._ledger.timed_out()
        else:
            self._ledger.crashed()
            log.warning("%s", error)
        self._retries.settle([(item, (False, error))])

    # -- timeouts and kill ------------------------------------------------------------

    def _watching(self, worker: WorkerHandle) -> bool:
        return worker.stop_reason not in STOPPED and self._workers.get(worker.index) is worker

    def _expired(self, worker: WorkerHandle, item: WorkItem) -> None:
        self._stop_running(worker, item, "timeout")

    def _stop_running(self, worker: WorkerHandle, item: WorkItem, reason: str) -> bool:
        """Stop ``item`` if ``worker`` is running it; True if it was stopped (or taken back).

        First take back every job the worker holds but has not started: after
        that it cannot start another, so the signal can only hit ``item``. If
        ``item`` itself was not started it is simply taken back (no worker lost).
        """
        started = self._handoff.revoke(worker)
        if item.state is State.QUEUED:  # taken back: it never ran
            return True
        job_id, _ = worker.running_job()
        if started != item.wseq or job_id != item.job_id:
            return False  # it finished; its reply is on its way
        if reason == "timeout":
            log.warning("job %d (%s) exceeded its %ss timeout; stopping worker %d",
                        item.job_id, item.name, item.timeout, worker.pid)  # fmt: skip
        self._workforce.stop(worker, reason, item)
        return True

    def kill(self, item: WorkItem) -> bool:
        """Stop one job wherever it is (runs on the manager)."""
        cancelled = cancelled_as("was cancelled by pool.kill()")
        if item.state is State.QUEUED:
            if not self._queue.cancel(item):
                return False
            self._ledger.ended([item], cancelled, running=False)
            return True
        if item.state is State.WAITING:
            self._retries.withdraw(item)
            self._ledger.ended([item], cancelled, running=False)
            return True
        if item.state is State.CLAIMED:
            for worker in self._workers.values():
                if item in worker.outstanding:
                    stopped = self._stop_running(worker, item, "kill")
                    now: State = item.state  # _stop_running may have taken it back
                    if now is State.QUEUED and self._queue.cancel(item):
                        self._ledger.ended([item], cancelled, running=False)
                    return stopped
        return False

    # -- shutdown ---------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish queued and running jobs, then stop the workers (runs on the manager)."""
        self._stopping = True

    def terminate(self) -> None:
        """Stop now: cancel what waits, kill what runs (runs on the manager)."""
        self._stopping = self._terminating = True
        self.cancel_queued()
        for worker in list(self._workers.values()):
            worker.stop_reason = None
            self._workforce.stop(worker, "terminate", None)

    def cancel_queued(self) -> None:
        """Cancel every job not yet handed to a worker (runs on the manager)."""
        why = cancelled_as("was cancelled by shutdown(cancel_futures=True)")
        self._ledger.ended(self._queue.drain(), why, running=False)
        self._retries.end_all(why)

    def _wind_down(self) -> None:
        if self._queue.snapshot().depth or self._retries:
            return
        for worker in self._workers.values():
            if worker.accepting and not worker.outstanding:
                self._handoff.stop_sending(worker)

    def _give_up(self, error: PoolBroken) -> None:
        """The pool cannot go on: fail everything waiting, refuse new jobs."""
        if self.broken is None:
            self.broken = error
        self._stopping = True
        self._queue.close()
        self._ledger.ended(self._queue.drain(), lambda _: copy_error(error), running=False)
        self._retries.end_all(lambda _: copy_error(error))
