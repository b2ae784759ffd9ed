"""Huey with its priority Redis storage (``PriorityRedisHuey``, a sorted set):
``huey_consumer ... -k process -w 2``. Results are read by polling ``Result.get()``
every 0.5 ms (Huey has no blocking read of one result; its own ``get(blocking=True)``
starts at 0.1 s between polls). Urgent probe: ``priority=100`` (higher runs first)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from huey import PriorityRedisHuey

from benchmarks.redis_peers import QUEUE, Peer, python_command, url
from benchmarks.redis_peers import jobs as plain

huey = PriorityRedisHuey(QUEUE, url=url(), blocking=True)
noop = huey.task()(plain.noop)
probe = huey.task()(plain.probe)
first_run_sleeps = huey.task()(plain.first_run_sleeps)
EMPTY = object()


class HueyPeer(Peer):
    key = "huey"
    label = "Huey (PriorityRedisHuey)"
    workers_note = "`huey_consumer -k process -w 2` (2 worker processes)"
    urgent_note = "priority=100 vs 0 (Huey's priority storage: a sorted set)"
    startup_grace = 2.0

    def worker_command(self) -> list[str]:
        return python_command(
            "-m", "huey.bin.huey_consumer", "benchmarks.redis_peers.huey_peer.huey",
            "-k", "process", "-w", "2", "-q",
        )

    def submit_many(self, args: Sequence[int]) -> list[Any]:
        return [noop(x) for x in args]

    def results(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        out = []
        for r in handles:
            while True:
                value = r.get(preserve=False)
                if value is not None:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Huey task {r.id}: no result within {timeout:.0f} s")
                time.sleep(0.0005)
            out.append(value)
        return out

    def submit_probe(self, tag: int, urgent: bool) -> Any:
        return huey.enqueue(probe.s(tag, priority=100 if urgent else 0))

    def submit_recovery_job(self, tag: str, seconds: float, marker_dir: str) -> Any:
        return first_run_sleeps(tag, seconds, marker_dir)

    def queued(self) -> int | None:
        return int(huey.pending_count())


ADAPTER = HueyPeer
