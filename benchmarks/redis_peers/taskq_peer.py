"""taskq: a client ``Pool(0, broker=...)`` here, ``taskq worker URL --workers 2`` as the
serving subprocess; urgent jobs at priority -1 behind a backlog at priority 0."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import taskq
from benchmarks.redis_peers import QUEUE, Peer, python_command, url
from benchmarks.redis_peers.jobs import first_run_sleeps, noop, probe


def wait_all(futures: Sequence[Any], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    return [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]


class TaskqPeer(Peer):
    key = "taskq"
    label = "taskq"
    workers_note = "`taskq worker URL --workers 2` (one serving process, 2 worker processes)"
    urgent_note = "priority -1 behind a backlog at priority 0 (exact priorities)"
    lease = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.pool: Any = None

    def worker_command(self) -> list[str]:
        return python_command(
            "-m", "taskq", "worker", url(), "--workers", "2", "--queue", QUEUE,
            "--lease", repr(self.lease), "--grace", "2",
        )

    def open(self) -> None:
        self.pool = taskq.Pool(0, broker=url(), queue=QUEUE)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def submit_many(self, args: Sequence[int]) -> list[Any]:
        submit = self.pool.submit
        return [submit(noop, x) for x in args]

    def results(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        return wait_all(handles, timeout)

    def submit_probe(self, tag: int, urgent: bool) -> Any:
        return self.pool.schedule(probe, (tag,), priority=-1 if urgent else 0)

    def submit_recovery_job(self, tag: str, seconds: float, marker_dir: str) -> Any:
        return self.pool.submit(first_run_sleeps, tag, seconds, marker_dir)

    def queued(self) -> int | None:
        return int(self.pool._broker.queued_count())


class TaskqInProcess(TaskqPeer):
    """The lead's smoke set-up: ``Pool(2, broker=...)`` serving in the benchmark process."""

    key = "taskq-inproc"
    label = "taskq (in-process Pool(2))"
    workers_note = "`Pool(2, broker=URL)` in the benchmark process (no subprocess)"
    processes = 0

    def open(self) -> None:
        self.pool = taskq.Pool(2, broker=url(), queue=QUEUE)


ADAPTER = TaskqPeer
