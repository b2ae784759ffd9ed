"""SAQ: ``saq ...settings --workers 2`` (2 processes, its default concurrency 10
coroutines each). Results: ``Job.refresh(until_complete=...)`` (SAQ listens for the
job's update over pub/sub; it reads the job before it subscribes, so an update in
between is missed and it waits for the timeout: seen here once, hence a re-check
every 0.5 s). No priorities: the urgent probe is enqueued like the
backlog (one FIFO queue per worker)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from saq import Queue

from benchmarks.redis_peers import QUEUE, Peer, python_command, url
from benchmarks.redis_peers import jobs as plain
from benchmarks.redis_peers._aio import Loop


async def noop(ctx: Any, *, x: int) -> int:
    return plain.noop(x)


async def probe(ctx: Any, *, tag: int) -> tuple[int, float]:
    return plain.probe(tag)


async def first_run_sleeps(ctx: Any, *, tag: str, seconds: float, marker_dir: str) -> Any:
    return plain.first_run_sleeps(tag, seconds, marker_dir)


RECHECK = 0.5

settings = {
    "queue": Queue.from_url(url(), name=QUEUE),
    "functions": [noop, probe, first_run_sleeps],
    "concurrency": 10,
}


class SaqPeer(Peer):
    key = "saq"
    label = "SAQ"
    workers_note = "`saq ...settings --workers 2` (concurrency 10 each, its default)"
    urgent_note = "no priorities, one queue per worker: enqueued like the backlog (FIFO)"
    startup_grace = 2.0

    def worker_command(self) -> list[str]:
        return python_command(
            "-m", "saq", "benchmarks.redis_peers.saq_peer.settings", "--workers", "2", "--quiet"
        )

    def open(self) -> None:
        self.aio = Loop()
        self.queue = Queue.from_url(url(), name=QUEUE)
        self.aio.run(self.queue.connect())

    def close(self) -> None:
        self.aio.run(self.queue.disconnect())
        self.aio.close()

    def submit_many(self, args: Sequence[int]) -> list[Any]:
        async def go() -> list[Any]:
            return [await self.queue.enqueue("noop", x=x) for x in args]

        return list(self.aio.run(go()))

    def results(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout

        async def go() -> list[Any]:
            out = []
            for job in handles:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"SAQ: no result within {timeout:.0f} s")
                try:  # SAQ reads the job, then subscribes: an update in between is
                    # missed and refresh() waits for its timeout; so look again each 0.5 s
                    await job.refresh(until_complete=min(left, RECHECK))
                except TimeoutError:
                    continue_waiting = True
                else:
                    continue_waiting = False
                while continue_waiting or job.status in ("new", "queued", "active"):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"SAQ: no result within {timeout:.0f} s")
                    try:
                        await job.refresh(until_complete=RECHECK)
                        continue_waiting = False
                    except TimeoutError:
                        continue_waiting = True
                if job.status != "complete":
                    raise RuntimeError(f"SAQ job {job.key}: {job.status} {job.error or ''}")
                out.append(job.result)
            return out

        return list(self.aio.run(go()))

    def submit_probe(self, tag: int, urgent: bool) -> Any:
        return self.aio.run(self.queue.enqueue("probe", tag=tag))

    def submit_recovery_job(self, tag: str, seconds: float, marker_dir: str) -> Any:
        return self.aio.run(self.queue.enqueue(
            "first_run_sleeps", tag=tag, seconds=seconds, marker_dir=marker_dir, retries=2
        ))

    def queued(self) -> int | None:
        return int(self.aio.run(self.queue.count("queued")))


ADAPTER = SaqPeer
