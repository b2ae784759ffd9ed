"""What is particular to the Redis broker: server-assigned order, signed payloads, Redis
unreachable, restarted or full. Uses the Redis of 127.0.0.1:6379 (db 10, a queue of its
own) or a redis-server of its own on a free port."""

from __future__ import annotations

import operator
import os
import pickle
import subprocess
import sys
import time

import pytest

import taskq
from taskq._broker import JobOptions, JobState, NewJob, Outcome, open_broker
from taskq._redis_url import is_loopback, needs_unsigned_warning, safe_url
from tests.broker_jobs import ROOT
from tests.conftest import REDIS_URL
from tests.redis_server import RedisServer, free_port

SECRET = "a-secret-of-32-characters-long!!"
OPTIONS = pickle.dumps(JobOptions(None, 0, 0.1, None))


def job(job_id, priority=0, call=b"call"):
    return NewJob(job_id, "fn", priority, priority, call, OPTIONS)


class Boom:
    """Unpickling it leaves a file behind: the proof that a payload was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_ties_are_broken_by_the_servers_sequence_across_clients(redis_queue):
    one, two = open_broker(REDIS_URL, redis_queue), open_broker(REDIS_URL, redis_queue)
    for i in range(6):
        (one if i % 2 else two).put(job(f"j{i}", priority=1))
    one.put(job("urgent", priority=-(2**60)))  # exact even far from 0 (no packed floats)
    claimed = [j.job_id for j in one.claim("s", 10, lease=10)]
    claimed += [j.job_id for j in one.claim("s", 10, lease=10)]
    assert claimed == ["urgent", "j0", "j1", "j2", "j3", "j4", "j5"]


def test_a_lease_lost_by_a_dead_server_puts_the_job_back_in_place_by_the_servers_clock(redis_queue):
    store = open_broker(REDIS_URL, redis_queue)
    store.put(job("first"))
    store.claim("dead", 1, lease=0.05)
    store.put(job("second"))
    time.sleep(0.2)
    assert store.reclaim_expired(max_lost=3) == 1
    [again, _] = store.claim("alive", 5, lease=10)
    assert (again.job_id, again.attempts) == ("first", 2)
    assert store.finish("dead", [("first", Outcome.of_result("late", 1))]) == []
    assert store.finish("alive", [("first", Outcome.of_result("ok", 2))]) == ["first"]
    assert store.job_status("first").outcome.value("first") == (False, "ok")


def test_a_job_that_keeps_losing_its_lease_is_dead_lettered(redis_queue):
    store = open_broker(REDIS_URL, redis_queue)
    store.put(job("poison"))
    for _ in range(2):
        store.claim("s", 1, lease=0.02)
        time.sleep(0.1)
        store.reclaim_expired(max_lost=2)
    status = store.job_status("poison")
    assert status.state is JobState.DEAD
    assert isinstance(status.outcome.value("poison")[1], taskq.JobLost)
    assert store.status().dead == 1


def test_a_tampered_call_is_refused_and_never_unpickled(redis_queue, tmp_path):
    signed = open_broker(REDIS_URL, redis_queue, secret=SECRET)
    signed.put(job("good", call=pickle.dumps(1)))
    signed.put(job("evil", call=pickle.dumps(2)))
    proof = str(tmp_path / "unpickled")
    import redis

    redis.Redis.from_url(REDIS_URL).hset(
        f"taskq:{redis_queue}:job:evil", "call", pickle.dumps(Boom(proof))
    )  # someone with write access to Redis swaps the payload
    claimed = signed.claim("s", 5, lease=10)
    assert [j.job_id for j in claimed] == ["good"]
    status = signed.job_status("evil")
    assert status.state is JobState.DEAD
    is_error, error = status.outcome.value("evil")
    assert is_error and "signature does not match" in str(error)
    assert not os.path.exists(proof)
    assert signed.status().refused == 1


def test_an_unsigned_job_is_refused_by_a_worker_that_has_a_secret(redis_queue):
    open_broker(REDIS_URL, redis_queue).put(job("unsigned"))
    signed = open_broker(REDIS_URL, redis_queue, secret=SECRET)
    assert signed.claim("s", 5, lease=10) == []
    assert "not signed" in str(signed.job_status("unsigned").outcome.value("unsigned")[1])


def test_a_tampered_outcome_is_refused_and_not_unpickled(redis_queue, tmp_path):
    store = open_broker(REDIS_URL, redis_queue, secret=SECRET)
    store.put(job("a"))
    store.claim("s", 1, lease=10)
    store.finish("s", [("a", Outcome.of_result(1, 1))])
    proof = str(tmp_path / "unpickled")
    import redis

    forged = Outcome.of_result(Boom(proof), 1).dump()
    redis.Redis.from_url(REDIS_URL).hset(f"taskq:{redis_queue}:job:a", "outcome", forged)
    is_error, error = store.job_status("a").outcome.value("a")
    assert is_error and "refused and not unpickled" in str(error)
    assert not os.path.exists(proof)


def test_signed_pools_run_jobs_end_to_end_and_a_wrong_secret_fails_the_future(redis_queue):
    with taskq.Pool(1, broker=REDIS_URL, queue=redis_queue, secret=SECRET) as pool:
        assert pool.submit(operator.add, 2, 3).result(timeout=60) == 5
    with taskq.Pool(
        0, broker=REDIS_URL, queue=redis_queue, secret="another-secret-of-32-chars!!!!!!"
    ) as c:
        future = c.submit(operator.add, 1, 1)
        server = taskq.Pool(1, broker=REDIS_URL, queue=redis_queue, secret=SECRET)
        with server, pytest.raises(taskq.StoreError, match="signature does not match"):
            future.result(timeout=60)


def test_taskq_secret_from_the_environment(redis_queue, monkeypatch):
    monkeypatch.setenv("TASKQ_SECRET", SECRET)
    store = open_broker(REDIS_URL, redis_queue)
    assert store.signer.enabled
    with pytest.raises(ValueError, match="16 bytes"):
        open_broker(REDIS_URL, redis_queue, secret="short")


def test_without_a_secret_only_a_remote_redis_is_warned_about():
    assert needs_unsigned_warning("redis://10.1.2.3:6379/0", signed=False)
    assert needs_unsigned_warning("rediss://redis.example.com/0", signed=False)
    assert not needs_unsigned_warning("redis://10.1.2.3:6379/0", signed=True)
    assert not needs_unsigned_warning("redis://127.0.0.1:6379/0", signed=False)
    assert not needs_unsigned_warning("redis://localhost/0", signed=False)
    assert not needs_unsigned_warning("unix:///run/redis.sock", signed=False)
    assert is_loopback("::1") and not is_loopback("192.168.1.1")


def test_passwords_never_reach_messages():
    assert safe_url("redis://user:hunter2@127.0.0.1:1/0") == "redis://user:***@127.0.0.1:1/0"


def test_an_unreachable_redis_is_a_clear_error_naming_the_url():
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(
        taskq.StoreError, match=r"cannot reach the Redis broker at redis://user:\*\*\*@127"
    ) as info:
        taskq.Pool(1, broker=url)
    assert "hunter2" not in str(info.value)


@pytest.mark.timeout(120)
def test_a_password_never_shows_in_repr_status_or_the_worker_log(tmp_path):
    server = RedisServer(tmp_path, "--requirepass", "hunter2hunter2").start()
    url = f"redis://:hunter2hunter2@127.0.0.1:{server.port}/0"
    worker = None
    try:
        with taskq.Pool(1, broker=url, secret=SECRET) as pool:
            assert pool.submit(operator.add, 1, 2).result(timeout=60) == 3
            assert "hunter2" not in repr(pool) and ":***@" in repr(pool)
        env = {**os.environ, "PYTHONPATH": ROOT, "TASKQ_SECRET": SECRET}
        for extra in ([], ["--json"]):
            done = subprocess.run(
                [sys.executable, "-m", "taskq", "status", url, *extra],
                capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert "hunter2" not in done.stdout + done.stderr and ":***@" in done.stdout
        worker = subprocess.Popen(
            [sys.executable, "-m", "taskq", "worker", url, "--workers", "1"],
            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        assert worker.stderr is not None
        first = worker.stderr.readline()
        assert "serving" in first and ":***@" in first and "hunter2" not in first
    finally:
        if worker is not None:
            worker.terminate()
            worker.communicate(timeout=60)
        server.stop()


@pytest.mark.timeout(60)
def test_a_redis_unix_socket_url_works(tmp_path):
    sock = tmp_path / "redis.sock"
    server = RedisServer(tmp_path, "--unixsocket", str(sock), "--unixsocketperm", "700").start()
    try:
        with taskq.Pool(1, broker=f"unix://{sock}", secret=SECRET) as pool:
            assert pool.submit(operator.add, 2, 3).result(timeout=30) == 5
    finally:
        server.stop()


def test_a_database_the_url_cannot_mean_is_a_clear_error():
    host = REDIS_URL.rsplit("/", 1)[0]
    with pytest.raises(ValueError, match="the path is a database number"):
        taskq.Pool(0, broker=f"{host}/abc")  # redis-py would use database 0 instead
    with pytest.raises(taskq.StoreError, match="has no such database"):
        taskq.Pool(0, broker=f"{host}/99999")


def test_jobs_and_leases_survive_a_redis_restart_with_appendonly(tmp_path):
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always").start()
    try:
        client = taskq.Pool(0, broker=server.url)
        waiting = [client.submit(operator.mul, i, 2) for i in range(10)]
        server.stop()
        server.start()  # same port, same directory: the append-only file is replayed
        with taskq.Pool(1, broker=server.url) as pool:
            assert [f.result(timeout=60) for f in waiting] == [i * 2 for i in range(10)]
            assert pool.submit(operator.add, 1, 1).result(timeout=60) == 2
        client.shutdown(wait=False)
    finally:
        server.stop()


def test_a_pool_keeps_serving_across_a_redis_restart(tmp_path):
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always").start()
    try:
        with taskq.Pool(1, broker=server.url) as pool:
            assert pool.submit(operator.add, 1, 1).result(timeout=60) == 2
            server.stop()
            server.start()
            assert pool.submit(operator.add, 2, 2).result(timeout=60) == 4
    finally:
        server.stop()


def test_a_full_redis_refuses_new_jobs_with_a_clear_error(tmp_path):
    server = RedisServer(tmp_path, "--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    server.start()
    try:
        client = taskq.Pool(0, broker=server.url)
        futures = []
        # Submits do not wait for each reply: the first refusals fail their futures, and
        # once one was seen, submit waits for the reply and raises.
        with pytest.raises(taskq.StoreError, match="out of memory"):
            for _ in range(100):
                futures.append(client.submit(operator.add, b"x" * 200_000, b""))
        refused = [f for f in futures if f.done() and f.exception() is not None]
        for future in refused:
            assert isinstance(future.exception(), taskq.StoreError)
            assert "out of memory" in str(future.exception())
        client.shutdown(wait=False, cancel_futures=False)
    finally:
        server.stop()
