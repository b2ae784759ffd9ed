"""The SQLite store's decisions, with no worker processes: order, leases, outcomes, bad files."""

from __future__ import annotations

import os
import pickle
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import closing

import pytest

from taskq import Full, JobLost, StoreError
from taskq._broker import JobOptions, JobState, NewJob, Outcome, OutcomeKind, open_broker
from taskq._sqlite_file import SCHEMA_VERSION, path_of

OPTIONS = pickle.dumps(JobOptions(None, 0, 0.1, None))


def job(job_id: str, priority: float = 0) -> NewJob:
    return NewJob(job_id, "fn", priority, priority, b"call", OPTIONS)


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path}/jobs.db"


@pytest.fixture
def store(url):
    broker = open_broker(url, "q")
    yield broker
    broker.close()


def test_urls_follow_sqlalchemys_convention(tmp_path):
    assert path_of("sqlite:////abs/jobs.db")[0] == "/abs/jobs.db"
    assert path_of("sqlite:///rel/jobs.db")[0] == os.path.abspath("rel/jobs.db")
    assert path_of("sqlite:///jobs.db?synchronous=full")[1] == "FULL"
    for bad in ("sqlite://host/jobs.db", "sqlite:///", "sqlite:///:memory:", "sqlite:///a?x=1"):
        with pytest.raises(ValueError, match="sqlite"):
            path_of(bad)
    with pytest.raises(ValueError, match="unsupported broker URL"):
        open_broker("postgres://x/y", "q")


def test_claims_follow_priority_then_submission_order(store):
    for job_id, priority in [("a", 5), ("b", 1), ("c", 5), ("d", -2), ("e", 1)]:
        store.put(job(job_id, priority))
    claimed = [[j.job_id for j in store.claim("s1", 10, lease=10)] for _ in range(4)]
    # One claim takes jobs of one rank only: a later rank waits for the next claim.
    assert claimed == [["d"], ["b", "e"], ["a", "c"], []]


def test_claim_takes_only_what_was_asked(store):
    for i in range(5):
        store.put(job(f"j{i}"))
    assert [j.job_id for j in store.claim("s1", 2, lease=10)] == ["j0", "j1"]
    assert store.queued_count() == 3


def test_claim_and_cancel_one_wins(store):
    store.put(job("a"))
    store.put(job("b"))
    assert store.cancel("a") is True
    assert [j.job_id for j in store.claim("s", 5, lease=10)] == ["b"]
    assert store.cancel("b") is False  # claimed first: cancel loses
    assert store.job_status("a").state is JobState.CANCELLED


def test_the_first_outcome_wins_and_a_late_one_is_discarded(store):
    store.put(job("a"))
    store.claim("s1", 1, lease=0.01)
    time.sleep(0.05)
    assert store.reclaim_expired(max_lost=3) == 1
    [again] = store.claim("s2", 1, lease=10)
    assert again.attempts == 2
    assert store.finish("s1", [("a", Outcome.of_result("late", 1))]) == []
    assert store.finish("s2", [("a", Outcome.of_result("first", 2))]) == ["a"]
    assert store.finish("s2", [("a", Outcome.of_result("dup", 2))]) == []
    status = store.job_status("a")
    assert status.state is JobState.SUCCEEDED
    assert status.outcome.value("a") == (False, "first")


def test_an_expired_lease_puts_the_job_back_in_its_original_place(store):
    store.put(job("first"))
    store.claim("dead-server", 1, lease=0.01)
    store.put(job("second"))
    time.sleep(0.05)
    store.reclaim_expired(max_lost=3)
    assert [j.job_id for j in store.claim("s2", 5, lease=10)] == ["first", "second"]


def test_a_renewed_lease_does_not_expire_and_a_lost_one_is_reported(store):
    store.put(job("a"))
    store.put(job("b"))
    store.claim("s1", 2, lease=0.2)
    assert store.renew("s1", ["a", "b"], lease=60) == {"a", "b"}
    time.sleep(0.3)
    assert store.reclaim_expired(max_lost=3) == 0
    assert store.renew("other", ["a"], lease=60) == set()


def test_a_job_that_keeps_losing_its_lease_is_given_up(store):
    store.put(job("poison"))
    for _ in range(2):
        store.claim("s", 1, lease=0.01)
        time.sleep(0.03)
        store.reclaim_expired(max_lost=2)
    status = store.job_status("poison")
    assert status.state is JobState.DEAD
    is_error, error = status.outcome.value("poison")
    assert is_error and isinstance(error, JobLost)
    assert "lease expired 2 times" in str(error)


def test_release_keeps_the_place_and_the_attempt_count(store):
    store.put(job("a"))
    store.put(job("b"))
    store.claim("s", 1, lease=10)
    store.release("s", ["a"])
    [first, _] = store.claim("s", 2, lease=10)
    assert (first.job_id, first.attempts) == ("a", 1)


def test_maxsize_counts_queued_jobs_in_the_store(store):
    store.put(job("a"), maxsize=2)
    store.put(job("b"), maxsize=2)
    with pytest.raises(Full, match="maxsize=2"):
        store.put(job("c"), maxsize=2)
    store.claim("s", 1, lease=10)  # running jobs do not count
    store.put(job("c"), maxsize=2)


def test_outcomes_are_listed_once_in_the_order_they_were_stored(store):
    cursor = store.current_cursor()
    for job_id in "abc":
        store.put(job(job_id))
    store.claim("s", 3, lease=10)
    store.finish("s", [("b", Outcome.of_result(2, 1)), ("a", Outcome.of_result(1, 1))])
    cursor, ended = store.finished_since(cursor)
    assert ended == [("b", None), ("a", None)]  # outcomes are read with outcomes()
    store.finish("s", [("c", Outcome.of_error(ValueError("x"), 1))])
    assert store.finished_since(cursor)[1] == [("c", None)]
    assert store.job_status("c").outcome.kind is OutcomeKind.ERROR


def test_outcomes_expire_after_result_ttl(url):
    store = open_broker(url, "q", result_ttl=0.05)
    store.put(job("a"))
    store.claim("s", 1, lease=10)
    store.finish("s", [("a", Outcome.of_result(1, 1))])
    time.sleep(0.1)
    assert store.purge_expired() == 1
    with pytest.raises(KeyError, match="unknown, or its outcome expired"):
        store.job_status("a")


def test_an_expired_outcome_is_gone_before_anyone_purges_it(url):
    # A store nobody serves any more is never purged: expiry must hold on reads too.
    store = open_broker(url, "q", result_ttl=0.05)
    store.put(job("a"))
    store.claim("s", 1, lease=10)
    store.finish("s", [("a", Outcome.of_result(1, 1))])
    assert store.job_status("a").outcome is not None
    time.sleep(0.1)
    with pytest.raises(KeyError, match="unknown, or its outcome expired"):
        store.job_status("a")
    assert store.outcomes(["a"]) == {}


def test_queues_share_a_file_without_seeing_each_others_jobs(url):
    one, two = open_broker(url, "one"), open_broker(url, "two")
    one.put(job("a"))
    assert two.claim("s", 5, lease=10) == []
    assert [j.job_id for j in one.claim("s", 5, lease=10)] == ["a"]


def test_counters_are_kept_per_queue(url):
    one, two = open_broker(url, "one"), open_broker(url, "two")
    assert one.counter_add("hits", 2) == 2
    assert one.counter_add("hits", 3) == 5
    assert two.counter_values(["hits"]) == {"hits": 0}


def test_kill_of_a_queued_job_cancels_it_and_of_a_running_one_flags_its_holder(store):
    store.put(job("queued"))
    store.put(job("running"))
    store.claim("s", 1, lease=10)  # takes "queued"... (same priority: submission order)
    assert store.request_kill("running") is JobState.QUEUED
    assert store.request_kill("queued") is JobState.RUNNING
    assert store.kill_requests("s") == ["queued"]
    assert store.request_kill("nope") is None


def test_the_store_file_is_private_to_its_owner(url, store):
    mode = stat.S_IMODE(os.stat(path_of(url)[0]).st_mode)
    assert mode == 0o600


def test_a_file_that_is_not_sqlite_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"hello, this is not a database" * 100)
    with pytest.raises(StoreError, match=f"{path} is not a taskq store"):
        open_broker(f"sqlite:///{path}", "q")


def test_an_sqlite_file_of_another_application_is_refused(tmp_path):
    path = tmp_path / "app.db"
    with closing(sqlite3.connect(path)) as conn, conn:  # closing: `with conn` only commits
        conn.execute("CREATE TABLE users (id INTEGER)")
    with pytest.raises(StoreError, match=r"not a taskq store.*users"):
        open_broker(f"sqlite:///{path}", "q")


def test_a_store_of_a_newer_schema_is_refused(url, store):
    with closing(sqlite3.connect(path_of(url)[0])) as conn, conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                     (str(SCHEMA_VERSION + 1),))  # fmt: skip
    with pytest.raises(StoreError, match=r"newer taskq.*upgrade taskq"):
        open_broker(url, "q")


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(StoreError, match=r"directory .*nowhere does not exist"):
        open_broker(f"sqlite:///{tmp_path}/nowhere/jobs.db", "q")


def _open_as_nobody(url: str) -> subprocess.CompletedProcess[str]:
    """Open the store in a child process without root's rights to bypass permissions."""
    code = (
        "import os, sys, sqlite3, taskq._sqlite_broker\n"
        "from taskq._broker import open_broker\n"
        "from taskq import StoreError\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n    open_broker(sys.argv[1], 'q').put\nexcept StoreError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user")
def test_a_store_in_a_directory_the_user_cannot_write_is_refused_by_name(tmp_path):
    os.chmod(tmp_path, 0o755)  # others may enter but not write
    for parent in tmp_path.parents:
        os.chmod(parent, os.stat(parent).st_mode | 0o005)
    done = _open_as_nobody(f"sqlite:///{tmp_path}/jobs.db")
    assert done.returncode == 3, done.stderr
    assert f"cannot create the taskq store {tmp_path}/jobs.db" in done.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user")
def test_a_store_file_the_user_cannot_write_is_refused_by_name(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    open_broker(url, "q").close()
    os.chmod(tmp_path, 0o755)
    for parent in tmp_path.parents:
        os.chmod(parent, os.stat(parent).st_mode | 0o005)
    os.chmod(tmp_path / "jobs.db", 0o644)
    done = _open_as_nobody(url)
    assert done.returncode == 3, done.stderr
    assert f"{tmp_path}/jobs.db" in done.stdout


def test_a_write_the_file_refuses_inside_a_transaction_is_a_store_error_naming_it(url):
    # As when the file turns read-only under a running server (query_only makes SQLite
    # refuse writes the same way): a clear StoreError, not a bare sqlite3 error.
    store = open_broker(url, "q")
    store.put(job("a"))
    store.file.connection().execute("PRAGMA query_only = 1")
    with pytest.raises(StoreError, match=r"cannot write the taskq store .*jobs") as info:
        store.claim("s", 1, lease=10)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    store.file.connection().execute("PRAGMA query_only = 0")
    assert [j.job_id for j in store.claim("s", 1, lease=10)] == ["a"]  # rolled back, usable


def test_a_claim_before_a_rank_takes_only_jobs_ranked_before_it(store):
    for job_id, priority in [("b0", 5), ("b1", 5), ("u", 1)]:
        store.put(job(job_id, priority))
    assert [j.job_id for j in store.claim("s", 5, lease=10, before=1)] == []
    assert [j.job_id for j in store.claim("s", 5, lease=10, before=5)] == ["u"]
    stored, claimed = store.step("s", [("u", Outcome.of_result(1, 1))], 5, 10)
    assert stored == ["u"] and [(j.job_id, j.rank) for j in claimed] == [("b0", 5), ("b1", 5)]
