"""ClaimPace: how many jobs a serving process claims at once, driven with plain numbers."""

from __future__ import annotations

import pytest

from taskq._claim_pace import CLAIM_BUDGET, MAX_EXTRA_PER_WORKER, ClaimPace


def pace(workers: int, average: float | None) -> ClaimPace:
    return ClaimPace(workers, lambda: average)


@pytest.mark.parametrize("average", [None, 0.5, CLAIM_BUDGET])
def test_one_job_per_worker_until_jobs_are_known_to_be_tiny(average):
    p = pace(2, average)
    assert p.room(held=0) == 2
    assert p.room(held=1) == 1
    assert p.room(held=2) == 0
    assert p.room(held=5) == 0  # never negative (held more, e.g. after a stall)


def test_tiny_jobs_are_held_about_the_claim_budget_of_work_per_worker():
    average = CLAIM_BUDGET / 10
    p = pace(2, average)
    assert p.room(held=0) == 2 + 2 * 10


def test_the_extra_per_worker_is_capped():
    p = pace(3, 1e-9)
    assert p.room(held=0) == 3 + 3 * MAX_EXTRA_PER_WORKER


def test_with_extra_held_claims_wait_until_half_of_them_have_run():
    p = pace(2, CLAIM_BUDGET / 10)  # 22 in all
    assert p.room(held=2) == 20  # the workers are busy but nothing waits: fill up
    assert p.room(held=12) == 0  # 10 of room: less than half, wait
    assert p.room(held=11) == 11  # 11 of room: half has run, claim a batch
    assert p.room(held=1) == 21  # a worker with nothing to do is served at once


def test_a_stalled_server_holds_no_extra():
    p = pace(2, CLAIM_BUDGET / 10)
    assert p.room(held=0, stalled=True) == 2
    assert p.room(held=2, stalled=True) == 0
