"""Opening a taskq store file: the URL, the schema, the checks, one connection per thread.

Every process and thread that uses the file gets its own connection (SQLite
connections must not cross a fork, nor be shared by threads without a lock).
Writes are short ``BEGIN IMMEDIATE`` transactions: the write lock is taken
first, so two writers never deadlock on a lock upgrade, and a writer that
finds the file busy waits (``busy_timeout``) instead of failing with
``database is locked``. The file is in WAL mode, so readers never block writers.

Durability: with ``synchronous=NORMAL`` (the default) a committed job survives
any crash of any process, but not a power loss or an OS crash, which may lose
the last transactions; ``?synchronous=full`` in the URL makes every commit
durable across those too, at the price of an fsync per commit.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import urllib.parse
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from taskq._errors import BrokerUnavailable, StoreError

SCHEMA_VERSION = 1
APPLICATION = "taskq"
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the -wal file keeps after a checkpoint
BUSY_TIMEOUT_MS = 60_000  # a writer waits this long for the lock before an error

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY,                -- the store's order of submission
    id           TEXT NOT NULL UNIQUE,
    queue        TEXT NOT NULL,
    state        TEXT NOT NULL,
    rank         REAL NOT NULL,                       -- what runs first: smaller, then seq
    priority     REAL NOT NULL,
    name         TEXT NOT NULL,
    call         BLOB,                                -- dropped once the job ends
    options      BLOB NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    lost         INTEGER NOT NULL DEFAULT 0,          -- leases that expired
    owner        TEXT,
    lease_until  REAL,
    started_at   REAL,
    kill         INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    finished_at  REAL,
    expires_at   REAL,
    done_seq     INTEGER,                             -- order in which outcomes were stored
    outcome      BLOB
);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (queue, rank, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_done ON jobs (done_seq) WHERE done_seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (
    queue TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (queue, name)
);
CREATE TABLE IF NOT EXISTS servers (
    owner TEXT PRIMARY KEY, queue TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    processes INTEGER NOT NULL, started_at REAL NOT NULL, heartbeat REAL NOT NULL
);
"""


def path_of(url: str) -> tuple[str, str]:
    """The file path and the ``synchronous`` setting of a ``sqlite:///`` URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
        raise ValueError(
            f"bad SQLite broker URL {url!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = parts.path[1:]  # sqlite:///jobs.db -> jobs.db; sqlite:////tmp/x.db -> /tmp/x.db
    if not path or path == ":memory:":
        raise ValueError(
            f"bad SQLite broker URL {url!r}: it needs a file path (jobs survive "
            "in a file; an in-memory database would lose them)"
        )
    query = urllib.parse.parse_qs(parts.query)
    synchronous = query.pop("synchronous", ["normal"])[-1].upper()
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be 'normal' or 'full' in {url!r}")
    if query:
        raise ValueError(f"unknown option(s) {', '.join(query)} in broker URL {url!r}")
    return os.path.abspath(urllib.parse.unquote(path)), synchronous


class StoreFile:
    """A taskq store file: created and checked once, then a connection per thread."""

    def __init__(self, url: str):
        self.path, self._synchronous = path_of(url)
        self._local = threading.local()
        self._open = _Connections()
        # Closed when the file object goes, not left to the garbage collector (which
        # warns about each one since Python 3.13).
        weakref.finalize(self, self._open.close_all)
        self._lock, self._lock_pid = threading.Lock(), os.getpid()
        self._create_or_check()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction: the write lock first (BEGIN IMMEDIATE), commit on exit.

        Threads of one process take turns on a lock of their own first: waiting for
        SQLite's lock means sleeping in its busy handler (1, 2, 5 ... 100 ms), far
        longer than the transaction being waited for.
        """
        conn = self.connection()
        with self._writer_lock():
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _write_error(self.path, exc) from exc
            try:
                yield conn
            except sqlite3.OperationalError as exc:  # a read-only file, a full disk...
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StoreError(_explain(self.path, exc)) from exc
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:  # disk full, I/O error: nothing was kept
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StoreError(f"cannot write the taskq store {self.path}: {exc}") from exc

    def write_one(self, statement: str, parameters: tuple[object, ...]) -> None:
        """One statement, committed on return (SQLite makes it a transaction of its own,
        taking the write lock as ``BEGIN IMMEDIATE`` would)."""
        conn = self.connection()
        with self._writer_lock():
            try:
                conn.execute(statement, parameters)
            except sqlite3.OperationalError as exc:
                raise _write_error(self.path, exc) from exc

    def _writer_lock(self) -> threading.Lock:
        # One per process: a lock inherited through fork may be held by a thread that
        # does not exist in the child.
        if self._lock_pid != os.getpid():
            self._lock, self._lock_pid = threading.Lock(), os.getpid()
        return self._lock

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (a new one in a forked child: never reuse a parent's)."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.key != self._open.key():
            conn = self._connect()
            local.conn, local.key = conn, self._open.add(conn)
        return conn

    def close(self) -> None:
        """Close every connection this process opened to the file (a later call opens
        a new one: closing is for shutdown, not a state)."""
        self._open.close_all()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.DatabaseError as exc:
            raise StoreError(_explain(self.path, exc)) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            # The -wal file is reused, not regrown, after each checkpoint: cap what it keeps.
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        except sqlite3.DatabaseError as exc:  # not a database, unreadable, ...
            conn.close()
            raise StoreError(_explain(self.path, exc)) from exc
        return conn

    def _create_or_check(self) -> None:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise StoreError(
                f"cannot create the taskq store {self.path}: directory {directory} does not exist"
            )
        if not os.path.exists(self.path):
            _create_private(self.path)
        try:
            conn = self.connection()
            self._check(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(_explain(self.path, exc)) from exc

    def _check(self, conn: sqlite3.Connection) -> None:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if tables and "meta" not in tables:
            raise StoreError(
                f"{self.path} is not a taskq store (it holds other tables: "
                f"{', '.join(sorted(tables)[:5])}); give taskq a file of its own"
            )
        if "meta" in tables:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            if meta.get("application") != APPLICATION:
                raise StoreError(f"{self.path} is not a taskq store (its meta table is not ours)")
            version = int(meta.get("schema_version", "0"))
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer taskq (store schema {version}; this "
                    f"taskq reads schema {SCHEMA_VERSION} at most): upgrade taskq"
                )
            return
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise StoreError(f"cannot put the taskq store {self.path} in WAL mode")
        with self.write() as tx:
            for statement in SCHEMA.split(";\n"):  # not executescript: it would commit
                if statement.strip():
                    tx.execute(statement)
            tx.execute("INSERT OR IGNORE INTO meta VALUES ('application', ?)", (APPLICATION,))
            tx.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            tx.execute("INSERT OR IGNORE INTO meta VALUES ('done_seq', '0')")


# Bumped in every forked child (by far more than any number of close_all calls), so a
# connection cached by a thread of the parent is never used in the child.
_fork_epoch = 0


def _forked() -> None:
    global _fork_epoch
    _fork_epoch += 1 << 40


os.register_at_fork(after_in_child=_forked)


class _Connections:
    """The connections a process opened to one file, so that they can be closed: those
    of threads that ended as new ones open, and all of them at ``close_all``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._generation = 0
        self._open: list[tuple[threading.Thread, sqlite3.Connection]] = []

    def key(self) -> int:
        """Changes when the process forks or ``close_all`` runs: a thread's cached
        connection is valid only under the key it was opened with."""
        return _fork_epoch + self._generation

    def add(self, conn: sqlite3.Connection) -> int:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's are not ours to close
                self._pid, self._open = os.getpid(), []
            alive = []
            for thread, other in self._open:
                if thread.is_alive():
                    alive.append((thread, other))
                else:
                    other.close()
            alive.append((threading.current_thread(), conn))
            self._open = alive
            return self.key()

    def close_all(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for _, conn in self._open:
                    conn.close()
            self._open = []
            self._generation += 1


def _create_private(path: str) -> None:
    """Create the file readable and writable by its owner only: whoever can write to
    it can make the workers run code (jobs are pickles)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # another process created it first
    except OSError as exc:
        raise StoreError(f"cannot create the taskq store {path}: {exc.strerror}") from exc
    os.close(fd)


def _explain(path: str, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return f"{path} is not a taskq store: it is not an SQLite database ({text})"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return (
            f"cannot write the taskq store {path} ({text}): check the permissions of the "
            "file and of its directory (SQLite writes -wal and -shm files beside it)"
        )
    return f"cannot use the taskq store {path}: {text}"


def _write_error(path: str, exc: sqlite3.OperationalError) -> StoreError:
    """A write SQLite refused: busy still after the busy timeout (the pool retries),
    or something to fix (a read-only file, a full disk...)."""
    if "locked" in str(exc) or "busy" in str(exc):
        return BrokerUnavailable(f"the taskq store {path} is busy: {exc}")
    return StoreError(_explain(path, exc))
