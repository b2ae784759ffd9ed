"""The manager's collect step: turn workers' replies and deaths into job outcomes.

    OK / ERROR frame  -> the job's result or exception (or another attempt: retries)
    worker exit       -> the job it was running fails (WorkerCrashed, JobTimeout,
                         CancelledError for pool.kill); the jobs it held but had not
                         started go back to the queue, in their place; a replacement
                         worker starts.

Outcomes are decided here, under the manager's lock, and delivered to futures
by ``deliver`` once the lock is released.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, InvalidStateError
from typing import TYPE_CHECKING, Any

from taskq._dispatch import BatchPolicy
from taskq._errors import (
    InitializerError,
    JobTimeout,
    PoolBroken,
    RemoteError,
    UnpicklingFailed,
    WorkerCrashed,
)
from taskq._job import State, WorkItem
from taskq._log import log
from taskq._process import WorkerHandle
from taskq._protocol import Frame, Kind, load, unpack_exception
from taskq._queue import JobQueue
from taskq._stats import (
    CANCELLED,
    CRASHED,
    FAILED,
    QUEUED,
    RETRIED,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
    WORKERS,
    StatsBlock,
)

RETRY_DELAY_CAP = 30.0
MAX_INIT_FAILURES = 5  # initializer failures in a row before the pool gives up
INIT_BACKOFF = 0.1  # first delay before restarting a worker whose initializer failed


class Collector:
    """Replies and worker exits, turned into outcomes, retries and replacements."""

    _queue: JobQueue[WorkItem]
    _workers: dict[int, WorkerHandle]
    _policy: BatchPolicy
    _stats: StatsBlock
    _waiting: set[WorkItem]
    _terminating: bool
    _init_failures: int
    broken: PoolBroken | None

    if TYPE_CHECKING:  # provided by the Manager

        def _at(self, when: float, action: Callable[..., None], *args: Any) -> None: ...
        def _finish(self, item: WorkItem, ok: bool, value: Any) -> None: ...
        def _watch_head(self, worker: WorkerHandle) -> None: ...
        def _unregister(self, fd: int) -> None: ...
        def _replenish(self, predecessor: WorkerHandle | None = None) -> None: ...
        def _give_up(self, error: PoolBroken) -> None: ...

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
                if not worker.outstanding or worker.outstanding[0].job_id != frame.job_id:
                    self._out_of_step(worker, frame)
                    break
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

    def _out_of_step(self, worker: WorkerHandle, frame: Frame) -> None:
        """A reply for a job the worker was not running: never settle the wrong future.
        Stop the worker; its exit is then handled like a crash (the slot says which
        job it ran)."""
        expected = worker.outstanding[0].job_id if worker.outstanding else None
        log.error("worker %d replied for job %d while job %s was next; this is a bug in "
                  "taskq: stopping the worker", worker.pid, frame.job_id, expected)  # fmt: skip
        worker.stop_reason = "protocol"
        self._unregister(worker.results_fd)
        worker.signal(signal.SIGKILL)

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
        if finals:
            self._queue.acknowledge([item for item, _, _ in finals])
        for item, ok, value in finals:
            self._finish(item, ok, value)

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
            self._queue.release(item, keep_place=False)

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
        if worker.init_error is not None or (not worker.ready and worker.stop_reason is None):
            self._on_init_failure(worker, held, exitcode)
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
        while worker.stop_reason != "protocol":
            try:
                frames = worker.reader.read()
            except (BlockingIOError, EOFError, OSError):
                return
            self._handle_frames(worker, frames)

    def _blame(
        self, worker: WorkerHandle, held: list[WorkItem], running_id: int
    ) -> WorkItem | None:
        """The job that was running when the worker died, if any.

        The worker's slot names it. A job that started is never put back as if it
        had not: it is the one to blame, whatever the reason the worker stopped.
        """
        if worker.stop_reason == "terminate":
            return None
        for item in held:
            if item.job_id == running_id:
                return item
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
            self._queue.release(item, keep_place=True)
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

    def _on_init_failure(
        self, worker: WorkerHandle, held: list[WorkItem], exitcode: int | None
    ) -> None:
        """A worker that never became ready: its initializer raised, or the process
        died before it was ready. Fail the jobs it held; restart it with backoff;
        give up after ``MAX_INIT_FAILURES`` in a row."""
        self._init_failures += 1
        if worker.init_error is not None:
            text = f"the worker initializer raised; its traceback:\n{worker.init_error}"
        else:
            text = not_ready_message(worker.pid, exitcode)
        log.error("worker %d failed to start (%d in a row): %s",
                  worker.pid, self._init_failures, text)  # fmt: skip
        self._stats.add_many([(RUNNING, -len(held)), (FAILED, len(held))])
        for item in held:
            self._finish(item, False, InitializerError(f"job {item.job_id} ({item.name}): {text}"))
        if self._init_failures >= MAX_INIT_FAILURES:
            self._give_up(PoolBroken(
                f"workers failed to start {self._init_failures} times in a row; the pool "
                f"cannot run jobs. Last failure: {text}"
            ))  # fmt: skip
            return
        delay = INIT_BACKOFF * 2 ** (self._init_failures - 1)
        self._at(time.monotonic() + delay, self._replenish)


def _decode(item: WorkItem, frame: Frame) -> tuple[bool, Any]:
    """(True, result) or (False, exception) from a worker's reply.

    Unpickling runs user code (``__setstate__``, ``__reduce__`` callables) on the
    manager thread: whatever it raises, SystemExit included, fails only this job.
    """
    if frame.kind == Kind.OK:
        try:
            return True, load(frame.payload)
        except BaseException as exc:
            error = UnpicklingFailed(
                f"job {item.job_id} ({item.name}): its result could not be unpickled in the "
                f"parent ({exc!r}); check that its type is importable here"
            )
            error.__cause__ = exc
            return False, error
    try:
        return False, unpack_exception(frame.payload)
    except BaseException as exc:
        return False, RemoteError(
            "unknown", f"job {item.job_id}'s exception could not be decoded: {exc!r}", ""
        )


def deliver(outcomes: list[tuple[WorkItem, bool, Any]]) -> None:
    """Resolve futures with the outcomes decided under the manager's lock.

    Runs with no lock held: done-callbacks are user code. A job that never
    reached a worker still has a PENDING future, and the pool, which took it
    from the queue, makes its one ``set_running_or_notify_cancel()`` call here
    (its caller may have cancelled it meanwhile: then that is all there is to do).
    """
    for item, ok, value in outcomes:
        future = item.future
        future._work = future._on_cancel = None  # no reference cycle left for the GC
        if not item.claimed:
            item.claimed = True
            if isinstance(value, CancelledError):
                future.cancel()
                future.set_running_or_notify_cancel()
                continue
            if not future.set_running_or_notify_cancel():
                continue  # its caller cancelled it first
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


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"died with signal {-exitcode} ({name})"
    return f"exited with code {exitcode}"


def crash_message(pid: int, exitcode: int | None, item: WorkItem) -> str:
    if exitcode is not None and exitcode < 0:
        likely = _LIKELY.get(-exitcode, "killed by a signal")  # type: ignore[call-overload]
    else:
        likely = "the job ended the process itself (os._exit(), or exit() from native code)"
    return (
        f"worker {pid} {_how_it_ended(exitcode)} while running job {item.job_id} "
        f"({item.name}): {likely}. Only this job failed; the pool started a replacement worker."
    )


def not_ready_message(pid: int, exitcode: int | None) -> str:
    return (
        f"worker {pid} {_how_it_ended(exitcode)} before it was ready to run jobs: the "
        "initializer crashed the process (os._exit(), a signal, native code), or under "
        "spawn/forkserver the child could not start (is the initializer importable from "
        "the child, not defined in __main__ of an interactive session? see stderr)"
    )
