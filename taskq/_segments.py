"""Shared-memory segments: how buffers are laid out, written, read back and freed (Linux).

A segment is a file in shared memory: an anonymous memfd (a call's arguments,
owned by the parent) or a file under /dev/shm (a result, named by the worker
until the parent adopts it). It starts with a 64-byte header, then each
buffer at a 64-byte boundary; its ``Layout`` says where each buffer is and how
it is read back: into a new ``bytes``/``bytearray`` (``pread``, no mapping), or
as a view of a private, copy-on-write mapping (no copy: NumPy arrays...).

Fresh shared memory is slow to fill (the kernel allocates and clears every
page), so segments nobody maps are reused: a pool keeps a few free argument
memfds (``SegmentCache``); see ``_shm.py`` for result files.

Who frees a segment, whatever dies at whatever instant:

* An argument segment is a memfd: it has no name anywhere; the parent's
  descriptor is the only way to it. The parent releases it when the job's
  future resolves (a result, an error, a crash, a timeout, a cancel, a kill: a
  worker that could still open it has replied or is dead by then); if the
  parent dies, the kernel frees it. A worker's mapping goes with the worker.
  The worker checks the name and the generation written in its header, so a
  reused descriptor number or a reused segment is never read as this job's.
* A result segment has a name with its worker's prefix from the moment the
  worker creates it until the parent adopts it: unlinked then, or renamed to
  the worker's spare (the same prefix). If the worker dies, the parent removes
  every file with that prefix when it handles the exit (``sweep``), after
  reading the replies the worker managed to write. If the parent dies, each
  worker removes its own files as its lifeline closes, holding the lock under
  which files are created, so none can appear after it looked; under fork, the
  fork server kills the workers when the parent dies and removes their files
  itself (``sweep_dead_worker``). Only a worker and its parent killed at the
  same instant (SIGKILL to the process group) can leave a file.

Nothing here uses ``multiprocessing.shared_memory``: no resource_tracker.
"""

from __future__ import annotations

import itertools
import mmap
import os
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from taskq._prefault import ShortRead, pread_bytes

ALIGN = 64  # every buffer starts on a cache line (NumPy likes aligned data)
HEADER = struct.Struct("<Q")  # an argument segment's generation, at offset 0
SHM_DIR = "/dev/shm"
PREFIX = "taskq-"
# Reuse: free argument segments a pool keeps (at most KEEP_SEGMENTS, KEEP_BYTES in
# all, each for KEEP_SECONDS), and the largest result file a worker gets back. More:
# memory held while idle; less: fresh pages to clear, ~0.3 ms per MiB (measured: a
# pool passing 64 MiB arrays moves 24 % more with its argument segments reused).
KEEP_SEGMENTS = 8
KEEP_BYTES = 256 * 1024 * 1024
KEEP_SECONDS = 5.0
REUSE_MAX = 16 * 1024 * 1024

MAPPED, BYTES, BYTEARRAY = 0, 1, 2  # how a buffer is read back
Layout = list[tuple[int, int, int]]  # (offset, length, how) of each buffer


class SegmentGone(OSError):
    """Raised when a worker cannot read a call's segment (the job already ended)."""


def layout(views: list[memoryview], hows: list[int]) -> tuple[Layout, int]:
    """Where each buffer goes, and the segment's size."""
    placed: Layout = []
    offset = ALIGN  # the header comes first
    for view, how in zip(views, hows, strict=True):
        placed.append((offset, view.nbytes, how))
        offset += -(-view.nbytes // ALIGN) * ALIGN
    return placed, offset


def write(fd: int, size: int, views: list[memoryview], layout: Layout, header: bytes) -> None:
    """Fill a segment: its header, then each buffer where ``layout`` places it."""
    os.ftruncate(fd, size)
    os.pwrite(fd, header, 0)
    for view, (offset, length, _) in zip(views, layout, strict=True):
        done = 0
        while done < length:  # pwrite may stop short (2 GiB per call on Linux)
            done += os.pwrite(fd, view[done:], offset + done)


def read(fd: int, size: int, layout: Layout) -> tuple[list[Any], mmap.mmap | None]:
    """The buffers of a segment: copied into new objects, or views of a private mapping;
    and that mapping, if there is one (it lives as long as a view of it does)."""
    buffers: list[Any] = []
    whole: memoryview | None = None
    mapping: mmap.mmap | None = None
    for offset, length, how in layout:
        if how == MAPPED:
            if whole is None:
                flags, prot = mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE
                mapping = mmap.mmap(fd, size, flags=flags, prot=prot)
                whole = memoryview(mapping)
            buffers.append(whole[offset : offset + length])
            continue
        read = read_bytes if how == BYTES else read_bytearray
        buffers.append(read(fd, offset, length))
    if whole is not None:
        whole.release()  # the slices keep the mapping alive, and close it with the last
    return buffers, mapping


def read_bytes(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``, read straight into a new bytes object (its pages
    made in one call: ``_prefault.py``)."""
    try:
        return pread_bytes(fd, length, offset)
    except ShortRead as exc:
        raise SegmentGone("a shared-memory segment is shorter than its reference") from exc


def read_bytearray(fd: int, offset: int, length: int) -> bytearray:
    data = bytearray(length)
    done = 0
    with memoryview(data) as view:
        while done < length:
            got = os.preadv(fd, [view[done:]], offset + done)
            if not got:
                raise SegmentGone("a shared-memory segment is shorter than its reference")
            done += got
    return data


def recyclable(layout: Layout) -> bool:
    """Whether nothing will map the segment (every buffer is copied out): reusable."""
    return all(how != MAPPED for _, _, how in layout)


generations = itertools.count(1)
_token = secrets.token_hex(4)


class SegmentCache:
    """A pool's argument segments: made on demand; some kept for reuse once free.

    ``later(delay, action)`` runs ``action`` after ``delay`` seconds (the pool's
    timers): kept segments nobody took for ``KEEP_SECONDS`` are freed then, so an
    idle pool holds no shared memory for long.
    """

    def __init__(self, later: Callable[[float, Callable[[], None]], None] | None = None):
        self._lock = threading.Lock()
        self._free: list[tuple[int, str, int, float]] = []  # (fd, name, bytes, kept since)
        self._kept = 0  # bytes in _free
        self._ids = itertools.count(1)
        self._closed = False
        self._later = later
        self._trim_pending = False
        _caches.add(self)

    def take(self, size: int) -> tuple[int, str]:
        """A segment for ``size`` bytes: the smallest kept one that holds them, else the
        largest kept one (its pages are ready), else a new one."""
        with self._lock:
            if self._free:
                fits = [entry for entry in self._free if entry[2] >= size]
                best = min(fits, key=_size) if fits else max(self._free, key=_size)
                self._free.remove(best)
                self._kept -= best[2]
                return best[0], best[1]
        name = f"{PREFIX}{os.getpid()}-{_token}-{next(self._ids)}"
        return os.memfd_create(name, os.MFD_CLOEXEC), name

    def give_back(self, fd: int, name: str, size: int, reuse: bool) -> None:
        later = None  # set when this call must arm the trim (one pending at a time)
        with self._lock:
            keep = (
                reuse
                and not self._closed
                and len(self._free) < KEEP_SEGMENTS
                and self._kept + size <= KEEP_BYTES
            )
            if keep:
                self._free.append((fd, name, size, time.monotonic()))
                self._kept += size
                if not self._trim_pending:
                    later = self._later
                    self._trim_pending = later is not None
        if not keep:
            os.close(fd)
        elif later is not None:
            later(KEEP_SECONDS, self.trim)

    def trim(self) -> None:
        """Free the kept segments nobody took for ``KEEP_SECONDS``."""
        now = time.monotonic()
        with self._lock:
            stale = [entry for entry in self._free if now - entry[3] >= KEEP_SECONDS]
            self._free = [entry for entry in self._free if now - entry[3] < KEEP_SECONDS]
            self._kept -= sum(entry[2] for entry in stale)
            later = self._later if self._free else None
            self._trim_pending = later is not None
            oldest = min((entry[3] for entry in self._free), default=now)
        for entry in stale:
            os.close(entry[0])
        if later is not None:
            later(max(0.0, oldest + KEEP_SECONDS - now), self.trim)

    @property
    def kept(self) -> int:
        """Bytes of free segments kept for reuse."""
        return self._kept

    def close(self) -> None:
        """Free the kept segments; those in use are freed as their jobs end."""
        with self._lock:
            free, self._free, self._kept = self._free, [], 0
            self._closed = True
        for entry in free:
            os.close(entry[0])

    __del__ = close

    def _forget(self) -> None:
        # A forked child must not write into its parent's segments.
        for entry in self._free:
            os.close(entry[0])
        self._free, self._kept = [], 0
        self._lock = threading.Lock()
        self._later, self._trim_pending = None, False  # the parent's timers are not ours


def _size(entry: tuple[int, str, int, float]) -> int:
    return entry[2]


_caches: weakref.WeakSet[SegmentCache] = weakref.WeakSet()


def _forget_in_child() -> None:
    for cache in list(_caches):
        cache._forget()


os.register_at_fork(after_in_child=_forget_in_child)


def sweep_dead_worker(pid: int | None) -> None:
    """Remove the result files of worker ``pid``, a child of ours killed but not yet
    reaped (its pid cannot belong to another process yet)."""
    if pid is None:
        return
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead: it creates no more
    except ChildProcessError:
        return  # already reaped: the pid may be another process's now
    sweep(f"{PREFIX}{pid}-")


# Held by ``sweep`` and by whoever in this process renames a result file to a
# worker's spare (``_shared_result.py``): a rename between the sweep's listing and
# its removals would leave a spare nobody removes.
NAMES = threading.Lock()


def _new_names_lock() -> None:
    # A forked child (the fork server, a worker) has only the forking thread: another
    # thread of the parent may have held the lock at the fork, and is not there to
    # release it.
    global NAMES
    NAMES = threading.Lock()


os.register_at_fork(after_in_child=_new_names_lock)


def sweep(prefix: str) -> int:
    """Remove every segment file whose name starts with ``prefix``; return how many."""
    if not prefix.startswith(PREFIX):
        return 0
    removed = 0
    with NAMES:
        try:
            names = os.listdir(SHM_DIR)
        except OSError:
            return 0
        for name in names:
            if name.startswith(prefix):
                try:
                    os.unlink(os.path.join(SHM_DIR, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed
