"""``taskq run``: run a function over JSON Lines jobs on a pool of worker processes.

This module is the command: its options, loading the target, opening the input, the dry run,
the pool, and the exit status.  The input and output formats are in :mod:`taskq._cli_run_lines`,
the loop that feeds the pool and writes the results in :mod:`taskq._cli_run_loop`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

import taskq
from taskq._cli_exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from taskq._cli_import import load_target
from taskq._cli_run_lines import (
    InvalidJob,
    check_call,
    error_record,
    iter_lines,
    parse_job,
    write_line,
)
from taskq._cli_run_loop import Runner, Tally
from taskq._cli_run_stats import stats_table
from taskq._progress import ProgressLine, stream_is_tty

__all__ = ["NAME", "add_parser", "run"]

NAME = "run"

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


def add_parser(commands: Any) -> None:
    """Add ``taskq run`` to ``commands`` (the top-level parser's subparsers)."""
    parser = commands.add_parser(
        NAME,
        help="run FUNCTION once per JSON line of input",
        description="Run FUNCTION once per job read as JSON Lines; write one JSON line per job.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=run)
    add = parser.add_argument
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
        type=positive_int,
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
        type=positive_float,
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
        "--aging",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="a waiting job's priority improves by 1 every SECONDS (default: never)",
    )
    add(
        "--ordered",
        action="store_true",
        help="write results in input order instead of as jobs finish",
    )
    add("--dry-run", action="store_true", help="check the target and every input line, run nothing")
    add("-q", "--quiet", action="store_true", help="no progress line and no summary on stderr")
    add(
        "--stats",
        action="store_true",
        help="at the end, print per priority: jobs, queue wait and run time p50/p99 (stderr)",
    )


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def run(ns: argparse.Namespace) -> int:
    """``taskq run``: load the target, open the input, then run (or just check) the jobs."""
    try:
        if ns.aging is not None and ns.order != "priority":
            raise UsageError("--aging orders by priority: it cannot be used with --order "
                             f"{ns.order}")  # fmt: skip
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


def make_pool(ns: argparse.Namespace) -> taskq.Pool:
    context = multiprocessing.get_context(ns.start_method) if ns.start_method else None
    return taskq.Pool(
        ns.workers,
        context,
        maxsize=ns.maxsize,
        order=ns.order,
        job_timeout=ns.timeout,
        aging=ns.aging,
    )


def run_jobs(target: Callable[..., Any], source: IO[bytes], ns: argparse.Namespace) -> int:
    """Run every job on a pool; Ctrl-C stops the running jobs and exits with 130."""
    tally = Tally()
    progress = make_progress(source, quiet=ns.quiet)
    runner = Runner(target, ns, tally, progress)
    pool: taskq.Pool | None = None
    try:
        with make_pool(ns) as pool:
            try:
                runner.run(pool, source)
            except KeyboardInterrupt:
                # Leave the `with` at once: Pool.__exit__ sees the KeyboardInterrupt and calls
                # terminate(), which cancels the queued jobs itself and kills the running
                # ones. Dropping the queued jobs first, as below, would only add a round trip
                # to the manager thread before the running jobs are stopped.
                raise
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # drop the queued jobs
                raise
    except KeyboardInterrupt:
        _finish(progress, tally.summary(interrupted=True, unfinished=runner.unfinished), ns)
        _print_stats(pool, ns)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early, e.g. `taskq run ... | head`
        _silence_stdout()
        return EXIT_FAILED
    _finish(progress, tally.summary(), ns)
    _print_stats(pool, ns)
    return EXIT_OK if tally.failed == 0 and runner.input_error is None else EXIT_FAILED


def _finish(progress: ProgressLine | None, summary: str, ns: argparse.Namespace) -> None:
    if progress is not None:
        progress.close()
    if not ns.quiet:
        print(summary, file=sys.stderr, flush=True)


def _print_stats(pool: taskq.Pool | None, ns: argparse.Namespace) -> None:
    if ns.stats and pool is not None:  # asked for: printed even with --quiet
        print(stats_table(pool.stats()), file=sys.stderr, flush=True)


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
