"""The public surface of taskq: names, types, exception hierarchy and signatures."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import queue
from concurrent.futures.process import BrokenProcessPool

import pytest

import taskq

EXPECTED_ALL = {
    "Pool",
    "JobFuture",
    "PoolStats",
    "Counter",
    "counter",
    "TaskqError",
    "Full",
    "WorkerCrashed",
    "JobTimeout",
    "SerializationError",
    "RemoteError",
    "InitializerError",
    "PoolBroken",
    "JobLost",
    "StoreError",
}

STATS_FIELDS = {
    "submitted",
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "retried",
    "timed_out",
    "crashed",
    "worker_restarts",
    "workers",
}


def test_all_holds_exactly_the_public_names():
    assert set(taskq.__all__) == EXPECTED_ALL
    assert len(taskq.__all__) == len(set(taskq.__all__)), "duplicates in __all__"


def test_every_name_in_all_is_importable():
    for name in taskq.__all__:
        assert hasattr(taskq, name), name


def test_star_import_gives_exactly_the_public_names():
    namespace = {}
    exec("from taskq import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == EXPECTED_ALL


def test_pool_is_a_concurrent_futures_executor():
    assert issubclass(taskq.Pool, concurrent.futures.Executor)


def test_job_future_is_a_concurrent_futures_future():
    assert issubclass(taskq.JobFuture, concurrent.futures.Future)


def test_pool_stats_is_a_frozen_dataclass_with_the_documented_fields():
    assert dataclasses.is_dataclass(taskq.PoolStats)
    assert taskq.PoolStats.__dataclass_params__.frozen
    names = {f.name for f in dataclasses.fields(taskq.PoolStats)}
    assert names >= STATS_FIELDS


def test_taskq_errors_share_one_root():
    for name in (
        "Full",
        "WorkerCrashed",
        "JobTimeout",
        "SerializationError",
        "RemoteError",
        "InitializerError",
        "PoolBroken",
    ):
        assert issubclass(getattr(taskq, name), taskq.TaskqError), name
    assert issubclass(taskq.TaskqError, Exception)


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("Full", queue.Full),
        ("WorkerCrashed", BrokenProcessPool),
        ("JobTimeout", TimeoutError),
        ("PoolBroken", BrokenProcessPool),
    ],
)
def test_errors_are_also_their_standard_library_counterparts(name, base):
    assert issubclass(getattr(taskq, name), base)


def test_job_timeout_is_a_concurrent_futures_timeout_error():
    # TimeoutError and concurrent.futures.TimeoutError are the same class on 3.11+
    assert issubclass(taskq.JobTimeout, concurrent.futures.TimeoutError)


def test_the_constructor_takes_process_pool_executor_params_then_keyword_only_options():
    params = inspect.signature(taskq.Pool).parameters
    positional = [
        name for name, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    assert positional == [
        "max_workers",
        "mp_context",
        "initializer",
        "initargs",
        "max_tasks_per_child",
    ]
    keyword_only = {name for name, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert keyword_only >= {"maxsize", "counters", "order", "job_timeout", "retry_delay"}
    defaults = {name: p.default for name, p in params.items()}
    assert defaults["max_workers"] is None
    assert defaults["mp_context"] is None
    assert defaults["initializer"] is None
    assert tuple(defaults["initargs"]) == ()
    assert defaults["max_tasks_per_child"] is None
    assert defaults["maxsize"] == 0
    assert tuple(defaults["counters"]) == ()
    assert defaults["order"] == "priority"
    assert defaults["job_timeout"] is None


def test_submit_takes_the_function_positionally_only():
    params = list(inspect.signature(taskq.Pool.submit).parameters.values())
    assert params[0].name == "self"
    fn = params[1]
    assert fn.kind is fn.POSITIONAL_ONLY
    kinds = [p.kind for p in params[2:]]
    assert kinds == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]


def test_schedule_signature_matches_the_spec():
    params = inspect.signature(taskq.Pool.schedule).parameters
    names = list(params)
    assert names[:4] == ["self", "fn", "args", "kwargs"]
    keyword_only = {name for name, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert keyword_only >= {
        "priority",
        "timeout",
        "retries",
        "retry_delay",
        "retry_on",
        "block",
    }
    assert params["priority"].default == 0
    assert params["timeout"].default is None
    assert params["retries"].default == 0
    assert params["block"].default is True


def test_shutdown_signature_matches_executor():
    params = inspect.signature(taskq.Pool.shutdown).parameters
    assert params["wait"].default is True
    assert params["cancel_futures"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["cancel_futures"].default is False


def test_map_and_imap_unordered_accept_priority_and_chunksize():
    for meth in (taskq.Pool.map, taskq.Pool.imap_unordered):
        params = inspect.signature(meth).parameters
        assert params["chunksize"].default == 1
        assert params["priority"].default == 0
    assert inspect.signature(taskq.Pool.map).parameters["timeout"].default is None


def test_counter_is_a_callable_that_gives_counters():
    assert callable(taskq.counter)
    assert isinstance(taskq.Counter, type)
