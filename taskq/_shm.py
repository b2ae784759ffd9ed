"""Large buffers through shared memory instead of pipes (Linux).

Pickle protocol 5 hands every buffer-protocol object that supports it (NumPy
arrays, ``bytearray`` and ``memoryview`` via ``PickleBuffer``; large top-level
``bytes`` too, see ``outband``) to a callback instead of copying it into the
pickle. Buffers of ``THRESHOLD`` bytes or more are written once into a shared
segment; the pickle that crosses the pipe is then a small reference, and the
other side unpickles with buffers that point straight into its mapping of the
segment (copy-on-write: a job may modify its arguments, as with a pipe)::

    call:   parent, schedule()   buffers -> memfd (anonymous)      CALL = ArgRef
            worker               /proc/<pool pid>/fd/<n> -> mmap -> fn(*args)
    result: worker               buffers -> /dev/shm/taskq-<worker>-<token>-<n>
            parent, decode       open, unlink at once ("adopt"), mmap -> result

Who frees a segment, whatever dies at whatever instant:

* An argument segment is a memfd: it has no name anywhere, the parent's
  descriptor is the only way to it. The parent closes it when the job's future
  resolves (a result, an error, a crash, a timeout, a cancel, a kill: a worker
  that could still open it has replied or is dead by then); if the parent dies,
  the kernel closes it. A worker's mapping goes with the worker. The worker
  checks the name of what it opened, so a descriptor number reused after an
  early close can never be read as the wrong job's data.
* A result segment has a name from the moment the worker creates it until the
  parent adopts it (opens and unlinks it as it decodes the reply). If the worker
  dies first, the parent removes every file with that worker's prefix when it
  handles the exit, after reading the replies the worker managed to write. If
  the parent dies first, each worker removes its own files as its lifeline
  closes, holding the lock under which files are created, so none can appear
  after it looked. Only a worker and its parent killed at the same instant
  (SIGKILL to the whole process group) can leave a file behind.

Nothing here uses ``multiprocessing.shared_memory``: no resource_tracker.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import secrets
import threading
from collections.abc import Callable
from typing import Any

THRESHOLD = 64 * 1024  # smaller buffers stay in the pickle: a segment costs ~30 µs of syscalls
ALIGN = 64  # every buffer starts on a cache line (NumPy likes aligned data)
SHM_DIR = "/dev/shm"
PREFIX = "taskq-"

Layout = list[tuple[int, int]]  # (offset, length) of each buffer in the segment


class SegmentGone(OSError):
    """Raised when a worker cannot open a call's segment (the job already ended)."""


# -- pickling with out-of-band buffers -------------------------------------------------


class _Bytes:
    """A large ``bytes``/``bytearray`` value, pickled as one out-of-band buffer.

    Protocol 5 keeps ``bytes`` in the pickle; this sends the same data as a
    buffer, copied once into the segment and once into the new object.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray):
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any]]:
        return type(self.data), (pickle.PickleBuffer(self.data),)


def _wrap(value: Any) -> Any:
    kind = type(value)
    if (kind is bytes or kind is bytearray) and len(value) >= THRESHOLD:
        return _Bytes(value)
    if kind is memoryview:  # not picklable otherwise; arrives as a memoryview
        return pickle.PickleBuffer(value)
    return value


_WRAPPED = frozenset((bytes, bytearray, memoryview))


def outband(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """``values`` with large top-level ``bytes``/``bytearray`` and memoryviews made
    out-of-band-able (nested ones stay in the pickle, as the format requires)."""
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
    """``buffer_callback``: large contiguous buffers go out of band, the rest stays in."""

    __slots__ = ("views",)

    def __init__(self) -> None:
        self.views: list[memoryview] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: in band
            return True
        if view.nbytes < THRESHOLD:
            return True
        self.views.append(view)
        return False


def _layout(views: list[memoryview]) -> tuple[Layout, int]:
    layout: Layout = []
    offset = 0
    for view in views:
        layout.append((offset, view.nbytes))
        offset += -(-view.nbytes // ALIGN) * ALIGN
    return layout, max(offset, 1)


def _write(fd: int, views: list[memoryview], layout: Layout, size: int) -> None:
    os.ftruncate(fd, size)
    for view, (offset, length) in zip(views, layout, strict=True):
        done = 0
        while done < length:  # pwrite may stop short (2 GiB per call on Linux)
            done += os.pwrite(fd, view[done:], offset + done)


def _load(inband: bytes, fd: int, size: int, layout: Layout) -> Any:
    """Unpickle ``inband`` with its buffers pointing into a private mapping of ``fd``."""
    memory = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    with memoryview(memory) as whole:
        buffers = [whole[offset : offset + length] for offset, length in layout]
    # The objects keep their buffers, and so the mapping, alive; closed with the last.
    return pickle.loads(inband, buffers=buffers)


def _gather(obj: Any) -> tuple[bytes, list[memoryview]]:
    gather = _Gather()
    inband = pickle.dumps(obj, protocol=5, buffer_callback=gather)
    return inband, gather.views


# -- arguments: parent -> worker ---------------------------------------------------------

_segment_ids = itertools.count(1)
_token = secrets.token_hex(4)


class ArgSegment:
    """A call's large buffers in an anonymous memfd, owned by the parent."""

    __slots__ = ("_lock", "fd", "name")

    def __init__(self, views: list[memoryview], layout: Layout, size: int):
        self.name = f"{PREFIX}{os.getpid()}-{_token}-{next(_segment_ids)}"
        self._lock = threading.Lock()
        self.fd = os.memfd_create(self.name, os.MFD_CLOEXEC)
        try:
            _write(self.fd, views, layout, size)
        except BaseException:
            self.close()
            raise

    def close(self, _: object = None) -> None:
        """Free the segment (idempotent; takes a future so it can be a done-callback)."""
        with self._lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


class SharedCall(bytes):
    """A pickled call whose large buffers wait in ``segment``; close it when the job ends."""

    segment: ArgSegment


def dump_call(call: tuple[Any, Any, Any]) -> bytes:
    """pickle(call), its large buffers moved into a segment when there are any."""
    inband, views = _gather(call)
    if not views:
        return inband
    layout, size = _layout(views)
    try:
        segment = ArgSegment(views, layout, size)
    except OSError:  # no memfd (EMFILE, ENOMEM, not Linux): through the pipe instead
        return pickle.dumps(call, protocol=5)
    ref = (_open_call, (os.getpid(), segment.fd, segment.name, size, inband, layout))
    shared = SharedCall(pickle.dumps(_Reduced(ref), protocol=5))
    shared.segment = segment
    return shared


class _Reduced:
    """Pickles as the given reduce tuple: unpickling calls the function."""

    __slots__ = ("reduced",)

    def __init__(self, reduced: tuple[Callable[..., Any], tuple[Any, ...]]):
        self.reduced = reduced

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.reduced


def _open_call(pid: int, fd: int, name: str, size: int, inband: bytes, layout: Layout) -> Any:
    """In the worker, while unpickling a CALL: the call, read from the parent's segment."""
    try:
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SegmentGone(f"the call's shared memory is gone ({exc})") from exc
    try:
        if os.readlink(f"/proc/self/fd/{own}") != f"/memfd:{name} (deleted)":
            raise SegmentGone("the call's shared memory is gone (its descriptor was reused)")
        return _load(inband, own, size, layout)
    finally:
        os.close(own)


# -- results: worker -> parent -----------------------------------------------------------


class ResultFiles:
    """The worker's result segments: named files under /dev/shm until the parent adopts them."""

    def __init__(self) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
        self.lock = threading.Lock()  # held while a file is created and filled
        self._ids = itertools.count(1)

    def dump(self, result: Any) -> tuple[bytes, str | None]:
        """pickle(result), its large buffers moved into a new file; and that file's name."""
        inband, views = _gather(_wrap_one(result))
        if not views:
            return inband, None
        layout, size = _layout(views)
        name = f"{self.prefix}{next(self._ids)}"
        try:
            self._create(name, views, layout, size)
        except OSError:  # /dev/shm full or missing: through the pipe instead
            return pickle.dumps(result, protocol=5), None
        ref = (_adopt_result, (name, size, inband, layout))
        return pickle.dumps(_Reduced(ref), protocol=5), name

    def _create(self, name: str, views: list[memoryview], layout: Layout, size: int) -> None:
        path = os.path.join(SHM_DIR, name)
        with self.lock:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            try:
                _write(fd, views, layout, size)
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
        """The parent is gone: remove every file not adopted. Keeps the lock, so no
        other file appears before the process exits."""
        self.lock.acquire()
        sweep(self.prefix)


worker_results: ResultFiles | None = None  # in a worker: its ResultFiles (tests use it)


def _wrap_one(value: Any) -> Any:
    return _wrap(value) if type(value) in _WRAPPED else value


def _adopt_result(name: str, size: int, inband: bytes, layout: Layout) -> Any:
    """In the parent, while unpickling an OK reply: take the file over and read the result."""
    if not name.startswith(PREFIX) or "/" in name:
        raise ValueError(f"not a taskq segment: {name!r}")
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.unlink(path)  # from here on only our descriptor and mapping hold it
        return _load(inband, fd, size, layout)
    finally:
        os.close(fd)


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
