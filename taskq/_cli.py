"""The ``taskq`` command: run a function over JSON Lines jobs on a pool of worker processes.

Data flow of ``taskq run``::

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
import importlib
import importlib.metadata
import inspect
import json
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeAlias

import taskq
from taskq._progress import ProgressLine, stream_is_tty

__all__ = ["InvalidJob", "Job", "load_target", "main", "parse_job"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

JobId: TypeAlias = "str | int | float | bool | None"
Record: TypeAlias = "dict[str, Any]"

WAKE_UP_EVERY = 0.2  # seconds; how late Ctrl-C may be noticed while nothing else happens

JOB_FIELDS = ("id", "args", "kwargs", "priority", "timeout", "retries")

DESCRIPTION = """\
Run a Python function on a pool of worker processes, one job per input line,
with priorities, timeouts and retries.
"""

EXAMPLE = """\
example:
  $ cat jobs.jsonl
  [2, 3]
  {"id": "big", "args": [1000, 2000], "priority": -1, "timeout": 10, "retries": 2}
  $ taskq run operator:add jobs.jsonl
  {"id": "big", "line": 2, "ok": true, "result": 3000, "attempts": 1, "seconds": 0.01}
  {"id": 1, "line": 1, "ok": true, "result": 5, "attempts": 1, "seconds": 0.01}

See 'taskq run --help' for the input format and every option.
"""

RUN_EPILOG = """\
input: one job per line (JSON Lines); blank lines are skipped.
  {"id": "a1", "args": [1, 2], "kwargs": {"scale": 3}, "priority": 3, "timeout": 5, "retries": 2}
      every field is optional: id defaults to the line number, priority to 0 (the smaller
      number runs first), timeout to --timeout (seconds), retries to --retries
  [1, 2]          any other JSON array: the positional arguments
  7               any other JSON value: the single argument (to pass one object as the
                  argument, write {"args": [{...}]})

output: one JSON line per job, as jobs finish (in input order with --ordered):
  {"id": "a1", "line": 1, "ok": true, "result": 9, "attempts": 1, "seconds": 0.02}
  {"id": 2, "line": 2, "ok": false, "error": {"type": "ValueError", "message": "..."}, ...}
  A malformed line gives an error of type "InvalidJob" naming the line; other jobs still run.
  "seconds" is the wall time from scheduling the job to its result, retries included.

priorities apply among the jobs read ahead: up to --maxsize + --workers at a time.

exit status: 0 if every job succeeded, 1 if any failed, 2 for usage errors, 130 on Ctrl-C
(running jobs are stopped; the lines already written are complete).

example:
  taskq run mypackage.jobs:resize images.jsonl > results.jsonl
  taskq run ./jobs.py:resize - --workers 4 --ordered < images.jsonl
"""


class UsageError(Exception):
    """Raised for a command line that cannot run: bad target, unreadable input."""


# ---------------------------------------------------------------------------------------------
# Entry point


def main(argv: list[str] | None = None) -> int:
    """Run the ``taskq`` command with ``argv`` (default: ``sys.argv[1:]``); return its status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["bench"]:  # everything after "bench" belongs to the suite, even --help
        return run_bench(args[1:])
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if ns.command != "run":
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return run_command(ns)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``taskq`` command."""
    parser = argparse.ArgumentParser(
        prog="taskq",
        description=DESCRIPTION,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"taskq {version()}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    _add_run_parser(commands)
    commands.add_parser(
        "bench",
        help="run the benchmark suite; arguments are passed to it (needs a source checkout)",
    )
    return parser


def _add_run_parser(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run FUNCTION once per JSON line of input",
        description="Run FUNCTION once per job read as JSON Lines; write one JSON line per job.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = run.add_argument
    add(
        "target",
        metavar="MODULE:FUNCTION",
        help="the job function, e.g. mypackage.jobs:resize or path/to/jobs.py:resize",
    )
    add(
        "input",
        metavar="FILE",
        nargs="?",
        default="-",
        help="the jobs, as JSON Lines; '-' or nothing reads standard input",
    )
    add(
        "-w",
        "--workers",
        type=_positive_int,
        default=None,
        help="number of worker processes (default: the number of CPUs)",
    )
    add(
        "--maxsize",
        type=_non_negative_int,
        default=1000,
        help="jobs read ahead and queued beyond the running ones (default: 1000; 0 = no bound)",
    )
    add(
        "--timeout",
        type=_positive_float,
        default=None,
        help="default time limit of a job, in seconds (default: none)",
    )
    add(
        "--retries",
        type=_non_negative_int,
        default=0,
        help="default number of retries of a failed job (default: 0)",
    )
    add(
        "--start-method",
        choices=multiprocessing.get_all_start_methods(),
        default=None,
        help="how worker processes are started (default: the platform's)",
    )
    add(
        "--order",
        choices=("priority", "fifo", "lifo"),
        default="priority",
        help="which queued job runs next (default: priority, the smallest number first)",
    )
    add(
        "--ordered",
        action="store_true",
        help="write results in input order instead of as jobs finish",
    )
    add("--dry-run", action="store_true", help="check the target and every input line, run nothing")
    add("-q", "--quiet", action="store_true", help="no progress line and no summary on stderr")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def version() -> str:
    """taskq's version: the installed distribution's, else ``taskq.__version__``."""
    try:
        return importlib.metadata.version("taskq")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(taskq, "__version__", "unknown"))


# ---------------------------------------------------------------------------------------------
# taskq bench


def run_bench(args: list[str]) -> int:
    """Run ``benchmarks.__main__.main(args)`` from the source checkout taskq was loaded from."""
    checkout = Path(__file__).resolve().parent.parent  # the directory holding taskq/
    if not (checkout / "benchmarks" / "__main__.py").is_file():
        print(
            f"taskq: error: the benchmark suite needs a source checkout of taskq, and there is "
            f"no benchmarks/ directory beside the taskq package in {checkout}.\n"
            "Clone the taskq repository and run 'python -m taskq bench' from its top directory.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _prepend_import_path(str(checkout))
    suite = importlib.import_module("benchmarks.__main__")
    try:
        status = suite.main(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # the suite's own argparse: --help, usage errors
        status = exc.code
    if status is None:
        return EXIT_OK
    return status if isinstance(status, int) else EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# The job function


def load_target(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNCTION``, where MODULE is a module name or a path to a ``.py`` file."""
    module_part, _, name = spec.rpartition(":")
    if not module_part or not name:
        raise UsageError(
            f"expected MODULE:FUNCTION, e.g. mypackage.jobs:resize or jobs.py:resize, not {spec!r}"
        )
    if module_part.endswith(".py") or os.sep in module_part:
        module = _import_file(Path(module_part))
    else:
        _prepend_import_path(os.getcwd())  # as `python -m` does, also for the console script
        module = _import_module(module_part)
    try:
        target = functools.reduce(getattr, name.split("."), module)
    except AttributeError:
        raise UsageError(f"{module_part} has no attribute {name!r}") from None
    if not callable(target):
        raise UsageError(f"{spec} is not callable: it is a {type(target).__name__}")
    return target  # type: ignore[no-any-return]


def _import_file(path: Path) -> Any:
    """Import a ``.py`` file under its stem, its directory on the import path.

    Workers started with spawn or forkserver unpickle the job function by module name, so the
    file must be importable by that name in every process, not loaded privately: its directory
    goes first on ``sys.path`` (which spawn hands to its children) and on ``PYTHONPATH``.
    """
    path = path.resolve()
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    _prepend_import_path(str(path.parent))
    module = _import_module(path.stem)
    loaded = getattr(module, "__file__", None)
    if loaded is None or Path(loaded).resolve() != path:
        raise UsageError(
            f"cannot import {path} as module {path.stem!r}: that name is already taken by "
            f"{loaded or 'a built-in module'}; rename the file"
        )
    return module


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise UsageError(f"cannot import {name}: {type(exc).__name__}: {exc}") from exc


def _prepend_import_path(directory: str) -> None:
    if directory not in sys.path:
        sys.path.insert(0, directory)
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if directory not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([directory, *filter(None, entries)])


# ---------------------------------------------------------------------------------------------
# Input: JSON Lines to jobs


@dataclass(frozen=True)
class Job:
    """One input line, checked: what to pass to ``pool.schedule``."""

    line: int
    id: JobId
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: float = 0
    timeout: float | None = None  # None: the pool's default (--timeout)
    retries: int | None = None  # None: --retries


class InvalidJob(ValueError):
    """Raised for an input line that is not a valid job; the message names the line."""

    def __init__(self, line: int, problem: str, job_id: JobId = None) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.job_id = line if job_id is None else job_id


def iter_lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, line)`` for the non-blank lines of ``source``, lazily."""
    for number, raw in enumerate(source, start=1):
        if raw.strip():
            yield number, raw


def parse_job(line: int, raw: bytes | str) -> Job:
    """Turn one input line into a :class:`Job`, or raise :class:`InvalidJob` saying why."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text.lstrip("\ufeff"))  # JSON Lines is UTF-8, maybe with a BOM
    except UnicodeDecodeError as exc:
        raise InvalidJob(line, f"not UTF-8 text: {exc}") from None
    except ValueError as exc:
        raise InvalidJob(line, f"not valid JSON: {exc}") from None
    if isinstance(value, dict):
        return _job_from_object(line, value)
    args = tuple(value) if isinstance(value, list) else (value,)
    return Job(line=line, id=line, args=args)


def _job_from_object(line: int, obj: dict[str, Any]) -> Job:
    job_id = line if obj.get("id") is None else obj["id"]
    if isinstance(job_id, (dict, list)):
        raise InvalidJob(line, f"'id' must be a string or a number, not {_json_type(job_id)}")
    unknown = [key for key in obj if key not in JOB_FIELDS]
    if unknown:
        raise InvalidJob(
            line,
            f"unknown field {', '.join(map(repr, unknown))}"
            f" (the fields are {', '.join(JOB_FIELDS)})",
            job_id,
        )
    try:
        return Job(
            line=line,
            id=job_id,
            args=tuple(_field(obj, "args", list, "an array", [])),
            kwargs=_field(obj, "kwargs", dict, "an object", {}),
            priority=_field(obj, "priority", (int, float), "a number", 0),
            timeout=_checked_timeout(obj),
            retries=_checked_retries(obj),
        )
    except ValueError as exc:
        raise InvalidJob(line, str(exc), job_id) from None


def _field(
    obj: dict[str, Any], name: str, kinds: type | tuple[type, ...], wanted: str, default: Any
) -> Any:
    value = obj.get(name, default)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name!r} must be {wanted}, not {_json_type(value)}")
    return value


def _checked_timeout(obj: dict[str, Any]) -> float | None:
    if obj.get("timeout") is None:
        return None
    timeout: float = _field(obj, "timeout", (int, float), "a number", None)
    if timeout <= 0:
        raise ValueError(f"'timeout' must be more than 0 seconds, not {timeout}")
    return timeout


def _checked_retries(obj: dict[str, Any]) -> int | None:
    if obj.get("retries") is None:
        return None
    retries: int = _field(obj, "retries", int, "an integer", None)
    if retries < 0:
        raise ValueError(f"'retries' must be 0 or more, not {retries}")
    return retries


def _json_type(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def check_call(target: Callable[..., Any], job: Job) -> None:
    """Raise :class:`InvalidJob` if the job's arguments cannot bind to ``target``'s signature."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # some builtins have no signature: nothing to check
        return
    try:
        signature.bind(*job.args, **job.kwargs)
    except TypeError as exc:
        name = getattr(target, "__name__", "the function")
        problem = f"arguments do not fit {name}{signature}: {exc}"
        raise InvalidJob(job.line, problem, job.id) from None


# ---------------------------------------------------------------------------------------------
# Output: results to JSON Lines


def error_record(
    job_id: JobId, line: int, error: BaseException, attempts: int, seconds: float
) -> Record:
    """The result line of a job that failed (or of a line that was not a valid job)."""
    return {
        "id": job_id,
        "line": line,
        "ok": False,
        "error": {"type": _error_type(error), "message": str(error)},
        "attempts": attempts,
        "seconds": round(seconds, 6),
    }


def _error_type(error: BaseException) -> str:
    if isinstance(error, taskq.RemoteError):
        return error.type_name  # the job's own exception type, which could not be unpickled
    return type(error).__name__


def encode_record(record: Record) -> tuple[Record, str]:
    """The record and its JSON line; a result that JSON cannot hold makes it an error record."""
    try:
        return record, json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problem = TypeError(f"the result cannot be written as JSON: {exc}")
        fallback = error_record(record["id"], record["line"], problem, record["attempts"], 0)
        fallback["seconds"] = record["seconds"]
        return fallback, json.dumps(fallback)


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


# ---------------------------------------------------------------------------------------------
# taskq run


def run_command(ns: argparse.Namespace) -> int:
    """``taskq run``: load the target, open the input, then run (or just check) the jobs."""
    try:
        target = load_target(ns.target)
        source = open_input(ns.input, quiet=ns.quiet)
    except UsageError as exc:
        print(f"taskq: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if ns.dry_run:
        with source:
            return dry_run(target, source, quiet=ns.quiet)
    # The reader thread closes the source: closing it here while that thread is blocked
    # reading it (an open stdin, after Ctrl-C) would wait for its lock forever.
    return run_jobs(target, source, ns)


def open_input(name: str, *, quiet: bool = False) -> IO[bytes]:
    """The input as a binary stream: a file, or standard input for ``-``."""
    if name == "-":
        if not quiet and stream_is_tty(sys.stdin):
            print(
                "taskq: reading jobs from the terminal, one JSON per line; end with Ctrl-D",
                file=sys.stderr,
            )
        return open(sys.stdin.fileno(), "rb", closefd=False)  # the caller closes it
    try:
        return open(name, "rb")  # the caller closes it
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None


def dry_run(target: Callable[..., Any], source: IO[bytes], *, quiet: bool) -> int:
    """Check every line (and that its arguments fit the target); write only the problems."""
    valid = invalid = 0
    for number, raw in iter_lines(source):
        try:
            check_call(target, parse_job(number, raw))
            valid += 1
        except InvalidJob as exc:
            invalid += 1
            write_line(sys.stdout, json.dumps(error_record(exc.job_id, number, exc, 0, 0.0)))
    if not quiet:
        print(
            f"taskq: dry run: {valid} valid job{'s' * (valid != 1)}, "
            f"{invalid} invalid line{'s' * (invalid != 1)}",
            file=sys.stderr,
        )
    return EXIT_FAILED if invalid else EXIT_OK


def write_line(stream: IO[str], line: str) -> None:
    # One write per line, then flush: an interruption never leaves half a line behind.
    stream.write(line + "\n")
    stream.flush()


def make_pool(ns: argparse.Namespace) -> taskq.Pool:
    context = multiprocessing.get_context(ns.start_method) if ns.start_method else None
    return taskq.Pool(
        ns.workers, context, maxsize=ns.maxsize, order=ns.order, job_timeout=ns.timeout
    )


def run_jobs(target: Callable[..., Any], source: IO[bytes], ns: argparse.Namespace) -> int:
    """Run every job on a pool; Ctrl-C stops the running jobs and exits with 130."""
    tally = Tally()
    progress = make_progress(source, quiet=ns.quiet)
    runner = Runner(target, ns, tally, progress)
    try:
        with make_pool(ns) as pool:
            try:
                runner.run(pool, source)
            except KeyboardInterrupt:
                # Leaving the `with` on KeyboardInterrupt cancels the queued jobs and
                # terminates the running ones. Not shutdown(wait=False, cancel_futures=True)
                # first: terminate() right after it can wait forever on the pool's stopping
                # manager thread (a race in Manager.call).
                raise
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # drop the queued jobs
                raise
    except KeyboardInterrupt:
        _finish(progress, tally.summary(interrupted=True, unfinished=runner.unfinished), ns)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early, e.g. `taskq run ... | head`
        _silence_stdout()
        return EXIT_FAILED
    _finish(progress, tally.summary(), ns)
    return EXIT_OK if tally.failed == 0 and runner.input_error is None else EXIT_FAILED


def _finish(progress: ProgressLine | None, summary: str, ns: argparse.Namespace) -> None:
    if progress is not None:
        progress.close()
    if not ns.quiet:
        print(summary, file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def make_progress(source: IO[bytes], *, quiet: bool) -> ProgressLine | None:
    """A live progress line when stderr is a terminal; its total is counted on the side."""
    if quiet or not stream_is_tty(sys.stderr):
        return None
    progress = ProgressLine(sys.stderr, None, desc="taskq")
    name = getattr(source, "name", None)
    if isinstance(name, str) and os.path.isfile(name):
        threading.Thread(target=_count_jobs, args=(name, progress), daemon=True).start()
    return progress


def _count_jobs(path: str, progress: ProgressLine) -> None:
    with open(path, "rb") as lines:
        progress.total = sum(1 for _ in iter_lines(lines))


@dataclass(eq=False)
class Flight:
    """A job from the moment its line is read until its result line is written."""

    id: JobId
    line: int
    submitted: float
    future: taskq.JobFuture | None = None
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
