"""Shared fixtures for taskq's core tests.

- ``start_method`` / ``ctx``: parametrized over fork, spawn and forkserver; used only where the
  promise is about start methods (spawn is slow: keep those pools at 1-2 workers).
- ``pool_factory``: builds ``taskq.Pool`` objects and always shuts them down at teardown.
- ``make_gate`` / ``gate``: file-based gates for jobs that block until the test releases them;
  every gate is opened at teardown (before the pools are shut down) so nothing stays blocked.
"""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

from tests.jobs import Gate

START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture(params=START_METHODS)
def start_method(request):
    return request.param


@pytest.fixture
def ctx(start_method):
    return multiprocessing.get_context(start_method)


class _PoolRegistry:
    def __init__(self):
        self.pools = []
        self.gates = []
        self.cleanups = []

    def shutdown_all(self):
        for g in self.gates:
            g.open()
        problems = []
        pools, self.pools = self.pools, []
        for pool in pools:
            t = threading.Thread(
                target=_quiet_shutdown, args=(pool, problems), name="test-teardown", daemon=True
            )
            t.start()
            t.join(60)
            if t.is_alive():
                problems.append(f"{pool!r}.shutdown(wait=True, cancel_futures=True) hung > 60s")
        cleanups, self.cleanups = self.cleanups, []
        for cleanup in cleanups:
            cleanup()
        if problems:
            pytest.fail("pool teardown problems: " + "; ".join(problems), pytrace=False)


def _quiet_shutdown(pool, problems):
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except Exception as exc:  # a broken pool must still shut down quietly
        problems.append(f"shutdown raised {type(exc).__name__}: {exc}")


@pytest.fixture
def _registry():
    reg = _PoolRegistry()
    yield reg
    reg.shutdown_all()


# TASKQ_TEST_BROKER=sqlite (or redis) runs the tests that use ``pool_factory`` against pools
# whose jobs go through a SQLite store (or Redis); CI runs the fault matrix that way too.
TEST_BROKER = os.environ.get("TASKQ_TEST_BROKER", "")


@pytest.fixture
def pool_factory(_registry, tmp_path):
    """``pool_factory(*args, **kwargs)`` -> a ``taskq.Pool`` that is shut down at teardown."""
    import taskq

    def make(*args, **kwargs):
        if TEST_BROKER == "sqlite" and "broker" not in kwargs:
            kwargs["broker"] = f"sqlite:///{tmp_path}/pool-{len(_registry.pools)}.db"
        elif TEST_BROKER == "redis" and "broker" not in kwargs:
            import uuid

            kwargs["broker"] = REDIS_URL
            kwargs["queue"] = queue = f"matrix-{uuid.uuid4().hex[:12]}"
            _registry.cleanups.append(lambda: redis_cleanup(REDIS_URL, queue))
        pool = taskq.Pool(*args, **kwargs)
        _registry.pools.append(pool)
        return pool

    return make


@pytest.fixture
def make_gate(_registry, tmp_path):
    def make():
        g = Gate(tmp_path / "gates")
        _registry.gates.append(g)
        return g

    return make


@pytest.fixture
def gate(make_gate):
    return make_gate()


@pytest.fixture
def pid_file(tmp_path):
    return str(tmp_path / "worker-pids.txt")


# -- durable stores ---------------------------------------------------------------------------

REDIS_URL = os.environ.get("TASKQ_TEST_REDIS", "redis://127.0.0.1:6379/10")


class Store:
    """A broker for one test: ``kw`` for ``taskq.Pool(**kw)``, ``cli`` for ``taskq worker``."""

    def __init__(self, kind, url, queue, where):
        self.kind, self.url, self.queue, self.where = kind, url, queue, where
        self.kw = {"broker": url, "queue": queue}
        self.cli = [url, "--queue", queue]

    def __repr__(self):
        return f"<Store {self.kind} {self.url} {self.queue}>"


def redis_cleanup(url, queue):
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"taskq:{queue}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis_queue():
    """A queue name of its own on the Redis of 127.0.0.1:6379 (db 10), deleted afterwards."""
    import uuid

    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    redis_cleanup(REDIS_URL, name)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path, _registry):
    """The same test over a SQLite file and over the Redis of 127.0.0.1:6379 (db 10,
    a queue of its own, deleted afterwards)."""
    import uuid

    queue = f"test-{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        path = f"{tmp_path}/jobs.db"
        yield Store("sqlite", f"sqlite:///{path}", queue, path)
        return
    yield Store("redis", REDIS_URL, queue, REDIS_URL)
    _registry.shutdown_all()  # the pools first: they still use the keys
    redis_cleanup(REDIS_URL, queue)
