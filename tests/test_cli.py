"""End-to-end tests of the ``taskq`` command, run as ``python -m taskq`` in a subprocess."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
JOBS = "tests.cli_jobs"


def _env(pythonpath: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(pythonpath)
    return env


def taskq(
    *args: str, stdin: str | None = None, cwd: Path = ROOT, timeout: float = 45
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m taskq ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "taskq", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=timeout,
    )


def jobs_file(tmp_path: Path, *lines: Any) -> Path:
    """Write a JSON Lines file: strings are written as they are, anything else as JSON."""
    path = tmp_path / "jobs.jsonl"
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text)
    return path


def results(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def by_id(stdout: str) -> dict[Any, dict[str, Any]]:
    return {record["id"]: record for record in results(stdout)}


@pytest.mark.timeout(60)
def test_every_job_gets_one_result_line(tmp_path: Path) -> None:
    path = jobs_file(
        tmp_path, {"id": "a1", "args": [1, 2]}, [10, 20], {"args": [2], "kwargs": {"b": 5}}
    )
    done = taskq("run", f"{JOBS}:add", str(path), "--workers", "2")
    assert done.returncode == 0, done.stderr
    found = by_id(done.stdout)
    assert {key: record["result"] for key, record in found.items()} == {"a1": 3, 2: 30, 3: 7}
    for record in found.values():
        assert record["ok"] is True
        assert record["attempts"] == 1
        assert isinstance(record["seconds"], float)
    assert "3 jobs" in done.stderr and "3 succeeded, 0 failed" in done.stderr


@pytest.mark.timeout(60)
def test_a_bare_value_is_the_single_argument(tmp_path: Path) -> None:
    path = jobs_file(tmp_path, '"text"', '{"args": [{"k": 1}]}', "null")
    done = taskq("run", f"{JOBS}:echo", str(path), "--ordered")
    assert done.returncode == 0, done.stderr
    assert [record["result"] for record in results(done.stdout)] == ["text", {"k": 1}, None]


@pytest.mark.timeout(60)
def test_priorities_are_honoured_with_one_worker(tmp_path: Path) -> None:
    # Two blockers first (-100 runs before everything), so whatever the pool hands to its
    # worker ahead of time is a blocker; the others wait in the queue and run smallest first.
    lines = [
        {"id": "block1", "args": [0.7], "priority": -100},
        {"id": "block2", "args": [0.3], "priority": -100},
    ]
    lines += [{"id": f"p{p}", "args": [0], "priority": p} for p in (5, 1, 3, -1, 2)]
    done = taskq("run", f"{JOBS}:nap", str(jobs_file(tmp_path, *lines)), "--workers", "1")
    assert done.returncode == 0, done.stderr
    order = [record["id"] for record in results(done.stdout)]
    assert order == ["block1", "block2", "p-1", "p1", "p2", "p3", "p5"]


@pytest.mark.timeout(60)
def test_malformed_lines_are_reported_and_the_other_jobs_run(tmp_path: Path) -> None:
    path = jobs_file(
        tmp_path,
        [1, 2],
        "{not json",
        {"id": "x", "args": [1, 2], "bogus": True},
        {"args": "not a list"},
        "",
        {"args": [3, 4], "priority": 1, "timeout": 5, "retries": 1},
    )
    done = taskq("run", f"{JOBS}:add", str(path), "--ordered")
    assert done.returncode == 1
    records = results(done.stdout)
    assert [r["line"] for r in records] == [1, 2, 3, 4, 6]
    assert [r["ok"] for r in records] == [True, False, False, False, True]
    assert [r["result"] for r in records if r["ok"]] == [3, 7]
    bad_json, unknown, wrong_type = (r["error"] for r in records[1:4])
    assert bad_json["type"] == "InvalidJob" and "line 2" in bad_json["message"]
    assert "line 3" in unknown["message"] and "'bogus'" in unknown["message"]
    assert records[2]["id"] == "x"
    assert "line 4" in wrong_type["message"] and "'args'" in wrong_type["message"]
    assert "3 invalid lines" in done.stderr


@pytest.mark.timeout(60)
def test_a_failing_job_makes_the_exit_status_1(tmp_path: Path) -> None:
    path = jobs_file(tmp_path, {"id": "boom", "args": ["it broke"]})
    done = taskq("run", f"{JOBS}:fail", str(path))
    assert done.returncode == 1
    [record] = results(done.stdout)
    assert record["ok"] is False
    assert record["error"] == {"type": "ValueError", "message": "it broke"}
    assert "0 succeeded, 1 failed" in done.stderr


@pytest.mark.timeout(60)
def test_a_result_json_cannot_hold_is_an_error(tmp_path: Path) -> None:
    done = taskq("run", f"{JOBS}:not_json", str(jobs_file(tmp_path, [])))
    assert done.returncode == 1
    [record] = results(done.stdout)
    assert record["error"]["type"] == "TypeError"
    assert "JSON" in record["error"]["message"]


@pytest.mark.timeout(60)
def test_retries_from_the_line_are_used(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = jobs_file(tmp_path, {"args": [str(marker)], "retries": 1})
    done = taskq("run", f"{JOBS}:flaky", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    [record] = results(done.stdout)
    assert record["result"] == "second attempt worked"
    assert record["attempts"] == 2


@pytest.mark.timeout(60)
def test_a_job_past_its_timeout_fails_with_jobtimeout(tmp_path: Path) -> None:
    path = jobs_file(tmp_path, {"id": "slow", "args": [10], "timeout": 0.5}, [0, "fast"])
    done = taskq("run", f"{JOBS}:nap", str(path), "--workers", "2")
    assert done.returncode == 1
    found = by_id(done.stdout)
    assert found["slow"]["error"]["type"] == "JobTimeout"
    assert found[2]["result"] == "fast"


@pytest.mark.timeout(60)
def test_ordered_writes_results_in_input_order(tmp_path: Path) -> None:
    path = jobs_file(tmp_path, [0.8, "a"], [0.4, "b"], [0, "c"], [0.2, "d"])
    done = taskq("run", f"{JOBS}:nap", str(path), "--workers", "2", "--ordered")
    assert done.returncode == 0, done.stderr
    assert [record["result"] for record in results(done.stdout)] == ["a", "b", "c", "d"]


@pytest.mark.timeout(60)
def test_unordered_writes_results_as_jobs_finish(tmp_path: Path) -> None:
    path = jobs_file(tmp_path, [1.5, "slow"], [0, "fast"])
    done = taskq("run", f"{JOBS}:nap", str(path), "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert [record["result"] for record in results(done.stdout)] == ["fast", "slow"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", [[], ["-"]], ids=["no-file", "dash"])
def test_jobs_are_read_from_stdin(source: list[str]) -> None:
    done = taskq("run", f"{JOBS}:add", *source, "--ordered", stdin="[1, 1]\n[2, 2]\n")
    assert done.returncode == 0, done.stderr
    assert [record["result"] for record in results(done.stdout)] == [2, 4]


@pytest.mark.timeout(60)
def test_results_stream_out_while_stdin_stays_open() -> None:
    # An endless producer: each result must come back before the next line is sent.
    with subprocess.Popen(
        [sys.executable, "-m", "taskq", "run", f"{JOBS}:add", "--quiet"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(),
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for n in range(3):
                proc.stdin.write(f"[{n}, 100]\n")
                proc.stdin.flush()
                ready, _, _ = select.select([proc.stdout], [], [], 30)
                assert ready, "no result while stdin is still open"
                assert json.loads(proc.stdout.readline())["result"] == n + 100
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()


@pytest.mark.timeout(60)
def test_a_large_input_is_read_lazily(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(f"[{n}, 1]\n" for n in range(3000)))
    done = taskq("run", f"{JOBS}:add", str(path), "--maxsize", "8", "--quiet")
    assert done.returncode == 0, done.stderr
    assert sorted(record["result"] for record in results(done.stdout)) == list(range(1, 3001))


JOB_FILE = """\
def triple(x):
    return 3 * x
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_the_target_can_be_a_py_file(tmp_path: Path, method: str) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "my_jobs.py").write_text(JOB_FILE)
    path = jobs_file(tmp_path, [1], [2], [3])
    done = taskq(
        "run",
        "lib/my_jobs.py:triple",
        str(path),
        "--start-method",
        method,
        "--ordered",
        "--workers",
        "2",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert [record["result"] for record in results(done.stdout)] == [3, 6, 9]


@pytest.mark.timeout(60)
def test_dry_run_checks_lines_and_runs_nothing(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    path = jobs_file(tmp_path, [str(pids), 0], [str(pids)], "[oops", {"args": [str(pids), 0]})
    done = taskq("run", f"{JOBS}:record_pid", str(path), "--dry-run")
    assert done.returncode == 1
    problems = results(done.stdout)
    assert [r["line"] for r in problems] == [2, 3]
    assert "arguments do not fit" in problems[0]["error"]["message"]
    assert "2 valid jobs, 2 invalid lines" in done.stderr
    assert not pids.exists()
    clean = jobs_file(tmp_path, [str(pids), 0])
    assert taskq("run", f"{JOBS}:record_pid", str(clean), "--dry-run").returncode == 0
    assert not pids.exists()


@pytest.mark.timeout(60)
def test_nan_priority_or_timeout_is_an_invalid_line(tmp_path: Path) -> None:
    # Python's JSON reader accepts NaN, which no priority or timeout can be.
    path = jobs_file(
        tmp_path,
        '{"args": [1, 2], "priority": NaN}',
        '{"args": [1, 2], "timeout": NaN}',
        {"args": [1, 2], "timeout": 5},
    )
    dry = taskq("run", f"{JOBS}:add", str(path), "--dry-run")
    assert dry.returncode == 1
    assert "1 valid job, 2 invalid lines" in dry.stderr
    done = taskq("run", f"{JOBS}:add", str(path), "--ordered")
    records = results(done.stdout)
    assert [r["ok"] for r in records] == [False, False, True]
    for number, field, record in zip((1, 2), ("priority", "timeout"), records, strict=False):
        assert record["error"]["type"] == "InvalidJob"
        assert f"line {number}" in record["error"]["message"]
        assert f"'{field}'" in record["error"]["message"] and "NaN" in record["error"]["message"]


@pytest.mark.timeout(60)
def test_quiet_prints_nothing_on_stderr(tmp_path: Path) -> None:
    done = taskq("run", f"{JOBS}:add", str(jobs_file(tmp_path, [1, 2])), "--quiet")
    assert done.returncode == 0
    assert done.stderr == ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "tests.cli_jobs"], "expected MODULE:FUNCTION"),
        (["run", "tests.cli_jobs:nope"], "has no attribute 'nope'"),
        (["run", "no_such_module_xyz:f"], "cannot import no_such_module_xyz"),
        (["run", "missing/jobs.py:f"], "no such file"),
        (["run", "tests.cli_jobs:add", "missing.jsonl"], "cannot read missing.jsonl"),
        (["run", "tests.cli_jobs:add", "--workers", "0"], "must be at least 1"),
        (["worker", "sqlite:///never-created.db", "--workers", "0"], "must be at least 1"),
        ([], "usage: taskq"),
    ],
)
def test_usage_errors_exit_with_2(args: list[str], message: str) -> None:
    done = taskq(*args)
    assert done.returncode == 2
    assert message in done.stderr


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, merely not reaped


def _wait_for_lines(path: Path, count: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {count} lines")


@pytest.mark.timeout(90)
def test_ctrl_c_stops_running_jobs_and_exits_130(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    quick, slow = [str(pids), 0], [str(pids), 60]
    path = jobs_file(tmp_path, quick, quick, *[slow] * 6)
    with subprocess.Popen(
        [sys.executable, "-m", "taskq", "run", f"{JOBS}:record_pid", str(path), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=_env(),
        # Python only turns SIGINT into KeyboardInterrupt if SIGINT is not ignored at startup.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        try:
            _wait_for_lines(pids, 4, timeout=30)  # two quick jobs done, two long ones running
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 130, stderr
    records = results(stdout)  # every line written is complete JSON
    assert sum(record["ok"] for record in records) == 2
    assert "interrupted" in stderr
    workers = {int(pid) for pid in pids.read_text().split()}
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], "workers outlived the command"


@pytest.mark.timeout(60)
def test_version() -> None:
    done = taskq("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("taskq ")
    assert done.stdout.split()[1][0].isdigit()


@pytest.mark.timeout(60)
def test_help_shows_an_example() -> None:
    done = taskq("--help")
    assert done.returncode == 0
    assert "example:" in done.stdout and "taskq run" in done.stdout
    run_help = taskq("run", "--help")
    assert run_help.returncode == 0
    assert "--ordered" in run_help.stdout and "exit status" in run_help.stdout


@pytest.mark.timeout(60)
def test_bench_outside_a_source_checkout_says_so(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "taskq", tmp_path / "taskq")  # an "installed" taskq, no benchmarks/
    done = subprocess.run(
        [sys.executable, "-m", "taskq", "bench"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path),
        timeout=45,
    )
    assert done.returncode == 2
    assert "source checkout" in done.stderr


@pytest.mark.timeout(60)
def test_ctrl_c_while_waiting_for_input_exits_130() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "taskq", "run", f"{JOBS}:add", "--workers", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write("[1, 2]\n")
            proc.stdin.flush()
            assert json.loads(proc.stdout.readline())["result"] == 3
            proc.send_signal(signal.SIGINT)  # stdin is still open: the reader is blocked on it
            assert proc.wait(timeout=30) == 130
        finally:
            proc.kill()
            proc.stdin.close()


@pytest.mark.timeout(60)
def test_bench_passes_its_arguments_to_the_suite() -> None:
    done = taskq("bench", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "benchmark" in done.stdout.lower()


@pytest.mark.timeout(60)
def test_a_py_file_named_like_another_module_is_refused(tmp_path: Path) -> None:
    (tmp_path / "json.py").write_text(JOB_FILE)
    done = taskq("run", f"{tmp_path / 'json.py'}:triple", stdin="[1]\n")
    assert done.returncode == 2
    assert "already taken" in done.stderr and "rename the file" in done.stderr
