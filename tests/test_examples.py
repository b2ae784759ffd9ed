"""Every example in examples/ runs to completion and prints what a reader should notice."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_example_has_a_test() -> None:
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    assert {path.stem for path in EXAMPLES.glob("*.py")} <= tested


@pytest.mark.timeout(70)
def test_quickstart() -> None:
    out = run_example("quickstart.py")
    assert "slow_add(2, 3) = 5" in out
    assert "map(square, range(10)) = [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in out
    assert "priority=-1) = 144" in out
    assert re.search(r"stats: submitted=(\d+) succeeded=\1 failed=0", out)


@pytest.mark.timeout(70)
def test_priorities() -> None:
    out = run_example("priorities.py")
    assert "urgent-2" in out and "backlog-7" in out
    overtaken = re.search(r"overtook (\d+) queued backlog jobs", out)
    assert overtaken and int(overtaken.group(1)) >= 2  # 4 on an idle machine


@pytest.mark.timeout(70)
def test_counter_race() -> None:
    out = run_example("counter_race.py")
    assert "taskq counter:   1000 -> 1000  (exact: True)" in out
    assert "unguarded value: 1000 ->" in out


@pytest.mark.timeout(70)
def test_pipeline() -> None:
    out = run_example("pipeline.py")
    assert out.count("-> counting its words") == 8
    total = re.search(r"total words counted: (\d+) \(sum over the shared dict: (\d+)\)", out)
    assert total and total.group(1) == total.group(2) == str(sum(50 + 10 * d for d in range(8)))


@pytest.mark.timeout(70)
def test_resilience() -> None:
    out = run_example("resilience.py")
    assert "crash():  WorkerCrashed" in out and "exit code 3" in out
    assert "sleepy(): JobTimeout after 0.5s" in out
    assert "flaky():  succeeded on attempt 2 (attempts: 2)" in out
    assert "map(square, range(8)) = [0, 1, 4, 9, 16, 25, 36, 49]" in out
    assert "crashed=1 timed_out=1 retried=1" in out


@pytest.mark.timeout(70)
def test_asyncio_demo() -> None:
    out = run_example("asyncio_demo.py")
    assert "primes below 60000: 6057" in out
    assert "wait_for() gave up" in out
    beats = re.search(r"(\d+) heartbeats in", out)
    assert beats and int(beats.group(1)) >= 2


@pytest.mark.timeout(70)
def test_progress_bar() -> None:
    out = run_example("progress_bar.py")
    assert "400 results, in input order: [0, 2, 4, 6, 8] ... [796, 798]" in out
