"""One worker process as the parent sees it: its pipes, the jobs it holds, how to stop it.

``WorkerLauncher`` starts workers. Under fork it never forks the parent, which
runs threads: a fork server, forked once when the pool is created, forks every
worker (``_forkserver.py``). Under spawn and forkserver, ``multiprocessing``
starts each worker from a fresh interpreter, or from its own server.
"""

from __future__ import annotations

import collections
import functools
import os
import signal
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, Pipe
from multiprocessing.context import BaseContext
from typing import Any, NamedTuple

from taskq._channel import FrameReader, Outbox, enlarge_pipe
from taskq._counters import CounterBlock, RecordLock
from taskq._forkserver import ForkServer
from taskq._job import WorkItem
from taskq._slot import WIDTH, WorkerSlot, slot_locks
from taskq._worker import WorkerSpec, run_worker

CLOSED = -1  # the descriptor numbers of a closed handle: any use fails, none hits a reused fd


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
        self.write_watched = False  # its call pipe is in the selector (a write is pending)
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
        """Close the pipes and reap the process (``process.exitcode`` stays readable)."""
        for pipe in self._pipes:
            pipe.close()
        # The numbers may soon belong to other descriptors: a late read or write fails.
        self.calls_fd = self.results_fd = CLOSED
        self.reader = FrameReader(CLOSED)
        self.outbox = Outbox(CLOSED)
        self.process.join(timeout=5)


class _Inherited(NamedTuple):
    """What every worker of a pool inherits, fixed when the pool is created."""

    lifeline: Connection
    slots: Any
    slot_locks: list[RecordLock]
    counters: CounterBlock
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks: int | None

    def slot(self, index: int) -> WorkerSlot:
        return WorkerSlot(self.slots, index, self.slot_locks[index])

    def spec(self, index: int, calls: Connection, results: Connection) -> WorkerSpec:
        return WorkerSpec(
            calls=calls,
            results=results,
            lifeline=self.lifeline,
            slot=self.slot(index),
            counters=self.counters,
            initializer=self.initializer,
            initargs=self.initargs,
            max_tasks=self.max_tasks,
        )


class WorkerLauncher:
    """Starts the pool's workers; the manager asks it for one worker at a time.

    Everything a worker inherits is fixed when the pool is created and given
    here once; ``spawn(index)`` adds the worker's own pipes and starts it. Under
    fork, creating the launcher forks the fork server: it must happen before the
    pool starts any thread.
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
        self._inherited = _Inherited(
            lifeline=lifeline,
            slots=slots,
            slot_locks=slot_locks(len(slots) // WIDTH),
            counters=counters,
            initializer=initializer,
            initargs=tuple(initargs),
            max_tasks=max_tasks,
        )
        self._server: ForkServer | None = None
        if ctx.get_start_method() == "fork":
            self._server = ForkServer(
                functools.partial(_run_forked_worker, self._inherited),
                name="taskq-worker",
                parent_only=(lifeline_write_fd,),  # or the workers would never see it close
            )

    def spawn(self, index: int) -> WorkerHandle:
        """Start worker ``index``; raises ``OSError`` if the process cannot be started."""
        calls_read, calls_write = Pipe(duplex=False)
        results_read, results_write = Pipe(duplex=False)
        enlarge_pipe(calls_write.fileno())
        slot = self._inherited.slot(index)
        slot.clear()
        try:
            process = self._start(index, calls_read, results_write)
        except BaseException:
            calls_write.close()
            results_read.close()
            raise
        finally:
            # The child has its own copies now; keeping ours would hide its death from reads.
            calls_read.close()
            results_write.close()
        os.set_blocking(calls_write.fileno(), False)
        os.set_blocking(results_read.fileno(), False)
        return WorkerHandle(index, process, calls_write, results_read, slot)

    def _start(self, index: int, calls: Connection, results: Connection) -> Any:
        if self._server is not None:
            return self._server.start(index, [calls.fileno(), results.fileno()])
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=run_worker,
            args=(self._inherited.spec(index, calls, results),),
            name=f"taskq-worker-{index}",
        )
        process.start()
        return process

    def close(self) -> None:
        """Release what the launcher holds (called once every worker has exited)."""
        if self._server is not None:
            self._server.close()


def _run_forked_worker(inherited: _Inherited, index: int, fds: list[int], server: int) -> None:
    """In a worker the fork server started: wrap the pipes it was sent, and run."""
    calls_fd, results_fd = fds
    calls = Connection(calls_fd, writable=False)
    results = Connection(results_fd, readable=False)
    run_worker(inherited.spec(index, calls, results)._replace(parent=server))
