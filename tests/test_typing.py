"""taskq's typed API, checked statically: ``mypy --strict`` over tests/typing/ must pass.

The checked file pins each public call's type with ``assert_type`` and marks calls
that must be rejected with ``# type: ignore[...]`` (an unneeded ignore is an error
there), so this fails if ``submit`` stops checking arguments against ``fn``.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pytest

import taskq

mypy_api = pytest.importorskip("mypy.api")

TYPING_DIR = Path(__file__).parent / "typing"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_typed_api_checks_under_mypy_strict(tmp_path: Path) -> None:
    stdout, stderr, status = mypy_api.run(
        ["--strict", "--cache-dir", str(tmp_path / "cache"), str(TYPING_DIR)]
    )
    assert status == 0, stdout + stderr


def test_job_future_can_be_subscripted_at_runtime_too() -> None:
    alias = taskq.JobFuture[int]  # e.g. in annotations evaluated at runtime
    assert alias.__origin__ is taskq.JobFuture
    assert issubclass(taskq.JobFuture, Future)
