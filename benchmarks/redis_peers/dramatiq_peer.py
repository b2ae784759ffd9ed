"""Dramatiq with its Redis broker and the Redis results backend:
``dramatiq ... --processes 2`` (its default 8 threads each). Results: ``Message.
get_result(block=True)`` (a blocking pop on the result key). No priorities in the
broker: the urgent probe goes to a second queue, consumed by the same workers, with
the actor priority 0 against 10 for the backlog (Dramatiq orders the messages a worker
has already fetched by actor priority)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from benchmarks.redis_peers import QUEUE, Peer, python_command, url
from benchmarks.redis_peers import jobs as plain

HIGH = QUEUE + "-high"
backend = RedisBackend(url=url())
broker = RedisBroker(url=url())
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


def _actor(fn: Any, name: str, queue: str = QUEUE, priority: int = 10) -> Any:
    return dramatiq.actor(
        fn, actor_name=name, queue_name=queue, priority=priority, store_results=True,
        max_retries=0,
    )


noop = _actor(plain.noop, "noop")
probe = _actor(plain.probe, "probe")
probe_urgent = _actor(plain.probe, "probe_urgent", HIGH, priority=0)
first_run_sleeps = _actor(plain.first_run_sleeps, "first_run_sleeps")


class DramatiqPeer(Peer):
    key = "dramatiq"
    label = "Dramatiq"
    workers_note = "`dramatiq --processes 2` (default 8 threads per process)"
    urgent_note = ("no broker priorities: a second queue consumed by the same workers, "
                   "actor priority 0 vs 10")
    startup_grace = 3.0

    def worker_command(self) -> list[str]:
        return python_command(
            "-m", "dramatiq", "benchmarks.redis_peers.dramatiq_peer", "--processes", "2",
        )

    def submit_many(self, args: Sequence[int]) -> list[Any]:
        send = noop.send
        return [send(x) for x in args]

    def results(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        out = []
        for message in handles:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise TimeoutError(f"Dramatiq: no result within {timeout:.0f} s")
            try:
                out.append(message.get_result(backend=backend, block=True, timeout=left_ms))
            except dramatiq.results.ResultTimeout as exc:
                raise TimeoutError(f"Dramatiq: no result within {timeout:.0f} s") from exc
        return out

    def submit_probe(self, tag: int, urgent: bool) -> Any:
        return (probe_urgent if urgent else probe).send(tag)

    def submit_recovery_job(self, tag: str, seconds: float, marker_dir: str) -> Any:
        return first_run_sleeps.send_with_options(
            args=(tag, seconds, marker_dir), time_limit=3_600_000
        )

    def queued(self) -> int | None:
        return int(broker.client.llen(f"dramatiq:{QUEUE}"))


ADAPTER = DramatiqPeer
