"""Moving frames through OS pipes: the one place that moves bytes to and from workers.

The parent never blocks on a pipe: it writes through an ``Outbox`` on a
non-blocking descriptor and reads whatever is there with a ``FrameReader``.
A worker uses blocking I/O and handles one thing at a time. Because the parent
always drains results while it writes calls, a 100 MB argument and a 100 MB
result can cross at the same moment without deadlock.
"""

from __future__ import annotations

import collections
import fcntl
import os
from collections.abc import Iterable

from taskq._protocol import HEADER, Frame

READ_SIZE = 256 * 1024
# A frame larger than this is read straight into its own buffer instead of
# growing the shared one (no quadratic copying for 100 MB payloads).
LARGE_FRAME = 1024 * 1024
PIPE_SIZE = 1024 * 1024  # Linux's default cap for unprivileged processes
IOV_MAX = 512
new_tuple = tuple.__new__


def enlarge_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer: fewer wake-ups for big payloads. Best effort."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    try:
        fcntl.fcntl(fd, set_size, PIPE_SIZE)
    except OSError:
        pass


class FrameReader:
    """Reassembles frames from a pipe. ``read()`` does one read and returns the frames completed."""

    def __init__(self, fd: int):
        self._fd = fd
        self._buf = bytearray()
        self._chunk = bytearray(READ_SIZE)
        self._large: bytearray | None = None
        self._large_filled = 0
        self._large_header: tuple[int, int, float] = (0, 0, 0.0)

    def read(self) -> list[Frame]:
        """Frames completed by one read. Raises EOFError at end of stream,
        BlockingIOError when a non-blocking descriptor has nothing."""
        if self._large is not None:
            return self._read_large()
        n = os.readv(self._fd, [self._chunk])
        if n == 0:
            raise EOFError
        self._buf += memoryview(self._chunk)[:n]
        return self._parse()

    def _read_large(self) -> list[Frame]:
        assert self._large is not None
        with memoryview(self._large) as view:
            n = os.readv(self._fd, [view[self._large_filled :]])
        if n == 0:
            raise EOFError
        self._large_filled += n
        if self._large_filled < len(self._large):
            return []
        kind, job_id, seconds = self._large_header
        frame = Frame(kind, job_id, seconds, self._large)  # no copy: pickle reads a bytearray
        self._large = None
        return [frame]

    def _parse(self) -> list[Frame]:
        frames: list[Frame] = []
        buf = self._buf
        pos, end_of_data = 0, len(buf)
        with memoryview(buf) as view:
            while end_of_data - pos >= HEADER.size:
                length, kind, job_id, seconds = HEADER.unpack_from(buf, pos)
                start = pos + HEADER.size
                end = start + length
                if end > end_of_data:
                    if length > LARGE_FRAME:
                        self._start_large(view[start:end_of_data], length, (kind, job_id, seconds))
                        pos = end_of_data
                    break
                # tuple.__new__ skips NamedTuple's Python-level __new__ (hot path)
                frames.append(new_tuple(Frame, (kind, job_id, seconds, bytes(view[start:end]))))
                pos = end
        del buf[:pos]
        return frames

    def _start_large(self, head: memoryview, length: int, header: tuple[int, int, float]) -> None:
        self._large = bytearray(length)
        self._large[: len(head)] = head
        self._large_filled = len(head)
        self._large_header = header


class Outbox(collections.deque[bytes | memoryview]):
    """Frames waiting to be written to a non-blocking pipe, written as room appears.

    The deque of buffers itself: ``if outbox:`` (asked for every worker at every step
    of the manager) is then a C call."""

    def __init__(self, fd: int):
        super().__init__()
        self._fd = fd

    def push(self, buffers: Iterable[bytes]) -> None:
        self.extend(buffers)

    def flush(self) -> bool:
        """Write as much as the pipe takes now; True when nothing is left.
        Raises BrokenPipeError when the worker is gone."""
        pending = self
        while pending:
            batch = [pending[i] for i in range(min(len(pending), IOV_MAX))]
            try:
                written = os.writev(self._fd, batch)
            except BlockingIOError:
                return False
            _consume(pending, written)
        return True


def write_all(fd: int, buffers: list[bytes]) -> None:
    """Blocking write of every buffer (the worker side)."""
    pending: collections.deque[bytes | memoryview] = collections.deque(buffers)
    while pending:
        written = os.writev(fd, [pending[i] for i in range(min(len(pending), IOV_MAX))])
        _consume(pending, written)


def _consume(pending: collections.deque[bytes | memoryview], written: int) -> None:
    while pending and written >= len(pending[0]):  # also drops empty buffers
        written -= len(pending.popleft())
    if written:
        pending[0] = memoryview(pending[0])[written:]  # no copy of a large remainder
