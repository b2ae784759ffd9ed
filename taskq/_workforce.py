"""The worker processes: start them, replace them, retire them, stop them.

The ``Workforce`` keeps ``max_workers`` workers taking jobs while the manager
says jobs need them. A process start the OS refuses (EAGAIN, EMFILE, ENOMEM)
is retried with backoff; only ``MAX_SPAWN_FAILURES`` refusals in a row break
the pool. A worker is stopped with SIGTERM, then SIGKILL after a grace period.
It runs on the manager thread only, under the manager's lock.
"""

from __future__ import annotations

import selectors
import signal
import time
from collections.abc import Callable

from taskq._errors import PoolBroken
from taskq._job import WorkItem
from taskq._ledger import Ledger
from taskq._log import log
from taskq._process import WorkerHandle, WorkerLauncher

KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL when stopping a job
MAX_SPAWN_FAILURES = 8  # refused process starts in a row before the pool gives up
MAX_INIT_FAILURES = 5  # workers failing to start in a row before the pool gives up
INIT_BACKOFF = 0.1  # first delay before restarting a worker whose initializer failed
SPAWN_BACKOFF = 0.1  # first delay before retrying a refused start; doubles, up to the cap
SPAWN_BACKOFF_CAP = 5.0
# Stop reasons of a worker being stopped on purpose, now ("retire" and "stop" let it finish).
STOPPED = ("timeout", "kill", "terminate")

Handler = Callable[[WorkerHandle], None]


class Workforce:
    def __init__(
        self,
        launcher: WorkerLauncher,
        max_workers: int,
        *,
        selector: selectors.BaseSelector,
        at: Callable[..., None],
        ledger: Ledger,
        on_results: Handler,
        on_exit: Handler,
        needed: Callable[[], bool],
        give_up: Callable[[PoolBroken], None],
    ):
        self.workers: dict[int, WorkerHandle] = {}
        self._launcher: WorkerLauncher | None = launcher
        self._max_workers = max_workers
        self._selector = selector
        self._at = at  # at(when, action, *args): the manager's timer
        self._ledger = ledger
        self._on_results = on_results
        self._on_exit = on_exit
        self._needed = needed
        self._give_up = give_up
        self._failures = 0  # process starts refused in a row
        self._init_failures = 0  # started workers that failed to become ready, in a row

    def start(self, index: int, replacement: bool = False) -> bool:
        """Start worker ``index``; False if the OS refused (a retry is then scheduled)."""
        if self._launcher is None:  # closed
            return False
        try:
            worker = self._launcher.spawn(index)
        except OSError as exc:
            self._refused(exc)
            return False
        self._failures = 0
        self.workers[index] = worker
        sel = self._selector
        sel.register(worker.results_fd, selectors.EVENT_READ, lambda _: self._on_results(worker))
        sel.register(worker.process.sentinel, selectors.EVENT_READ, lambda _: self._on_exit(worker))
        self._ledger.worker_started(replacement)
        log.debug("worker %d started (pid %d)", index, worker.pid)
        return True

    def _refused(self, exc: OSError) -> None:
        self._failures += 1
        if self._failures >= MAX_SPAWN_FAILURES:
            error = PoolBroken(
                f"the pool could not start a worker process {self._failures} times in a "
                f"row (last: {exc!r}); check the process and open-file limits (ulimit -u, -n) "
                "and free memory"
            )
            error.__cause__ = exc
            self._give_up(error)
            return
        delay = min(SPAWN_BACKOFF * 2 ** (self._failures - 1), SPAWN_BACKOFF_CAP)
        log.warning("could not start a worker (%r); retrying in %.2fs", exc, delay)
        self._at(time.monotonic() + delay, self.replenish)

    def replenish(self, predecessor: WorkerHandle | None = None) -> None:
        """Start replacements until ``max_workers`` workers take jobs (if any are needed).

        A successor of a retiring ``predecessor`` starts now but gets no job until the
        predecessor has exited: never more than ``max_workers`` jobs run at once.
        """
        while self._needed():
            taking = sum(1 for w in self.workers.values() if w.stop_reason != "retire")
            if taking >= self._max_workers:
                return
            # Twice the workers' slots: a retiring worker keeps its slot until it exits.
            free = set(range(2 * self._max_workers)) - self.workers.keys()
            if not free:  # all slots held by retiring workers: the next exit calls us again
                return
            index = min(free)
            if not self.start(index, replacement=True):
                return  # retried after a backoff
            self.workers[index].predecessor = predecessor
            log.info("worker %d started as a replacement (pid %d)", index, self.workers[index].pid)

    def started_well(self) -> None:
        """A worker became ready (its initializer ran)."""
        self._init_failures = 0

    def failed_to_start(self, worker: WorkerHandle, text: str) -> None:
        """A worker exited before it became ready: restart it with backoff; give up after
        ``MAX_INIT_FAILURES`` in a row (a broken initializer would fail every worker)."""
        self._init_failures += 1
        log.error("worker %d failed to start (%d in a row): %s",
                  worker.pid, self._init_failures, text)  # fmt: skip
        if self._init_failures >= MAX_INIT_FAILURES:
            self._give_up(PoolBroken(
                f"workers failed to start {self._init_failures} times in a row; the pool "
                f"cannot run jobs. Last failure: {text}"
            ))  # fmt: skip
            return
        delay = INIT_BACKOFF * 2 ** (self._init_failures - 1)
        self._at(time.monotonic() + delay, self.replenish)

    def retire(self, worker: WorkerHandle) -> None:
        """The worker was sent its last job (max_tasks_per_child): start its successor now,
        so the successor's start-up overlaps that job instead of following it."""
        worker.stop_reason = "retire"
        self.replenish(predecessor=worker)

    def stop(self, worker: WorkerHandle, reason: str, job: WorkItem | None) -> None:
        """SIGTERM now, SIGKILL after a grace period; its exit comes through ``on_exit``."""
        if worker.stop_reason in STOPPED:
            return
        worker.stop_reason, worker.stop_job = reason, job
        worker.terminate()
        self._at(time.monotonic() + KILL_GRACE, self._force_kill, worker)

    def _force_kill(self, worker: WorkerHandle) -> None:
        if self.workers.get(worker.index) is worker:
            worker.signal(signal.SIGKILL)

    def remove(self, worker: WorkerHandle) -> None:
        """A worker exited (its last replies were read): release everything it had."""
        for fd in (worker.results_fd, worker.calls_fd, worker.process.sentinel):
            self.unregister(fd)
        worker.write_watched = False
        worker.close()
        del self.workers[worker.index]
        self._ledger.worker_exited()
        for other in self.workers.values():
            if other.predecessor is worker:
                other.predecessor = None  # its turn: it may take jobs now

    def unregister(self, fd: int) -> None:
        if fd in self._selector.get_map():
            self._selector.unregister(fd)

    def close(self) -> None:
        """The pool is finished: kill whatever is left and release the launcher."""
        for worker in list(self.workers.values()):
            worker.signal(signal.SIGKILL)
            worker.close()
        self.workers.clear()
        if self._launcher is not None:
            self._launcher.close()
            # It holds the initializer and its arguments: let them go with the pool.
            self._launcher = None

    def kill_all(self) -> None:
        """Last resort at interpreter exit: SIGKILL and reap every worker still alive."""
        for worker in list(self.workers.values()):
            if worker.process.is_alive():
                worker.signal(signal.SIGKILL)
                worker.process.join(timeout=1)
