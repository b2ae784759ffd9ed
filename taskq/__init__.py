"""taskq: a priority job queue over a pool of worker processes.

``taskq.Pool`` is a drop-in ``concurrent.futures.Executor`` that adds
priorities (smaller number first), a bounded queue, per-job timeouts, retries,
crash isolation, a lazy ``map`` and exact shared counters. See ``_pool.py`` for
how a job flows through it.
"""

from taskq._counters import Counter, counter
from taskq._errors import (
    Full,
    InitializerError,
    JobLost,
    JobTimeout,
    PoolBroken,
    RemoteError,
    SerializationError,
    StoreError,
    TaskqError,
    WorkerCrashed,
)
from taskq._job import JobFuture
from taskq._pool import Pool
from taskq._stats import PoolStats

__version__ = "0.1.0"

__all__ = [
    "Counter",
    "Full",
    "InitializerError",
    "JobFuture",
    "JobLost",
    "JobTimeout",
    "Pool",
    "PoolBroken",
    "PoolStats",
    "RemoteError",
    "SerializationError",
    "StoreError",
    "TaskqError",
    "WorkerCrashed",
    "counter",
]
