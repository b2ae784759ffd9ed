"""Collect: what workers' replies and exits mean for the jobs they held.

    OK / ERROR frame  -> the job's result or exception (or another attempt: retries)
    worker exit       -> the job it was running is to blame (WorkerCrashed,
                         JobTimeout, CancelledError for pool.kill); the jobs it
                         held but never started go back to the queue, in their
                         place; a worker that never became ready is an
                         initializer failure.

These are decisions only: the ``Collector`` reads frames, the worker's slot
and its exit code, and says what happened; the manager applies it (statistics,
futures, replacements). So each case can be driven with a stand-in worker and
no process.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any, NamedTuple

from taskq import _segments, _shared_result
from taskq._dispatch import BatchPolicy
from taskq._errors import (
    InitializerError,
    JobTimeout,
    RemoteError,
    UnpicklingFailed,
    WorkerCrashed,
)
from taskq._job import WorkItem
from taskq._process import WorkerHandle
from taskq._protocol import Frame, Kind, load, unpack_exception
from taskq._shm import ArgSegment, SharedCall

RETRY_DELAY_CAP = 30.0
# Plain ints: compared once per reply (an IntEnum member lookup costs more).
_OK, _ERROR, _READY, _INIT_FAILED = map(int, (Kind.OK, Kind.ERROR, Kind.READY, Kind.INIT_FAILED))
_RELEASED, _OK_SHARED = int(Kind.RELEASED), int(Kind.OK_SHARED)
_REPLIES = frozenset((_OK, _OK_SHARED, _ERROR))


class Replies(NamedTuple):
    """What a batch of frames from one worker said."""

    done: list[tuple[WorkItem, Frame]]
    """Jobs that finished, each with its OK or ERROR frame, in order."""
    ready: bool
    """The worker reported READY (its initializer ran)."""
    out_of_step: Frame | None
    """A reply for a job the worker was not running: a bug; the rest was not read."""


class ExitPlan(NamedTuple):
    """What a worker's exit means for the jobs it held."""

    blamed: WorkItem | None
    """The job it was running (its slot says so), or None."""
    release: list[WorkItem]
    """Jobs it held but never started: back to the queue, in their place."""
    init_failure: str | None
    """Why it never became ready, if it did not: then every job it held (``release``)
    fails instead."""


class Collector:
    def __init__(self, policy: BatchPolicy, sweep: Callable[[str], object] = _segments.sweep):
        self.policy = policy
        self._sweep = sweep  # removes a dead worker's result files (see exit_plan)
        self._segment_prefixes: dict[int, str] = {}  # worker pid -> its result segments'

    def take_replies(self, worker: WorkerHandle, frames: list[Frame]) -> Replies:
        """Match replies to the jobs the worker holds (it replies in order)."""
        done: list[tuple[WorkItem, Frame]] = []
        ready = False
        held = worker.outstanding
        for frame in frames:
            kind = frame.kind
            if kind in _REPLIES:
                if not held or held[0].job_id != frame.job_id:
                    self.policy.observe_all(done)
                    return Replies(done, ready, frame)
                done.append((held.popleft(), frame))
            elif kind == _READY:
                worker.ready = ready = True
                if frame.payload:
                    self._segment_prefixes[worker.pid] = bytes(frame.payload).decode()
            elif kind == _RELEASED:
                if held and held[0].job_id == frame.job_id and type(held[0].call) is SharedCall:
                    held[0].call.segment.unmapped()  # reusable once the job ends
            elif kind == _INIT_FAILED:
                worker.init_error = load(frame.payload)
        if done:
            worker.reported = True
            self.policy.observe_all(done)
        return Replies(done, ready, None)

    def exit_plan(self, worker: WorkerHandle, running_id: int, exitcode: int | None) -> ExitPlan:
        """After its last replies were taken in: what to do with what it still held.

        A job that started is never put back as if it had not: the one the slot
        names is to blame, whatever the reason the worker stopped. Result segments
        it left that no reply named (it died writing one) are removed.
        """
        prefix = self._segment_prefixes.pop(worker.pid, None)
        if prefix is not None:
            self._sweep(prefix)  # once the replies taken in have read theirs (_copier.py)
        held = list(worker.outstanding)
        worker.outstanding.clear()
        if worker.init_error is not None:
            text = f"the worker initializer raised; its traceback:\n{worker.init_error}"
            return ExitPlan(None, held, text)
        if not worker.ready and worker.stop_reason is None:
            return ExitPlan(None, held, not_ready_message(worker.pid, exitcode))
        blamed = None
        if worker.stop_reason != "terminate":
            blamed = next((item for item in held if item.job_id == running_id), None)
        return ExitPlan(blamed, [item for item in held if item is not blamed], None)

    @staticmethod
    def blamed_error(worker: WorkerHandle, item: WorkItem, exitcode: int | None) -> BaseException:
        """The exception of the job a worker died running."""
        if worker.stop_job is item and worker.stop_reason == "kill":
            return CancelledError(f"job {item.job_id} was stopped by pool.kill()")
        if worker.stop_job is item and worker.stop_reason == "timeout":
            return JobTimeout(
                f"job {item.job_id} ({item.name}) ran longer than its timeout of {item.timeout}s; "
                f"its worker (pid {worker.pid}) was stopped and replaced",
                timeout=item.timeout,
            )
        return WorkerCrashed(
            crash_message(worker.pid, exitcode, item),
            pid=worker.pid, exitcode=exitcode, job_id=item.job_id,
        )  # fmt: skip

    @staticmethod
    def retry_delay(item: WorkItem, error: BaseException) -> float | None:
        """Seconds until the next attempt, if the job has retries left for this error."""
        if item.attempts > item.retries or isinstance(error, CancelledError):
            return None
        allowed = item.retry_on if item.retry_on is not None else (Exception,)
        if not isinstance(error, allowed):
            return None
        delay: float = min(item.retry_delay * 2 ** (item.attempts - 1), RETRY_DELAY_CAP)
        return delay * random.uniform(0.5, 1.0)  # jitter: a burst's retries don't return together


def to_copy(item: WorkItem, frame: Frame) -> bool:
    """Whether a reply's result waits in a shared-memory file and must be read by the
    pool (off the manager's thread: ``_copier.py``); a plain one its first reader
    may read instead (``_shared_result.hold``) is not."""
    return frame.kind == _OK_SHARED and not (
        _unwatched(item.future) and _shared_result.holdable(frame.payload)
    )


def _unwatched(future: Any) -> bool:
    """No done-callback of the caller's waits for this future (the pool's own, which
    frees the job's argument segment, does not read the result)."""
    callbacks = future._done_callbacks
    return not callbacks or all(
        getattr(callback, "__func__", None) is _RELEASE_ARGUMENTS for callback in callbacks
    )


_RELEASE_ARGUMENTS = ArgSegment.release


def decode(item: WorkItem, frame: Frame) -> tuple[bool, Any]:
    """``read``, on the manager's thread: a plain large result, unless a callback waits
    for it, is left for its first reader (``_shared_result.py``)."""
    if frame.kind == _OK_SHARED and _unwatched(item.future):
        handle = _shared_result.hold(frame.payload)
        if handle is not None:
            return True, handle
    return read(item, frame)


def read(item: WorkItem, frame: Frame) -> tuple[bool, Any]:
    """(True, result) or (False, exception) from a worker's reply.

    Unpickling runs user code (``__setstate__``, ``__reduce__`` callables) on the
    manager thread: whatever it raises, SystemExit included, fails only this job.
    """
    if frame.kind != _ERROR:
        try:
            payload = frame.payload
            return True, (load(payload) if frame.kind == _OK else _shared_result.adopt(payload))
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
    if exitcode is None:  # only its fork server could have reaped it, and that one is gone
        return "exited (its exit status was lost with the fork server that started it)"
    return f"exited with code {exitcode}"


def crash_message(pid: int, exitcode: int | None, item: WorkItem) -> str:
    if exitcode is not None and exitcode < 0:
        likely = _LIKELY.get(-exitcode, "killed by a signal")  # type: ignore[call-overload]
    elif exitcode is None:
        likely = "its fork server died, and a worker stops when its parent does"
    else:
        likely = "the job ended the process itself (os._exit(), or exit() from native code)"
    return (
        f"worker {pid} {_how_it_ended(exitcode)} while running job {item.job_id} "
        f"({item.name}): {likely}. No other job is affected (this one fails, or runs "
        "again if it has retries left); the pool started a replacement worker."
    )


def not_ready_message(pid: int, exitcode: int | None) -> str:
    return (
        f"worker {pid} {_how_it_ended(exitcode)} before it was ready to run jobs: the "
        "initializer crashed the process (os._exit(), a signal, native code), or under "
        "spawn/forkserver the child could not start (is the initializer importable from "
        "the child, not defined in __main__ of an interactive session? see stderr)"
    )


def init_error(item: WorkItem, text: str) -> BaseException:
    """The exception of a job held by a worker that never became ready."""
    return InitializerError(f"job {item.job_id} ({item.name}): {text}")
