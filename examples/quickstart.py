"""taskq in one minute: submit a job, map over many, read the results and the pool's stats.

Run it:  python examples/quickstart.py
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


# Job functions live at module level: worker processes import them by name.
def slow_add(a: int, b: int, delay: float = 0.3) -> int:
    time.sleep(delay)
    return a + b


def square(x: int) -> int:
    return x * x


def main() -> None:
    with taskq.Pool(2) as pool:  # two worker processes; leaving the block waits for them
        future = pool.submit(slow_add, 2, 3)  # returns at once with a future
        print(f"submit() returned before the job finished: done={future.done()}")
        print(f"slow_add(2, 3) = {future.result(timeout=30)}")

        # map() has the semantics of the builtin: results come back in input order.
        print(f"map(square, range(10)) = {list(pool.map(square, range(10)))}")

        # schedule() is submit() with options; the smaller priority number runs first.
        urgent = pool.schedule(square, (12,), priority=-1, timeout=10, retries=1)
        print(f"schedule(square, (12,), priority=-1) = {urgent.result(timeout=30)}")

        stats = pool.stats()
        print(
            f"stats: submitted={stats.submitted} succeeded={stats.succeeded} "
            f"failed={stats.failed} workers={stats.workers}"
        )
    print("Notice: one future per job, map() in input order, and every submitted job succeeded.")


if __name__ == "__main__":
    main()
