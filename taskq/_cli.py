"""The ``taskq`` command: the top-level parser and the dispatch to its subcommands.

Each subcommand is a module ``taskq/_cli_NAME.py`` with ``add_parser(commands)``, which adds
its parser to the top-level subparsers and sets ``handler`` to its ``run(args) -> int``; a
new subcommand is one new module and one entry in :data:`COMMANDS`.  ``taskq bench`` is the
exception: it takes the rest of the command line unparsed (see :mod:`taskq._cli_bench`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Callable

import taskq
from taskq import _cli_bench, _cli_run, _cli_status, _cli_worker
from taskq._cli_exit import EXIT_USAGE

__all__ = ["main"]

COMMANDS = (_cli_run, _cli_worker, _cli_status, _cli_bench)  # in the order of `taskq --help`

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


def main(argv: list[str] | None = None) -> int:
    """Run the ``taskq`` command with ``argv`` (default: ``sys.argv[1:]``); return its status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == [_cli_bench.NAME]:  # everything after "bench" belongs to the suite, even --help
        return _cli_bench.run(args[1:])
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] | None = getattr(ns, "handler", None)
    if handler is None:  # no command, or "bench" after "--" (see above)
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return handler(ns)


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
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def version() -> str:
    """taskq's version: the installed distribution's, else ``taskq.__version__``."""
    try:
        return importlib.metadata.version("taskq")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(taskq, "__version__", "unknown"))
