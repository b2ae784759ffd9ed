"""Restarting workers that fail to start (``Workforce.failed_to_start``), without processes."""

from __future__ import annotations

import selectors
import types
from typing import Any

import pytest

from taskq._errors import PoolBroken
from taskq._workforce import INIT_BACKOFF, MAX_INIT_FAILURES, Workforce


class Recorder:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Any]] = []
        self.broken: list[PoolBroken] = []


@pytest.fixture
def workforce():
    recorder = Recorder()
    selector = selectors.DefaultSelector()
    force = Workforce(
        None,  # type: ignore[arg-type]  # no process is started here
        2,
        selector=selector,
        at=lambda when, action, *args: recorder.timers.append((when, action)),
        ledger=None,  # type: ignore[arg-type]
        on_results=lambda worker: None,
        on_exit=lambda worker: None,
        needed=lambda: True,
        give_up=recorder.broken.append,
    )
    yield force, recorder
    selector.close()


def _worker(pid: int) -> Any:
    return types.SimpleNamespace(pid=pid)


def test_each_failure_in_a_row_doubles_the_delay_before_the_restart(workforce, monkeypatch):
    force, recorder = workforce
    monkeypatch.setattr("taskq._workforce.time.monotonic", lambda: 100.0)
    for pid in range(1, MAX_INIT_FAILURES):
        force.failed_to_start(_worker(pid), "ImportError: no module named settings")
    delays = [when - 100.0 for when, _ in recorder.timers]
    assert delays == pytest.approx([INIT_BACKOFF * 2**n for n in range(MAX_INIT_FAILURES - 1)])
    assert all(action == force.replenish for _, action in recorder.timers)
    assert recorder.broken == []


def test_the_pool_gives_up_after_too_many_failures_in_a_row_and_says_why(workforce):
    force, recorder = workforce
    for pid in range(1, MAX_INIT_FAILURES + 1):
        force.failed_to_start(_worker(pid), "ValueError: bad config")
    assert len(recorder.timers) == MAX_INIT_FAILURES - 1  # no restart after the last
    [error] = recorder.broken
    assert f"failed to start {MAX_INIT_FAILURES} times in a row" in str(error)
    assert "ValueError: bad config" in str(error)


def test_a_worker_that_became_ready_resets_the_count(workforce):
    force, recorder = workforce
    for _ in range(3):
        for pid in range(MAX_INIT_FAILURES - 1):
            force.failed_to_start(_worker(pid), "flaky start")
        force.started_well()
    assert recorder.broken == []
    assert len(recorder.timers) == 3 * (MAX_INIT_FAILURES - 1)
