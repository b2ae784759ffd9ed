"""Lazy ``map`` and ``imap_unordered``: input is pulled only as chunks are needed.

A map keeps at most ``window`` chunks in flight; a new chunk is read from the
input and queued only when the caller takes the results of an old one. So
``pool.map(f, itertools.count())`` streams with bounded memory, and a map is
its own backpressure on a bounded queue.

With the default ``chunksize=1`` the chunk size adapts: it starts at one item
and grows until a chunk takes about ``CHUNK_TARGET`` seconds in a worker, so
tiny items are not paid for one round trip each. Results, their order and the
exceptions raised are the same whatever the chunk size; an explicit
``chunksize > 1`` is used as given.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import TYPE_CHECKING, Any

from taskq._protocol import unpack_exception
from taskq._worker import run_chunk

if TYPE_CHECKING:
    from taskq._job import JobFuture

# A chunk of about 1 ms keeps the worker's pipeline two jobs deep (see _dispatch)
# while per-chunk costs stay far below the work inside it.
CHUNK_TARGET = 0.001
MAX_AUTO_CHUNK = 1024  # bounds read-ahead: window x this many items
WINDOW_PER_WORKER = 4

ChunkSubmitter = Callable[[list[Any]], "JobFuture[Any]"]


class ChunkFeeder:
    """Cuts the input into chunks, sized adaptively unless the caller fixed the size."""

    def __init__(self, items: Iterator[Any], chunksize: int, *, adaptive: bool):
        self._items = items
        self._adaptive = adaptive
        self.size = chunksize
        self.exhausted = False

    def next_chunk(self) -> list[Any] | None:
        if self.exhausted:
            return None
        chunk = list(itertools.islice(self._items, self.size))
        if len(chunk) < self.size:
            self.exhausted = True
        return chunk or None

    def observe(self, items: int, seconds: float) -> None:
        """Resize the next chunks after a chunk of ``items`` took ``seconds`` in a worker."""
        if not self._adaptive or items == 0:
            return
        per_item = max(seconds / items, 1e-9)
        wanted = int(CHUNK_TARGET / per_item)
        # grow at most 4x per step (a lucky fast chunk must not make a giant one)
        self.size = max(1, min(wanted, self.size * 4, MAX_AUTO_CHUNK))


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _chunk_outcome(
    future: JobFuture[Any], feeder: ChunkFeeder, deadline: float | None
) -> tuple[list[Any], bytes | None]:
    """A finished chunk's values and the packed exception of the item that stopped it."""
    try:
        values, error, seconds = future.result(timeout=_remaining(deadline))
    except FuturesTimeout:
        if future.done():  # the chunk's own error (JobTimeout is a TimeoutError too)
            raise
        raise FuturesTimeout("map() results were not ready within its timeout") from None
    feeder.observe(len(values) + (error is not None), seconds)
    return values, error


class MapIterator(Iterator[Any]):
    """What ``map`` returns: the results, chunk after chunk, plus ``close()``.

    ``iter()`` of it hands out the underlying ``itertools.chain``, so that
    ``list(pool.map(...))`` and ``for`` loops step through each chunk's results
    in C, without resuming a Python generator per item; ``next()`` works too.
    ``close()`` stops the map: chunks not yet started are cancelled.
    """

    __slots__ = ("_chunks", "_items", "_window")

    def __init__(self, chunks: Generator[Iterable[Any], None, None], window: MapWindow):
        self._chunks = chunks
        self._items = itertools.chain.from_iterable(chunks)
        self._window = window

    def __iter__(self) -> Iterator[Any]:
        return self._items

    def __next__(self) -> Any:
        return next(self._items)

    def close(self) -> None:
        self._chunks.close()
        self._window.cancel_rest()  # also when it was never started


def _handing_out(values: list[Any]) -> Iterator[Any]:
    """The chunk's results in order, each dropped from the chunk as it is handed out
    (as ``Executor.map`` does: the caller may be the last one holding a result).
    Pops from the reversed list, in C: no Python frame per item."""
    values.reverse()
    return itertools.starmap(values.pop, itertools.repeat((), len(values)))


def _then_raise(values: list[Any], error: bytes) -> Iterator[Any]:
    """The results before the item that raised, then its exception."""
    yield from _handing_out(values)
    raise unpack_exception(error)


class MapWindow:
    """One map's chunks in flight, and the input still to read.

    Lazy while the caller iterates: a chunk is read and queued only as an old
    one's results are taken. A map nobody has started iterating is run to the
    end of its input when its pool shuts down (``submit_all``), as
    ``Executor.map`` would have queued it all at once: work asked for is never
    silently dropped. Once the pool refuses new jobs, the window stops reading
    input and the iterator raises after the results already queued.
    """

    def __init__(
        self,
        submit: ChunkSubmitter,
        feeder: ChunkFeeder,
        window: int,
        on_submit: Callable[[JobFuture[Any]], None] | None = None,
    ):
        self._submit = submit
        self._on_submit = on_submit
        self._feeder = feeder
        self._window = window
        self._lock = threading.Lock()  # the caller's thread and shutdown() may both feed
        self._closed = False
        self.stopped_by: BaseException | None = None
        self.started = False
        self.pending: deque[JobFuture[Any]] = deque()

    def top_up(self) -> None:
        with self._lock:
            while not self._closed and len(self.pending) < self._window:
                if not self._submit_next():
                    return

    def submit_all(self) -> None:
        """Queue every chunk left in the input (the pool is shutting down)."""
        with self._lock:
            while not self._closed and self._submit_next():
                pass

    def _submit_next(self) -> bool:
        chunk = self._feeder.next_chunk()
        if chunk is None:
            return False
        try:
            future = self._submit(chunk)
        except RuntimeError as exc:  # the pool was shut down
            self._closed, self.stopped_by = True, exc
            return False
        self.pending.append(future)
        if self._on_submit is not None:
            self._on_submit(future)
        return True

    def cancel_rest(self) -> None:
        """The caller abandoned the map: cancel what has not started, read no more."""
        with self._lock:
            self._closed = True
            for future in self.pending:
                future.cancel()

    def check_not_stopped(self) -> None:
        if self.stopped_by is not None and not self._feeder.exhausted:
            raise RuntimeError(
                "map() stopped before the end of its input: the pool was shut down "
                "while the map was being read"
            ) from self.stopped_by


class UnstartedMaps:
    """A pool's maps whose callers have not started reading them. At shutdown they run
    to the end of their input (see ``MapWindow``): ``pool.map(f, items)`` then
    ``shutdown()`` runs every item, as ``Executor.map`` would."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: set[MapWindow] = set()

    def add(self, window: MapWindow) -> None:
        with self._lock:
            self._windows.add(window)

    def started(self, window: MapWindow) -> Callable[[], None]:
        """What the map's iterator calls when its caller first reads it."""

        def started() -> None:
            with self._lock:
                self._windows.discard(window)

        return started

    def run_all(self) -> None:
        with self._lock:
            windows, self._windows = self._windows, set()
        for window in windows:
            window.submit_all()


def ordered_results(
    window: MapWindow, feeder: ChunkFeeder, deadline: float | None, started: Callable[[], None]
) -> Iterator[Any]:
    """Start the first chunks now; the returned iterator yields results in input order.

    ``started`` is called when the caller first asks for a result.
    """
    window.top_up()

    def chunks() -> Generator[Iterable[Any], None, None]:
        started()
        try:
            while window.pending:
                future = window.pending[0]
                values, error = _chunk_outcome(future, feeder, deadline)
                window.pending.popleft()
                window.top_up()
                yield _handing_out(values) if error is None else _then_raise(values, error)
            window.check_not_stopped()
        finally:
            window.cancel_rest()

    return MapIterator(chunks(), window)


def unordered_window(
    submit: ChunkSubmitter, feeder: ChunkFeeder, size: int
) -> tuple[MapWindow, queue.SimpleQueue[JobFuture[Any]]]:
    """A window whose chunks report to a queue as they finish, for ``unordered_results``."""
    done: queue.SimpleQueue[JobFuture[Any]] = queue.SimpleQueue()
    window = MapWindow(
        submit,
        feeder,
        size,
        on_submit=lambda f: f.add_done_callback(done.put),  # type: ignore[arg-type]
    )
    return window, done


def unordered_results(
    window: MapWindow,
    done: queue.SimpleQueue[JobFuture[Any]],
    feeder: ChunkFeeder,
    started: Callable[[], None],
) -> Iterator[Any]:
    """Like ``ordered_results`` but yields each chunk's results as soon as it is done."""
    window.top_up()

    def chunks() -> Generator[Iterable[Any], None, None]:
        started()
        try:
            while window.pending:
                future = done.get()
                window.pending.remove(future)
                values, error = _chunk_outcome(future, feeder, None)
                window.top_up()
                yield _handing_out(values) if error is None else _then_raise(values, error)
            window.check_not_stopped()
        finally:
            window.cancel_rest()

    return MapIterator(chunks(), window)


def chunk_call(fn: Callable[..., Any], star: bool) -> Callable[[list[Any]], tuple[Any, ...]]:
    """The (function, args) of the job that runs one chunk."""

    def call(chunk: list[Any]) -> tuple[Any, ...]:
        return (run_chunk, (fn, chunk, star))

    return call


def length_hint(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many items a map will produce, when the inputs know their length."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None
