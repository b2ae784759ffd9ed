"""Priority aging in a broker's store: the store orders by ``priority + (its clock at put) /
aging``, so an old low-priority job overtakes newer urgent ones, in SQLite and in Redis."""

from __future__ import annotations

import pickle
import time

import taskq
from taskq._broker import JobOptions, NewJob, open_broker
from tests.broker_jobs import record, runs

OPTIONS = pickle.dumps(JobOptions(None, 0, 0.1, None))


def job(job_id, priority, aging):
    return NewJob(job_id, "fn", priority, priority, b"call", OPTIONS, aging)


def claim_all(store):
    order = []
    while batch := store.claim("s", 10, lease=10):
        order += [j.job_id for j in batch]
    return order


def test_an_old_low_priority_job_overtakes_newer_urgent_ones_with_aging(store):
    broker = open_broker(store.url, store.queue)
    broker.put(job("old-5", 5, aging=0.01))  # worth 5 levels after 0.05 s
    time.sleep(0.2)  # 20 levels: far more than 5, whatever the clock's jitter
    broker.put(job("new-0", 0, aging=0.01))
    broker.put(job("new-0b", 0, aging=0.01))
    assert claim_all(broker) == ["old-5", "new-0", "new-0b"]


def test_without_aging_the_order_is_strict_priority(store):
    broker = open_broker(store.url, store.queue)
    broker.put(job("old-5", 5, aging=None))
    time.sleep(0.05)
    broker.put(job("new-0", 0, aging=None))
    assert claim_all(broker) == ["new-0", "old-5"]


def test_a_broker_pool_takes_aging_like_a_local_pool(store, tmp_path):
    log = str(tmp_path / "runs")
    client = taskq.Pool(0, **store.kw, aging=0.01)
    old = client.schedule(record, (log, "old-5"), priority=5)
    time.sleep(0.2)
    new = client.schedule(record, (log, "new-0"), priority=0)
    with taskq.Pool(1, **store.kw):
        assert (old.result(timeout=60), new.result(timeout=60)) == ("old-5", "new-0")
    assert runs(log) == ["old-5", "new-0"]
    client.shutdown(wait=False)
