"""The main loop of ``taskq run``: read jobs, schedule them, write one result line per job.

Data flow::

    input lines ──(reader thread)──┐
                                   ├──> event queue ──> main thread ──> pool.schedule()
    finished futures ─(callbacks)──┘                         │
                                                             └──> one JSON line per job on stdout

The reader thread takes one *credit* per line it hands over and the main thread gives the credit
back when that job's result is written, so at most ``--maxsize + --workers`` jobs are read but
not yet reported: an endless stdin or a file of millions of lines runs in bounded memory.  The
main thread is the only writer of stdout, and flushes each line.
"""

from __future__ import annotations

import argparse
import functools
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import IO, Any, TypeAlias

import taskq
from taskq._cli_run_lines import (
    InvalidJob,
    JobId,
    Record,
    encode_record,
    error_record,
    iter_lines,
    parse_job,
    write_line,
)
from taskq._progress import ProgressLine, stream_is_tty

__all__ = ["Runner", "Tally"]

WAKE_UP_EVERY = 0.2  # seconds; how late Ctrl-C may be noticed while nothing else happens


@dataclass
class Tally:
    """What happened so far, for the summary line and the exit status."""

    succeeded: int = 0
    failed: int = 0
    invalid: int = 0
    started: float = field(default_factory=time.monotonic)

    def count(self, record: Record) -> bool:
        """Count one written result; True if it is a success."""
        if record["ok"]:
            self.succeeded += 1
        else:
            self.failed += 1
            self.invalid += record["error"]["type"] == "InvalidJob"
        return bool(record["ok"])

    def summary(self, *, interrupted: bool = False, unfinished: int = 0) -> str:
        elapsed = time.monotonic() - self.started
        counts = f"{self.succeeded} succeeded, {self.failed} failed"
        if self.invalid:
            counts += f" ({self.invalid} invalid line{'s' * (self.invalid != 1)})"
        if interrupted:
            return f"taskq: interrupted after {elapsed:.1f}s: {counts}, {unfinished} unfinished"
        total = self.succeeded + self.failed
        return f"taskq: {total} job{'s' * (total != 1)} in {elapsed:.1f}s: {counts}"


@dataclass(eq=False)
class Flight:
    """A job from the moment its line is read until its result line is written."""

    id: JobId
    line: int
    submitted: float
    future: taskq.JobFuture[Any] | None = None
    finished: float | None = None
    record: Record | None = None  # set at once for a line rejected before running

    @property
    def ready(self) -> bool:
        return self.record is not None or self.finished is not None

    def result_record(self) -> Record:
        if self.record is not None:
            return self.record
        assert self.future is not None and self.finished is not None
        seconds = self.finished - self.submitted
        attempts = self.future.attempts
        if self.future.cancelled():
            cancelled = CancelledError("the job was cancelled")
            return error_record(self.id, self.line, cancelled, attempts, seconds)
        error = self.future.exception()
        if error is not None:
            return error_record(self.id, self.line, error, attempts, seconds)
        result = self.future.result()
        return {
            "id": self.id,
            "line": self.line,
            "ok": True,
            "result": result,
            "attempts": attempts,
            "seconds": round(seconds, 6),
        }


@dataclass(frozen=True)
class InputEnd:
    """Posted by the reader thread when the input is exhausted (or failed)."""

    error: OSError | ValueError | None = None


# A line read, a job finished, the end of the input.
Event: TypeAlias = "tuple[int, bytes] | Flight | InputEnd"


class Runner:
    """Feeds input lines to the pool and writes each job's result line (see the module doc)."""

    def __init__(
        self,
        target: Callable[..., Any],
        ns: argparse.Namespace,
        tally: Tally,
        progress: ProgressLine | None,
    ) -> None:
        self.target = target
        self.retries: int = ns.retries
        self.ordered: bool = ns.ordered
        self.tally = tally
        self.progress = progress
        self.unfinished = 0  # read but not yet written
        self.input_error: BaseException | None = None
        self._events: queue.Queue[Event] = queue.Queue()
        self._in_order: deque[Flight] = deque()  # with --ordered: every unwritten job
        workers = ns.workers or os.cpu_count() or 1
        window = ns.maxsize + workers if ns.maxsize else None
        self._credits = threading.Semaphore(window) if window else None
        self._clear_progress_per_line = progress is not None and stream_is_tty(sys.stdout)

    def run(self, pool: taskq.Pool, source: IO[bytes]) -> None:
        """Return when every input line has been read and its result written."""
        threading.Thread(target=self._read, args=(source,), name="taskq-input", daemon=True).start()
        input_done = False
        while not (input_done and self.unfinished == 0):
            event = self._next_event()
            if isinstance(event, tuple):
                self._start(pool, *event)
            elif isinstance(event, Flight):
                self._finished(event)
            elif isinstance(event, InputEnd):
                input_done = True
                self._input_ended(event)

    def _read(self, source: IO[bytes]) -> None:
        # The reader thread: one credit per line, given back when the line's result is written.
        try:
            with source:
                for number, raw in iter_lines(source):
                    if self._credits is not None:
                        self._credits.acquire()
                    self._events.put((number, raw))
        except (OSError, ValueError) as exc:
            self._events.put(InputEnd(exc))
        else:
            self._events.put(InputEnd())

    def _next_event(self) -> Event | None:
        # Never block without a timeout: the kernel may deliver Ctrl-C's SIGINT to another
        # thread, and Python runs the handler (KeyboardInterrupt) only when the main thread
        # wakes up.
        try:
            return self._events.get(timeout=WAKE_UP_EVERY)
        except queue.Empty:
            if self.progress is not None:
                self.progress.refresh()  # keep the rate and ETA moving while nothing happens
            return None

    def _input_ended(self, end: InputEnd) -> None:
        if end.error is not None:
            self.input_error = end.error
            print(f"\ntaskq: error: reading the input failed: {end.error}", file=sys.stderr)

    def _start(self, pool: taskq.Pool, number: int, raw: bytes) -> None:
        self.unfinished += 1
        flight = self._submit(pool, number, raw)
        if self.ordered:
            self._in_order.append(flight)
            self._write_in_order()
        elif flight.record is not None:  # rejected; a finished job's own event writes it
            self._write(flight)

    def _submit(self, pool: taskq.Pool, number: int, raw: bytes) -> Flight:
        now = time.monotonic()
        try:
            job = parse_job(number, raw)
        except InvalidJob as exc:
            record = error_record(exc.job_id, number, exc, 0, 0.0)
            return Flight(exc.job_id, number, now, record=record)
        flight = Flight(job.id, number, now)
        retries = self.retries if job.retries is None else job.retries
        try:
            flight.future = pool.schedule(
                self.target,
                job.args,
                job.kwargs,
                priority=job.priority,
                timeout=job.timeout,
                retries=retries,
            )
        except Exception as exc:  # e.g. the pool is broken: this job fails, the run goes on
            flight.record = error_record(job.id, number, exc, 0, time.monotonic() - now)
            return flight
        flight.future.add_done_callback(functools.partial(self._on_done, flight))
        return flight

    def _on_done(self, flight: Flight, _future: Future[Any]) -> None:
        # Runs in the pool's thread: note the time, hand over to the main thread.
        flight.finished = time.monotonic()
        self._events.put(flight)

    def _finished(self, flight: Flight) -> None:
        if self.ordered:
            self._write_in_order()
        else:
            self._write(flight)

    def _write_in_order(self) -> None:
        while self._in_order and self._in_order[0].ready:
            self._write(self._in_order.popleft())

    def _write(self, flight: Flight) -> None:
        record, line = encode_record(flight.result_record())
        if self._clear_progress_per_line and self.progress is not None:
            self.progress.clear()  # stdout and stderr share the terminal
        write_line(sys.stdout, line)
        ok = self.tally.count(record)
        self.unfinished -= 1
        if self._credits is not None:
            self._credits.release()
        if self.progress is not None:
            self.progress.advance(failed=0 if ok else 1)
