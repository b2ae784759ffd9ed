"""Progress display on stderr, for ``Pool.map(..., progress=True)`` and the ``taskq`` command.

With tqdm installed (``pip install 'taskq[progress]'``) :func:`track` draws a tqdm bar, which
turns itself off when stderr is not a terminal.  Without tqdm, a plain line is redrawn at most
once a second when stderr is a terminal, and nothing at all is printed otherwise: progress
output must never end up in a log file or a pipe.
"""

from __future__ import annotations

import importlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

__all__ = ["ProgressLine", "format_duration", "stream_is_tty", "track"]

T = TypeVar("T")

HINT = "taskq: for a nicer progress bar: pip install 'taskq[progress]'\n"

_hint_shown = False


def track(items: Iterator[T], total: int | None, *, desc: str = "taskq") -> Iterator[T]:
    """Yield items unchanged while showing progress on stderr.

    ``total`` is the number of items expected, or None when unknown.  Uses tqdm when it is
    installed; otherwise a plain line, only when stderr is a terminal.
    """
    tqdm = _load_tqdm()
    if tqdm is not None:
        return _track_tqdm(tqdm, items, total, desc)
    return _track_plain(items, total, desc)


def _load_tqdm() -> Any:
    """Return the ``tqdm.tqdm`` class, or None when tqdm is not installed."""
    try:
        return importlib.import_module("tqdm").tqdm
    except ImportError:
        return None


def _track_tqdm(tqdm: Any, items: Iterator[T], total: int | None, desc: str) -> Iterator[T]:
    # disable=None: tqdm's own tty detection, off when stderr is not a terminal.
    with tqdm(items, total=total, desc=desc, disable=None, file=sys.stderr) as bar:
        yield from bar


def _track_plain(items: Iterator[T], total: int | None, desc: str) -> Iterator[T]:
    stream = sys.stderr
    if not stream_is_tty(stream):
        yield from items
        return
    show_hint(stream)
    line = ProgressLine(stream, total, desc=desc)
    try:
        for item in items:
            line.advance()
            yield item
    finally:
        line.close()


def stream_is_tty(stream: IO[str] | None) -> bool:
    """True when ``stream`` is an open terminal (False for None, closed or odd streams)."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def show_hint(stream: IO[str]) -> None:
    """Print, once per process, how to get the nicer tqdm bar."""
    global _hint_shown
    if not _hint_shown:
        _hint_shown = True
        stream.write(HINT)
        stream.flush()


class ProgressLine:
    """A single status line, redrawn in place with ``\\r`` at most once per ``interval``.

    Shows ``done/total`` (or just ``done`` when the total is unknown), the rate, the ETA and,
    when there are any, the failures.  The caller decides whether to draw at all (for
    instance only when the stream is a terminal); this class always writes.
    """

    def __init__(
        self,
        stream: IO[str],
        total: int | None,
        *,
        desc: str = "taskq",
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.total = total
        self.desc = desc
        self.done = 0
        self.failed = 0
        self._interval = interval
        self._clock = clock
        self._start = clock()
        self._last_draw = -math.inf
        self._width = 0

    def advance(self, n: int = 1, *, failed: int = 0) -> None:
        """Count ``n`` more finished items (``failed`` of them failed) and maybe redraw."""
        self.done += n
        self.failed += failed
        self.refresh()

    def refresh(self, *, force: bool = False) -> None:
        """Redraw if the last drawing is older than the interval (or when forced)."""
        now = self._clock()
        if force or now - self._last_draw >= self._interval:
            self._last_draw = now
            self._draw(self.render(now))

    def clear(self) -> None:
        """Blank the line (before other output goes to the same terminal); the next
        :meth:`refresh` draws it again at once."""
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
        self._last_draw = -math.inf

    def close(self) -> None:
        """Draw the final state and end the line."""
        self.refresh(force=True)
        self.stream.write("\n")
        self.stream.flush()

    def render(self, now: float | None = None) -> str:
        """The text of the line, e.g. ``taskq: 40/100 (40%) | 8.0/s | ETA 0:07 | 2 failed``."""
        elapsed = (self._clock() if now is None else now) - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self._count()}", f"{rate:.1f}/s" if rate else "?/s"]
        if self.total is not None and self.done < self.total:
            eta = (self.total - self.done) / rate if rate else None
            parts.append(f"ETA {format_duration(eta)}")
        else:
            parts.append(f"elapsed {format_duration(elapsed)}")
        if self.failed:
            parts.append(f"{self.failed} failed")
        return " | ".join(parts)

    def _count(self) -> str:
        if self.total is None:
            return f"{self.done} done"
        percent = 100 * self.done // self.total if self.total else 100
        return f"{self.done}/{self.total} ({percent}%)"

    def _draw(self, text: str) -> None:
        # Pad with spaces so that a shorter line fully covers the previous one.
        padding = " " * max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write(f"\r{text}{padding}")
        self.stream.flush()


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``'1:15'``, ``3725`` -> ``'1:02:05'``, None -> ``'?'``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
