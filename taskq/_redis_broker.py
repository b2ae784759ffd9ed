"""``RedisBroker``: the broker contract (``_broker.py``) on Redis, for many machines.

Every step that moves a job is one Lua script (``_redis_scripts.py``), so a
client or server dying between two commands loses nothing; ties in priority are
broken by a sequence the server assigns (``INCR``), leases and heartbeats use the
server's clock. A waiting client blocks on a list of its own (``BLPOP``) to which
whoever ends one of its jobs pushes the id: it is woken when an outcome is stored,
and the ids wait in Redis while its connection is down, so nothing is missed.

Needs Redis 6.2 or newer (``LPOP key count`` and ``ZRANGE ... BYSCORE``: 6.2; ``HSET``
with several fields: 4.0; ``TIME`` inside scripts, whose effects Redis 5+ replicates).
A single Redis (or a primary with replicas), not Redis Cluster. What survives a Redis
restart is what its persistence kept: with ``appendonly yes`` every acknowledged write
(``appendfsync everysec``: all but the last second after a power loss); with no
persistence, nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Any

from taskq import _redis_scripts as lua
from taskq._broker import (
    ClaimedJob,
    JobState,
    JobStatus,
    NewJob,
    Outcome,
    StoreStatus,
    lost_lease_outcome,
)
from taskq._errors import Full, StoreError
from taskq._redis_link import RedisLink
from taskq._redis_outcomes import OutcomeReader
from taskq._redis_puts import PutPipe
from taskq._redis_status import read_status
from taskq._redis_url import safe_url, warn_if_unsigned
from taskq._signing import Signer

log = logging.getLogger("taskq")

_FINAL_STATE = {"ok": "succeeded", "error": "failed", "cancelled": "cancelled"}


class RedisBroker:
    """One queue in a Redis database."""

    can_block = True

    def __init__(self, url: str, queue: str, *, result_ttl: float, secret: str | None = None):
        self.url, self.queue = url, queue
        self.result_ttl = result_ttl
        self.result_ttl_ms = int(result_ttl * 1000)
        self.signer = Signer(secret)
        self._link = link = RedisLink(url)
        self._r = link.r
        warn_if_unsigned(url, self.signer.enabled)
        p = f"taskq:{queue}:"
        self.key = {
            name: p + name
            for name in (
                "queued",
                "seq",
                "leases",
                "stats",
                "heartbeats",
                "servers",
                "counters",
                "deadletter",
                "watch",
            )
        }
        self.job_prefix, self.kills_prefix = p + "job:", p + "kills:"
        # Ids of this client's jobs that ended are pushed to its own list (by whoever ended
        # them, unless that is this client): a blocking pop wakes it, and a list, unlike a
        # pub/sub message, waits in Redis while the connection is down.
        self.client_id = uuid.uuid4().hex[:16]
        self.notify_prefix = p + "notify:"
        self._inbox = self.notify_prefix + self.client_id
        # Called when a put woke this client's server (the queue was empty when it looked).
        self.on_new_jobs: Callable[[], None] = lambda: None
        acks = p + "acks:" + self.client_id
        self._puts = PutPipe(self._r, lua.PUT, acks, link.unreachable, link.errors)
        self._refusing = False  # a put was refused (out of memory): submits wait, and raise
        self._outcomes = OutcomeReader(link, self.signer, self.job_prefix, self._inbox)
        self._link.call(self._r.ping)

    # -- submitting -------------------------------------------------------------

    def put(self, job: NewJob, *, maxsize: int = 0) -> None:
        """Store ``job`` now (one round trip); ``Full`` if ``maxsize`` jobs are queued."""
        self._puts.sync()  # puts already sent come first
        if not self._link.run("PUT", *self._put_call(job, maxsize)):
            raise Full(
                f"the queue {self.queue!r} at {safe_url(self.url)} already holds "
                f"maxsize={maxsize} jobs"
            )

    def send(self, job: NewJob, done: Callable[[BaseException | None], None]) -> None:
        """Store ``job`` without waiting for the reply (``_redis_puts.py``); ``done`` gets
        it later: ``None`` once stored, or the error that refused it."""

        if self._refusing:  # the store refused a put: wait for its reply until it takes one
            self.put(job)
            self._refusing = False
            done(None)
            return

        def acknowledged(error: BaseException | None) -> None:
            if error is not None:
                error = self._link.refused(error)
                self._refusing = True
            done(error)

        keys, args = self._put_call(job, 0)
        self._puts.send(keys, args, job.job_id, acknowledged)

    def sync(self) -> None:
        self._puts.sync()

    def _put_call(self, job: NewJob, maxsize: int) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        sig = self.signer.sign(job.job_id, job.call, job.options)
        keys = (
            self.key["queued"],
            self.key["seq"],
            self.job_prefix,
            self.key["watch"],
            self.notify_prefix,
        )
        args = (
            job.job_id,
            repr(float(job.rank)),
            repr(float(job.priority)),
            job.name,
            job.call,
            job.options,
            sig,
            maxsize,
            repr(float(job.aging or 0)),
            self.client_id,
            self.result_ttl_ms,
        )
        return keys, args

    def queued_count(self) -> int:
        self._puts.sync()  # reads see this process's own puts (they went another way)
        return int(self._link.call(self._r.zcard, self.key["queued"]))

    def queued_by_priority(self) -> dict[float, int]:
        """Counted from the jobs' priorities (the queue's scores are ranks: 0 under fifo,
        moved by aging): a read of the whole queue, for statistics and metrics only."""
        self._puts.sync()
        flat = self._link.run("QUEUED_BY_PRIORITY", (self.key["queued"], self.job_prefix), ())
        counts: dict[float, int] = {}
        for priority, n in zip(flat[::2], flat[1::2], strict=True):
            counts[float(priority)] = counts.get(float(priority), 0) + int(n)
        return dict(sorted(counts.items()))

    def cancel(self, job_id: str) -> bool:
        return self._kill(job_id, kill_running=False) == "queued"

    def request_kill(self, job_id: str) -> JobState | None:
        state = self._kill(job_id, kill_running=True)
        return None if state is None else JobState(state)

    def _kill(self, job_id: str, kill_running: bool) -> str | None:
        self._puts.sync()  # the job may still be on its way (sent on another connection)
        outcome = Outcome.cancelled("cancelled while queued").dump()
        keys = (
            self.key["queued"],
            self.job_prefix,
            self.notify_prefix,
            self.key["stats"],
            self.kills_prefix,
        )
        args = (
            job_id,
            outcome,
            self.signer.sign(job_id, outcome),
            self.result_ttl_ms,
            "1" if kill_running else "0",
            self.client_id,
        )
        state = self._link.run("KILL", keys, args)
        return None if state is None else state.decode()

    # -- serving ----------------------------------------------------------------------

    def claim(
        self, owner: str, limit: int, lease: float, before: float | None = None
    ) -> list[ClaimedJob]:
        return self.step(owner, (), limit, lease, before)[1] if limit > 0 else []

    def finish(self, owner: str, outcomes: Sequence[tuple[str, Outcome]]) -> list[str]:
        return self.step(owner, outcomes, 0, 0)[0] if outcomes else []

    def step(
        self,
        owner: str,
        outcomes: Sequence[tuple[str, Outcome]],
        limit: int,
        lease: float,
        before: float | None = None,
        watch: bool = False,
    ) -> tuple[list[str], list[ClaimedJob]]:
        """``finish`` then ``claim`` in one script: one round trip per server step.
        ``watch``: this server holds jobs ahead; a put ranked before them wakes it."""
        args: list[Any] = [
            owner,
            self.result_ttl_ms,
            self.client_id,
            int(lease * 1000),
            max(limit, 0),
            "" if before is None else repr(float(before)),
            "1" if watch else "0",
        ]
        for job_id, outcome in outcomes:
            data = outcome.dump()
            args += [job_id, _FINAL_STATE[outcome.kind.value], data, self.signer.sign(job_id, data)]
        keys = (
            self.key["leases"],
            self.job_prefix,
            self.notify_prefix,
            self.key["stats"],
            self.kills_prefix + owner,
            self.key["queued"],
            self.key["watch"],
        )
        stored, rows = self._link.run("STEP", keys, args)
        claimed = []
        for raw_id, name, priority, call, options, attempts, sig, rank in rows:
            job_id = raw_id.decode()
            refused = self.signer.check(job_id, (sig or b"").decode(), call or b"", options or b"")
            if refused is not None:
                self._refuse(job_id, owner, int(attempts), refused)
                continue
            claimed.append(
                ClaimedJob(
                    job_id,
                    name.decode(),
                    float(priority),
                    call,
                    options,
                    int(attempts),
                    float(rank),
                )
            )
        return [raw.decode() for raw in stored], claimed

    def _refuse(self, job_id: str, owner: str, attempts: int, reason: str) -> None:
        """A job whose payload failed verification: never unpickled, dead-lettered."""
        log.error("job %s refused: %s", job_id, reason)
        self._link.call(self._r.hset, self.key["deadletter"], job_id, reason)
        error = StoreError(f"job {job_id} was refused by the worker and never run: {reason}")
        outcome = Outcome.of_error(error, attempts).dump()
        keys = (self.key["leases"], self.job_prefix, self.notify_prefix, self.key["stats"])
        args = (
            job_id,
            owner,
            outcome,
            self.signer.sign(job_id, outcome),
            self.result_ttl_ms,
            "refused",
            self.client_id,
        )
        self._link.run("GIVE_UP", keys, args)

    def renew(self, owner: str, job_ids: Sequence[str], lease: float) -> set[str]:
        keys = (self.key["leases"], self.job_prefix, self.key["heartbeats"])
        held = self._link.run("RENEW", keys, (owner, int(lease * 1000), *job_ids))
        return {raw.decode() for raw in held}

    def release(self, owner: str, job_ids: Sequence[str], *, started: Collection[str] = ()) -> None:
        if job_ids:
            keys = (
                self.key["queued"],
                self.key["leases"],
                self.job_prefix,
                self.kills_prefix + owner,
            )
            ran = [job_id for job_id in job_ids if job_id in started]
            unstarted = [job_id for job_id in job_ids if job_id not in started]
            self._link.run("RELEASE", keys, (owner, len(ran), *ran, *unstarted))

    def kill_requests(self, owner: str) -> list[str]:
        return [
            raw.decode() for raw in self._link.call(self._r.smembers, self.kills_prefix + owner)
        ]

    def reclaim_expired(self, max_lost: int) -> int:
        keys = (self.key["leases"], self.key["queued"], self.job_prefix)
        back, doomed = self._link.run("RECLAIM", keys, (max_lost,))
        for raw_id, owner, lost, attempts in doomed:
            job_id = raw_id.decode()
            owner_text = None if owner is None else owner.decode()
            outcome = lost_lease_outcome(
                job_id, int(lost), int(attempts), owner_text, safe_url(self.url)
            ).dump()
            keys2 = (self.key["leases"], self.job_prefix, self.notify_prefix, self.key["stats"])
            self._link.run(
                "GIVE_UP",
                keys2,
                (
                    job_id,
                    owner or b"",
                    outcome,
                    self.signer.sign(job_id, outcome),
                    self.result_ttl_ms,
                    "dead",
                    self.client_id,
                ),
            )
        return int(back)

    # -- waiting for outcomes (_redis_outcomes.py) ----------------------------------------

    def current_cursor(self) -> str:
        return ""  # each client has a list of its own ended jobs: nothing to skip

    def finished_since(
        self, cursor: str, block: float = 0
    ) -> tuple[str, list[tuple[str, Outcome | None]]]:
        return cursor, self._outcomes.ended(block, self.on_new_jobs)

    def job_status(self, job_id: str) -> JobStatus:
        found = self.outcomes([job_id])
        if job_id not in found:
            raise KeyError(
                f"no job {job_id!r} in queue {self.queue!r} at {safe_url(self.url)} "
                "(unknown, or its outcome expired after result_ttl)"
            )
        return found[job_id]

    def outcomes(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        self._puts.sync()
        return self._outcomes.read(job_ids)

    # -- counters, servers, housekeeping ------------------------------------------------------

    def counter_add(self, name: str, amount: int) -> int:
        return int(self._link.call(self._r.hincrby, self.key["counters"], name, amount))

    def counter_values(self, names: Sequence[str]) -> dict[str, int]:
        values = self._link.call(self._r.hmget, self.key["counters"], list(names)) if names else []
        return {name: int(v or 0) for name, v in zip(names, values, strict=True)}

    def register_server(self, owner: str, processes: int) -> None:
        import json
        import os
        import socket

        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "processes": processes,
            "started_at": time.time(),
        }
        self._link.call(self._r.hset, self.key["servers"], owner, json.dumps(info))
        self.heartbeat(owner)

    def heartbeat(self, owner: str) -> None:
        self._link.run("HEARTBEAT", (self.key["heartbeats"],), (owner,))

    def unregister_server(self, owner: str) -> None:
        """This process's server stops (no more wake-ups for it either)."""
        self._forget_server(owner)
        self._link.call(self._r.zrem, self.key["watch"], self.client_id)

    def _forget_server(self, owner: str) -> None:
        self._link.call(self._r.hdel, self.key["servers"], owner)
        self._link.call(self._r.hdel, self.key["heartbeats"], owner)

    def purge_expired(self, stale_server_after: float = 3600.0) -> int:
        """Outcomes expire by themselves (``PEXPIRE``); forget servers silent for an hour."""
        now_ms = int(self._link.run("HEARTBEAT", (self.key["heartbeats"],), ("",)))
        beats = self._link.call(self._r.hgetall, self.key["heartbeats"])
        stale = [o for o, t in beats.items() if now_ms - int(t) > stale_server_after * 1000]
        for owner in stale:
            self._forget_server(owner.decode())
        return 0

    def status(self) -> StoreStatus:
        self._puts.sync()
        return read_status(self)

    def close(self) -> None:
        """Close this broker's connections (a later call reconnects: closing is for
        shutdown, not a state); sockets left to the garbage collector would warn."""
        self._puts.close()
        self._link.close()
