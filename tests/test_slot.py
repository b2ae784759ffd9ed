"""A worker's slot: a job is either started by the worker or taken back, never both."""

from __future__ import annotations

import multiprocessing
import threading

from taskq import _slot
from taskq._slot import WorkerSlot


def new_slot() -> WorkerSlot:
    array = multiprocessing.RawArray("q", _slot.WIDTH)
    (lock,) = _slot.slot_locks(1)
    slot = WorkerSlot(array, 0, lock)
    slot.clear()
    return slot


def test_a_started_job_is_named_by_the_slot_until_it_ends():
    slot = new_slot()
    assert slot.running() == (0, 0)
    assert slot.begin(1, job_id=41)
    job, started_ns = slot.running()
    assert job == 41 and started_ns > 0
    slot.end()
    assert slot.running()[0] == 0


def test_taking_back_stops_every_unstarted_job_up_to_the_mark_and_names_the_last_started():
    slot = new_slot()
    assert slot.begin(1, job_id=10)
    assert slot.revoke(sent=4) == 1  # job 1 had started: it stays the worker's
    assert [slot.begin(seq, job_id=10 + seq) for seq in (2, 3, 4)] == [False, False, False]
    assert slot.running()[0] == 10  # the skipped ones never show up as running
    assert slot.begin(5, job_id=15)  # sent after the take-back: runs
    assert slot.revoke(sent=5) == 5  # already started: nothing left to take back


def test_a_job_already_taken_back_is_skipped_without_waiting_for_the_lock():
    # A worker reading through a long batch of taken-back jobs must not take the lock
    # for each (an urgent job waits behind them), nor wait while the parent holds it.
    slot = new_slot()
    slot.revoke(sent=100)
    answers: list[bool] = []
    slot._lock.acquire()  # the parent, busy with this slot
    try:
        skipper = threading.Thread(target=lambda: answers.append(slot.begin(7, job_id=1)))
        skipper.start()
        skipper.join(timeout=10)
        assert not skipper.is_alive(), "begin() of a taken-back job waited for the lock"
        assert answers == [False]
        starter = threading.Thread(target=lambda: answers.append(slot.begin(101, job_id=2)))
        starter.start()
        starter.join(timeout=0.2)
        assert starter.is_alive()  # a job not taken back is claimed under the lock only
    finally:
        slot._lock.release()
    starter.join(timeout=10)
    assert answers == [False, True]
    assert slot.running()[0] == 2
