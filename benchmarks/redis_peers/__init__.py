"""Contestants of the Redis benchmark (``benchmarks/broker_redis.py``): one adapter per
queue library, all against the same local Redis database.

Every adapter starts its library's own worker command as subprocesses (2 processes),
submits the jobs of ``jobs.py`` through the library's client API and reads their
results back, so that each result can be verified. The Redis URL reaches the worker
processes through the environment variable ``TASKQ_BENCH_REDIS_URL``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ENV_URL = "TASKQ_BENCH_REDIS_URL"
ROOT = Path(__file__).resolve().parents[2]
PEERS = ("rq", "huey", "arq", "saq", "dramatiq", "celery")
QUEUE = "bench"


def url() -> str:
    return os.environ[ENV_URL]


class Unavailable(Exception):
    """The peer cannot be installed or run here (the reason is reported)."""


class Peer:
    """One queue library: its workers (subprocesses) and its client API."""

    key = ""
    label = ""
    workers_note = ""  # how the 2 worker processes were obtained
    urgent_note = ""  # what the urgent probe uses
    startup_grace = 2.0  # seconds a second worker needs before it takes jobs
    processes = 1  # worker commands to start (each with its own processes inside)
    _started = 0  # worker commands started so far (names the log files)

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    # -- workers ------------------------------------------------------------------
    def worker_command(self) -> list[str]:
        raise NotImplementedError

    def start_workers(self, log_dir: Path) -> list[subprocess.Popen[bytes]]:
        """Start the worker command(s), each in its own session (killable as a group)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        started = []
        for _ in range(self.processes):
            Peer._started += 1
            log = open(log_dir / f"{self.key}-{Peer._started}.log", "wb")  # noqa: SIM115
            self._logs.append(log)
            proc = subprocess.Popen(
                self.worker_command(),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._procs.append(proc)
            started.append(proc)
        return started

    def kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL every process of the worker command's session (a lost machine): its
        process group, and the processes that moved to groups of their own (RQ's work
        horses call ``setpgrp``) but stayed in the session."""
        for pid in session_members(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_workers(self) -> None:
        """SIGTERM every worker group, SIGKILL after 10 s."""
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill_group(proc)
            self.kill_group(proc)  # whatever the leader left behind, in its session too
        self._procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    # -- client -------------------------------------------------------------------
    def open(self) -> None:
        """Connect the client (workers need not run)."""

    def close(self) -> None:
        """Disconnect the client."""

    def submit_many(self, args: Sequence[int]) -> list[Any]:
        """Enqueue ``noop(x)`` for each x, one call per job; the handles."""
        raise NotImplementedError

    def results(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        """Wait for every handle's result (in order), at most ``timeout`` seconds."""
        raise NotImplementedError

    def one(self, x: int, timeout: float) -> Any:
        """Submit one ``noop(x)`` and wait for its result."""
        return self.results(self.submit_many([x]), timeout)[0]

    def submit_probe(self, tag: int, urgent: bool) -> Any:
        """Enqueue ``probe(tag)``: urgent (this peer's best equivalent) or like the backlog."""
        raise NotImplementedError

    def submit_recovery_job(self, tag: str, seconds: float, marker_dir: str) -> Any:
        raise NotImplementedError

    def queued(self) -> int | None:
        """Jobs waiting in the broker (None if this peer cannot tell cheaply)."""
        return None


def load(key: str) -> Peer:
    """The adapter of peer ``key``; ``Unavailable`` with the reason if it cannot run."""
    name = f"benchmarks.redis_peers.{key}_peer"
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise Unavailable(f"cannot import: {exc}") from exc
    peer: Peer = module.ADAPTER()
    return peer


def session_members(sid: int) -> list[int]:
    """The processes whose session id is ``sid`` (each worker command starts its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]


def poll_until(ready: Any, timeout: float, what: str, pause: float = 0.0005) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: no result within {timeout:.0f} s")
        time.sleep(pause)
