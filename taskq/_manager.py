"""The manager: one thread that owns the workers and every job once it leaves the queue.

It sleeps in a single ``select`` on

    * the wake-up pipe        (a job was queued; a command was posted)
    * each worker's results   (OK / ERROR / READY / INIT_FAILED frames)
    * each worker's sentinel  (the process exited: crash, timeout, kill, recycling)
    * a worker's call pipe    (only while a large call is still being written)

and wakes for nothing else but its timers (``_timers.py``: job timeouts,
retry backoffs, the SIGKILL after a SIGTERM grace, a take-back re-check). A
dead worker wakes it at once.

Each step, under the manager's lock: handle the ready events -> run commands
from other threads (``call``/``post``: kill, shutdown, terminate) -> fire due
timers -> dispatch queued jobs to workers with room -> finish writing calls ->
wind down if stopping -> take back jobs from a stuck worker. Then, with the
lock released, resolve the futures decided meanwhile (``_ledger.deliver``).

The decisions are made by small parts it is composed of, each testable
without processes: ``Dispatcher`` (which worker gets which jobs),
``Collector`` (what replies and exits mean), ``TimeoutWatch`` (which job ran
too long), ``Ledger`` (every job state change, with its statistics),
``Workforce`` (starting and stopping processes). The manager applies them.

A submitting thread may also dispatch (``dispatch_now``): it takes the lock
without waiting, hands the job to an idle worker and returns; when the lock
is busy it just wakes the manager.
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FuturesTimeout
from multiprocessing.context import BaseContext
from typing import Any

from taskq import _slot
from taskq._collect import Collector, decode
from taskq._counters import CounterBlock
from taskq._dispatch import NOT_STARTED_RECHECK, BatchPolicy, Dispatcher
from taskq._errors import InitializerError, PoolBroken
from taskq._job import State, WorkItem
from taskq._ledger import ErrorFor, Ledger, copy_error, deliver
from taskq._log import log
from taskq._process import WorkerHandle, WorkerLauncher
from taskq._protocol import Frame, Kind, encode, encode_parts
from taskq._queue import JobQueue
from taskq._stats import StatsBlock
from taskq._timeouts import TimeoutWatch
from taskq._timers import Timers
from taskq._workforce import STOPPED, Workforce

MAX_INIT_FAILURES = 5  # workers failing to start in a row before the pool gives up
INIT_BACKOFF = 0.1  # first delay before restarting a worker whose initializer failed


class Manager:
    """Owns the workers and every job from the moment it leaves the queue."""

    def __init__(
        self,
        *,
        ctx: BaseContext,
        max_workers: int,
        queue: JobQueue[WorkItem],
        stats: StatsBlock,
        counters: CounterBlock,
        initializer: Callable[..., object] | None,
        initargs: Sequence[Any],
        max_tasks: int | None,
    ):
        self._queue = queue
        self._max_tasks = max_tasks
        self._timers = Timers()
        self._ledger = Ledger(stats)
        policy = BatchPolicy()
        self._dispatcher = Dispatcher(queue, policy, max_tasks)
        self._collector = Collector(policy)
        self._timeouts = TimeoutWatch(self._at, self._expired, self._watching)
        self._selector = selectors.DefaultSelector()
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
        self._waiting: set[WorkItem] = set()  # retries waiting out their backoff
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        self._stopping = False
        self._terminating = False
        self.broken: PoolBroken | None = None
        self._init_failures = 0
        self._rebalance_armed = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._wake_pending = False
        self._wake_lock = threading.Lock()
        self._closed = False
        self._selector.register(self._wake_read, selectors.EVENT_READ, self._on_wake)
        # Guards the workers' state. The manager holds it while it works (not while it
        # sleeps in select); a submitting thread takes it to hand a job straight to an
        # idle worker, which saves the hand-off to this thread on the way out.
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="taskq-manager", daemon=True)

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    # -- called from other threads ------------------------------------------------

    def start(self) -> None:
        for index in range(self._max_workers):
            if not self._workforce.start(index):
                break  # retried with backoff by the manager
        self._thread.start()

    def wake(self) -> None:
        """Make the manager look at the queue. At most one byte waits in the pipe."""
        if not self._wake_pending:
            self._wake_pending = True
            # Under the lock, so a late wake-up (a pool collected after it finished)
            # can never write to a descriptor number that is closed and reused.
            with self._wake_lock:
                if not self._closed:
                    os.write(self._wake_write, b"!")

    def dispatch_now(self, priority: float) -> None:
        """Called right after a job is queued: give it to an idle worker from this thread.

        Nothing to do (the common case under load) when every worker is busy and
        holds nothing less urgent than the new job: the manager tops workers up as
        they reply, and it always dispatches after a reply has freed a worker.
        """
        # Read without the lock (a hint only: the locked dispatch decides). The manager
        # may empty a deque between two reads, hence the IndexError.
        for worker in tuple(self._workers.values()):  # one C call: safe from other threads
            held = worker.outstanding
            try:
                if not held or (len(held) > 1 and held[-1].priority > priority):
                    break
            except IndexError:
                break
        else:
            return
        if not self._lock.acquire(blocking=False):
            self.wake()  # the manager is busy; make sure it looks again before sleeping
            return
        try:
            if self._stopping:
                self.wake()
                return
            self._dispatch(idle_only=True)
            if any(worker.outbox for worker in self._workers.values()):
                self.wake()  # a large call is still being written: the manager finishes it
        finally:
            outcomes = self._ledger.take_outcomes()
            self._lock.release()
        deliver(outcomes)

    def call(self, command: Callable[[], Any]) -> Any:
        """Run ``command`` on the manager thread and return its result.

        From the manager thread itself (a done-callback calling ``kill`` or
        ``shutdown``) it runs at once, under the lock like any command; callbacks
        never run with the lock held, so it is free.
        """
        if threading.current_thread() is self._thread:
            with self._lock:
                result = command()
                outcomes = self._ledger.take_outcomes()
            deliver(outcomes)
            return result
        answer: Future[Any] = Future()

        def run() -> None:
            try:
                answer.set_result(command())
            except BaseException as exc:
                answer.set_exception(exc)

        self._commands.append(run)
        self.wake()
        while True:
            try:
                return answer.result(timeout=0.1)
            except FuturesTimeout:
                pass
            if not self._thread.is_alive():  # finished before it saw the command
                try:
                    self._commands.remove(run)
                except ValueError:
                    continue  # it did take it: the answer is coming
                with self._lock:
                    run()
                    outcomes = self._ledger.take_outcomes()
                deliver(outcomes)

    def post(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the manager thread soon, without waiting."""
        self._commands.append(command)
        self.wake()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the manager has finished (every worker has exited).

        Called from a done-callback (on the manager thread), it runs the manager's
        loop right here until then: the thread cannot wait for itself.
        """
        if threading.current_thread() is self._thread:
            while self._keep_running():
                self._step()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        # Short waits: a Ctrl-C delivered to another thread is then seen at once.
        while self._thread.is_alive():
            wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if wait <= 0:
                return
            self._thread.join(wait)

    def kill_workers(self) -> None:
        """Last resort at interpreter exit: SIGKILL and reap every worker still alive."""
        self._workforce.kill_all()

    def is_manager_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._keep_running():
                self._step()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("taskq manager thread failed")
            error = PoolBroken(
                f"taskq's manager thread failed ({exc!r}); this is a bug in taskq, please "
                "report it with the traceback chained to this error. Create a new Pool."
            )
            error.__cause__ = exc
            with self._lock:
                self._give_up(error)
                for worker in self._workers.values():
                    held = list(worker.outstanding)
                    worker.outstanding.clear()
                    self._ledger.ended(held, lambda _: copy_error(error), running=True)
        finally:
            with self._lock:
                self._close()
                outcomes = self._ledger.take_outcomes()
            deliver(outcomes)

    def _step(self) -> None:
        delay = 0 if self._commands else self._timers.next_delay()
        events = self._selector.select(delay)
        with self._lock:
            self._work(events)
            outcomes = self._ledger.take_outcomes()
        deliver(outcomes)  # last: the callers woken here find this thread back in select

    def _work(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        registered = self._selector.get_map()
        for key, mask in events:
            # An earlier event of this batch may have closed this descriptor (a worker
            # exited) and its number may already belong to a new worker's pipe.
            if registered.get(key.fd) is key:
                key.data(mask)
        while self._commands:
            self._commands.popleft()()
        self._timers.run_due()
        self._dispatch()
        for worker in self._workers.values():
            if worker.outbox:
                self._flush(worker)
        if self._stopping:
            self._wind_down()
        self._rebalance()

    def _on_wake(self, mask: int) -> None:
        try:
            os.read(self._wake_read, 4096)
        except BlockingIOError:
            pass
        self._wake_pending = False  # cleared after draining: a wake-up is never lost

    def _at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        self._timers.at(when, action, *args)
        if not self.is_manager_thread():
            self.wake()  # its select timeout was computed without this timer

    def _keep_running(self) -> bool:
        if self._workers or not self._stopping or self._waiting:
            return True
        # No worker left: go on only if queued jobs will get one (a respawn is pending).
        depth = self._queue.snapshot().depth
        return bool(depth) and self._need_workers() and bool(self._timers)

    def _need_workers(self) -> bool:
        if self.broken is not None or self._terminating:
            return False
        return not self._stopping or self._queue.snapshot().depth > 0 or bool(self._waiting)

    # -- dispatch: queued jobs to workers -------------------------------------------

    def _dispatch(self, idle_only: bool = False) -> None:
        workers = list(self._workers.values())
        for worker in self._dispatcher.make_way(workers, self._queue.snapshot().head):
            self._revoke(worker)
        for worker, items in self._dispatcher.plan(workers, idle_only):
            self._send(worker, items)

    def _send(self, worker: WorkerHandle, items: list[WorkItem]) -> None:
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
        buffers: list[bytes] = []
        for item in live:
            buffers += encode_parts(Kind.CALL, item.job_id, item.call)
        worker.outbox.push(buffers)
        self._flush(worker, on_manager=self.is_manager_thread())
        if was_idle:
            self._timeouts.head_changed(worker)

    def _retire(self, worker: WorkerHandle) -> None:
        # Only the manager thread starts processes; a caller's thread leaves it to it.
        if self.is_manager_thread():
            self._workforce.retire(worker)
        else:
            worker.stop_reason = "retire"
            self.post(lambda: self._workforce.replenish(predecessor=worker))

    def _flush(self, worker: WorkerHandle, on_manager: bool = True) -> None:
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
        if not on_manager:  # only the manager thread changes the selector
            return
        key = self._selector.get_map().get(worker.calls_fd)
        if not done and key is None:
            self._selector.register(
                worker.calls_fd, selectors.EVENT_WRITE, lambda _: self._flush(worker)
            )
        elif done and key is not None:
            self._selector.unregister(worker.calls_fd)

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
            self._release(taken[::-1])
        return started

    def _release(self, items: list[WorkItem]) -> None:
        """Jobs a worker held but never started go back to the queue, in their place
        (or are cancelled, when the pool is being terminated)."""
        if not items:
            return
        if self._terminating:
            self._ledger.ended(items, _cancelled("the pool was terminated"), running=True)
            return
        self._ledger.released(items)
        for item in items:
            self._queue.release(item, keep_place=True)

    def _rebalance(self) -> None:
        stuck, recheck = self._dispatcher.stuck(list(self._workers.values()), time.monotonic())
        for worker in stuck:
            if self._revoke(worker) is None:  # its slot was busy: try again shortly
                recheck = time.monotonic() + NOT_STARTED_RECHECK
        if stuck:
            self._dispatch()  # the idle worker takes them now
        if recheck is not None and not self._rebalance_armed:
            self._rebalance_armed = True
            self._at(recheck, self._rearm_rebalance)

    def _rearm_rebalance(self) -> None:
        self._rebalance_armed = False
        self._rebalance()

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
            self._init_failures = 0
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
            self._settle([(item, decode(item, frame)) for item, frame in replies.done])

    def _settle(self, outcomes: list[tuple[WorkItem, tuple[bool, Any]]]) -> None:
        """Record what running jobs came to: a result, a failure, or another attempt."""
        finals: list[tuple[WorkItem, bool, Any]] = []
        retried = 0
        for item, (ok, value) in outcomes:
            if not ok and self._retry(item, value):
                retried += 1
            else:
                finals.append((item, ok, value))
        if finals:
            self._queue.acknowledge([item for item, _, _ in finals])
        self._ledger.settled(finals, retried)

    def _retry(self, item: WorkItem, error: BaseException) -> bool:
        if self._terminating or self.broken is not None:
            return False
        delay = self._collector.retry_delay(item, error)
        if delay is None:
            return False
        item.state = State.WAITING
        self._waiting.add(item)
        self._at(time.monotonic() + delay, self._retry_now, item)
        log.info("job %d (%s) failed on attempt %d (%r); retrying in %.3fs",
                 item.job_id, item.name, item.attempts, error, delay)  # fmt: skip
        return True

    def _retry_now(self, item: WorkItem) -> None:
        if item in self._waiting:
            self._waiting.discard(item)
            self._queue.release(item, keep_place=False)

    def _on_exit(self, worker: WorkerHandle) -> None:
        self._drain(worker)
        self._workforce.remove(worker)
        self._timeouts.forget(worker)
        running_id, _ = worker.running_job()
        exitcode = worker.process.exitcode
        plan = self._collector.exit_plan(worker, running_id, exitcode)
        if plan.init_failure is not None:
            self._on_init_failure(worker, plan.release, plan.init_failure)
            return
        self._release(plan.release)
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
        self._settle([(item, (False, error))])

    def _on_init_failure(self, worker: WorkerHandle, held: list[WorkItem], text: str) -> None:
        """A worker that never became ready: fail what it held; restart it with backoff;
        give up after ``MAX_INIT_FAILURES`` in a row."""
        self._init_failures += 1
        log.error("worker %d failed to start (%d in a row): %s",
                  worker.pid, self._init_failures, text)  # fmt: skip
        self._ledger.ended(held, lambda item: _init_error(item, text), running=True)
        if self._init_failures >= MAX_INIT_FAILURES:
            self._give_up(PoolBroken(
                f"workers failed to start {self._init_failures} times in a row; the pool "
                f"cannot run jobs. Last failure: {text}"
            ))  # fmt: skip
            return
        delay = INIT_BACKOFF * 2 ** (self._init_failures - 1)
        self._at(time.monotonic() + delay, self._workforce.replenish)

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
        started = self._revoke(worker)
        if item.state is State.QUEUED:  # taken back: it never ran
            return True
        if started is None:  # its slot could not be locked: look again in a moment
            self._at(time.monotonic() + NOT_STARTED_RECHECK, self._retry_stop, worker, item, reason)
            return True
        job_id, _ = worker.running_job()
        if started != item.wseq or job_id != item.job_id:
            return False  # it finished; its reply is on its way
        if reason == "timeout":
            log.warning("job %d (%s) exceeded its %ss timeout; stopping worker %d",
                        item.job_id, item.name, item.timeout, worker.pid)  # fmt: skip
        self._workforce.stop(worker, reason, item)
        return True

    def _retry_stop(self, worker: WorkerHandle, item: WorkItem, reason: str) -> None:
        if item.state is State.CLAIMED and item in worker.outstanding:
            self._stop_running(worker, item, reason)

    def kill(self, item: WorkItem) -> bool:
        """Stop one job wherever it is (runs on the manager)."""
        cancelled = _cancelled("was cancelled by pool.kill()")
        if item.state is State.QUEUED:
            if not self._queue.cancel(item):
                return False
            self._ledger.ended([item], cancelled, running=False)
            return True
        if item.state is State.WAITING:
            self._waiting.discard(item)
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
        why = _cancelled("was cancelled by shutdown(cancel_futures=True)")
        self._ledger.ended(self._queue.drain(), why, running=False)
        self._end_waiting(why)

    def _wind_down(self) -> None:
        if self._queue.snapshot().depth or self._waiting:
            return
        for worker in self._workers.values():
            if worker.accepting and not worker.outstanding:
                worker.stop_reason = "stop"
                worker.outbox.push([encode(Kind.STOP)])
                self._flush(worker)

    def _give_up(self, error: PoolBroken) -> None:
        """The pool cannot go on: fail everything waiting, refuse new jobs."""
        if self.broken is None:
            self.broken = error
        self._stopping = True
        self._queue.close()
        self._ledger.ended(self._queue.drain(), lambda _: copy_error(error), running=False)
        self._end_waiting(lambda _: copy_error(error))

    def _end_waiting(self, error_for: ErrorFor) -> None:
        """End every retry waiting out its backoff."""
        waiting = list(self._waiting)
        self._waiting.clear()
        self._ledger.ended(waiting, error_for, running=False)

    def _close(self) -> None:
        self._workforce.close()
        self._selector.close()
        with self._wake_lock:
            self._closed = True
            os.close(self._wake_read)
            os.close(self._wake_write)
        self._lifeline_write.close()
        self._lifeline_read.close()
        log.debug("taskq manager stopped")


def _cancelled(why: str) -> ErrorFor:
    return lambda item: CancelledError(f"job {item.job_id} ({item.name}) {why}")


def _init_error(item: WorkItem, text: str) -> BaseException:
    return InitializerError(f"job {item.job_id} ({item.name}): {text}")
