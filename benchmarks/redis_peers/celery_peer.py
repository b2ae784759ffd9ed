"""Celery with Redis as broker and result backend: ``celery worker -P prefork -c 2``.
Results: ``ResultSet.join`` (the Redis backend's native join) / ``AsyncResult.get``.
Urgent probe: ``priority=0`` against the default 5 for the backlog, with the Redis
transport's priority lists (``queue_order_strategy='priority'``: 0 is served first)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import ResultSet

from benchmarks.redis_peers import QUEUE, Peer, python_command, url
from benchmarks.redis_peers import jobs as plain

app = Celery("taskq_bench", broker=url(), backend=url())
app.conf.update(
    task_default_queue=QUEUE,
    task_default_priority=5,
    broker_transport_options={"queue_order_strategy": "priority"},
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
noop = app.task(name="noop")(plain.noop)
probe = app.task(name="probe")(plain.probe)
first_run_sleeps = app.task(name="first_run_sleeps")(plain.first_run_sleeps)


class CeleryPeer(Peer):
    key = "celery"
    label = "Celery"
    workers_note = "`celery worker -P prefork -c 2` (default prefetch multiplier 4)"
    urgent_note = "priority=0 vs the backlog's 5 (Redis transport priority lists)"
    startup_grace = 5.0

    def worker_command(self) -> list[str]:
        return python_command(
            "-m", "celery", "-A", "benchmarks.redis_peers.celery_peer", "worker",
            "-P", "prefork", "-c", "2", "-Q", QUEUE, "-l", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        )

    def submit_many(self, args: Sequence[int]) -> list[Any]:
        delay = noop.delay
        return [delay(x) for x in args]

    def results(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        try:
            if len(handles) == 1:
                return [handles[0].get(timeout=timeout)]
            return list(ResultSet(list(handles)).join(timeout=timeout))
        except CeleryTimeout as exc:
            raise TimeoutError(f"Celery: no result within {timeout:.0f} s") from exc

    def submit_probe(self, tag: int, urgent: bool) -> Any:
        return probe.apply_async((tag,), priority=0 if urgent else 5)

    def submit_recovery_job(self, tag: str, seconds: float, marker_dir: str) -> Any:
        return first_run_sleeps.delay(tag, seconds, marker_dir)

    def queued(self) -> int | None:
        with app.connection_for_write() as conn:
            client = conn.default_channel.client
            keys = [QUEUE] + [f"{QUEUE}\x06\x16{p}" for p in range(1, 10)]
            return int(sum(client.llen(k) for k in keys))


ADAPTER = CeleryPeer
