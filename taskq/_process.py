"""One worker process as the parent sees it: its pipes, the jobs it holds, how to stop it."""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, Pipe
from multiprocessing.context import BaseContext
from typing import Any

from taskq._channel import FrameReader, Outbox, enlarge_pipe
from taskq._counters import CounterBlock
from taskq._job import WorkItem
from taskq._slot import WorkerSlot
from taskq._worker import WorkerSpec, run_worker


class WorkerHandle:
    """A live worker: the pipe ends the parent keeps and the jobs handed to it, in order.

    ``outstanding[0]`` is the job the worker is running (or about to start):
    the worker runs jobs in the order it receives them and replies to each.
    """

    def __init__(
        self, index: int, process: Any, calls: Connection, results: Connection, slot: WorkerSlot
    ):
        self.index = index
        self.process = process
        self.pid: int = process.pid
        self._pipes = (calls, results)  # the Connections own the descriptors
        self.calls_fd = calls.fileno()
        self.results_fd = results.fileno()
        self.reader = FrameReader(self.results_fd)
        self.outbox = Outbox(self.calls_fd)
        self.outstanding: collections.deque[WorkItem] = collections.deque()
        self.slot = slot
        self.ready = False  # the worker ran its initializer and said READY
        self.reported = False  # replied since the last dispatch: may be topped up
        self.sent = 0  # jobs handed over in its lifetime: the last one's number (see _slot)
        self.revoked = 0  # of those, jobs taken back before they started
        self.stop_reason: str | None = None  # "timeout" | "kill" | "stop"
        self.stop_job: WorkItem | None = None
        self.init_error: str | None = None  # the initializer's traceback, if it raised
        # A retiring worker this one replaces: no job for this one until that one exits.
        self.predecessor: WorkerHandle | None = None

    @property
    def accepting(self) -> bool:
        return self.stop_reason is None

    def running_job(self) -> tuple[int, int]:
        """(job id, start time in monotonic ns) the worker says it is on; job id 0 if none."""
        return self.slot.running()

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def close(self) -> None:
        for pipe in self._pipes:
            pipe.close()
        self.process.join(timeout=5)


class WorkerLauncher:
    """Starts the pool's workers; the manager asks it for one worker at a time.

    Everything a worker inherits is fixed when the pool is created and given
    here once; ``spawn(index)`` adds the worker's own pipes and starts it.
    """

    def __init__(
        self,
        ctx: BaseContext,
        *,
        lifeline: Any,
        lifeline_write_fd: int,
        slots: Any,
        counters: CounterBlock,
        initializer: Callable[..., object] | None,
        initargs: Sequence[Any],
        max_tasks: int | None,
    ):
        self._ctx = ctx
        self._options: dict[str, Any] = dict(
            lifeline=lifeline,
            lifeline_write_fd=lifeline_write_fd,
            slots=slots,
            counters=counters,
            initializer=initializer,
            initargs=initargs,
            max_tasks=max_tasks,
        )

    def spawn(self, index: int) -> WorkerHandle:
        """Start worker ``index``; raises ``OSError`` if the process cannot be started."""
        return spawn_worker(self._ctx, index, **self._options)

    def close(self) -> None:
        """Release what the launcher holds (called once every worker has exited)."""


def spawn_worker(
    ctx: BaseContext,
    index: int,
    *,
    lifeline: Any,
    lifeline_write_fd: int,
    slots: Any,
    counters: CounterBlock,
    initializer: Callable[..., object] | None,
    initargs: Sequence[Any],
    max_tasks: int | None,
) -> WorkerHandle:
    """Start worker ``index`` and return the parent's handle on it."""
    calls_read, calls_write = Pipe(duplex=False)
    results_read, results_write = Pipe(duplex=False)
    enlarge_pipe(calls_write.fileno())
    inherited = (lifeline_write_fd,) if ctx.get_start_method() == "fork" else ()
    slot = WorkerSlot(slots, index, ctx)
    spec = WorkerSpec(
        calls=calls_read,
        results=results_write,
        lifeline=lifeline,
        fds_to_close=inherited,
        slot=slot,
        counters=counters,
        initializer=initializer,
        initargs=tuple(initargs),
        max_tasks=max_tasks,
    )
    process = ctx.Process(  # type: ignore[attr-defined]
        target=run_worker, args=(spec,), name=f"taskq-worker-{index}"
    )
    try:
        process.start()
    finally:
        # The child has its own copies now; keeping ours would hide its death from reads.
        calls_read.close()
        results_write.close()
    os.set_blocking(calls_write.fileno(), False)
    os.set_blocking(results_read.fileno(), False)
    return WorkerHandle(index, process, calls_write, results_read, slot)
