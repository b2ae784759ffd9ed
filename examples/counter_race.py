"""The classic shared-counter race, and the same thing done right with a taskq counter.

Two jobs run at the same time on two workers: one makes 10,000 deposits of 1, the other
10,000 withdrawals of 1, so the balance should end where it started.

* With ``taskq.counter("balance").add(±1)`` every update is atomic: the balance is exact.
* With an unguarded shared value (a ``multiprocessing.Manager().Value``), ``value += 1`` is a
  read, then a write; when the other worker writes in between, its update is lost and the
  balance drifts.

Run it:  python examples/counter_race.py
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

try:
    import taskq
except ImportError:  # run from a source checkout without installing taskq
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import taskq

START = 1_000
MOVES = 10_000


def wait_until(moment: float) -> None:
    # Both jobs start at the same instant, so that they really overlap.
    while time.time() < moment:
        time.sleep(0.001)


def safe_moves(delta: int, start_at: float) -> None:
    balance = taskq.counter("balance")
    wait_until(start_at)
    for _ in range(MOVES):
        balance.add(delta)  # one atomic step


def racy_moves(delta: int, start_at: float, balance: Any) -> None:
    wait_until(start_at)
    for _ in range(MOVES):
        balance.value += delta  # read, then write: the other worker may write in between


def run_both(pool: taskq.Pool, job: Any, *extra: Any) -> None:
    start_at = time.time() + 0.3
    futures = [pool.submit(job, delta, start_at, *extra) for delta in (+1, -1)]
    for future in futures:
        future.result(timeout=60)


def main() -> None:
    with multiprocessing.Manager() as manager, taskq.Pool(2, counters=("balance",)) as pool:
        pool.counter("balance").add(START)
        run_both(pool, safe_moves)
        safe = pool.counter("balance").value

        unguarded = manager.Value("q", START)  # shared by both workers, no lock taken
        run_both(pool, racy_moves, unguarded)
        racy = unguarded.value

    print(f"{MOVES} deposits and {MOVES} withdrawals of 1, starting from {START}:")
    print(f"  taskq counter:   {START} -> {safe}  (exact: {safe == START})")
    print(f"  unguarded value: {START} -> {racy}  (off by {racy - START})")
    if racy != START:
        print("Notice: the unguarded balance drifted: concurrent read-modify-writes lost updates.")
    else:
        print("The unguarded balance happened to survive this run; run again to see it drift.")


if __name__ == "__main__":
    main()
