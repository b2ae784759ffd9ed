"""Smoke test of the Redis benchmark: its tiny taskq-only mode end to end, in a subprocess,
against the local Redis (database 14 of its own, emptied by the benchmark at the end).
No speed assertions: only that every scenario ran and was verified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1:6379"
DB = 14


def _redis_up() -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(f"redis://{HOST}/{DB}", socket_connect_timeout=1)
        client.ping()
        client.close()
    except redis.RedisError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _redis_up(), reason=f"no Redis reachable at {HOST}")


@pytest.mark.timeout(240)
def test_redis_benchmark_tiny_run_is_verified(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.broker_redis",
            "--tiny",
            "--peers",
            "none",
            "--no-inproc",
            "--db",
            str(DB),
            "--host",
            HOST,
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    data = json.loads((tmp_path / "redis-tiny.json").read_text())
    markdown = (tmp_path / "redis-tiny.md").read_text()
    assert data["mode"] == "tiny" and data["repeat"] == 1
    for scenario in ("enqueue", "e2e", "latency", "urgent", "recovery"):
        rows = {row["key"]: row for row in data["results"][scenario]}
        taskq = rows["taskq"]
        assert taskq["status"] == "ok" and taskq["verified"], (scenario, taskq)
        assert taskq["samples"], scenario
    assert data["results"]["recovery"][0]["samples"]["recovered"] == [1.0]
    assert "ping" in {row["key"] for row in data["results"]["latency"]}
    correctness = data["correctness"]
    assert correctness["verified"], correctness
    assert correctness["lost"] == 0 and correctness["duplicated"] == 0
    assert "## Targets" in markdown
    import redis

    assert redis.Redis.from_url(f"redis://{HOST}/{DB}").dbsize() == 0  # cleaned up
