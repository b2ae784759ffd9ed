"""A crash, a timeout and a flaky job: each fails (or recovers) alone, the pool carries on.

* ``crash()`` kills its own worker: the job fails with ``taskq.WorkerCrashed`` (pid and exit
  code attached) and the pool starts a replacement worker.
* ``sleepy()`` runs past ``timeout=0.5``: ``taskq.JobTimeout``; its worker is replaced too.
* ``flaky()`` fails on its first attempt and succeeds on the retry (``retries=2``).

Run it:  python examples/resilience.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

try:
    import taskq
except ImportError:  # run from a source checkout without installing taskq
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import taskq


def crash() -> None:
    os._exit(3)  # the worker process dies on the spot, as in a segfault or an OOM kill


def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke up"


def flaky() -> str:
    attempt = taskq.counter("flaky_attempts").add(1)  # shared by every worker
    if attempt == 1:
        raise ConnectionError("first attempt fails")
    return f"succeeded on attempt {attempt}"


def square(x: int) -> int:
    return x * x


def main() -> None:
    with taskq.Pool(2, counters=("flaky_attempts",), retry_delay=0.05) as pool:
        crashed = pool.submit(crash)
        timed_out = pool.schedule(sleepy, (30,), timeout=0.5)
        retried = pool.schedule(flaky, retries=2)

        try:
            crashed.result(timeout=30)
        except taskq.WorkerCrashed as exc:
            print(f"crash():  WorkerCrashed (pid {exc.pid}, exit code {exc.exitcode})")
        try:
            timed_out.result(timeout=30)
        except taskq.JobTimeout as exc:
            print(f"sleepy(): JobTimeout after {exc.timeout}s")
        print(f"flaky():  {retried.result(timeout=30)} (attempts: {retried.attempts})")

        after = list(pool.map(square, range(8)))
        print(f"and the pool carries on: map(square, range(8)) = {after}")
        stats = pool.stats()
    print(
        f"stats: succeeded={stats.succeeded} failed={stats.failed} crashed={stats.crashed} "
        f"timed_out={stats.timed_out} retried={stats.retried} "
        f"worker_restarts={stats.worker_restarts}"
    )


if __name__ == "__main__":
    main()
