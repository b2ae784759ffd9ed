"""The manager thread: dispatch jobs to workers, collect their replies, replace dead workers.

One thread serves every worker. It sleeps in a single ``select`` on

    * the wake-up pipe        (a job was queued, ``kill``/``shutdown`` was called)
    * each worker's results   (OK / ERROR / READY / INIT_FAILED frames)
    * each worker's sentinel  (the process exited: crash, timeout, kill, recycling)
    * a worker's call pipe    (only while a large call is still being written)

and wakes for nothing else but its timers (job timeouts, retry backoffs, the
SIGKILL after a SIGTERM grace). There is no polling loop: a dead worker wakes
it at once.

Each step: handle the ready events -> run commands from other threads -> fire
due timers -> dispatch queued jobs to workers with room.
"""

from __future__ import annotations

import collections
import copy
import heapq
import itertools
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
from taskq._collect import Collector, deliver
from taskq._counters import CounterBlock
from taskq._dispatch import NOT_STARTED_RECHECK, BatchPolicy, Dispatcher
from taskq._errors import PoolBroken
from taskq._job import State, WorkItem
from taskq._log import log
from taskq._process import WorkerHandle, WorkerLauncher
from taskq._protocol import Kind, encode
from taskq._queue import JobQueue
from taskq._stats import (
    CANCELLED,
    FAILED,
    QUEUED,
    RESTARTS,
    RUNNING,
    WORKERS,
    StatsBlock,
)

KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL when stopping a job
MAX_SPAWN_FAILURES = 8  # refused process starts in a row before the pool gives up
SPAWN_BACKOFF = 0.1  # first delay before retrying a refused start; doubles, up to the cap
SPAWN_BACKOFF_CAP = 5.0
# Stop reasons of a worker being stopped on purpose, now ("retire" and "stop" let it finish).
_STOPPED = ("timeout", "kill", "terminate")


class Manager(Dispatcher, Collector):
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
        self._ctx = ctx
        self._max_workers = max_workers
        self._queue = queue
        self._stats = stats
        self._counters = counters
        self._initializer = initializer
        self._initargs = initargs
        self._max_tasks = max_tasks
        self._policy = BatchPolicy()
        self._selector = selectors.DefaultSelector()
        self._workers: dict[int, WorkerHandle] = {}
        # Twice the workers: a retiring worker (max_tasks_per_child) keeps its slot
        # until it exits, while its replacement already starts.
        self._slots: Any = ctx.RawArray("q", _slot.WIDTH * 2 * max_workers)
        self._lifeline_read, self._lifeline_write = ctx.Pipe(duplex=False)
        # Created before the manager thread starts: under fork, the launcher forks
        # its workers from a process with no threads (see _process.py).
        self._launcher = WorkerLauncher(
            ctx,
            lifeline=self._lifeline_read,
            lifeline_write_fd=self._lifeline_write.fileno(),
            slots=self._slots,
            counters=counters,
            initializer=initializer,
            initargs=initargs,
            max_tasks=max_tasks,
        )
        self._timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._timeout_checks: dict[WorkerHandle, float] = {}  # the one pending check per worker
        self._timer_seq = itertools.count()
        self._waiting: set[WorkItem] = set()  # retries waiting out their backoff
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        # Outcomes decided under the lock, delivered to futures after it is released:
        # user callbacks never run while the manager's lock is held.
        self._outcomes: list[tuple[WorkItem, bool, Any]] = []
        self._stopping = False
        self._terminating = False
        self.broken: PoolBroken | None = None
        self._init_failures = 0
        self._spawn_failures = 0
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

    # -- called from other threads ------------------------------------------------

    def start(self) -> None:
        for index in range(self._max_workers):
            if not self._spawn(index):
                break  # the manager retries with backoff (see _spawn)
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
            outcomes = self._take_outcomes()
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
                outcomes = self._take_outcomes()
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
                    outcomes = self._take_outcomes()
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
        for worker in list(self._workers.values()):
            if worker.process.is_alive():
                worker.signal(signal.SIGKILL)
                worker.process.join(timeout=1)

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
                self._fail_held(error)
        finally:
            with self._lock:
                self._close()
                outcomes = self._take_outcomes()
            deliver(outcomes)

    def _fail_held(self, error: PoolBroken) -> None:
        for worker in self._workers.values():
            held = list(worker.outstanding)
            worker.outstanding.clear()
            self._stats.add_many([(RUNNING, -len(held)), (FAILED, len(held))])
            for item in held:
                self._finish(item, False, _copy_error(error))

    def _step(self) -> None:
        events = self._selector.select(self._next_timeout())
        with self._lock:
            self._work(events)
            outcomes = self._take_outcomes()
        deliver(outcomes)  # last: the callers woken here find this thread back in select

    def _work(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        registered = self._selector.get_map()
        for key, mask in events:
            # An earlier event of this batch may have closed this descriptor (a worker
            # exited) and its number may already belong to a new worker's pipe.
            if registered.get(key.fd) is key:
                key.data(mask)
        self._run_commands()
        self._run_timers()
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

    def _run_commands(self) -> None:
        while self._commands:
            self._commands.popleft()()

    # -- timers -----------------------------------------------------------------------

    def _at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_seq), action, args))
        if not self.is_manager_thread():
            self.wake()  # its select timeout was computed without this timer

    def _next_timeout(self) -> float | None:
        if self._commands:
            return 0
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, action, args = heapq.heappop(self._timers)
            action(*args)

    def _keep_running(self) -> bool:
        if self._workers or not self._stopping or self._waiting:
            return True
        # No worker left: go on only if queued jobs will get one (a respawn is pending).
        return bool(self._queue.snapshot().depth) and self._need_workers() and bool(self._timers)

    # -- workers ----------------------------------------------------------------------

    def _spawn(self, index: int) -> bool:
        """Start worker ``index``; False if the OS refused (EAGAIN, EMFILE, ENOMEM...).

        A refused start is retried with backoff, not fatal: the pool breaks only
        after ``MAX_SPAWN_FAILURES`` refusals in a row.
        """
        try:
            worker = self._launcher.spawn(index)
        except OSError as exc:
            self._on_spawn_failure(exc)
            return False
        self._spawn_failures = 0
        self._workers[index] = worker
        sel = self._selector
        sel.register(worker.results_fd, selectors.EVENT_READ, lambda _: self._on_results(worker))
        sel.register(worker.process.sentinel, selectors.EVENT_READ, lambda _: self._on_exit(worker))
        self._stats.add_many([(WORKERS, 1)])
        log.debug("worker %d started (pid %d)", index, worker.pid)
        return True

    def _on_spawn_failure(self, exc: OSError) -> None:
        self._spawn_failures += 1
        if self._spawn_failures >= MAX_SPAWN_FAILURES:
            error = PoolBroken(
                f"the pool could not start a worker process {self._spawn_failures} times in a "
                f"row (last: {exc!r}); check the process and open-file limits (ulimit -u, -n) "
                "and free memory"
            )
            error.__cause__ = exc
            self._give_up(error)
            return
        delay = min(SPAWN_BACKOFF * 2 ** (self._spawn_failures - 1), SPAWN_BACKOFF_CAP)
        log.warning("could not start a worker (%r); retrying in %.2fs", exc, delay)
        self._at(time.monotonic() + delay, self._replenish)

    def _replenish(self, predecessor: WorkerHandle | None = None) -> None:
        """Start replacements until ``max_workers`` workers take jobs (if any are needed).

        A successor of a retiring ``predecessor`` starts now but gets no job until the
        predecessor has exited: never more than ``max_workers`` jobs run at once.
        """
        while self._need_workers():
            taking = sum(1 for w in self._workers.values() if w.stop_reason != "retire")
            if taking >= self._max_workers:
                return
            free = set(range(2 * self._max_workers)) - self._workers.keys()
            if not free:  # all slots held by retiring workers: the next exit calls us again
                return
            index = min(free)
            if not self._spawn(index):
                return  # retried after a backoff
            self._stats.add_many([(RESTARTS, 1)])
            self._workers[index].predecessor = predecessor
            log.info("worker %d started as a replacement (pid %d)", index, self._workers[index].pid)

    def _retire(self, worker: WorkerHandle) -> None:
        """The worker was sent its last job (max_tasks_per_child): start its successor now,
        so the successor's start-up overlaps that job instead of following it.

        Only the manager thread starts processes: a caller's thread that handed
        over the job leaves the start to it.
        """
        worker.stop_reason = "retire"
        if self.is_manager_thread():
            self._replenish(predecessor=worker)
        else:
            self.post(lambda: self._replenish(predecessor=worker))

    def _need_workers(self) -> bool:
        if self.broken is not None or self._terminating:
            return False
        return not self._stopping or self._queue.snapshot().depth > 0 or bool(self._waiting)

    def _stop_worker(self, worker: WorkerHandle, reason: str, job: WorkItem | None) -> None:
        """SIGTERM now, SIGKILL after a grace period; the exit is handled in ``_on_exit``."""
        if worker.stop_reason in _STOPPED:
            return
        worker.stop_reason, worker.stop_job = reason, job
        worker.terminate()
        self._at(time.monotonic() + KILL_GRACE, self._force_kill, worker)

    def _force_kill(self, worker: WorkerHandle) -> None:
        if self._workers.get(worker.index) is worker:
            worker.signal(signal.SIGKILL)

    def _finish(self, item: WorkItem, ok: bool, value: Any) -> None:
        """Decide a job's outcome; its future is resolved once the lock is released."""
        item.state = State.DONE
        self._outcomes.append((item, ok, value))

    def _take_outcomes(self) -> list[tuple[WorkItem, bool, Any]]:
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    # -- timeouts -----------------------------------------------------------------------

    def _watch_head(self, worker: WorkerHandle) -> None:
        """Make sure the timeout of the job the worker runs next will be looked at.

        One pending check per worker, holding no job: a job that finishes early
        leaves nothing behind (memory does not grow with throughput x timeout).
        The job's clock starts when the worker begins it, so the deadline is
        never earlier than now + its timeout.
        """
        if worker.outstanding:
            timeout = worker.outstanding[0].timeout
            if timeout is not None:
                self._check_timeout_at(worker, time.monotonic() + timeout)

    def _check_timeout_at(self, worker: WorkerHandle, when: float) -> None:
        pending = self._timeout_checks.get(worker)
        if pending is not None and pending <= when:
            return  # an earlier check will look at whatever job is at the head then
        self._timeout_checks[worker] = when
        self._at(when, self._check_timeout, worker, when)

    def _check_timeout(self, worker: WorkerHandle, when: float) -> None:
        if self._timeout_checks.get(worker) != when:
            return  # superseded by an earlier check
        del self._timeout_checks[worker]
        if worker.stop_reason in _STOPPED or not worker.outstanding:
            return
        head = worker.outstanding[0]
        if head.timeout is None or self._workers.get(worker.index) is not worker:
            return
        job_id, started_ns = worker.running_job()
        now = time.monotonic()
        if job_id != head.job_id:  # not begun yet: its clock has not started
            self._check_timeout_at(worker, now + head.timeout)
            return
        deadline = started_ns / 1e9 + head.timeout
        if now < deadline:
            self._check_timeout_at(worker, deadline)
            return
        self._stop_running(worker, head, "timeout")

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
        self._stop_worker(worker, reason, item)
        return True

    def _retry_stop(self, worker: WorkerHandle, item: WorkItem, reason: str) -> None:
        if item.state is State.CLAIMED and item in worker.outstanding:
            self._stop_running(worker, item, reason)

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
            self._stop_worker(worker, "terminate", None)

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
        queued = self._queue.drain()
        self._stats.add_many([(QUEUED, -len(queued)), (FAILED, len(queued))])
        for item in queued:
            self._finish(item, False, _copy_error(error))
        self._cancel_waiting(lambda: _copy_error(error))

    def _cancel_waiting(self, make_error: Callable[[], BaseException]) -> None:
        """End every retry waiting out its backoff, each with its own new exception."""
        waiting = list(self._waiting)
        self._waiting.clear()
        errors = [make_error() for _ in waiting]
        cancelled = sum(1 for error in errors if isinstance(error, CancelledError))
        self._stats.add_many([
            (QUEUED, -len(waiting)), (CANCELLED, cancelled), (FAILED, len(waiting) - cancelled)
        ])  # fmt: skip
        for item, error in zip(waiting, errors, strict=True):
            self._finish(item, False, error)

    def _unregister(self, fd: int) -> None:
        if fd in self._selector.get_map():
            self._selector.unregister(fd)

    def _close(self) -> None:
        for worker in list(self._workers.values()):
            worker.signal(signal.SIGKILL)
            worker.close()
        self._workers.clear()
        self._launcher.close()
        self._selector.close()
        with self._wake_lock:
            self._closed = True
            os.close(self._wake_read)
            os.close(self._wake_write)
        self._lifeline_write.close()
        self._lifeline_read.close()
        log.debug("taskq manager stopped")

    # -- used by Pool -----------------------------------------------------------------

    def kill(self, item: WorkItem) -> bool:
        """Stop one job wherever it is (runs on the manager)."""
        cancelled = CancelledError(f"job {item.job_id} was cancelled by pool.kill()")
        if item.state is State.QUEUED:
            if not self._queue.cancel(item):
                return False
            self._stats.add_many([(QUEUED, -1), (CANCELLED, 1)])
            self._finish(item, False, cancelled)
            return True
        if item.state is State.WAITING:
            self._waiting.discard(item)
            self._stats.add_many([(QUEUED, -1), (CANCELLED, 1)])
            self._finish(item, False, cancelled)
            return True
        if item.state is State.CLAIMED:
            for worker in self._workers.values():
                if item in worker.outstanding:
                    stopped = self._stop_running(worker, item, "kill")
                    now: State = item.state  # _stop_running may have taken it back
                    if now is State.QUEUED and self._queue.cancel(item):
                        self._stats.add_many([(QUEUED, -1), (CANCELLED, 1)])
                        self._finish(item, False, cancelled)
                    return stopped
        return False

    def cancel_queued(self) -> None:
        """Cancel every job not yet handed to a worker (runs on the manager)."""
        queued = self._queue.drain()
        self._stats.add_many([(QUEUED, -len(queued)), (CANCELLED, len(queued))])
        for item in queued:  # futures are cancelled in deliver(), once the lock is released
            self._finish(item, False, CancelledError("cancelled by shutdown(cancel_futures=True)"))
        self._cancel_waiting(lambda: CancelledError("cancelled by shutdown(cancel_futures=True)"))


def _copy_error(error: BaseException) -> BaseException:
    """A new instance of ``error`` for one future: many futures must not share (and
    annotate) one exception object."""
    fresh = copy.copy(error)
    fresh.__cause__ = error.__cause__
    return fresh
