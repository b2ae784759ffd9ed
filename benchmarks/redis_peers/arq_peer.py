"""arq: two ``arq WorkerSettings`` processes (arq has no process option; its default
``max_jobs=10`` coroutines each; the sync job functions run in the event loop).
Results: ``Job.result(poll_delay=0.001)`` (arq polls; its default is 0.5 s). No
priorities: the urgent probe is enqueued like the backlog (one FIFO queue: an arq
worker serves a single queue)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

from benchmarks.redis_peers import QUEUE, Peer, python_command, url
from benchmarks.redis_peers import jobs as plain
from benchmarks.redis_peers._aio import Loop


async def noop(ctx: Any, x: int) -> int:
    return plain.noop(x)


async def probe(ctx: Any, tag: int) -> tuple[int, float]:
    return plain.probe(tag)


async def first_run_sleeps(ctx: Any, tag: str, seconds: float, marker_dir: str) -> Any:
    return plain.first_run_sleeps(tag, seconds, marker_dir)


class WorkerSettings:
    functions = [noop, probe, first_run_sleeps]
    redis_settings = RedisSettings.from_dsn(url())
    queue_name = QUEUE
    job_timeout = 3600


class ArqPeer(Peer):
    key = "arq"
    label = "arq"
    workers_note = "2 x `arq WorkerSettings` (no process option; max_jobs=10 each)"
    urgent_note = "no priorities, one queue per worker: enqueued like the backlog (FIFO)"
    processes = 2
    startup_grace = 2.0

    def worker_command(self) -> list[str]:
        return python_command("-m", "arq", "benchmarks.redis_peers.arq_peer.WorkerSettings")

    def open(self) -> None:
        self.aio = Loop()
        self.redis = self.aio.run(
            create_pool(WorkerSettings.redis_settings, default_queue_name=QUEUE)
        )

    def close(self) -> None:
        self.aio.run(self.redis.aclose())
        self.aio.close()

    def submit_many(self, args: Sequence[int]) -> list[Any]:
        async def go() -> list[Any]:
            return [await self.redis.enqueue_job("noop", x) for x in args]

        return list(self.aio.run(go()))

    def results(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout

        async def go() -> list[Any]:
            out = []
            for job in handles:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"arq: no result within {timeout:.0f} s")
                try:
                    out.append(await job.result(timeout=left, poll_delay=0.001))
                except asyncio.TimeoutError as exc:
                    raise TimeoutError(f"arq: no result within {timeout:.0f} s") from exc
            return out

        return list(self.aio.run(go()))

    def submit_probe(self, tag: int, urgent: bool) -> Any:
        return self.aio.run(self.redis.enqueue_job("probe", tag))

    def submit_recovery_job(self, tag: str, seconds: float, marker_dir: str) -> Any:
        return self.aio.run(self.redis.enqueue_job("first_run_sleeps", tag, seconds, marker_dir))

    def queued(self) -> int | None:
        return int(self.aio.run(self.redis.zcard(QUEUE)))


ADAPTER = ArqPeer
