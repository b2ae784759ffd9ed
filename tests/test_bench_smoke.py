"""Smoke test of the benchmark suite: its quickest mode end to end, in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_benchmark_smoke_run_writes_verified_results(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--output", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"

    data = json.loads((tmp_path / "smoke.json").read_text())
    markdown = (tmp_path / "smoke.md").read_text()

    machine = data["machine"]
    for field in ("cores", "python", "start_method", "packages", "date_utc"):
        assert machine[field], field
    assert data["config"]["mode"] == "smoke"
    assert len(data["targets"]) >= 10
    assert "## Targets" in markdown

    assert len(data["scenarios"]) == 14
    compared = 0
    for scenario in data["scenarios"]:
        assert f"## {scenario['title']}" in markdown
        rows = {row["peer"]: row for row in scenario["rows"] if not row["reference"]}
        taskq = rows["taskq"]
        if scenario["key"] == "numpy_64mb" and importlib.util.find_spec("numpy") is None:
            assert taskq["status"] == "skipped", taskq
            continue
        assert taskq["status"] == "ok", (scenario["key"], taskq)
        assert taskq["verified"]
        assert taskq["metrics"], scenario["key"]
        peer = rows["ppe"]
        assert peer["status"] in {"ok", "not run"}, (scenario["key"], peer)
        if peer["status"] == "ok":
            assert peer["verified"]
            compared += any(m["ratio_to_taskq"] for m in peer["metrics"].values())
    assert compared >= 8  # the stdlib peer ran side by side in most scenarios
