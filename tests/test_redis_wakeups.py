"""The Redis broker's round-trip savers: puts that do not wait for their reply, servers
woken by a put instead of polling, outcomes that travel with their notice, and one
script per server step. Each must keep the store's promises: nothing lost or stored
twice, priority order, first outcome wins. Uses the Redis of 127.0.0.1:6379 (db 10,
a queue of its own)."""

from __future__ import annotations

import operator
import select
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

import taskq
from taskq._broker import Outcome, OutcomeKind, open_broker
from tests.conftest import REDIS_URL
from tests.jobs import wait_until
from tests.test_redis_broker import job


class Acks:
    def __init__(self):
        self.lock = threading.Lock()
        self.seen: dict[str, BaseException | None] = {}

    def for_job(self, job_id):
        def done(error):
            with self.lock:
                assert job_id not in self.seen, "acknowledged twice"
                self.seen[job_id] = error

        return done


def sync_after_a_cut(store):
    """``sync`` on a put connection Redis cut: the first tries may find it broken."""
    for _ in range(3):
        try:
            store.sync()
            return
        except taskq.StoreError:
            continue
    store.sync()


def send_all(store, job_ids, acks):
    for job_id in job_ids:
        store.send(job(job_id), acks.for_job(job_id))


def test_sent_puts_are_acknowledged_once_each_and_keep_their_order(redis_queue):
    store = open_broker(REDIS_URL, redis_queue)
    acks = Acks()
    ids = [f"j{i:04d}" for i in range(1000)]
    send_all(store, ids, acks)
    store.sync()
    assert acks.seen == dict.fromkeys(ids)
    claimed = [j.job_id for j in store.claim("s", 2000, lease=10)]
    assert claimed == ids
    store.close()


def test_puts_leave_nothing_unread_on_their_connection(redis_queue):
    # A process killed with bytes unread on a socket has its connection reset, and the
    # kernel may drop a put it had not sent yet: a SIGKILLed submitter lost its last job
    # that way. Without replies, nothing is unread, whenever the process dies.
    store = open_broker(REDIS_URL, redis_queue)
    acks = Acks()
    ids = [f"j{i:03d}" for i in range(50)]
    send_all(store, ids, acks)
    other = open_broker(REDIS_URL, redis_queue)  # another connection sees them all run
    wait_until(lambda: other.queued_count() == len(ids), 30, "the puts to run")
    sock = store._puts._conn._sock
    assert select.select([sock], [], [], 0.2)[0] == []  # no reply waits to be read
    assert acks.seen == {}  # not checked yet
    store.sync()
    assert acks.seen == dict.fromkeys(ids)
    assert select.select([sock], [], [], 0.2)[0] == []  # the check read its own answers
    other.close()
    store.close()


def test_puts_in_flight_when_the_connection_drops_are_sent_again_and_stored_once(redis_queue):
    store = open_broker(REDIS_URL, redis_queue)
    acks = Acks()
    ids = [f"j{i:03d}" for i in range(200)]
    send_all(store, ids[:100], acks)
    # Cut this client's put connection: some of those puts may have been run, their
    # replies are lost; all of them are written again on the next call.
    admin = redis.Redis.from_url(REDIS_URL)
    host, port = store._puts._conn._sock.getsockname()[:2]
    assert admin.client_kill_filter(addr=f"{host}:{port}") == 1
    for job_id in ids[100:]:
        try:
            store.send(job(job_id), acks.for_job(job_id))
        except taskq.StoreError:  # BrokerUnavailable: this one was not sent; send it again
            store.send(job(job_id), acks.for_job(job_id))
    sync_after_a_cut(store)
    assert acks.seen == dict.fromkeys(ids)
    claimed = [j.job_id for j in store.claim("s", 1000, lease=10)]
    assert sorted(claimed) == ids  # every job once: none lost, none stored twice
    assert len(set(claimed)) == len(claimed)
    admin.close()
    store.close()


def test_puts_that_ran_and_expired_are_not_stored_again_after_a_broken_connection(
    redis_queue,
):
    # The puts run, their jobs finish and their records expire (a short result_ttl),
    # all before this client checks them; then its connection breaks. Writing every
    # unchecked put again would store those jobs anew, to run a second time.
    store = open_broker(REDIS_URL, redis_queue)
    acks = Acks()
    ids = [f"j{i:02d}" for i in range(20)]
    send_all(store, ids, acks)
    admin = redis.Redis.from_url(REDIS_URL)
    other = open_broker(REDIS_URL, redis_queue)
    wait_until(lambda: other.queued_count() == len(ids), 30, "the puts to run")
    gone = [key for key in admin.scan_iter(f"taskq:{redis_queue}:*") if b":acks:" not in key]
    assert gone and admin.delete(*gone) > 0  # ran, finished, expired: nothing left of them
    host, port = store._puts._conn._sock.getsockname()[:2]
    assert admin.client_kill_filter(addr=f"{host}:{port}") == 1
    sync_after_a_cut(store)
    assert acks.seen == dict.fromkeys(ids)  # each put acknowledged, as run
    assert other.queued_count() == 0
    assert [key for key in admin.scan_iter(f"taskq:{redis_queue}:*") if b":acks:" not in key] == []
    # The checked ids leave the acks set (a command without a reply: wait for it).
    acks_sets = list(admin.scan_iter(f"taskq:{redis_queue}:acks:*"))
    wait_until(lambda: not any(admin.smembers(key) for key in acks_sets), 30, "the acks set")
    admin.close()
    other.close()
    store.close()


def test_a_put_of_a_job_already_stored_changes_nothing(redis_queue):
    store = open_broker(REDIS_URL, redis_queue)
    store.put(job("a"))
    [claimed] = store.claim("s", 1, lease=10)
    store.put(job("a"))  # the same id sent again (after a broken connection)
    assert store.claim("s", 1, lease=10) == []
    assert store.outcomes(["a"])["a"].state.value == "running"
    assert claimed.job_id == "a"
    store.close()


def test_a_server_that_found_the_queue_empty_is_woken_by_the_next_put(redis_queue):
    server, client = open_broker(REDIS_URL, redis_queue), open_broker(REDIS_URL, redis_queue)
    woken = threading.Event()
    server.on_new_jobs = woken.set
    assert server.claim("s", 2, lease=10) == []  # empty: it is now watching
    client.put(job("a"))
    server.finished_since("", block=5)
    assert woken.is_set()
    woken.clear()
    client.put(job("b"))  # it was woken once: no second notice before it claims again
    assert server.finished_since("", block=0.2) == ("", [])
    assert not woken.is_set()
    server.close()
    client.close()


def test_a_server_holding_jobs_ahead_is_woken_only_by_a_more_urgent_put(redis_queue):
    server, client = open_broker(REDIS_URL, redis_queue), open_broker(REDIS_URL, redis_queue)
    woken = threading.Event()
    server.on_new_jobs = woken.set
    for i in range(4):
        client.put(job(f"b{i}", priority=5))
    _, claimed = server.step("s", [], 2, 10, watch=True)
    assert [j.job_id for j in claimed] == ["b0", "b1"]
    client.put(job("same", priority=5))  # not before what it holds: no notice
    assert server.finished_since("", block=0.2) == ("", [])
    client.put(job("urgent", priority=1))
    server.finished_since("", block=5)
    assert woken.is_set()
    # Full, it claims only what comes before the jobs it holds:
    _, more = server.step("s", [], 2, 10, before=5.0, watch=True)
    assert [j.job_id for j in more] == ["urgent"]
    assert [j.job_id for j in server.claim("s", 10, lease=10)] == ["b2", "b3", "same"]
    server.close()
    client.close()


def test_outcomes_reach_the_submitter_with_their_notice(redis_queue):
    client, server = open_broker(REDIS_URL, redis_queue), open_broker(REDIS_URL, redis_queue)
    client.put(job("a"))
    client.put(job("b"))
    _, jobs = server.step("s", [], 2, 10)
    stored, _ = server.step(
        "s",
        [("a", Outcome.of_result(41, 1)), ("b", Outcome.of_error(ValueError("no"), 1))],
        0,
        10,
    )
    assert stored == ["a", "b"] and len(jobs) == 2
    _, ended = client.finished_since("", block=5)
    outcomes = dict(ended)
    assert outcomes["a"].kind is OutcomeKind.OK and outcomes["a"].value("a") == (False, 41)
    assert outcomes["b"].kind is OutcomeKind.ERROR
    # The first outcome won: a second one for the same job is not stored or sent.
    stored, _ = server.step("s", [("a", Outcome.of_result(0, 1))], 0, 10)
    assert stored == [] and client.finished_since("", block=0.2)[1] == []
    client.close()
    server.close()


def test_cancel_right_after_submit_finds_the_job(redis_queue):
    with taskq.Pool(0, broker=REDIS_URL, queue=redis_queue) as pool:
        futures = [pool.submit(operator.add, i, 1) for i in range(50)]
        assert all(f.cancel() for f in futures)  # each put is in before the cancel acts
        assert all(f.cancelled() for f in futures)
        assert pool._broker.queued_count() == 0


def test_a_client_and_a_server_over_sent_puts_lose_nothing(redis_queue):
    with (
        taskq.Pool(0, broker=REDIS_URL, queue=redis_queue) as client,
        taskq.Pool(2, broker=REDIS_URL, queue=redis_queue) as server,
    ):
        futures = [client.submit(operator.mul, i, 2) for i in range(3000)]
        assert [f.result(timeout=120) for f in futures] == [2 * i for i in range(3000)]
        assert server.served_stats().succeeded == 3000
        assert client.stats().succeeded == 3000


SUBMIT_AND_DIE = """
import operator, os, signal, sys, taskq
pool = taskq.Pool(0, broker=sys.argv[1], queue=sys.argv[2])
for i in range(1000):
    pool.submit(operator.add, i, 1)
if sys.argv[3] == "kill":  # no exit hook runs: the replies were never read
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("end", ["exit", "kill"])
def test_jobs_submitted_survive_the_submitting_process(redis_queue, tmp_path, end):
    script = tmp_path / "submit.py"
    script.write_text(SUBMIT_AND_DIE)
    done = subprocess.run([sys.executable, str(script), REDIS_URL, redis_queue, end], timeout=120)
    assert done.returncode == (-signal.SIGKILL if end == "kill" else 0)
    store = open_broker(REDIS_URL, redis_queue)
    assert store.queued_count() == 1000  # every submit that returned is in the store
    store.close()


def test_threads_submitting_at_once_lose_nothing(redis_queue):
    with (
        taskq.Pool(0, broker=REDIS_URL, queue=redis_queue) as client,
        taskq.Pool(2, broker=REDIS_URL, queue=redis_queue),
    ):
        with ThreadPoolExecutor(4) as threads:
            batches = list(
                threads.map(
                    lambda t: [client.submit(operator.mul, t, i) for i in range(500)], range(4)
                )
            )
        for t, futures in enumerate(batches):
            assert [f.result(timeout=120) for f in futures] == [t * i for i in range(500)]


def test_reads_right_after_submits_see_them(redis_queue):
    with taskq.Pool(0, broker=REDIS_URL, queue=redis_queue) as pool:
        futures = [pool.submit(operator.add, i, 1) for i in range(200)]
        assert pool.stats().queued == 200  # the puts went another way: read after them
        assert pool._broker.queued_count() == 200
        assert pool.job(futures[0].job_id) is futures[0]
        pool.shutdown(wait=False, cancel_futures=True)
