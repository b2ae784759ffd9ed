"""Smoke test of the SQLite broker benchmark (issue 9): its tiny mode end to end, in a
subprocess; it checks that every row is verified, never how fast anything is."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAVE_HUEY = importlib.util.find_spec("huey") is not None


@pytest.mark.timeout(180)
def test_sqlite_benchmark_tiny_run_writes_verified_results(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "benchmarks.broker_sqlite", "--tiny", "--out", str(tmp_path)]
    if not HAVE_HUEY:
        command.append("--no-huey")
    proc = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=160, check=False
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"

    data = json.loads((tmp_path / "broker_sqlite_tiny.json").read_text())
    markdown = (tmp_path / "broker_sqlite_tiny.md").read_text()
    assert data["verified"] and not data["errors"]
    assert data["config"]["mode"] == "tiny"
    assert "## Targets" in markdown and "## Results" in markdown
    stats = data["stats"]
    for key in (
        "enqueue.jobs_s",
        "serve.e2e_jobs_s",
        "serve.lat_p50_ms",
        "serve.lat_p99_ms",
        "serve.urgent_p99_ms",
        "recovery.recovery_s",
    ):
        assert stats[key]["taskq"]["median"] > 0, key
    assert stats["enqueue.jobs_s"]["sqlite_bare"]["median"] > 0
    lease = data["config"]["lease_s"]
    assert stats["recovery.recovery_s"]["taskq"]["median"] >= lease * 0.5  # it did wait a lease
    if HAVE_HUEY:
        assert stats["serve.e2e_jobs_s"]["huey"]["median"] > 0
        assert stats["enqueue.jobs_s"]["huey"]["median"] > 0
    assert len(data["targets"]) == 5
