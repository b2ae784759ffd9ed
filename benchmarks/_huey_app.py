"""Huey's side of the SQLite broker benchmark: a ``SqliteHuey`` on the file named by
``TASKQ_BENCH_HUEY_DB`` (its consumer imports ``benchmarks._huey_app.huey``)."""

from __future__ import annotations

import os
import time

from huey import SqliteHuey

huey = SqliteHuey("taskq-bench", filename=os.environ.get("TASKQ_BENCH_HUEY_DB", "huey.db"))


@huey.task()
def noop(x: int) -> int:
    return x


@huey.task()
def sleep_ms(x: int) -> int:
    time.sleep(0.001)
    return x
