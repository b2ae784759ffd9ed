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
import heapq
import itertools
import logging
import os
import random
import selectors
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FuturesTimeout
from multiprocessing.context import BaseContext
from typing import Any

from taskq import _slot
from taskq._counters import STAT_FIELDS, CounterBlock
from taskq._dispatch import BatchPolicy
from taskq._errors import (
    InitializerError,
    JobTimeout,
    PoolBroken,
    RemoteError,
    SerializationError,
    WorkerCrashed,
)
from taskq._job import State, WorkItem
from taskq._process import WorkerHandle, spawn_worker
from taskq._protocol import Frame, Kind, encode, encode_parts, load, unpack_exception
from taskq._queue import JobQueue

log = logging.getLogger("taskq")
log.addHandler(logging.NullHandler())  # silent unless the application configures logging

(SUBMITTED, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, RETRIED, TIMED_OUT, CRASHED,
 RESTARTS, WORKERS) = (STAT_FIELDS.index(name) for name in (
    "submitted", "queued", "running", "succeeded", "failed", "cancelled", "retried",
    "timed_out", "crashed", "worker_restarts", "workers"))  # fmt: skip

KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL when stopping a job
RETRY_DELAY_CAP = 30.0
MAX_INIT_FAILURES = 5  # initializer failures in a row before the pool gives up
INIT_BACKOFF = 0.1  # first delay before restarting a worker whose initializer failed
NOT_STARTED_RECHECK = 0.005  # timeout check of a job the worker has not begun yet
# A worker is "stuck" when its job has run this long (and at least STALL_FACTOR times
# the recent average): the jobs queued behind it move to an idle worker. Lower values
# rebalance sooner at the cost of more take-backs of jobs that would have run soon.
STALL_MIN = 0.005
STALL_FACTOR = 4.0


class Manager:
    """Owns the workers and every job from the moment it leaves the queue."""

    def __init__(
        self,
        *,
        ctx: BaseContext,
        max_workers: int,
        queue: JobQueue,
        stats: CounterBlock,
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
        self._timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
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
            self._spawn(index)
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

    def dispatch_now(self) -> None:
        """Called right after a job is queued: give it to an idle worker from this thread."""
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
        _deliver(outcomes)

    def call(self, command: Callable[[], Any]) -> Any:
        """Run ``command`` on the manager thread and return its result."""
        if threading.current_thread() is self._thread:
            return command()
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
                _deliver(outcomes)

    def post(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the manager thread soon, without waiting."""
        self._commands.append(command)
        self.wake()

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is self._thread:
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
            error = PoolBroken(f"taskq's manager thread failed: {exc!r}")
            self._give_up(error)
            for worker in self._workers.values():
                self._stats.add_many([(RUNNING, -len(worker.outstanding))])
                self._stats.add_many([(FAILED, len(worker.outstanding))])
                for item in worker.outstanding:
                    self._finish(item, False, error)
        finally:
            self._close()
            _deliver(self._take_outcomes())

    def _step(self) -> None:
        events = self._selector.select(self._next_timeout())
        with self._lock:
            self._work(events)
            outcomes = self._take_outcomes()
        _deliver(outcomes)  # last: the callers woken here find this thread back in select

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
        return bool(len(self._queue)) and self._need_workers() and bool(self._timers)

    # -- workers ----------------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        worker = spawn_worker(
            self._ctx,
            index,
            lifeline=self._lifeline_read,
            lifeline_write_fd=self._lifeline_write.fileno(),
            slots=self._slots,
            counters=self._counters,
            initializer=self._initializer,
            initargs=self._initargs,
            max_tasks=self._max_tasks,
        )
        self._workers[index] = worker
        sel = self._selector
        sel.register(worker.results_fd, selectors.EVENT_READ, lambda _: self._on_results(worker))
        sel.register(worker.process.sentinel, selectors.EVENT_READ, lambda _: self._on_exit(worker))
        self._stats.add_many([(WORKERS, 1)])
        log.debug("worker %d started (pid %d)", index, worker.pid)

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
            self._stats.add_many([(RESTARTS, 1)])
            self._spawn(index)
            self._workers[index].predecessor = predecessor
            log.info("worker %d started as a replacement (pid %d)", index, self._workers[index].pid)

    def _retire(self, worker: WorkerHandle) -> None:
        """The worker was sent its last job (max_tasks_per_child): start its successor now,
        so the successor's start-up overlaps that job instead of following it."""
        worker.stop_reason = "retire"
        self._replenish(predecessor=worker)

    def _need_workers(self) -> bool:
        if self.broken is not None or self._terminating:
            return False
        return not self._stopping or len(self._queue) > 0 or bool(self._waiting)

    def _stop_worker(self, worker: WorkerHandle, reason: str, job: WorkItem | None) -> None:
        """SIGTERM now, SIGKILL after a grace period; the exit is handled in ``_on_exit``."""
        if worker.stop_reason in ("timeout", "kill", "terminate"):
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

    # -- dispatch ---------------------------------------------------------------------

    def _dispatch(self, idle_only: bool = False) -> None:
        """Hand queued jobs to workers with room, most urgent first.

        A worker busy with jobs is topped up only right after it replies, never
        when a job is merely queued: jobs queued while every worker is busy stay
        in the queue, in priority order, until a worker frees up.
        """
        queue = self._queue
        if not len(queue):
            return
        self._make_way(queue.head_priority())
        # With several priorities waiting, workers take one job at a time, when idle:
        # jobs a worker held would otherwise start after more urgent ones taken by
        # other workers. Batching is for a backlog of equals.
        mixed = queue.mixed()
        limit = 1 if mixed else self._policy.limit()
        idle_only = idle_only or mixed
        for worker in list(self._workers.values()):  # _send may start a successor
            if idle_only and worker.outstanding:
                continue
            room = self._room(worker, limit)
            if room <= 0:
                continue
            items = queue.take(room, len(self._workers))
            if items:
                self._send(worker, items)
            if not len(queue):
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
        except OSError:  # the worker is gone; its sentinel will tell
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

    # -- collect ----------------------------------------------------------------------

    def _on_results(self, worker: WorkerHandle) -> None:
        try:
            frames = worker.reader.read()
        except BlockingIOError:
            return
        except (EOFError, OSError):  # the worker is exiting; its sentinel will tell
            self._unregister(worker.results_fd)
            return
        self._handle_frames(worker, frames)

    def _handle_frames(self, worker: WorkerHandle, frames: list[Frame]) -> None:
        replies: list[tuple[WorkItem, Frame]] = []
        for frame in frames:
            if frame.kind == Kind.OK or frame.kind == Kind.ERROR:
                item = worker.outstanding.popleft()
                self._policy.observe(frame.seconds)
                replies.append((item, frame))
            elif frame.kind == Kind.READY:
                worker.ready = True
                self._init_failures = 0
            elif frame.kind == Kind.INIT_FAILED:
                worker.init_error = load(frame.payload)
        if replies:
            worker.reported = True
            self._watch_head(worker)
            self._settle([(item, _decode(item, frame)) for item, frame in replies])

    def _settle(self, outcomes: list[tuple[WorkItem, tuple[bool, Any]]]) -> None:
        """Record what jobs came to, then resolve their futures (stats first, so a
        caller woken by its future already sees them counted)."""
        finals: list[tuple[WorkItem, bool, Any]] = []
        retried = 0
        for item, (ok, value) in outcomes:
            if not ok and self._retry(item, value):
                retried += 1
            else:
                finals.append((item, ok, value))
        succeeded = sum(1 for _, ok, _ in finals if ok)
        self._stats.add_many([
            (RUNNING, -len(outcomes)), (SUCCEEDED, succeeded),
            (FAILED, len(finals) - succeeded), (RETRIED, retried), (QUEUED, retried),
        ])  # fmt: skip
        for item, ok, value in finals:
            self._finish(item, ok, value)

    def _watch_head(self, worker: WorkerHandle) -> None:
        """Arm the timeout of the job the worker starts next, if it has one."""
        if worker.outstanding:
            head = worker.outstanding[0]
            if head.timeout is not None:
                self._at(time.monotonic() + head.timeout, self._check_timeout, worker, head)

    def _check_timeout(self, worker: WorkerHandle, item: WorkItem) -> None:
        if worker.stop_reason or not worker.outstanding or worker.outstanding[0] is not item:
            return
        assert item.timeout is not None
        job_id, started_ns = worker.running_job()
        now = time.monotonic()
        if job_id != item.job_id:  # not begun yet: its clock has not started
            self._at(now + NOT_STARTED_RECHECK, self._check_timeout, worker, item)
            return
        deadline = started_ns / 1e9 + item.timeout
        if now < deadline:
            self._at(deadline, self._check_timeout, worker, item)
            return
        log.warning("job %d (%s) exceeded its %ss timeout; stopping worker %d",
                    item.job_id, item.name, item.timeout, worker.pid)  # fmt: skip
        self._stop_worker(worker, "timeout", item)

    # -- rebalancing ----------------------------------------------------------------------

    def _rebalance(self) -> None:
        """Take jobs back from a worker stuck on a long job when another worker sits idle.

        Batching hands a worker jobs that then wait behind the one it runs; if that
        one turns out long, they would wait for it while another worker has nothing
        to do. Such jobs return to the queue (in their place) for the idle worker.
        """
        if len(self._queue) or not any(
            w.accepting and w.ready and not w.outstanding for w in self._workers.values()
        ):
            return
        now = time.monotonic()
        patience = max(STALL_MIN, STALL_FACTOR * (self._policy.average or 0.0))
        for worker in self._workers.values():
            if len(worker.outstanding) < 2 or not worker.accepting:
                continue
            job_id, started_ns = worker.running_job()
            if job_id == worker.outstanding[0].job_id:
                stuck_at = started_ns / 1e9 + patience
            else:  # between two jobs: look again in a moment
                stuck_at = now + NOT_STARTED_RECHECK
            if now >= stuck_at and job_id:
                self._revoke(worker)
            elif not self._rebalance_armed:
                self._rebalance_armed = True
                self._at(stuck_at, self._rearm_rebalance)

    def _rearm_rebalance(self) -> None:
        self._rebalance_armed = False
        self._rebalance()

    def _revoke(self, worker: WorkerHandle) -> None:
        started = worker.slot.revoke(worker.sent)
        if started is None:
            return
        taken: list[WorkItem] = []
        while worker.outstanding and worker.outstanding[-1].wseq > started:
            taken.append(worker.outstanding.pop())
        worker.revoked += len(taken)
        if worker.stop_reason == "retire" and taken:  # it will not reach max_tasks now
            worker.outbox.push([encode(Kind.STOP)])
            self._flush(worker)
        log.debug("took %d unstarted jobs back from busy worker %d", len(taken), worker.pid)
        self._requeue(taken[::-1])

    # -- retries ------------------------------------------------------------------------

    def _retry(self, item: WorkItem, error: BaseException) -> bool:
        """Queue another attempt if the job has retries left for this error."""
        if item.attempts > item.retries or self._terminating or self.broken is not None:
            return False
        if isinstance(error, CancelledError):
            return False
        allowed = item.retry_on if item.retry_on is not None else (Exception,)
        if not isinstance(error, allowed):
            return False
        delay = min(item.retry_delay * 2 ** (item.attempts - 1), RETRY_DELAY_CAP)
        delay *= random.uniform(0.5, 1.0)  # jitter: retries of a burst don't return together
        item.state = State.WAITING
        self._waiting.add(item)
        self._at(time.monotonic() + delay, self._requeue_retry, item)
        log.info("job %d (%s) failed on attempt %d (%r); retrying in %.3fs",
                 item.job_id, item.name, item.attempts, error, delay)  # fmt: skip
        return True

    def _requeue_retry(self, item: WorkItem) -> None:
        if item in self._waiting:
            self._waiting.discard(item)
            self._queue.requeue(item, keep_place=False)

    # -- worker exit ------------------------------------------------------------------

    def _on_exit(self, worker: WorkerHandle) -> None:
        self._drain(worker)
        self._unregister(worker.results_fd)
        self._unregister(worker.calls_fd)
        self._unregister(worker.process.sentinel)
        worker.close()
        running_id, _ = worker.running_job()
        del self._workers[worker.index]
        self._stats.add_many([(WORKERS, -1)])
        for other in self._workers.values():
            if other.predecessor is worker:
                other.predecessor = None  # its turn: it may take jobs now
        held = list(worker.outstanding)
        worker.outstanding.clear()
        exitcode = worker.process.exitcode
        if worker.init_error is not None:
            self._on_init_failure(worker, held)
            return
        blamed = self._blame(worker, held, running_id)
        self._requeue([item for item in held if item is not blamed])
        if blamed is not None:
            self._fail_blamed(worker, blamed, exitcode)
        elif worker.stop_reason is None and exitcode != 0:
            log.warning("worker %d (pid %d) exited with %s between jobs",
                        worker.index, worker.pid, exitcode)  # fmt: skip
        self._replenish()

    def _drain(self, worker: WorkerHandle) -> None:
        """Take in every reply the dead worker wrote before it died."""
        while True:
            try:
                frames = worker.reader.read()
            except (BlockingIOError, EOFError, OSError):
                return
            self._handle_frames(worker, frames)

    def _blame(
        self, worker: WorkerHandle, held: list[WorkItem], running_id: int
    ) -> WorkItem | None:
        """The job that was running when the worker died, if any."""
        reason, target = worker.stop_reason, worker.stop_job
        if reason == "terminate":
            return None
        if reason in ("timeout", "kill"):
            # Stopped on purpose: only the job it was stopped for is to blame. (Another job
            # can be running only if the target finished in the instant before the signal.)
            return target if target in held and held[0] is target else None
        if held and held[0].job_id == running_id:
            return held[0]
        return None

    def _requeue(self, items: list[WorkItem]) -> None:
        """Jobs a dead worker held but never started go back, keeping their place."""
        if not items:
            return
        if self._terminating:
            for item in items:
                item.state = State.DONE
            self._stats.add_many([(RUNNING, -len(items)), (CANCELLED, len(items))])
            for item in items:
                self._finish(item, False, CancelledError("the pool was terminated"))
            return
        for item in items:
            item.attempts -= 1
            item.future.attempts = item.attempts
            self._queue.requeue(item, keep_place=True)
        self._stats.add_many([(RUNNING, -len(items)), (QUEUED, len(items))])

    def _fail_blamed(self, worker: WorkerHandle, item: WorkItem, exitcode: int | None) -> None:
        if worker.stop_reason == "kill" and worker.stop_job is item:
            item.state = State.DONE
            self._stats.add_many([(RUNNING, -1), (CANCELLED, 1)])
            stopped = CancelledError(f"job {item.job_id} was stopped by pool.kill()")
            self._finish(item, False, stopped)
            return
        if worker.stop_reason == "timeout" and worker.stop_job is item:
            self._stats.add_many([(TIMED_OUT, 1)])
            error: BaseException = JobTimeout(
                f"job {item.job_id} ({item.name}) ran longer than its timeout of {item.timeout}s; "
                f"its worker (pid {worker.pid}) was stopped and replaced",
                timeout=item.timeout,
            )
        else:
            self._stats.add_many([(CRASHED, 1)])
            error = WorkerCrashed(
                crash_message(worker.pid, exitcode, item),
                pid=worker.pid, exitcode=exitcode, job_id=item.job_id,
            )  # fmt: skip
            log.warning("%s", error)
        self._settle([(item, (False, error))])

    def _on_init_failure(self, worker: WorkerHandle, held: list[WorkItem]) -> None:
        self._init_failures += 1
        text = worker.init_error or ""
        log.error("worker %d: initializer failed (%d in a row):\n%s",
                  worker.pid, self._init_failures, text)  # fmt: skip
        error = InitializerError(f"the worker initializer raised; its traceback:\n{text}")
        self._stats.add_many([(RUNNING, -len(held)), (FAILED, len(held))])
        for item in held:
            self._finish(item, False, error)
        if self._init_failures >= MAX_INIT_FAILURES:
            self._give_up(PoolBroken(
                f"the worker initializer failed {self._init_failures} times in a row; "
                f"the pool cannot start workers. Last traceback:\n{text}"
            ))  # fmt: skip
            return
        delay = INIT_BACKOFF * 2 ** (self._init_failures - 1)
        self._at(time.monotonic() + delay, self._replenish)

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
        if len(self._queue) or self._waiting:
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
            self._finish(item, False, error)
        self._cancel_waiting(error)

    def _cancel_waiting(self, error: BaseException) -> None:
        waiting = list(self._waiting)
        self._waiting.clear()
        cancelled = isinstance(error, CancelledError)
        self._stats.add_many([
            (QUEUED, -len(waiting)), (CANCELLED if cancelled else FAILED, len(waiting))
        ])  # fmt: skip
        for item in waiting:
            self._finish(item, False, error)

    def _unregister(self, fd: int) -> None:
        if fd in self._selector.get_map():
            self._selector.unregister(fd)

    def _close(self) -> None:
        for worker in list(self._workers.values()):
            worker.signal(signal.SIGKILL)
            worker.close()
        self._workers.clear()
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
            if not self._queue.remove(item):
                return False
            self._stats.add_many([(QUEUED, -1), (CANCELLED, 1)])
            self._finish(item, False, cancelled)
            return True
        if item.state is State.WAITING:
            self._waiting.discard(item)
            self._stats.add_many([(QUEUED, -1), (CANCELLED, 1)])
            self._finish(item, False, cancelled)
            return True
        if item.state is State.SENT:
            for worker in self._workers.values():
                if item in worker.outstanding:
                    if worker.outstanding[0] is not item:
                        self._revoke(worker)  # not started: take it back, no worker lost
                    if self._queue.remove(item):  # it was taken back
                        self._stats.add_many([(QUEUED, -1), (CANCELLED, 1)])
                        self._finish(item, False, cancelled)
                    else:
                        self._stop_worker(worker, "kill", item)
                    return True
        return False

    def cancel_queued(self) -> None:
        """Cancel every job not yet handed to a worker (runs on the manager)."""
        queued = self._queue.drain()
        self._stats.add_many([(QUEUED, -len(queued)), (CANCELLED, len(queued))])
        error = CancelledError("cancelled by shutdown(cancel_futures=True)")
        for item in queued:
            if not item.future.cancel():
                self._finish(item, False, error)
            item.state = State.DONE
        self._cancel_waiting(error)


def _decode(item: WorkItem, frame: Frame) -> tuple[bool, Any]:
    """(True, result) or (False, exception) from a worker's reply."""
    if frame.kind == Kind.OK:
        try:
            return True, load(frame.payload)
        except Exception as exc:
            error = SerializationError(
                f"job {item.job_id} ({item.name}): its result could not be unpickled in the "
                f"parent ({exc!r}); check that its type is importable here"
            )
            error.__cause__ = exc
            return False, error
    try:
        return False, unpack_exception(frame.payload)
    except Exception as exc:
        return False, RemoteError("unknown", f"the job's error could not be decoded: {exc!r}", "")


def _deliver(outcomes: list[tuple[WorkItem, bool, Any]]) -> None:
    for item, ok, value in outcomes:
        future = item.future
        future._work = future._on_cancel = None  # no reference cycle left for the GC
        try:
            if ok:
                future.set_result(value)
            else:
                if item.attempts > 1:
                    _note_attempts(value, item.attempts)
                future.set_exception(value)
        except InvalidStateError:  # already resolved (a cancel won a race)
            pass


def _note_attempts(error: BaseException, attempts: int) -> None:
    try:
        error.attempts = attempts  # type: ignore[attr-defined]
    except AttributeError:
        pass
    if hasattr(error, "add_note"):
        error.add_note(f"taskq: the job failed on each of its {attempts} attempts")


_LIKELY = {
    signal.SIGKILL: "likely killed by the OOM killer (check `dmesg`) or by another process",
    signal.SIGSEGV: "a hard crash in native code (segmentation fault)",
    signal.SIGBUS: "a hard crash in native code (bus error)",
    signal.SIGABRT: "native code called abort() (a failed C assertion?)",
    signal.SIGILL: "a hard crash in native code (illegal instruction)",
    signal.SIGFPE: "a hard crash in native code (arithmetic error)",
    signal.SIGTERM: "terminated by another process",
}


def crash_message(pid: int, exitcode: int | None, item: WorkItem) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        how = f"died with signal {-exitcode} ({name})"
        likely = _LIKELY.get(-exitcode, "killed by a signal")  # type: ignore[call-overload]
    else:
        how = f"exited with code {exitcode}"
        likely = "the job ended the process itself (os._exit(), or exit() from native code)"
    return (
        f"worker {pid} {how} while running job {item.job_id} ({item.name}): {likely}. "
        "Only this job failed; the pool started a replacement worker."
    )
