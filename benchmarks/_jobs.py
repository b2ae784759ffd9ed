"""Job functions run inside worker processes.

They live in an importable module (not in ``__main__``) so that every start method
(fork, spawn, forkserver) and every peer can pickle them by reference.
"""

from __future__ import annotations

import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any


def noop(x: int) -> int:
    """Return the argument unchanged: the cheapest verifiable job."""
    return x


def spin(loops: int) -> tuple[int, float]:
    """Busy-loop ``loops`` times; return ``(loops, cpu_seconds_spent)``.

    The CPU time is the job thread's own (``time.thread_time``), so a job that is
    descheduled by a noisy neighbour still reports only the work it did.
    """
    start = time.thread_time()
    acc = 0
    for i in range(loops):
        acc ^= i
    return loops, time.thread_time() - start


def spin_probe(loops: int) -> float:
    """Record ``time.monotonic()`` at start, busy-loop, return the start time.

    CLOCK_MONOTONIC is system-wide on Linux, so the parent can subtract its own reading.
    """
    started = time.monotonic()
    acc = 0
    for i in range(loops):
        acc ^= i
    return started


def started_at(tag: int) -> tuple[int, float, int]:
    """Return ``(tag, time.monotonic() at start, pid)``."""
    return tag, time.monotonic(), os.getpid()


def echo_bytes(payload: bytes) -> bytes:
    """Return the payload (a 1 MB argument becomes a 1 MB result)."""
    return payload


def add_one(array: Any) -> Any:
    """Return ``array + 1`` (a NumPy array of the same size as the argument)."""
    return array + 1


def kill_self(stamp_path: str) -> None:
    """Write ``time.monotonic()`` to ``stamp_path`` and SIGKILL the current worker."""
    fd = os.open(stamp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, repr(time.monotonic()).encode())
    finally:
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def pipe_echo_child(conn: Connection) -> None:
    """Raw Pipe reference: echo every message back until an empty one arrives."""
    while True:
        data = conn.recv_bytes()
        if not data:
            break
        conn.send_bytes(data)
    conn.close()


def pipe_sink_child(reader: Connection, total: int, done: Connection) -> None:
    """Raw OS-pipe reference: ``os.read`` ``total`` bytes from the pipe, then report the count.

    ``reader`` is the read end of ``multiprocessing.Pipe(duplex=False)``, which on Linux is
    a plain ``os.pipe()``; reading its file descriptor directly bypasses any framing.
    """
    fd = reader.fileno()
    buffer = bytearray(1 << 20)  # reused: no allocation per read
    done.send(0)  # ready: the parent starts its clock only now
    got = 0
    while got < total:
        n = os.readv(fd, [buffer])
        if not n:
            break
        got += n
    reader.close()
    done.send(got)
    done.close()
