"""A result that waits in a worker's shared-memory file, on the parent's side.

A reply of kind OK_SHARED names the file (``_shm.ResultFiles.dump``). Reading the
result means copying it into the parent's memory (a ``bytes`` cannot point
elsewhere): about 0.3 ms a MiB, most of it the kernel making fresh pages. Two ways:

* ``adopt``: read it now, on the copier's thread (``_copier.py``) or the manager's.
* ``hold``: a result that is one large ``bytes`` or ``bytearray`` and nothing else
  (nothing to unpickle, so reading it cannot fail the job) is not read by the pool:
  the job's future resolves at once with a ``SharedBytes`` handle, and the first
  ``future.result()`` reads it, in that caller's thread (``JobFuture.result``).
  The copy then runs beside the pool's own work instead of in a queue behind the
  copier, and no thread hop stands between the reply and the future: 1 MiB echo
  jobs move 10-20 % more per second (benchmarks/README.md). A future with a
  done-callback of the caller's is not held (its callbacks run on the manager's
  thread, which would then do the copy): its result is adopted as before.

Once read, the file goes back to its worker as a spare (its pages exist already:
the worker's next result fills them instead of fresh ones), or is removed if it is
too large to keep.

A handle holds an open descriptor of its file: a worker that dies or a pool that
shuts down meanwhile may remove the file's *name* (``_segments.sweep``), never the
file. A handle dropped unread (its future was) removes the file.
At most ``UNREAD`` handles exist at once in a process (each costs a descriptor);
past that, results are adopted as before.
"""

from __future__ import annotations

import os
import pickle
import threading
from typing import Any

from taskq import _segments
from taskq._segments import BYTES, PREFIX, REUSE_MAX, SHM_DIR, Layout
from taskq._shm import SHARED_HEAD, SPARES

UNREAD = 64  # handles not read yet, in this process


class _Slots:
    """How many more handles may be made (a counter any thread may give back to)."""

    def __init__(self, count: int) -> None:
        self._free = count
        # Re-entrant: a handle freed by the GC (``give``) may interrupt ``take``.
        self._lock = threading.RLock()

    @property
    def free(self) -> int:
        return self._free

    def take(self) -> bool:
        with self._lock:
            if self._free <= 0:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        with self._lock:
            self._free += 1


unread = _Slots(UNREAD)


def _new_slots_lock() -> None:
    # A forked child has only the forking thread; another one may have held the lock.
    unread._lock = threading.RLock()


os.register_at_fork(after_in_child=_new_slots_lock)


def _fields(reply: bytes | bytearray) -> tuple[str, int, bytes, Layout]:
    fields: tuple[str, int, bytes, Layout] = pickle.loads(memoryview(reply)[SHARED_HEAD.size :])
    return fields


def _path(name: str) -> str:
    _, _, number = name.rpartition("-")
    if not name.startswith(PREFIX) or "/" in name or not number.isdigit():
        raise ValueError(f"not a taskq result segment: {name!r}")
    return os.path.join(SHM_DIR, name)


def _give_back(path: str) -> None:
    """Rename a result file this process has read to its worker's spare; if its name is
    gone already (the worker's files were swept), there is nothing to do."""
    prefix, _, number = path.rpartition("-")
    with _segments.NAMES:
        try:
            os.rename(path, f"{prefix}-spare{int(number) % SPARES}")
        except FileNotFoundError:
            pass


def adopt(reply: bytes | bytearray) -> Any:
    """Read the result now (unpickling it may raise whatever the result's type raises)."""
    name, size, inband, layout = _fields(reply)
    path = _path(name)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        reuse = _segments.recyclable(layout) and size <= REUSE_MAX
        if not reuse:
            os.unlink(path)  # from here on only our descriptor and mapping hold it
        buffers, _ = _segments.read(fd, size, layout)
        if reuse:  # nothing maps it: the worker may fill it again
            _give_back(path)
    finally:
        os.close(fd)
    return pickle.loads(inband, buffers=buffers)


def holdable(reply: bytes | bytearray) -> bool:
    """Whether ``hold`` would (very likely) take this reply: a plain result, and a free
    slot (another pool's manager may take the last one first: ``hold`` then says no)."""
    plain: bool = SHARED_HEAD.unpack_from(reply)[1]
    return plain and unread.free > 0


def hold(reply: bytes | bytearray) -> SharedBytes | None:
    """A handle on the plain result of this reply, or None (then ``adopt`` it)."""
    if not SHARED_HEAD.unpack_from(reply)[1] or not unread.take():
        return None
    try:
        name, size, _, [(offset, length, how)] = _fields(reply)
        path = _path(name)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):
        unread.give()
        return None  # adopt() meets the same problem, and reports it as the job's error
    if size > REUSE_MAX:  # too large to keep for the worker: nameless from now on
        _unlink(path)
        path = ""
    return SharedBytes(fd, path, offset, length, bytes if how == BYTES else bytearray)


class SharedBytes:
    """A plain result still in its file: ``read`` it once (``JobFuture`` does, under
    its lock), or drop it."""

    __slots__ = ("_fd", "_length", "_offset", "_path", "kind")

    def __init__(self, fd: int, path: str, offset: int, length: int, kind: type) -> None:
        self._fd, self._path = fd, path
        self._offset, self._length = offset, length
        self.kind = kind  # bytes or bytearray

    def read(self) -> bytes | bytearray:
        """The result, as the job returned it; then the file goes back to the worker."""
        if self._fd < 0:
            raise _segments.SegmentGone("this result was read already")
        try:
            if self.kind is bytes:
                return _segments.read_bytes(self._fd, self._offset, self._length)
            return _segments.read_bytearray(self._fd, self._offset, self._length)
        finally:
            self._close()

    def _close(self, give_back: bool = True) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            if self._path and give_back:
                _give_back(self._path)
            elif self._path:
                _unlink(self._path)
        finally:
            os.close(fd)
            unread.give()

    def __del__(self) -> None:
        # Dropped unread (its future was). The cyclic GC may run this in any thread, at
        # any allocation, even one made while that thread holds ``_segments.NAMES``
        # (in ``sweep``): so no lock here, and the file is removed rather than given
        # back. Never raise here.
        try:
            self._close(give_back=False)
        except Exception:
            pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
