"""The runner: set every contestant up, warm it up, then measure them interleaved.

One repetition runs every contestant once, in order (A B C ... A B C ...), so slow
drifts of a shared, noisy machine hit every contestant alike.  A contestant that
raises (a wrong or missing result included) is marked as an error and dropped from
the following rounds; its numbers are never reported.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import statistics
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

Metrics = dict[str, float]


class VerificationError(AssertionError):
    """A job returned a wrong result, or a result is missing."""


class TrialTimeout(Exception):
    """A single measurement exceeded its time budget (the peer probably hangs)."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`VerificationError` unless ``condition`` holds."""
    if not condition:
        raise VerificationError(message)


@dataclass
class Contestant:
    """One row of a scenario: something measured once per repetition."""

    label: str
    run: Callable[[bool], Metrics]  # run(warmup) -> metrics of one repetition
    setup: Callable[[], None] = lambda: None
    teardown: Callable[[], None] = lambda: None
    adapter_key: str = ""
    note: str = ""
    reference: bool = False  # a raw-OS reference row, not a pool
    warmup: bool = True  # run once, unmeasured, before the repetitions
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """The outcome for one contestant (or a peer that was not run)."""

    label: str
    status: str  # "ok" | "error" | "skipped" | "not run"
    adapter_key: str = ""
    note: str = ""
    reference: bool = False
    samples: dict[str, list[float]] = field(default_factory=dict)
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self, metric: str) -> float | None:
        values = self.samples.get(metric)
        return statistics.median(values) if values else None

    def summary(self, metric: str) -> tuple[float, float, float] | None:
        values = self.samples.get(metric)
        if not values:
            return None
        return statistics.median(values), min(values), max(values)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Raise :class:`TrialTimeout` in the main thread if the block runs too long."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum: int, frame: object) -> None:
        raise TrialTimeout(f"no answer within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


class Runner:
    """Runs contestants interleaved with warm-up and repetitions."""

    def __init__(self, repeat: int, budget: float, log: Callable[[str], None]) -> None:
        self.repeat = repeat
        self.budget = budget  # seconds allowed for one setup/warm-up/measurement
        self.log = log

    def attempt(self, row: Row, action: Callable[[], Any], what: str) -> Any:
        try:
            with time_budget(self.budget):
                return action()
        except Exception as exc:
            row.status = "error"
            row.error = f"{what}: {_describe(exc)}"
            row.samples.clear()  # an error is never reported as a number, not even partly
            self.log(f"    {row.label}: {row.error}")
            if not isinstance(exc, (VerificationError, TrialTimeout)):
                self.log(traceback.format_exc(limit=6))
            return None

    def run(self, contestants: Sequence[Contestant]) -> list[Row]:
        rows = [
            Row(c.label, "ok", c.adapter_key, c.note, c.reference, extra=c.extra)
            for c in contestants
        ]
        live: list[tuple[Contestant, Row]] = []
        try:
            for c, row in zip(contestants, rows, strict=True):
                self.attempt(row, c.setup, "setup")
                if row.status == "ok":
                    live.append((c, row))
            for c, row in live:
                if c.warmup:
                    self.attempt(row, functools.partial(c.run, True), "warm-up")
            for rep in range(self.repeat):
                for c, row in live:
                    if row.status != "ok":
                        continue
                    self._measure(c, row)
                self.log(f"    repetition {rep + 1}/{self.repeat} done")
        finally:
            for c, row in live:
                self._teardown(c, row)
        return rows

    def _teardown(self, c: Contestant, row: Row) -> None:
        try:
            with time_budget(self.budget):
                c.teardown()
        except Exception as exc:
            # The measurements stand; the failed shutdown is reported next to them.
            row.note = f"{row.note}; shutdown failed: {_describe(exc)}".lstrip("; ")
            self.log(f"    {row.label}: shutdown failed: {_describe(exc)}")

    def _measure(self, c: Contestant, row: Row) -> None:
        metrics = self.attempt(row, functools.partial(c.run, False), "run")
        if metrics is None:
            return
        for name, value in metrics.items():
            row.samples.setdefault(name, []).append(float(value))


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
