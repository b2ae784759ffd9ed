"""Puts to Redis on one connection, each kept until its reply is read.

``send`` writes the job's script call and returns; ``sync`` reads the replies
due (the store's acknowledgements), each reaching its job's ``done`` callback
(``None``, or the error the store answered, such as out of memory). A pool's
``submit`` calls both: it returns once Redis has stored the job. It must not
return earlier: a process killed with replies unread has its connection reset,
and the kernel may drop a put it had written but not yet delivered.

Nothing is lost or stored twice when the connection breaks: puts stay in
``_unacked`` until their reply is read, and are written again, in order, on the
next call; the PUT script ignores a job id the store already has. One connection
carries every put of this client, so the store sees them in the order they were sent.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

from taskq._errors import BrokerUnavailable

READ_AFTER = 64  # unacknowledged puts before a send reads the replies already in
MAX_UNACKED = 1024  # ... and before it waits for some (bounds memory and the window)

Done = Callable[[BaseException | None], None]


class PutPipe:
    """The put connection of one ``RedisBroker`` (see the module docstring)."""

    def __init__(
        self,
        client: Any,  # redis.Redis: its connection pool gives the connection
        script: str,
        unavailable: Callable[[BaseException], BaseException],
        connection_errors: tuple[type[BaseException], ...],
    ):
        self._client = client
        self._script = script
        self._unavailable = unavailable  # a connection error -> BrokerUnavailable
        self._connection_errors = connection_errors
        self._lock = threading.Lock()
        self._conn: Any = None
        self._unacked: collections.deque[tuple[bytes, Done]] = collections.deque()

    def __len__(self) -> int:
        return len(self._unacked)

    def send(self, keys: Sequence[str], args: Sequence[Any], done: Done) -> None:
        """Write one PUT; raise ``BrokerUnavailable`` (and forget it) if it could not be
        written; once written it is kept until acknowledged, whatever happens after."""
        acked: list[tuple[Done, BaseException | None]] = []
        with self._lock:
            try:
                conn = self._connected()
                packed = conn.pack_command("EVAL", self._script, len(keys), *keys, *args)
                conn.send_packed_command(packed, check_health=False)
            except self._connection_errors as exc:
                self._drop()
                raise self._unavailable(exc) from exc
            self._unacked.append((packed, done))
            if len(self._unacked) >= READ_AFTER:
                wait_below = MAX_UNACKED // 2 if len(self) > MAX_UNACKED else None
                with contextlib.suppress(BrokerUnavailable):
                    # This put is kept: written again on the next call, which reconnects
                    # (or raises, if it cannot).
                    self._read(acked, wait_below)
        _report(acked)

    def sync(self) -> None:
        """Read every reply still due: each put sent so far is then stored (or failed).
        A connection found broken (the store restarted, an idle link was cut) is
        replaced once, the puts still due written again on the new one."""
        if not self._unacked:
            return
        acked: list[tuple[Done, BaseException | None]] = []
        try:
            with self._lock:
                try:
                    self._connected()
                    self._read(acked, wait_below=1)
                except BrokerUnavailable:
                    self._connected()
                    self._read(acked, wait_below=1)
        finally:
            _report(acked)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- under the lock ---------------------------------------------------------------

    def _connected(self) -> Any:
        """The connection; a new one writes again every put not yet acknowledged."""
        if self._conn is not None:
            return self._conn
        pool = self._client.connection_pool
        try:
            conn = pool.get_connection()
        except self._connection_errors as exc:
            raise self._unavailable(exc) from exc
        self._conn = conn
        try:
            for packed, _ in self._unacked:
                conn.send_packed_command(packed, check_health=False)
        except self._connection_errors as exc:
            self._drop()  # not left open: the next call starts over on a new one
            raise self._unavailable(exc) from exc
        return conn

    def _read(self, acked: list[tuple[Done, BaseException | None]], wait_below: int | None) -> None:
        """Read the replies in (and, with ``wait_below``, wait until fewer are due)."""
        conn = self._conn
        try:
            while self._unacked and (
                (wait_below is not None and len(self._unacked) >= wait_below)
                or conn.can_read(timeout=0)
            ):
                error: BaseException | None = None
                try:
                    conn.read_response()
                except self._connection_errors:
                    raise
                except Exception as exc:  # the store refused this put (out of memory, ...)
                    error = exc
                _, done = self._unacked.popleft()
                acked.append((done, error))
        except self._connection_errors as exc:
            self._drop()  # the puts still due are written again on the next call
            raise self._unavailable(exc) from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()
            self._client.connection_pool.release(conn)


def _report(acked: list[tuple[Done, BaseException | None]]) -> None:
    # Outside the lock: a callback may resolve a future, which runs user callbacks.
    for done, error in acked:
        done(error)
