"""Puts to Redis without a round trip each, and still safe the moment ``send`` returns.

A round trip per ``submit`` caps a client at a few thousand jobs a second, most of
it spent waiting. Here ``send`` writes the job's script call and returns; whether
the store kept it is checked later, in batches, by ``sync`` (the broker loop calls
it every step, ``cancel`` and reads before they act, ``send`` once ``MAX_UNACKED``
puts wait). Each put's ``done`` callback then gets ``None``, or the error the store
answered (such as out of memory).

Why the put connection runs with ``CLIENT REPLY OFF``: a process that dies with
bytes unread on a TCP socket has its connection *reset*, and a reset drops what the
kernel had not yet sent (the kernel may hold a small write back briefly: autocorking,
small queues). With replies piling up unread, a submitter SIGKILLed right after
``submit`` lost its last job that way. With no replies, nothing is ever unread, the
connection closes normally, and the kernel delivers every put written, dead process
or not. ``sync`` turns replies on for its own exchange only, under the lock: if the
process dies with that answer unread, Redis has already run every put before it.

Each put run adds its job id to this client's set (``acks``); ``sync`` asks which
of the puts sent since the last check are not in it (one script call). A put the
store did not run is sent again with its reply on, so the caller hears the store's
own error (it refused it: out of memory...) or it is stored then. Only then are the
checked ids removed from the set (no reply): an answer lost with a broken connection
is asked again, and finds every put that ran still counted.

Nothing is lost or run twice when the connection breaks: puts stay in ``_unacked``
until checked, and a new connection checks them before anything else, sending again
only those the store never ran. (Sending them all again would be safe only while the
store still has each job: one that ran, finished and expired would be stored anew.)
One connection carries every put of this client, so the store sees them in the order
they were sent.

The put connection needs ``CLIENT REPLY`` (Redis 3.2 or newer, not through a proxy
that lacks it).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

MAX_UNACKED = 1024  # puts sent and not yet checked before a send checks them (bounds memory)

Done = Callable[[BaseException | None], None]

# Which of ARGV (job ids) are not in the set KEYS[1] (1-based positions). Read only:
# asked again after a lost answer, it answers the same.
_NOT_RUN = """
local missing = {}
for i, id in ipairs(ARGV) do
    if redis.call('SISMEMBER', KEYS[1], id) == 0 then missing[#missing + 1] = i end
end
return missing
"""


class _Put(NamedTuple):
    packed: list[bytes]  # the EVAL, as written to the socket
    job_id: str
    done: Done


class PutPipe:
    """The put connection of one ``RedisBroker`` (see the module docstring)."""

    def __init__(
        self,
        client: Any,  # redis.Redis: its connection pool gives the connection
        script: str,
        acks: str,
        unavailable: Callable[[BaseException], BaseException],
        connection_errors: tuple[type[BaseException], ...],
    ):
        self._client = client
        self._script = script  # PUT; its last key, ``acks``, is added here
        self._acks = acks
        self._unavailable = unavailable  # a connection error -> BrokerUnavailable
        self._connection_errors = connection_errors
        self._lock = threading.Lock()
        self._conn: Any = None
        self._unacked: collections.deque[_Put] = collections.deque()

    def __len__(self) -> int:
        return len(self._unacked)

    def send(self, keys: Sequence[str], args: Sequence[Any], job_id: str, done: Done) -> None:
        """Write one PUT; raise ``BrokerUnavailable`` (and forget it) if it could not be
        written; once written it is kept until checked, whatever happens after."""
        keys = [*keys, self._acks]
        checked: list[tuple[Done, BaseException | None]] = []  # by a new connection's check
        try:
            with self._lock:
                try:
                    conn = self._connected(checked)
                    packed = conn.pack_command("EVAL", self._script, len(keys), *keys, *args)
                    conn.send_packed_command(packed, check_health=False)
                except self._connection_errors as exc:
                    self._drop()
                    raise self._unavailable(exc) from exc
                self._unacked.append(_Put(packed, job_id, done))
                full = len(self._unacked) >= MAX_UNACKED
        finally:
            _report(checked)
        if full:
            self.sync()

    def sync(self) -> None:
        """Check every put sent so far: each is then stored (or failed). A connection
        found broken (the store restarted, an idle link was cut) is replaced once, and
        the new one sends again the puts the store never ran."""
        if not self._unacked:
            return
        checked: list[tuple[Done, BaseException | None]] = []
        try:
            with self._lock:
                try:
                    self._check(checked)
                except self._connection_errors:
                    self._drop()
                    self._check(checked)
        except self._connection_errors as exc:
            self._drop()  # the puts still due are checked again on the next call
            raise self._unavailable(exc) from exc
        finally:
            _report(checked)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- under the lock ---------------------------------------------------------------

    def _connected(self, checked: list[tuple[Done, BaseException | None]]) -> Any:
        """The connection, replies off. A new one first checks the puts sent on the
        one it replaces (which of them ran), in order, before anything else is sent."""
        if self._conn is not None:
            return self._conn
        pool = self._client.connection_pool
        try:
            conn = pool.get_connection()
        except self._connection_errors as exc:
            raise self._unavailable(exc) from exc
        self._conn = conn
        try:
            conn.send_packed_command(conn.pack_command("CLIENT", "REPLY", "OFF"))
            self._check_on(conn, checked)
        except self._connection_errors as exc:
            self._drop()  # not left open: the next call starts over on a new one
            raise self._unavailable(exc) from exc
        return conn

    def _check(self, checked: list[tuple[Done, BaseException | None]]) -> None:
        conn = self._connected(checked)
        self._check_on(conn, checked)

    def _check_on(self, conn: Any, checked: list[tuple[Done, BaseException | None]]) -> None:
        """Ask the store which puts it lacks; send those again, replies on; settle all."""
        if not self._unacked:
            return
        puts = list(self._unacked)
        ids = [put.job_id for put in puts]
        on = conn.pack_command("CLIENT", "REPLY", "ON")
        ask = conn.pack_command("EVAL", _NOT_RUN, 1, self._acks, *ids)
        conn.send_packed_command([*on, *ask], check_health=False)
        conn.read_response()  # OK: Redis has run every put written before it
        not_run = set(conn.read_response())
        errors: dict[int, BaseException] = {}
        for position, put in enumerate(puts, 1):  # in order: each runs again, says why
            if position in not_run:
                conn.send_packed_command(put.packed, check_health=False)
                try:
                    conn.read_response()
                except self._connection_errors:
                    raise
                except Exception as exc:  # the store refused it (out of memory, ...)
                    errors[position] = exc
        # Forgotten by the store only now that all are settled (no reply: if this is
        # lost, the ids stay until the set expires, an hour after this client's last put).
        off = conn.pack_command("CLIENT", "REPLY", "OFF")
        forget = conn.pack_command("SREM", self._acks, *ids)
        conn.send_packed_command([*off, *forget], check_health=False)
        for position, put in enumerate(puts, 1):
            self._unacked.popleft()
            checked.append((put.done, errors.get(position)))

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()
            self._client.connection_pool.release(conn)


def _report(checked: list[tuple[Done, BaseException | None]]) -> None:
    # Outside the lock: a callback may resolve a future, which runs user callbacks.
    for done, error in checked:
        done(error)
