"""A progress bar over a long ``map``: ``pool.map(..., progress=True)``.

The bar goes to stderr, and only when stderr is a terminal (so logs and pipes stay clean).
With tqdm installed (``pip install 'taskq[progress]'``) it is a tqdm bar; without, a plain
line updated once a second.

Run it in a terminal:  python examples/progress_bar.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

try:
    import taskq
except ImportError:  # run from a source checkout without installing taskq
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import taskq


def work(item: int) -> int:
    time.sleep(0.01)
    return item * 2


def main() -> None:
    if not sys.stderr.isatty():
        print("(stderr is not a terminal, so no bar is drawn: run this in a terminal)")
    with taskq.Pool(2) as pool:
        results = list(pool.map(work, range(400), progress=True))
    print(f"{len(results)} results, in input order: {results[:5]} ... {results[-2:]}")


if __name__ == "__main__":
    main()
