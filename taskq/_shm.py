"""Large buffers through shared memory instead of pipes (Linux).

Pickle protocol 5 hands every buffer-protocol object that supports it (NumPy
arrays, ``PickleBuffer``; large top-level ``bytes``, ``bytearray`` and
``memoryview`` values too, see ``outband``) to a callback instead of copying it
into the pickle. Buffers of ``THRESHOLD`` bytes or more are written once into a
shared segment; the pickle that crosses the pipe is then a small reference::

    call:   parent, schedule()   buffers -> memfd (anonymous)      CALL = reference
            worker               /proc/<pool pid>/fd/<n> -> read -> fn(*args)
    result: worker               buffers -> /dev/shm/taskq-<worker>-<token>-<n>
            parent, decode       open, take over ("adopt") -> read -> result

Reading a segment: a buffer that will become a ``bytes`` or ``bytearray`` is
read into its new object (one copy, no mapping); any other buffer (a NumPy
array...) points straight into a private, copy-on-write mapping of the segment
(no copy; a job may modify its arguments, as with a pipe).

Fresh shared memory is slow to fill (the kernel allocates and clears every
page), so segments nobody maps are reused: a pool keeps a few argument memfds
(``SegmentCache``), and the parent hands each worker's last copied-out result
file back to it under the name ``<prefix>spare``.

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
  every file with that prefix when it handles the exit, after reading the
  replies the worker managed to write. If the parent dies, each worker removes
  its own files as its lifeline closes, holding the lock under which files are
  created, so none can appear after it looked. Only a worker and its parent
  killed at the same instant (SIGKILL to the process group) can leave a file.
  Under fork, the fork server kills the workers when the parent dies, and then
  removes their files itself (``sweep_dead_worker``).

Nothing here uses ``multiprocessing.shared_memory``: no resource_tracker.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import secrets
import struct
import threading
import weakref
from collections.abc import Callable
from typing import Any

THRESHOLD = 64 * 1024  # smaller buffers stay in the pickle (see benchmarks/README.md)
ALIGN = 64  # every buffer starts on a cache line (NumPy likes aligned data)
HEADER = struct.Struct("<Q")  # an argument segment's generation, at offset 0
SHM_DIR = "/dev/shm"
PREFIX = "taskq-"
# Reuse: at most this many argument segments kept per pool, each at most REUSE_MAX
# bytes (memory held while idle vs. ~0.4 ms per MiB to fill fresh pages).
KEEP_SEGMENTS = 4
REUSE_MAX = 16 * 1024 * 1024

MAPPED, BYTES, BYTEARRAY = 0, 1, 2  # how a buffer is read back
Layout = list[tuple[int, int, int]]  # (offset, length, how) of each buffer


class SegmentGone(OSError):
    """Raised when a worker cannot read a call's segment (the job already ended)."""


# -- pickling with out-of-band buffers -------------------------------------------------


class _Bytes:
    """A large ``bytes``/``bytearray`` value, pickled as one out-of-band buffer
    (protocol 5 would copy ``bytes`` into the pickle)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray):
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, Any]]:
        return _as_type, (type(self.data), pickle.PickleBuffer(self.data))


def _as_type(kind: type, buffer: Any) -> Any:
    return buffer if type(buffer) is kind else kind(buffer)


_WRAPPED = frozenset((bytes, bytearray, memoryview))


def _wrap(value: Any) -> Any:
    kind = type(value)
    if (kind is bytes or kind is bytearray) and len(value) >= THRESHOLD:
        return _Bytes(value)
    if kind is memoryview:  # not picklable otherwise; arrives as a memoryview
        return pickle.PickleBuffer(value)
    return value


def outband(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """``values`` with large top-level ``bytes``/``bytearray`` and memoryviews made
    out-of-band-able (nested ``bytes`` stay in the pickle, as the format requires)."""
    for value in values:
        if type(value) in _WRAPPED:
            return tuple(_wrap(v) for v in values)
    return values


def outband_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    for value in kwargs.values():
        if type(value) in _WRAPPED:
            return {k: _wrap(v) for k, v in kwargs.items()}
    return kwargs


class _Gather:
    """``buffer_callback``: large contiguous buffers go out of band, the rest stays in.

    The buffers of the ``_Bytes`` values in ``copied`` are read back into new
    objects; all others are mapped (a NumPy array, a PickleBuffer...).
    """

    __slots__ = ("copied", "hows", "views")

    def __init__(self, copied: tuple[Any, ...]) -> None:
        self.copied = {id(value.data) for value in copied if type(value) is _Bytes}
        self.views: list[memoryview] = []
        self.hows: list[int] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: in band
            return True
        if view.nbytes < THRESHOLD:
            return True
        self.views.append(view)
        how = MAPPED
        if id(view.obj) in self.copied:
            how = BYTES if type(view.obj) is bytes else BYTEARRAY
        self.hows.append(how)
        return False


def _gather(obj: Any, values: tuple[Any, ...]) -> tuple[bytes, _Gather]:
    """pickle(obj) and its large buffers; ``values``: where its ``_Bytes`` may be."""
    gather = _Gather(values)
    return pickle.dumps(obj, protocol=5, buffer_callback=gather), gather


def _layout(gather: _Gather) -> tuple[Layout, int]:
    layout: Layout = []
    offset = ALIGN  # the header comes first
    for view, how in zip(gather.views, gather.hows, strict=True):
        layout.append((offset, view.nbytes, how))
        offset += -(-view.nbytes // ALIGN) * ALIGN
    return layout, offset


def _write(fd: int, size: int, views: list[memoryview], layout: Layout, header: bytes) -> None:
    os.ftruncate(fd, size)
    os.pwrite(fd, header, 0)
    for view, (offset, length, _) in zip(views, layout, strict=True):
        done = 0
        while done < length:  # pwrite may stop short (2 GiB per call on Linux)
            done += os.pwrite(fd, view[done:], offset + done)


def _read(fd: int, size: int, layout: Layout) -> list[Any]:
    """The buffers of a segment: copied into new objects, or views of a private mapping."""
    buffers: list[Any] = []
    whole: memoryview | None = None
    for offset, length, how in layout:
        if how == MAPPED:
            if whole is None:
                flags, prot = mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE
                whole = memoryview(mmap.mmap(fd, size, flags=flags, prot=prot))
            buffers.append(whole[offset : offset + length])
            continue
        buffers.append(_pread(fd, offset, length) if how == BYTES else _preadv(fd, offset, length))
    if whole is not None:
        whole.release()  # the slices keep the mapping alive, and close it with the last
    return buffers


def _pread(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``, read straight into a new bytes object."""
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    return bytes(_preadv(fd, offset, length))  # a short read (2 GiB or more): rare


def _preadv(fd: int, offset: int, length: int) -> bytearray:
    data = bytearray(length)
    done = 0
    with memoryview(data) as view:
        while done < length:
            got = os.preadv(fd, [view[done:]], offset + done)
            if not got:
                raise SegmentGone("a shared-memory segment is shorter than its reference")
            done += got
    return data


def _recyclable(layout: Layout) -> bool:
    return all(how != MAPPED for _, _, how in layout)


class _Reduced:
    """Pickles as the given reduce tuple: unpickling calls the function."""

    __slots__ = ("reduced",)

    def __init__(self, reduced: tuple[Callable[..., Any], tuple[Any, ...]]):
        self.reduced = reduced

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.reduced


def _reference(fn: Callable[..., Any], *args: Any) -> bytes:
    return pickle.dumps(_Reduced((fn, args)), protocol=5)


# -- arguments: parent -> worker ---------------------------------------------------------

_generations = itertools.count(1)
_token = secrets.token_hex(4)


class SegmentCache:
    """A pool's argument segments: made on demand, a few kept for reuse once free."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[tuple[int, str]] = []  # (fd, name)
        self._ids = itertools.count(1)
        self._closed = False
        _caches.add(self)

    def take(self) -> tuple[int, str]:
        with self._lock:
            if self._free:
                return self._free.pop()
        name = f"{PREFIX}{os.getpid()}-{_token}-{next(self._ids)}"
        return os.memfd_create(name, os.MFD_CLOEXEC), name

    def give_back(self, fd: int, name: str, size: int, reuse: bool) -> None:
        keep = reuse and size <= REUSE_MAX
        with self._lock:
            if keep and not self._closed and len(self._free) < KEEP_SEGMENTS:
                self._free.append((fd, name))
                return
        os.close(fd)

    def close(self) -> None:
        """Free the kept segments; those in use are freed as their jobs end."""
        with self._lock:
            free, self._free = self._free, []
            self._closed = True
        for fd, _ in free:
            os.close(fd)

    __del__ = close

    def _forget(self) -> None:
        # A forked child must not write into its parent's segments.
        for fd, _ in self._free:
            os.close(fd)
        self._free = []
        self._lock = threading.Lock()


_caches: weakref.WeakSet[SegmentCache] = weakref.WeakSet()


def _forget_in_child() -> None:
    for cache in list(_caches):
        cache._forget()


os.register_at_fork(after_in_child=_forget_in_child)


class ArgSegment:
    """One call's large buffers, in a memfd of the pool's ``SegmentCache``."""

    __slots__ = ("_cache", "_lock", "fd", "generation", "name", "reuse", "size")

    def __init__(self, cache: SegmentCache, gather: _Gather, layout: Layout, size: int):
        self._cache = cache
        self._lock = threading.Lock()
        self.fd, self.name = cache.take()
        self.size = size
        self.reuse = _recyclable(layout)
        self.generation = next(_generations)
        try:
            _write(self.fd, size, gather.views, layout, HEADER.pack(self.generation))
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise

    def release(self, _: object = None) -> None:
        """The job ended: free the segment or keep it for another (idempotent; takes a
        future so it can be a done-callback)."""
        with self._lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            self._cache.give_back(fd, self.name, self.size, self.reuse)

    def __del__(self) -> None:  # never released (the job was never queued)
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class SharedCall(bytes):
    """A pickled call whose large buffers wait in ``segment``; release it when the job ends."""

    segment: ArgSegment


def dump_call(call: tuple[Any, Any, Any], cache: SegmentCache) -> bytes:
    """pickle(call), its large buffers moved into a segment when there are any."""
    inband, gather = _gather(call, (*call[1], *call[2].values()))
    if not gather.views:
        return inband
    layout, size = _layout(gather)
    try:
        segment = ArgSegment(cache, gather, layout, size)
    except OSError:  # no memfd (EMFILE, ENOMEM...): through the pipe instead
        return pickle.dumps(call, protocol=5)
    ref = (os.getpid(), segment.fd, segment.name, segment.generation, size, inband, layout)
    shared = SharedCall(_reference(_open_call, *ref))
    shared.segment = segment
    return shared


def _open_call(
    pid: int, fd: int, name: str, generation: int, size: int, inband: bytes, layout: Layout
) -> Any:
    """In the worker, while unpickling a CALL: the call, read from the parent's segment."""
    try:
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SegmentGone(f"the call's shared memory is gone ({exc})") from exc
    try:
        if os.readlink(f"/proc/self/fd/{own}") != f"/memfd:{name} (deleted)":
            raise SegmentGone("the call's shared memory is gone (its descriptor was reused)")
        _check_generation(own, generation)
        buffers = _read(own, size, layout)
        _check_generation(own, generation)  # not reused while we read it
    finally:
        os.close(own)
    return pickle.loads(inband, buffers=buffers)


def _check_generation(fd: int, generation: int) -> None:
    if os.pread(fd, HEADER.size, 0) != HEADER.pack(generation):
        raise SegmentGone("the call's shared memory is gone (reused for another job)")


# -- results: worker -> parent -----------------------------------------------------------


class ResultFiles:
    """The worker's result segments: named files under /dev/shm until the parent adopts them."""

    def __init__(self) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
        self.lock = threading.Lock()  # held while a file is created and filled
        self._ids = itertools.count(1)

    def dump(self, result: Any) -> tuple[bytes, str | None]:
        """pickle(result), its large buffers moved into a file; and that file's name."""
        wrapped = _wrap(result) if type(result) in _WRAPPED else result
        inband, gather = _gather(wrapped, (wrapped,))
        if not gather.views:
            return inband, None
        layout, size = _layout(gather)
        name = f"{self.prefix}{next(self._ids)}"
        try:
            self._fill(name, gather.views, layout, size)
        except OSError:  # /dev/shm full or missing: through the pipe instead
            return pickle.dumps(wrapped, protocol=5), None
        return _reference(_adopt_result, name, size, inband, layout), name

    def _fill(self, name: str, views: list[memoryview], layout: Layout, size: int) -> None:
        path = os.path.join(SHM_DIR, name)
        with self.lock:
            try:  # the spare the parent gave back: its pages exist already
                os.rename(os.path.join(SHM_DIR, self.prefix + "spare"), path)
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            try:
                _write(fd, size, views, layout, b"")
            except BaseException:
                os.unlink(path)
                raise
            finally:
                os.close(fd)

    def remove(self, name: str) -> None:
        """The parent will never adopt it (its reply could not be written)."""
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass

    def remove_all(self) -> None:
        """The parent is gone: remove every file it did not adopt. Keeps the lock, so no
        other file appears before the process exits."""
        self.lock.acquire()
        sweep(self.prefix)


worker_results: ResultFiles | None = None  # in a worker: its ResultFiles (tests use it)


def _adopt_result(name: str, size: int, inband: bytes, layout: Layout) -> Any:
    """In the parent, while unpickling an OK reply: take the file over and read the result."""
    prefix, _, number = name.rpartition("-")
    if not name.startswith(PREFIX) or "/" in name or not number.isdigit():
        raise ValueError(f"not a taskq result segment: {name!r}")
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        reuse = _recyclable(layout) and size <= REUSE_MAX
        if not reuse:
            os.unlink(path)  # from here on only our descriptor and mapping hold it
        buffers = _read(fd, size, layout)
        if reuse:  # nothing maps it: the worker may fill it again
            os.rename(path, os.path.join(SHM_DIR, f"{prefix}-spare"))
    finally:
        os.close(fd)
    return pickle.loads(inband, buffers=buffers)


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


def sweep(prefix: str) -> int:
    """Remove every segment file whose name starts with ``prefix``; return how many."""
    if not prefix.startswith(PREFIX):
        return 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed
