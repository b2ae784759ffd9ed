"""``SqliteBroker``: the broker contract (``_broker.py``) on one SQLite file.

Each step that changes a job is one short ``BEGIN IMMEDIATE`` transaction, so
a process dying between two steps leaves every job in exactly one state: a
claim moves jobs from queued to running under a lease in one transaction; an
outcome is stored only while the job is still running (the first wins).
Times are the machine's wall clock (``time.time()``): every process using the
file runs on this machine (SQLite must not be shared over a network file system).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence

from taskq._broker import (
    ClaimedJob,
    JobState,
    JobStatus,
    NewJob,
    Outcome,
    OutcomeKind,
    StoreStatus,
    lost_lease_outcome,
)
from taskq._errors import Full
from taskq._sqlite_file import StoreFile
from taskq._sqlite_status import read_status

_FINAL_STATE = {
    OutcomeKind.OK: JobState.SUCCEEDED,
    OutcomeKind.ERROR: JobState.FAILED,
    OutcomeKind.CANCELLED: JobState.CANCELLED,
}
_CHUNK = 500  # ids per "IN (...)" query (SQLite allows 32766 variables; keep statements small)


class SqliteBroker:
    """One queue of a taskq store file."""

    def __init__(self, url: str, queue: str, *, result_ttl: float):
        self.url = url
        self.queue = queue
        self.result_ttl = result_ttl
        self.file = StoreFile(url)
        self.path = self.file.path
        self.on_new_jobs: Callable[[], None] = _nothing  # never called: servers poll SQLite

    # -- submitting ---------------------------------------------------------

    _INSERT = (
        "INSERT INTO jobs (id, queue, state, rank, priority, name, call, options, "
        "submitted_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)"
    )

    def put(self, job: NewJob, *, maxsize: int = 0) -> None:
        """Commit a new job; raise ``Full`` if ``maxsize`` jobs of this queue are waiting."""
        now = time.time()
        rank = job.rank if job.aging is None else job.rank + now / job.aging
        row = (job.job_id, self.queue, rank, job.priority, job.name, job.call, job.options, now)
        if maxsize <= 0:  # one statement is its own transaction: no BEGIN/COMMIT round
            self.file.write_one(self._INSERT, row)
            return
        with self.file.write() as tx:
            if self._queued(tx) >= maxsize:
                raise Full(
                    f"the queue {self.queue!r} of {self.path} already holds maxsize={maxsize} jobs"
                )
            tx.execute(self._INSERT, row)

    def send(self, job: NewJob, done: Callable[[BaseException | None], None]) -> None:
        self.put(job)  # a local commit: nothing to gain by not waiting for it
        done(None)

    def sync(self) -> None:
        pass

    def queued_count(self) -> int:
        return self._queued(self.file.connection())

    def queued_by_priority(self) -> dict[float, int]:
        rows = self.file.connection().execute(
            "SELECT priority, count(*) FROM jobs WHERE queue = ? AND state = 'queued' "
            "GROUP BY priority ORDER BY priority",
            (self.queue,),
        )
        return {float(priority): int(count) for priority, count in rows}

    def _queued(self, conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE queue = ? AND state = 'queued'", (self.queue,)
        ).fetchone()
        return int(row[0])

    def cancel(self, job_id: str) -> bool:
        """Withdraw a queued job; True if it was still queued (claim and cancel: one wins)."""
        outcome = Outcome.cancelled("cancelled while queued").dump()
        with self.file.write() as tx:
            [done_seq] = self._done_seqs(tx, 1)
            cursor = tx.execute(
                "UPDATE jobs SET state = 'cancelled', call = NULL, outcome = ?, done_seq = ?, "
                "finished_at = ?, expires_at = ? WHERE id = ? AND state = 'queued'",
                (outcome, done_seq, time.time(), time.time() + self.result_ttl, job_id),
            )
        return cursor.rowcount > 0  # (a done_seq number unused: gaps are harmless)

    def request_kill(self, job_id: str) -> JobState | None:
        """Stop a job wherever it is: a queued one is cancelled now, a running one is
        flagged for its holder. Returns the state it was in (None: unknown id)."""
        if self.cancel(job_id):
            return JobState.QUEUED
        with self.file.write() as tx:
            row = tx.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row[0] == JobState.RUNNING.value:
                tx.execute("UPDATE jobs SET kill = 1 WHERE id = ?", (job_id,))
            return JobState(row[0])

    # -- serving --------------------------------------------------------------

    def claim(
        self, owner: str, limit: int, lease: float, before: float | None = None
    ) -> list[ClaimedJob]:
        """Take up to ``limit`` of the most urgent queued jobs under ``owner``'s lease
        (``before``: only jobs ranked before it)."""
        if limit <= 0:
            return []
        now = time.time()
        bound = float("inf") if before is None else float(before)
        if before is not None and not self._any_queued_before(bound):
            return []  # the usual answer of a full server's look: no write lock for it
        with self.file.write() as tx:
            rows = tx.execute(
                "SELECT seq, id, name, priority, call, options, attempts, rank FROM jobs "
                "WHERE queue = ? AND state = 'queued' AND rank < ? ORDER BY rank, seq LIMIT ?",
                (self.queue, bound, limit),
            ).fetchall()
            # Only jobs of the head's rank go together: a job of a later rank claimed in
            # the same batch would start before other servers' more urgent ones.
            rows = [row for row in rows if row[7] == rows[0][7]]
            if rows:
                tx.executemany(
                    "UPDATE jobs SET state = 'running', owner = ?, lease_until = ?, "
                    "started_at = ?, attempts = attempts + 1 WHERE seq = ?",
                    [(owner, now + lease, now, row[0]) for row in rows],
                )
        return [ClaimedJob(r[1], r[2], r[3], r[4], r[5], r[6] + 1, r[7]) for r in rows]

    def _any_queued_before(self, rank: float) -> bool:
        row = (
            self.file.connection()
            .execute(
                "SELECT 1 FROM jobs WHERE queue = ? AND state = 'queued' AND rank < ? LIMIT 1",
                (self.queue, rank),
            )
            .fetchone()
        )
        return row is not None

    def renew(self, owner: str, job_ids: Sequence[str], lease: float) -> set[str]:
        """Extend ``owner``'s leases; return the ids it still holds (a lost one is not)."""
        until = time.time() + lease
        with self.file.write() as tx:
            held = self._held(tx, owner, job_ids)
            tx.executemany(
                "UPDATE jobs SET lease_until = ? WHERE id = ?", [(until, i) for i in held]
            )
            tx.execute("UPDATE servers SET heartbeat = ? WHERE owner = ?", (time.time(), owner))
        return held

    def finish(self, owner: str, outcomes: Sequence[tuple[str, Outcome]]) -> list[str]:
        """Store outcomes of jobs ``owner`` holds; return the ids stored. An outcome for
        a job ``owner`` no longer holds (its lease expired) is discarded: first wins."""
        now = time.time()
        dumped = [(job_id, outcome, outcome.dump()) for job_id, outcome in outcomes]
        with self.file.write() as tx:
            held = self._held(tx, owner, [job_id for job_id, _ in outcomes])
            kept = [row for row in dumped if row[0] in held]
            numbers = self._done_seqs(tx, len(kept)) if kept else range(0)
            # One statement for the batch: a transaction holds the write lock, so it
            # should make as few round trips through Python as it can.
            tx.executemany(
                "UPDATE jobs SET state = ?, outcome = ?, attempts = max(attempts, ?), "
                "call = NULL, owner = NULL, lease_until = NULL, done_seq = ?, "
                "finished_at = ?, expires_at = ? WHERE id = ?",
                [
                    (
                        _FINAL_STATE[outcome.kind].value,
                        data,
                        outcome.attempts,
                        done_seq,
                        now,
                        now + self.result_ttl,
                        job_id,
                    )
                    for (job_id, outcome, data), done_seq in zip(kept, numbers, strict=True)
                ],
            )
        return [row[0] for row in kept]

    def step(
        self,
        owner: str,
        outcomes: Sequence[tuple[str, Outcome]],
        limit: int,
        lease: float,
        before: float | None = None,
        watch: bool = False,
    ) -> tuple[list[str], list[ClaimedJob]]:
        stored = self.finish(owner, outcomes) if outcomes else []
        return stored, self.claim(owner, limit, lease, before)

    def _held(self, tx: sqlite3.Connection, owner: str, job_ids: Sequence[str]) -> set[str]:
        """Which of ``job_ids`` run under ``owner``'s lease (inside ``tx``)."""
        held: set[str] = set()
        for chunk in _chunks(job_ids):
            marks = ",".join("?" * len(chunk))
            rows = tx.execute(
                f"SELECT id FROM jobs WHERE state = 'running' AND owner = ? AND id IN ({marks})",
                (owner, *chunk),
            )
            held.update(row[0] for row in rows)
        return held

    def release(self, owner: str, job_ids: Sequence[str], *, started: Collection[str] = ()) -> None:
        """Give back claimed jobs in their original place, in one transaction. A claim is
        not counted as an attempt, unless the job ``started`` (stopped mid-run)."""
        with self.file.write() as tx:
            tx.executemany(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, "
                "started_at = NULL, attempts = attempts - ? "
                "WHERE id = ? AND state = 'running' AND owner = ?",
                [(int(job_id not in started), job_id, owner) for job_id in job_ids],
            )

    def kill_requests(self, owner: str) -> list[str]:
        rows = self.file.connection().execute(
            "SELECT id FROM jobs WHERE state = 'running' AND owner = ? AND kill = 1", (owner,)
        )
        return [row[0] for row in rows]

    def reclaim_expired(self, max_lost: int) -> int:
        """Put back the jobs whose lease expired, in their original place; a job that
        lost ``max_lost`` leases is given up (DEAD). Returns how many were put back."""
        now = time.time()
        with self.file.write() as tx:
            rows = tx.execute(
                "SELECT id, lost, attempts, owner FROM jobs "
                "WHERE state = 'running' AND lease_until < ?",
                (now,),
            ).fetchall()
            back = [(r[0],) for r in rows if r[1] + 1 < max_lost]
            tx.executemany(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, "
                # kill stays: whoever claims the job next must stop it (kill_requests)
                "started_at = NULL, lost = lost + 1 WHERE id = ?",
                back,
            )
            for job_id, lost, attempts, owner in rows:
                if lost + 1 >= max_lost:
                    outcome = lost_lease_outcome(job_id, lost + 1, attempts, owner, self.path)
                    tx.execute(
                        "UPDATE jobs SET state = 'dead', outcome = ?, call = NULL, owner = NULL, "
                        "lease_until = NULL, lost = lost + 1, done_seq = ?, finished_at = ?, "
                        "expires_at = ? WHERE id = ?",
                        (
                            outcome.dump(),
                            self._done_seqs(tx, 1)[0],
                            now,
                            now + self.result_ttl,
                            job_id,
                        ),
                    )
        return len(back)

    # -- waiting for outcomes ----------------------------------------------------

    can_block = False  # SQLite cannot wake a reader: finished_since is polled

    def current_cursor(self) -> str:
        """Where ``finished_since`` starts to see only outcomes stored from now on."""
        row = (
            self.file.connection()
            .execute("SELECT value FROM meta WHERE key = 'done_seq'")
            .fetchone()
        )
        return str(row[0])

    def finished_since(
        self, cursor: str, block: float = 0
    ) -> tuple[str, list[tuple[str, Outcome | None]]]:
        """The jobs (of every queue) that ended after ``cursor``, and the new cursor; their
        outcomes are read with ``outcomes`` (``block`` is ignored: SQLite has no way to
        wait for a write)."""
        rows = (
            self.file.connection()
            .execute(
                "SELECT done_seq, id FROM jobs WHERE done_seq > ? ORDER BY done_seq", (int(cursor),)
            )
            .fetchall()
        )
        return (str(rows[-1][0]) if rows else cursor), [(row[1], None) for row in rows]

    def job_status(self, job_id: str) -> JobStatus:
        """The state (and outcome, once final) of one job; ``KeyError`` if unknown or expired."""
        found = self.outcomes([job_id])
        if job_id not in found:
            raise KeyError(
                f"no job {job_id!r} in {self.path} (unknown, or its outcome expired "
                "after result_ttl)"
            )
        return found[job_id]

    def outcomes(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        found: dict[str, JobStatus] = {}
        conn = self.file.connection()
        now = time.time()  # an outcome past its expiry is gone, purged or not yet
        for chunk in _chunks(job_ids):
            rows = conn.execute(
                f"SELECT id, state, outcome FROM jobs WHERE id IN ({','.join('?' * len(chunk))})"
                " AND (expires_at IS NULL OR expires_at >= ?)",
                [*chunk, now],
            )
            for job_id, state, outcome in rows:
                loaded = None if outcome is None else Outcome.load(outcome)
                found[job_id] = JobStatus(JobState(state), loaded)
        return found

    # -- counters, servers, housekeeping ----------------------------------------

    def counter_add(self, name: str, amount: int) -> int:
        with self.file.write() as tx:
            tx.execute(
                "INSERT INTO counters VALUES (?, ?, ?) "
                "ON CONFLICT (queue, name) DO UPDATE SET value = value + excluded.value",
                (self.queue, name, amount),
            )
            row = tx.execute(
                "SELECT value FROM counters WHERE queue = ? AND name = ?", (self.queue, name)
            ).fetchone()
        return int(row[0])

    def counter_values(self, names: Sequence[str]) -> dict[str, int]:
        rows = dict(
            self.file.connection().execute(
                "SELECT name, value FROM counters WHERE queue = ?", (self.queue,)
            )
        )
        return {name: int(rows.get(name, 0)) for name in names}

    def register_server(self, owner: str, processes: int) -> None:
        now = time.time()
        with self.file.write() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO servers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (owner, self.queue, socket.gethostname(), os.getpid(), processes, now, now),
            )

    def heartbeat(self, owner: str) -> None:
        with self.file.write() as tx:
            tx.execute("UPDATE servers SET heartbeat = ? WHERE owner = ?", (time.time(), owner))

    def unregister_server(self, owner: str) -> None:
        with self.file.write() as tx:
            tx.execute("DELETE FROM servers WHERE owner = ?", (owner,))

    def purge_expired(self, stale_server_after: float = 3600.0) -> int:
        """Delete outcomes past their ``result_ttl``, and servers silent for an hour."""
        now = time.time()
        with self.file.write() as tx:
            purged = tx.execute("DELETE FROM jobs WHERE expires_at < ?", (now,)).rowcount
            tx.execute("DELETE FROM servers WHERE heartbeat < ?", (now - stale_server_after,))
        return int(purged)

    def status(self) -> StoreStatus:
        return read_status(self.file.connection(), self.queue)

    def close(self) -> None:
        self.file.close()

    # -- helpers, inside a write transaction ------------------------------------

    @staticmethod
    def _done_seqs(tx: sqlite3.Connection, count: int) -> range:
        """``count`` new numbers for ended jobs, in one update (inside ``tx``)."""
        tx.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'done_seq'", (count,)
        )
        last = int(tx.execute("SELECT value FROM meta WHERE key = 'done_seq'").fetchone()[0])
        return range(last - count + 1, last + 1)


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _nothing() -> None:
    pass
