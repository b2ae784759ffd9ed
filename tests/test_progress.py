"""Progress output: drawn on a terminal (checked through a pseudo-terminal), silent otherwise."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from taskq._progress import ProgressLine, format_duration

ROOT = Path(__file__).resolve().parent.parent

NO_TQDM = "import sys; sys.modules['tqdm'] = None  # makes `import tqdm` fail\n"

TRACK_SCRIPT = """\
import time
from taskq._progress import track

def slowly(n):
    for i in range(n):
        time.sleep(0.05)
        yield i

assert list(track(slowly(30), 30, desc="demo")) == list(range(30))
assert list(track(iter("ab"), None, desc="again")) == ["a", "b"]
print("items ok")
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}


def run_on_terminal(argv: list[str], timeout: float = 45) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a pseudo-terminal; return (status, stdout, terminal text)."""
    master, slave = pty.openpty()
    # A fresh pseudo-terminal is 0 columns wide; tqdm would draw an empty bar.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=_env()
    ) as proc:
        os.close(slave)
        try:
            terminal = _read_until_closed(master, time.monotonic() + timeout)
            assert proc.stdout is not None
            stdout = proc.stdout.read().decode()
            status = proc.wait(timeout=timeout)
        finally:
            os.close(master)
            proc.kill()
    return status, stdout, terminal.decode(errors="replace")


def _read_until_closed(master: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError("the program kept its terminal open too long")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every process holding the terminal closed it
            return b"".join(chunks)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def python(script: str) -> list[str]:
    return [sys.executable, "-c", script]


@pytest.mark.timeout(60)
def test_plain_line_on_a_terminal_without_tqdm() -> None:
    status, stdout, terminal = run_on_terminal(python(NO_TQDM + TRACK_SCRIPT))
    assert status == 0, terminal
    assert "items ok" in stdout
    assert "demo: 30/30 (100%)" in terminal
    assert "/s" in terminal and "again: 2 done" in terminal
    assert terminal.count("pip install 'taskq[progress]'") == 1  # a one-time hint
    # At most one drawing a second (plus the final one), not one per item.
    assert terminal.count("demo:") <= 5


@pytest.mark.timeout(60)
def test_tqdm_bar_on_a_terminal() -> None:
    status, stdout, terminal = run_on_terminal(python(TRACK_SCRIPT))
    assert status == 0, terminal
    assert "items ok" in stdout
    assert "demo: 100%" in terminal and "30/30" in terminal
    assert "pip install" not in terminal


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prelude", ["", NO_TQDM], ids=["tqdm", "plain"])
def test_nothing_is_printed_when_stderr_is_not_a_terminal(prelude: str) -> None:
    done = subprocess.run(
        python(prelude + TRACK_SCRIPT),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=45,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "items ok\n"
    assert done.stderr == ""


MAP_SCRIPT = """\
import taskq

def square(x):
    return x * x

if __name__ == "__main__":
    with taskq.Pool(2) as pool:
        assert list(pool.map(square, range(200), progress=True)) == [x * x for x in range(200)]
    print("map ok")
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prelude", ["", NO_TQDM], ids=["tqdm", "plain"])
def test_pool_map_draws_progress_on_a_terminal(tmp_path: Path, prelude: str) -> None:
    script = tmp_path / "map_script.py"
    script.write_text(prelude + MAP_SCRIPT)
    status, stdout, terminal = run_on_terminal([sys.executable, str(script)])
    assert status == 0, terminal
    assert stdout == "map ok\n"
    assert "200/200" in terminal


@pytest.mark.timeout(60)
def test_the_command_draws_a_live_line_with_failures(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps([n, 1]) + "\n" for n in range(5)) + "[1]\n")
    argv = [sys.executable, "-m", "taskq", "run", "tests.cli_jobs:add", str(jobs)]
    status, stdout, terminal = run_on_terminal(argv)
    assert status == 1  # the last line lacks an argument
    assert len(stdout.splitlines()) == 6
    assert "6/6 (100%)" in terminal and "1 failed" in terminal
    assert "6 jobs in" in terminal  # the summary


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_text() -> None:
    clock = FakeClock()
    line = ProgressLine(io.StringIO(), 100, desc="work", clock=clock)
    clock.now += 10
    line.done, line.failed = 40, 2
    assert line.render() == "work: 40/100 (40%) | 4.0/s | ETA 0:15 | 2 failed"
    line.total = None
    assert line.render() == "work: 40 done | 4.0/s | elapsed 0:10 | 2 failed"


def test_progress_line_redraws_at_most_once_per_interval() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    line = ProgressLine(stream, 3, desc="work", clock=clock)
    line.advance()
    line.advance()  # same instant: not drawn
    clock.now += 1.0
    line.advance()
    line.close()
    drawn = stream.getvalue()
    assert drawn.count("\r") == 3  # first item, third item, final
    assert drawn.endswith("\n")
    assert drawn.rstrip("\n").rsplit("\r", 1)[1] == "work: 3/3 (100%) | 3.0/s | elapsed 0:01"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (75, "1:15"), (3725, "1:02:05"), (None, "?")]
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text
