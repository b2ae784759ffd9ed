"""``taskq bench``: run the benchmark suite of the source checkout taskq was loaded from.

The suite parses its own arguments: :func:`taskq._cli.main` hands it everything after
``bench`` unparsed, ``--help`` included, so the subcommand registered here only lists
``bench`` in ``taskq --help``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from taskq._cli_exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from taskq._cli_import import prepend_import_path

__all__ = ["NAME", "add_parser", "run"]

NAME = "bench"


def add_parser(commands: Any) -> None:
    """List ``bench`` among the commands; it sets no handler, see the module doc."""
    commands.add_parser(
        NAME,
        help="run the benchmark suite; arguments are passed to it (needs a source checkout)",
    )


def run(args: list[str]) -> int:
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
    prepend_import_path(str(checkout))
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
