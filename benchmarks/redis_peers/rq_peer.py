"""RQ: ``rq worker-pool -n 2`` (2 worker processes, each forking a work horse per job,
RQ's default worker class); results read with ``Job.latest_result(timeout=...)``
(a blocking ``XREAD`` on the job's result stream). No priorities: the urgent probe
goes to a second queue that the workers list first (RQ's documented way)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis import Redis
from rq import Queue
from rq.results import Result

from benchmarks.redis_peers import QUEUE, Peer, python_command, url
from benchmarks.redis_peers.jobs import first_run_sleeps, noop, probe

HIGH = QUEUE + "-high"


class RqPeer(Peer):
    key = "rq"
    label = "RQ"
    workers_note = "`rq worker-pool -n 2` (default Worker: a forked work horse per job)"
    urgent_note = "no priorities: a second queue listed first by the workers"
    startup_grace = 3.0

    def worker_command(self) -> list[str]:
        rq = python_command("-m", "rq.cli")
        return [*rq, "worker-pool", "-n", "2", "-u", url(), "--quiet", HIGH, QUEUE]

    def open(self) -> None:
        self.redis = Redis.from_url(url())
        self.q = Queue(QUEUE, connection=self.redis)
        self.high = Queue(HIGH, connection=self.redis)

    def close(self) -> None:
        self.redis.close()

    def submit_many(self, args: Sequence[int]) -> list[Any]:
        enqueue = self.q.enqueue
        return [enqueue(noop, x) for x in args]

    def results(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        out = []
        for job in handles:
            left = deadline - time.monotonic()
            result = job.latest_result(timeout=max(1, int(left))) if left > 0 else None
            if result is None:
                raise TimeoutError(f"RQ job {job.id}: no result within {timeout:.0f} s")
            if result.type != Result.Type.SUCCESSFUL:
                raise RuntimeError(f"RQ job {job.id} failed: {result.exc_string}")
            out.append(result.return_value)
        return out

    def submit_probe(self, tag: int, urgent: bool) -> Any:
        return (self.high if urgent else self.q).enqueue(probe, tag)

    def submit_recovery_job(self, tag: str, seconds: float, marker_dir: str) -> Any:
        return self.q.enqueue(first_run_sleeps, tag, seconds, marker_dir, job_timeout=600)

    def queued(self) -> int | None:
        return int(self.q.count)


ADAPTER = RqPeer
