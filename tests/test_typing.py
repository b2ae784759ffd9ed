"""taskq's typed API, checked statically: ``mypy --strict`` over tests/typing/ must pass.

The checked file pins each public call's type with ``assert_type`` and marks calls
that must be rejected with ``# type: ignore[...]`` (an unneeded ignore is an error
there), so this fails if ``submit`` stops checking arguments against ``fn``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

TYPING_DIR = Path(__file__).parent / "typing"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_typed_api_checks_under_mypy_strict(tmp_path: Path) -> None:
    stdout, stderr, status = mypy_api.run(
        ["--strict", "--cache-dir", str(tmp_path / "cache"), str(TYPING_DIR)]
    )
    assert status == 0, stdout + stderr
