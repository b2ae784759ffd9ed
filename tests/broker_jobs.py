"""Jobs and helpers for the broker tests (importable by workers and `taskq worker`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(path, tag, seconds=0.0):
    """Append ``tag pid`` to ``path`` (one line per run), sleep, return ``tag``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return tag


def runs(path):
    """The tags recorded in ``path``, in the order they ran."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def start_worker(url, *args, env=None, new_session=False):
    """``taskq worker URL ...`` as a child process (stderr kept for the log); with
    ``new_session``, in a session and process group of its own, as a shell starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "taskq", "worker", url, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
        start_new_session=new_session,
    )


def run_python(code, *args, timeout=60):
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


def stop(proc, timeout=30):
    """Kill ``proc`` if it still runs; return its stderr (its pipes are closed)."""
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate(timeout=timeout)
    return err or ""


def on_host(path, seconds):
    """Record which test host (``TASKQ_TEST_HOST``) started the job, sleep, return it."""
    host = os.environ.get("TASKQ_TEST_HOST", "?")
    record(path, host)
    time.sleep(seconds)
    return host


def kill_my_server(path):
    """Record the run, then SIGKILL the serving process's group: the server dies.

    The server was started in a session of its own, so the session's id is its pid and
    its group's; the worker itself runs in a group of its own and exits with its parent.
    """
    record(path, "killer")
    os.killpg(os.getsid(0), 9)
