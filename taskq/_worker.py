"""The worker process: run the calls it is sent, one at a time, and reply to each.

    CALL frame --> unpickle --> fn(*args, **kwargs) --> pickle --> OK / ERROR frame

Each reply is written before the next call starts, so if the worker dies, every
job it finished has been reported. Before starting a job the worker claims it
in its shared slot (``_slot.py``): the parent reads the slot to blame the right
job for a crash and to time a job from the moment it really started, and may
take back jobs the worker has not started yet.

Between jobs a worker that has no next call polls its pipe for a moment before it
sleeps in ``read()`` (``SPIN_SECONDS``): a call that arrives meanwhile costs neither
side a wake-up.

A worker exits when it is sent STOP, after ``max_tasks`` jobs, or when the
parent dies (its lifeline pipe reaches end of file).
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from taskq import _counters, _shm
from taskq._channel import FrameReader, enlarge_pipe, write_all
from taskq._errors import PicklingFailed, UnpicklingFailed
from taskq._protocol import (
    HEADER,
    Kind,
    dumps,
    encode,
    encode_parts,
    load_call,
    pack_exception,
)
from taskq._slot import WorkerSlot

SMALL_REPLY = 2048  # a smaller reply is joined to its header and written in one call
_STOP = int(Kind.STOP)

RESET_SIGNALS = (
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGALRM,
    signal.SIGCHLD,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


class WorkerSpec(NamedTuple):
    """Everything a worker process receives when it starts."""

    calls: Connection
    results: Connection
    lifeline: Connection
    slot: WorkerSlot
    counters: _counters.CounterBlock
    initializer: Callable[..., object] | None
    initargs: Sequence[Any]
    max_tasks: int | None
    parent: int | None = None  # the pid that must stay its parent (None: whoever it is now)


def run_worker(spec: WorkerSpec) -> None:
    """Entry point of a worker process."""
    reset_signals()
    leave_process_group()
    results = _shm.worker_results = _shm.ResultFiles()
    _watch_parent(spec.lifeline.fileno(), results, spec.parent)
    _counters.install_worker_counters(spec.counters)
    out_fd = spec.results.fileno()
    enlarge_pipe(out_fd)
    if not _initialize(spec, out_fd):
        return
    # READY names the prefix of this worker's result segments: the parent removes
    # any it did not adopt when this worker exits.
    write_all(out_fd, [encode(Kind.READY, payload=results.prefix.encode())])
    _serve(spec, FrameReader(spec.calls.fileno()), out_fd, results)


def reset_signals() -> None:
    """Undo the signal set-up a forked process inherits from the application.

    The SIGTERM that stops a job past its timeout must end the process, not run
    the application's handler; the same goes for the other signals an
    application commonly handles. Ctrl-C in a terminal reaches the whole process
    group: SIGINT is ignored, the parent decides what stops.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    # Signals must not wake the application's event loop through its wake-up pipe.
    signal.set_wakeup_fd(-1)


def leave_process_group() -> None:
    """Move this process into a process group of its own.

    A signal sent to the application's whole group (``kill -TERM -- -PGID``, GNU
    ``timeout``, a terminal's hang-up) must reach the parent only: the parent decides
    what stops, and a graceful shutdown lets running jobs finish. (systemd's default
    ``KillMode=control-group`` signals every process of the unit whatever its group:
    see the README for ``KillMode=mixed``.)
    """
    try:
        os.setpgid(0, 0)
    except OSError:  # a session leader cannot: it already leads its own group
        pass


def _initialize(spec: WorkerSpec, out_fd: int) -> bool:
    if spec.initializer is None:
        return True
    try:
        spec.initializer(*spec.initargs)
    except BaseException:
        write_all(out_fd, [encode(Kind.INIT_FAILED, payload=dumps(traceback.format_exc()))])
        return False
    return True


def _serve(spec: WorkerSpec, reader: FrameReader, out_fd: int, results: _shm.ResultFiles) -> None:
    received = done = 0
    last = 1.0  # seconds the last job took (no job yet: as if a long one)
    poll = _spinner(spec.calls.fileno())
    while True:
        if last < SPIN_SECONDS:
            poll()
        try:
            frames = reader.read()
        except EOFError:
            # The parent closes our pipes only once we are dead or being killed, so it is
            # gone: nobody will adopt the files not yet adopted (its lifeline thread may
            # not get to remove them before this process exits).
            results.remove_all()
            return
        for frame in frames:
            if frame.kind == _STOP:
                return
            received += 1
            if not spec.slot.begin(received, frame.job_id):
                continue  # taken back by the parent: another worker runs it
            try:
                last = _run_call(spec, frame.job_id, frame.payload, out_fd, results)
            except BrokenPipeError:  # the same, seen while replying: exit quietly
                results.remove_all()
                return
            done += 1
            if spec.max_tasks is not None and done >= spec.max_tasks:
                return


# After a job, a worker that has no next call yet polls its pipe this long before it
# sleeps in read(). A call written while it polls costs neither side a wake-up (on a
# VM, waking a sleeping process costs tens of microseconds, several times the pipe's
# own round trip), so one job in flight comes back sooner. Only after a job shorter
# than the window: next to a longer job the saving is small, and the parent is then
# often busy with that job's result, which a polling worker would slow down on a
# machine with few cores. Longer: more CPU burnt by a worker between bursts of jobs;
# shorter: latency as if it slept. sched_yield()
# between two polls gives the core to any other runnable process (the parent, when
# the machine has fewer cores than workers + 1).
SPIN_SECONDS = 0.0002


def _spinner(fd: int) -> Callable[[], None]:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    ready, clock, pause = poller.poll, time.perf_counter, os.sched_yield

    def spin() -> None:
        deadline = clock() + SPIN_SECONDS
        while not ready(0) and clock() < deadline:
            pause()

    return spin


def _run_call(
    spec: WorkerSpec,
    job_id: int,
    payload: bytes | bytearray,
    out_fd: int,
    results: _shm.ResultFiles,
) -> float:
    """Run one call and reply; return the seconds it took (the reply says so too)."""
    started = time.perf_counter()
    _shm.call_mappings.clear()
    kind, reply, segment = _call(job_id, payload, results)
    seconds = time.perf_counter() - started
    # The job's objects are gone with _call's frame: if nothing kept a view of the
    # arguments' segment, the parent may fill it again for another job.
    released = encode(Kind.RELEASED, job_id) if _shm.call_unmapped() else b""
    try:
        _reply(out_fd, kind, job_id, reply, seconds, released)
    except BaseException:
        if segment is not None:  # the parent will never read its name
            results.remove(segment)
        raise
    spec.slot.end()
    return seconds


def _reply(
    out_fd: int, kind: Kind, job_id: int, reply: bytes, seconds: float, before: bytes = b""
) -> None:
    """Write the reply frame, after ``before`` (frames to send first, in the same write)."""
    if len(reply) > SMALL_REPLY:  # never copied to prepend its header
        write_all(out_fd, [before, *encode_parts(kind, job_id, reply, seconds)])
        return
    frame = before + HEADER.pack(len(reply), kind, job_id, seconds) + reply
    written = os.write(out_fd, frame)  # the whole frame, unless the pipe is nearly full
    if written < len(frame):
        write_all(out_fd, [frame[written:]])


def _call(
    job_id: int, payload: bytes | bytearray, results: _shm.ResultFiles
) -> tuple[Kind, bytes, str | None]:
    """Run the call: the reply, and the name of the result's segment if it has one."""
    try:
        fn, args, kwargs = load_call(payload)
    except BaseException as exc:
        return Kind.ERROR, _packed(UnpicklingFailed(
            f"job {job_id}: its call could not be unpickled in the worker ({exc!r}); "
            "check that the function and arguments are importable and picklable"
        ), exc), None  # fmt: skip
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        return Kind.ERROR, pack_exception(exc), None
    try:
        reply, segment = results.dump(result)
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        return Kind.ERROR, _packed(PicklingFailed(
            f"job {job_id} ({name}): its result of type {type(result).__qualname__} "
            f"could not be pickled ({exc!r}); return picklable data"
        ), exc), None  # fmt: skip
    except BaseException as exc:  # SystemExit from a __reduce__: the job gets it as itself
        add_note = getattr(exc, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(f"taskq: raised while pickling the result of job {job_id}")
        return Kind.ERROR, pack_exception(exc), None
    return (Kind.OK if segment is None else Kind.OK_SHARED), reply, segment


def _packed(error: BaseException, cause: BaseException) -> bytes:
    error.__cause__ = cause
    return pack_exception(error)


def _watch_parent(lifeline_fd: int, results: _shm.ResultFiles, parent: int | None) -> None:
    """Exit when the parent dies, even by SIGKILL, so no worker is ever orphaned,
    removing the result segments it will never adopt."""
    if parent is None:
        parent = os.getppid()

    def watch() -> None:
        while True:
            readable, _, _ = select.select([lifeline_fd], [], [], 1.0)
            # Nobody writes to the lifeline: it turns readable at end of file, when the
            # parent's end closes. The ppid check is a fallback for a lifeline held open
            # by a stray fork; under fork the ppid is the fork server (_forkserver.py),
            # which exits when the pool's parent does.
            if (readable and not os.read(lifeline_fd, 64)) or os.getppid() != parent:
                results.remove_all()
                os._exit(0)

    threading.Thread(target=watch, name="taskq-lifeline", daemon=True).start()


# -- map chunks -----------------------------------------------------------------


def run_chunk(
    fn: Callable[..., Any], items: Sequence[Any], star: bool
) -> tuple[list[Any], bytes | None, float]:
    """Run ``fn`` over a chunk of ``map`` inputs, stopping at the first exception.

    Returns the results so far, the packed exception of the item that raised
    (if one did) and the seconds spent:
    ``map`` re-raises it when the caller reaches that item, and never looks
    past it, so the rest of the chunk would be wasted work.
    """
    results: list[Any] = []
    started = time.perf_counter()
    try:
        if star:
            results.extend(itertools.starmap(fn, items))
        else:
            results.extend(map(fn, items))
    except Exception as exc:
        return results, pack_exception(exc), time.perf_counter() - started
    return results, None, time.perf_counter() - started
