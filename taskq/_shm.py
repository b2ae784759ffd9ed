"""Large buffers through shared memory instead of pipes (Linux).

Pickle protocol 5 hands every buffer-protocol object that supports it (NumPy
arrays, ``PickleBuffer``; large top-level ``bytes``, ``bytearray`` and
``memoryview`` values too, see ``outband``) to a callback instead of copying it
into the pickle. Buffers of ``THRESHOLD`` bytes or more are written once into a
shared segment; the pickle that crosses the pipe is then a small reference::

    call:   parent, schedule()   buffers -> memfd (anonymous)      CALL = reference
                                 (bytes only: when first handed to a worker)
            worker               /proc/<pool pid>/fd/<n> -> read -> fn(*args)
    result: worker               buffers -> /dev/shm/taskq-<worker>-<token>-<n>
            parent, decode       open, take over ("adopt") -> read -> result

A buffer that will become a ``bytes`` or ``bytearray`` is read into its new
object (one copy, no mapping); any other buffer (a NumPy array...) points
straight into a private, copy-on-write mapping of the segment (no copy; a job
may modify its arguments, as with a pipe).

Segments (``_segments.py``: layout, reading, reuse, and who frees what,
whatever dies) are reused when nobody maps them: a pool keeps a few free
argument memfds, and the parent hands each worker's last copied-out result
files back to it under the names ``<prefix>spare<n>``. An argument segment a
worker mapped is reused only if the worker said, before its reply, that the
mapping is gone (a RELEASED frame: nothing of the job kept a view of it).
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

from taskq import _segments
from taskq._segments import (
    BYTEARRAY,
    BYTES,
    MAPPED,
    PREFIX,
    SHM_DIR,
    Layout,
    SegmentCache,
    SegmentGone,
)

# Smaller buffers stay in the pickle. Measured (benchmarks/README.md): the pipe is
# faster below 128 KiB, the two are even there, shared memory is ahead from 256 KiB.
THRESHOLD = 128 * 1024
# Result files a worker may get back for reuse: a worker running short jobs writes
# its next result before the parent has read the last one. Each holds up to
# _segments.REUSE_MAX bytes of memory while the worker lives.
SPARES = 4

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


class _Gather(list[memoryview]):
    """``buffer_callback``: large contiguous buffers go out of band (into this list),
    the rest stays in. A list subclass with no ``__init__``: cheap to make per call.

    The buffers of the ``_Bytes`` values among ``source`` are read back into new
    objects; all others are mapped (a NumPy array, a PickleBuffer...).
    """

    __slots__ = ("copied", "hows", "source")
    source: Any  # the (fn, args, kwargs) whose args and kwargs may hold _Bytes values
    copied: set[int]
    hows: list[int]

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: in band
            return True
        if view.nbytes < THRESHOLD:
            return True
        if not self:
            self.hows = []
            _, args, kwargs = self.source
            wrapped = itertools.chain(args, kwargs.values())
            self.copied = {id(value.data) for value in wrapped if type(value) is _Bytes}
        self.append(view)
        how = MAPPED
        if id(view.obj) in self.copied:
            how = BYTES if type(view.obj) is bytes else BYTEARRAY
        self.hows.append(how)
        return False


def _gather(obj: Any, source: Any) -> tuple[bytes, _Gather]:
    """pickle(obj) and its large buffers; ``source``: see ``_Gather``."""
    gather = _Gather()
    gather.source = source
    return pickle.dumps(obj, protocol=5, buffer_callback=gather), gather


class _Reduced:
    """Pickles as the given reduce tuple: unpickling calls the function."""

    __slots__ = ("reduced",)

    def __init__(self, reduced: tuple[Callable[..., Any], tuple[Any, ...]]):
        self.reduced = reduced

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.reduced


def _reference(fn: Callable[..., Any], *args: Any) -> bytes:
    return pickle.dumps(_Reduced((fn, args)), protocol=5)


class ArgSegment:
    """One call's large buffers, in a memfd of the pool's ``SegmentCache``.

    Buffers of mutable objects are copied at once (the job sees them as they were
    at ``schedule()``); a call whose buffers all belong to ``bytes`` (immutable)
    is written only when it is first handed to a worker, so that only jobs in
    flight hold segments, and those come warm from the cache.
    """

    __slots__ = (
        "_cache", "_call", "_inband", "_layout", "_lock", "_mapped", "_payload", "_views",
        "fd", "name", "reuse", "size",
    )  # fmt: skip

    def __init__(self, cache: SegmentCache, call: Any, inband: bytes, gather: _Gather):
        self._cache = cache
        self._lock = threading.Lock()
        self._call: Any = call
        self._inband = inband
        self._views: list[memoryview] | None = gather
        self._layout, self.size = _segments.layout(gather, gather.hows)
        self.reuse = _segments.recyclable(self._layout)
        self._mapped = not self.reuse  # a worker maps it: reusable only once it unmapped it
        self._payload: bytes | None = None
        self.fd, self.name = -1, ""

    def payload(self) -> bytes:
        """What the CALL frame carries: a reference to the segment, written now if it
        was not yet (or, if no segment can be had, the whole pickle)."""
        with self._lock:
            if self._payload is None:
                try:
                    self._payload = self._write()
                except OSError:  # no memfd (EMFILE, ENOMEM...): through the pipe instead
                    self._payload = pickle.dumps(self._call, protocol=5)
                self._call = self._views = None  # the segment (or pickle) has it all
            if self._mapped:  # sent (again): this worker may keep it mapped, until it says
                self.reuse = False
            return self._payload

    def unmapped(self) -> None:
        """The worker that ran the job last no longer maps the segment (RELEASED)."""
        self.reuse = True

    def _write(self) -> bytes:
        assert self._views is not None
        fd, name = self._cache.take(self.size)
        generation = next(_segments.generations)
        try:
            header = _segments.HEADER.pack(generation)
            _segments.write(fd, self.size, self._views, self._layout, header)
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.name = fd, name
        ref = (os.getpid(), fd, name, generation, self.size, self._inband, self._layout)
        return _reference(_open_call, *ref)

    def release(self, _: object = None) -> None:
        """The job ended: free the segment or keep it for another (idempotent; takes a
        future so it can be a done-callback)."""
        with self._lock:
            fd, self.fd = self.fd, -1
            self._call = self._views = None
        if fd >= 0:
            self._cache.give_back(fd, self.name, self.size, self.reuse)

    def __del__(self) -> None:  # never released (the job was never queued)
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class SharedCall(bytes):
    """A call whose large buffers go through ``segment``: what a worker is sent is
    ``payload(call)``. Valid in this process only; release the segment when the job ends."""

    segment: ArgSegment


def payload(call: bytes) -> bytes:
    """What a CALL frame carries for ``call`` (the output of ``dump_call``)."""
    return call.segment.payload() if type(call) is SharedCall else call


def dump_call(call: tuple[Any, Any, Any], cache: SegmentCache, head: bytes | None = None) -> bytes:
    """pickle(call), or ``head`` + pickle((args, kwargs)) given the function's pickled
    reference (``_protocol._reference``), or a ``SharedCall`` if it has large buffers."""
    gather = _Gather()  # (_gather inlined: the hot path of every submit)
    gather.source = call
    if head is not None:
        arguments = pickle.dumps(call[1:], protocol=5, buffer_callback=gather)
        if not gather:
            return head + arguments
        gather = _Gather()  # large buffers: the whole call goes the shared way below
        gather.source = call
    inband = pickle.dumps(call, protocol=5, buffer_callback=gather)
    if not gather:
        return inband
    segment = ArgSegment(cache, call, inband, gather)
    if not all(how == BYTES for how in gather.hows):
        segment.payload()  # a snapshot now: the caller may modify its objects after this
    shared = SharedCall(inband)
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
        buffers, mapping = _segments.read(own, size, layout)
        _check_generation(own, generation)  # not reused while we read it
        if mapping is not None:
            call_mappings.append(weakref.ref(mapping))
    finally:
        os.close(own)
    return pickle.loads(inband, buffers=buffers)


# In a worker: the mappings of the call it runs, cleared before each call. Once the job
# is over, a mapping no object refers to any more is gone: the parent may reuse it.
call_mappings: list[weakref.ref[mmap.mmap]] = []


def call_unmapped() -> bool:
    """Whether the last call mapped a segment, and nothing refers to that mapping now."""
    return bool(call_mappings) and all(ref() is None for ref in call_mappings)


def _check_generation(fd: int, generation: int) -> None:
    if os.pread(fd, _segments.HEADER.size, 0) != _segments.HEADER.pack(generation):
        raise SegmentGone("the call's shared memory is gone (reused for another job)")


# -- results: worker -> parent -----------------------------------------------------------


class ResultFiles:
    """The worker's result segments: named files under /dev/shm until the parent adopts them."""

    def __init__(self) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
        self.lock = threading.Lock()  # held while a file is created and filled
        self._ids = itertools.count(1)
        self._spares = itertools.cycle(range(SPARES))

    def dump(self, result: Any) -> tuple[bytes, str | None]:
        """pickle(result), its large buffers moved into a file; and that file's name.
        With a file, the reply is ``SHARED_HEAD`` and where the result lies in it."""
        wrapped = _wrap(result) if type(result) in _WRAPPED else result
        inband, gather = _gather(wrapped, (None, (wrapped,), {}))
        if not gather:
            return inband, None
        layout, size = _segments.layout(gather, gather.hows)
        name = f"{self.prefix}{next(self._ids)}"
        try:
            self._fill(name, gather, layout, size)
        except OSError:  # /dev/shm full or missing: through the pipe instead
            return pickle.dumps(wrapped, protocol=5), None
        # One large bytes/bytearray and nothing else: the parent reads it without
        # unpickling anything, so it may leave the read to the result's first reader.
        plain = type(wrapped) is _Bytes and len(layout) == 1
        fields = pickle.dumps((name, size, inband, layout), protocol=5)
        return SHARED_HEAD.pack(size, plain) + fields, name

    def _fill(self, name: str, views: list[memoryview], layout: Layout, size: int) -> None:
        path = os.path.join(SHM_DIR, name)
        with self.lock:
            if self._take_spare(path):
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            else:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            try:
                _segments.write(fd, size, views, layout, b"")
            except BaseException:
                os.unlink(path)
                raise
            finally:
                os.close(fd)

    def _take_spare(self, path: str) -> bool:
        """Rename a file the parent gave back (its pages exist already) to ``path``."""
        for _ in range(SPARES):
            spare = f"{self.prefix}spare{next(self._spares)}"
            try:
                os.rename(os.path.join(SHM_DIR, spare), path)
                return True
            except FileNotFoundError:
                continue
        return False

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
        _segments.sweep(self.prefix)


worker_results: ResultFiles | None = None  # in a worker: its ResultFiles (tests use it)

# A reply whose result waits in a file starts with the file's size, so that the parent
# knows how much the job moved without reading the result (``_dispatch.BatchPolicy``),
# and whether the result is ``plain`` (see ``dump``); then pickle((name, size, inband,
# layout)), plain data the parent reads with ``_shared_result.py``.
SHARED_HEAD = struct.Struct("<Q?")


def shared_size(reply: bytes | bytearray) -> int:
    """The size of the file a ``dump`` reply with a file names."""
    size: int = SHARED_HEAD.unpack_from(reply)[0]
    return size
