"""``taskq status`` on a SQLite store: one snapshot of a queue, in one read transaction."""

from __future__ import annotations

import sqlite3

from taskq._broker import StoreStatus


def read_status(conn: sqlite3.Connection, queue: str) -> StoreStatus:
    """Queued jobs per priority, running jobs, ended counts and servers, all as of one
    moment (a read transaction: writers go on meanwhile, under WAL)."""
    conn.execute("BEGIN")  # one consistent read
    try:
        queued = dict(
            conn.execute(
                "SELECT priority, count(*) FROM jobs WHERE queue = ? AND state = 'queued' "
                "GROUP BY priority ORDER BY priority",
                (queue,),
            )
        )
        running = conn.execute(
            "SELECT id, name, owner, started_at FROM jobs WHERE queue = ? AND "
            "state = 'running' ORDER BY started_at",
            (queue,),
        ).fetchall()
        ended = dict(
            conn.execute(
                "SELECT state, count(*) FROM jobs WHERE queue = ? AND state IN "
                "('succeeded', 'failed', 'cancelled', 'dead') GROUP BY state",
                (queue,),
            )
        )
        columns = ("owner", "host", "pid", "processes", "started_at", "heartbeat")
        servers = [
            dict(zip(columns, row, strict=True))
            for row in conn.execute(
                "SELECT owner, host, pid, processes, started_at, heartbeat FROM servers "
                "WHERE queue = ? ORDER BY started_at",
                (queue,),
            )
        ]
    finally:
        conn.execute("COMMIT")
    return StoreStatus(
        queued,
        [tuple(r) for r in running],
        ended.get("succeeded", 0),
        ended.get("failed", 0),
        ended.get("cancelled", 0),
        ended.get("dead", 0),
        servers,
    )
