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

ChunkSubmitter = Callable[[list[Any]], "JobFuture"]


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
    future: JobFuture, feeder: ChunkFeeder, deadline: float | None
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

    __slots__ = ("_chunks", "_items")

    def __init__(self, chunks: Generator[Iterable[Any], None, None]):
        self._chunks = chunks
        self._items = itertools.chain.from_iterable(chunks)

    def __iter__(self) -> Iterator[Any]:
        return self._items

    def __next__(self) -> Any:
        return next(self._items)

    def close(self) -> None:
        self._chunks.close()


def _then_raise(values: list[Any], error: bytes) -> Iterator[Any]:
    """The results before the item that raised, then its exception."""
    yield from values
    raise unpack_exception(error)


def ordered_results(
    submit: ChunkSubmitter, feeder: ChunkFeeder, window: int, deadline: float | None
) -> Iterator[Any]:
    """Start ``window`` chunks now; the returned iterator yields results in input order."""
    pending: deque[JobFuture] = deque()

    def top_up() -> None:
        while len(pending) < window:
            chunk = feeder.next_chunk()
            if chunk is None:
                return
            pending.append(submit(chunk))

    top_up()

    def chunks() -> Generator[Iterable[Any], None, None]:
        try:
            while pending:
                future = pending.popleft()
                values, error = _chunk_outcome(future, feeder, deadline)
                top_up()
                yield values if error is None else _then_raise(values, error)
        finally:
            for future in pending:
                future.cancel()

    return MapIterator(chunks())


def unordered_results(submit: ChunkSubmitter, feeder: ChunkFeeder, window: int) -> Iterator[Any]:
    """Like ``ordered_results`` but yields each chunk's results as soon as it is done."""
    done: queue.SimpleQueue[JobFuture] = queue.SimpleQueue()
    pending: set[JobFuture] = set()

    def top_up() -> None:
        while len(pending) < window:
            chunk = feeder.next_chunk()
            if chunk is None:
                return
            future = submit(chunk)
            pending.add(future)
            future.add_done_callback(lambda f: done.put(f))  # type: ignore[arg-type]

    top_up()

    def chunks() -> Generator[Iterable[Any], None, None]:
        try:
            while pending:
                future = done.get()
                pending.discard(future)
                values, error = _chunk_outcome(future, feeder, None)
                top_up()
                yield values if error is None else _then_raise(values, error)
        finally:
            for future in pending:
                future.cancel()

    return MapIterator(chunks())


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
