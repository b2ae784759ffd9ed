"""Waiters' decisions with a stand-in store (no processes, no files): each future resolves
once, whoever learns its outcome first, and a job is declared lost only once it was stored."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

import taskq
from taskq._broker import JobState, JobStatus, Outcome
from taskq._broker_client import Waiters


class FakeStore:
    url = "fake://"
    can_block = False

    def __init__(self):
        self.rows: dict[str, JobStatus] = {}
        self.done: list[str] = []
        self.cancellable: set[str] = set()

    def current_cursor(self):
        return str(len(self.done))

    def finished_since(self, cursor, block=0):
        return str(len(self.done)), [(job_id, None) for job_id in self.done[int(cursor) :]]

    def outcomes(self, job_ids):
        return {i: self.rows[i] for i in job_ids if i in self.rows}

    def job_status(self, job_id):
        return self.rows[job_id]

    def cancel(self, job_id):
        if job_id in self.cancellable:
            self.cancellable.discard(job_id)
            self.end(job_id, Outcome.cancelled("x"))
            return True
        return False

    def end(self, job_id, outcome):
        self.rows[job_id] = JobStatus(JobState.SUCCEEDED, outcome)
        self.done.append(job_id)


@pytest.fixture
def store():
    return FakeStore()


@pytest.fixture
def waiters(store):
    counted = []
    w = Waiters(store, counted.append)
    w.counted = counted
    return w


def test_an_outcome_resolves_its_future_once_whoever_brings_it(store, waiters):
    future = waiters.new("a")
    future._stored = True
    store.end("a", Outcome.of_result(42, 1))
    waiters.resolve("a", Outcome.of_result(42, 1))  # the process's own server, at once
    assert waiters.poll() == 0  # the poll sees it too, and does nothing
    assert future.result(timeout=0) == 42
    assert waiters.counted == [taskq._broker.OutcomeKind.OK]


def test_a_poll_resolves_only_this_processs_jobs(store, waiters):
    mine = waiters.new("mine")
    store.end("other", Outcome.of_result(1, 1))
    store.end("mine", Outcome.of_error(ValueError("bad"), 2))
    assert waiters.poll() == 1
    with pytest.raises(ValueError, match="bad"):
        mine.result(timeout=0)
    assert mine.attempts == 2


def test_a_job_not_yet_stored_is_never_declared_lost(store, waiters):
    submitting = waiters.new("in-flight")  # put() has not returned yet
    waiters.reconcile(every=0)
    assert not submitting.done()
    submitting._stored = True
    waiters.reconcile(every=0)  # stored, yet the store has no such job: deleted under us
    with pytest.raises(taskq.StoreError, match="no longer in the store"):
        submitting.result(timeout=0)


def test_reconcile_finds_an_outcome_whose_notice_was_missed(store, waiters):
    future = waiters.new("a")
    future._stored = True
    store.rows["a"] = JobStatus(JobState.SUCCEEDED, Outcome.of_result("late", 1))  # no notice
    assert waiters.poll() == 0
    waiters.reconcile(every=0)
    assert future.result(timeout=0) == "late"


def test_cancel_asks_the_store_and_loses_to_a_claim(store, waiters):
    queued, claimed = waiters.new("queued"), waiters.new("claimed")
    store.cancellable.add("queued")
    assert queued.cancel() is True and queued.cancelled()
    assert claimed.cancel() is False and not claimed.done()
    store.end("claimed", Outcome.of_result(1, 1))
    waiters.poll()
    assert claimed.result(timeout=0) == 1
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=0)


def test_a_job_looked_up_by_id_resolves_from_its_stored_outcome(store, waiters):
    store.end("old", Outcome.of_result("kept", 3))
    future = waiters.existing("old")
    assert future.result(timeout=0) == "kept"
    with pytest.raises(KeyError):
        waiters.existing("never")
