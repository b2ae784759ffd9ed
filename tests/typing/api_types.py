"""Static checks of taskq's typed API, run by ``mypy --strict`` (CI and tests/test_typing.py).

Never executed: mypy reads it. Each ``assert_type`` pins what a public call returns;
each ``# type: ignore[code]`` marks a call mypy must reject. With
``warn_unused_ignores``, an ignore that is no longer needed is itself an error, so
if ``submit`` lost its ``ParamSpec`` (and accepted any arguments), this file
would fail to check.
"""

# mypy: warn-unused-ignores

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, as_completed
from typing import Any

from typing_extensions import assert_type

import taskq
from taskq import JobFuture, Pool, PoolStats


def add(a: int, b: int) -> int:
    return a + b


def greet(name: str, *, punctuation: str = "!") -> str:
    return name + punctuation


def square(x: int) -> int:
    return x * x


def nothing() -> None:
    return None


def accepted_calls(pool: Pool) -> None:
    assert_type(pool.submit(add, 1, 2), JobFuture[int])
    assert_type(pool.submit(add, 1, b=2), JobFuture[int])
    assert_type(pool.submit(greet, "taskq", punctuation="?"), JobFuture[str])
    assert_type(pool.submit(nothing), JobFuture[None])
    assert_type(pool.submit(add, 1, 2).result(timeout=1), int)
    assert_type(pool.schedule(add, (1, 2), priority=-1), JobFuture[int])
    assert_type(pool.schedule(greet, ("x",), {"punctuation": "."}), JobFuture[str])
    assert_type(pool.map(square, [1, 2, 3]), Iterator[int])
    assert_type(pool.map(add, [1, 2], [3, 4], priority=2), Iterator[int])
    assert_type(pool.imap_unordered(square, range(3)), Iterator[int])
    assert_type(pool.stats(), PoolStats)
    assert_type(pool.kill(pool.submit(nothing)), bool)
    assert_type(pool.counter("done"), taskq.Counter)
    assert_type(pool.counters(), dict[str, int])
    assert_type(JobFuture[int]().attempts, int)


def is_a_standard_future(pool: Pool) -> None:
    future: Future[int] = pool.submit(add, 1, 2)
    for done in as_completed([pool.submit(square, 3)]):
        assert_type(done, Future[int])
    assert_type(future.result(), int)


def rejected_calls(pool: Pool) -> None:
    pool.submit(add, 1, "2")  # type: ignore[arg-type]
    pool.submit(add, 1)  # type: ignore[call-arg]
    pool.submit(add, 1, 2, 3)  # type: ignore[call-arg]
    pool.submit(greet, "x", punct="?")  # type: ignore[call-arg]
    pool.submit(greet, "x", "?")  # type: ignore[call-arg]
    text: str = pool.submit(add, 1, 2).result()  # type: ignore[assignment]
    pool.imap_unordered(square, ["a"])  # type: ignore[arg-type]
    pool.schedule(add, (1, 2), priority="high")  # type: ignore[arg-type]
    pool.submit(42)  # type: ignore[arg-type]
    del text


def broker_pools(url: str) -> None:
    pool = Pool(0, broker=url, queue="q", lease=5.0, result_ttl=60.0, max_lost=3, secret=None)
    assert_type(pool, Pool)
    assert_type(pool.submit(add, 1, 2), JobFuture[int])
    assert_type(pool.job("job-id"), JobFuture[Any])
    pool.job(42)  # type: ignore[arg-type]
    job_id: str = pool.submit(add, 1, 2).job_id  # a str with a broker: it flows to job()
    assert_type(pool.job(job_id), JobFuture[Any])


def pool_as_context(workers: int) -> None:
    with Pool(workers, aging=0.5) as pool:
        assert_type(pool, Pool)
    assert_type(taskq.Pool(aging=None), Pool)
