"""Job functions (run inside worker processes) and small helpers shared by the tests.

Everything here is importable as ``tests.jobs`` so that jobs pickle by reference under every
start method (fork, spawn, forkserver).  ``taskq`` is imported lazily inside the jobs that need
it, so this module stays importable on its own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
import uuid
from pathlib import Path

# --------------------------------------------------------------------------------------------
# plain jobs
# --------------------------------------------------------------------------------------------


def identity(x):
    return x


def noop():
    return None


def square(x):
    return x * x


def add(a, b):
    return a + b


def add3(a, b, c):
    return a + b + c


def getpid(_=None):
    return os.getpid()


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def sleep_then_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def echo(*args, **kwargs):
    return args, kwargs


def echo_kwargs(**kwargs):
    return kwargs


def length(data):
    return len(data)


def make_bytes(n):
    return bytes(n)


def raise_value_error(message="boom"):
    raise ValueError(message)


def raise_type_error(message="wrong type"):
    raise TypeError(message)


def fail_if_odd(x):
    if x % 2:
        raise ValueError(f"odd input {x}")
    return x


def square_or_fail_at(x, bad):
    if x == bad:
        raise ZeroDivisionError(f"bad item {x}")
    return x * x


# --------------------------------------------------------------------------------------------
# counters
# --------------------------------------------------------------------------------------------


def counter_add(name, n=1):
    import taskq

    return taskq.counter(name).add(n)


def counter_value(name):
    import taskq

    return taskq.counter(name).value


def counter_loop(name, delta, times):
    """Add ``delta`` to the counter ``times`` times, one atomic add each."""
    import taskq

    c = taskq.counter(name)
    for _ in range(times):
        c.add(delta)
    return times


def start_rank(name="order"):
    """The job's start rank: the counter value right after this job's increment."""
    import taskq

    return taskq.counter(name).add(1)


def flaky(name, failures, exc_type_name="ValueError"):
    """Fails on its first ``failures`` attempts (counted with a shared counter)."""
    import taskq

    attempt = taskq.counter(name).add(1)
    if attempt <= failures:
        raise {"ValueError": ValueError, "TypeError": TypeError}[exc_type_name](
            f"attempt {attempt} failed"
        )
    return attempt


def crash_on_first_attempts(name, failures):
    import taskq

    attempt = taskq.counter(name).add(1)
    if attempt <= failures:
        os._exit(7)
    return attempt


def sleep_on_first_attempts(name, failures, seconds):
    import taskq

    attempt = taskq.counter(name).add(1)
    if attempt <= failures:
        time.sleep(seconds)
    return attempt


# --------------------------------------------------------------------------------------------
# gates: a job that blocks until the test releases it
# --------------------------------------------------------------------------------------------


def _touch(path):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)


def block_until(release_path, started_path=None, limit=60.0, value=None):
    """Signal that we started (``started_path``), then wait until ``release_path`` exists."""
    if started_path is not None:
        tmp = f"{started_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, started_path)
    deadline = time.monotonic() + limit
    while not os.path.exists(release_path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {release_path} was never opened")
        time.sleep(0.002)
    return os.getpid() if value is None else value


def mark_started_then_sleep(started_path, seconds, value=None):
    tmp = f"{started_path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, started_path)
    time.sleep(seconds)
    return value


def mark_started_then_count(started_path, name):
    tmp = f"{started_path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, started_path)
    return counter_add(name)


class Gate:
    """A file-based gate usable from any start method.

    ``gate.job(name)`` gives ``(fn, args)`` for a job that announces it started and blocks until
    ``gate.open()``.  ``gate.wait_started(name)`` waits for the announcement and returns the pid.
    """

    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:8]
        self.release_path = str(self.dir / f"release-{token}")
        self._token = token

    def started_path(self, name):
        return str(self.dir / f"started-{self._token}-{name}")

    def job(self, name="blocker", value=None, limit=60.0):
        return block_until, (self.release_path, self.started_path(name), limit, value)

    def wait_started(self, name="blocker", timeout=30.0):
        path = self.started_path(name)
        wait_until(lambda: os.path.exists(path), timeout, f"job {name!r} to start")
        return int(Path(path).read_text())

    def is_started(self, name="blocker"):
        return os.path.exists(self.started_path(name))

    def open(self):
        _touch(self.release_path)


# --------------------------------------------------------------------------------------------
# initializers
# --------------------------------------------------------------------------------------------

_INIT_CALLS = 0
_INIT_VALUE = None


def record_pid_initializer(path, value=None):
    """Append this worker's pid to ``path`` (O_APPEND, one line per call)."""
    global _INIT_CALLS, _INIT_VALUE
    _INIT_CALLS += 1
    _INIT_VALUE = value
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def init_state():
    """(pid, how many times the initializer ran in this process, the value it was given)."""
    return os.getpid(), _INIT_CALLS, _INIT_VALUE


def failing_initializer(message="initializer exploded"):
    raise RuntimeError(message)


def read_pids(path):
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [int(line) for line in text.split()]


# --------------------------------------------------------------------------------------------
# faults: crashes, signals, segfaults, (un)pickling failures
# --------------------------------------------------------------------------------------------


class InjectedFault(Exception):
    """Raised by ``trigger_fault('raise', ...)``."""


def trigger_fault(kind, pidfile):
    """Write our pid to ``pidfile`` and then fail in the way ``kind`` names."""
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    if kind == "raise":
        raise InjectedFault("injected fault in trigger_fault")
    if kind == "exit":
        os._exit(3)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    if kind == "segv":
        ctypes.string_at(0)
        time.sleep(30)
    raise AssertionError(f"unknown fault kind {kind!r}")


class FaultOnUnpickle:
    """Pickles fine; unpickling it (in the worker) triggers the fault."""

    def __init__(self, kind, pidfile):
        self.kind = kind
        self.pidfile = pidfile

    def __reduce__(self):
        return trigger_fault, (self.kind, self.pidfile)


class FaultOnPickle:
    """Pickling it (when a worker sends it back as a result) triggers the fault."""

    def __init__(self, kind, pidfile):
        self.kind = kind
        self.pidfile = pidfile

    def __reduce__(self):
        trigger_fault(self.kind, self.pidfile)
        return FaultOnPickle, (self.kind, self.pidfile)


def fault_job(kind, pidfile):
    trigger_fault(kind, pidfile)


def return_fault_on_pickle(kind, pidfile):
    return FaultOnPickle(kind, pidfile)


def exit_with(code):
    os._exit(code)


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def segfault():
    ctypes.string_at(0)


# --------------------------------------------------------------------------------------------
# serialization troubles
# --------------------------------------------------------------------------------------------


def return_lock():
    return threading.Lock()


def return_lock_if(flag):
    return threading.Lock() if flag else None


class LockedError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class TwoArgError(Exception):
    """Pickles, but cannot be unpickled: ``__init__`` needs two arguments, ``args`` holds one."""

    def __init__(self, code, detail):
        super().__init__(f"code {code}: {detail}")
        self.code = code
        self.detail = detail


def raise_locked_error(message):
    raise LockedError(message)


def raise_two_arg_error(code, detail):
    raise TwoArgError(code, detail)


# --------------------------------------------------------------------------------------------
# stress job
# --------------------------------------------------------------------------------------------


def _append_line(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def stress_job(log_dir, job_id, kind, param):
    """One stress job: logs the run (one line per run, per-worker file), then behaves as ``kind``.

    kinds: ok, error, flaky (fails ``param`` times, counted with a per-job attempt file),
    crash (os._exit), crash_once (crashes on its first attempt), timeout (sleeps ``param``),
    hold (announces the start, then sleeps ``param``: it is killed by the test).
    """
    _append_line(os.path.join(log_dir, f"runs-{os.getpid()}.log"), job_id)
    if kind == "ok":
        return job_id * 2
    if kind == "error":
        raise ValueError(f"job {job_id} failed")
    if kind in ("flaky", "crash_once"):
        path = os.path.join(log_dir, f"attempts-{job_id}")
        _append_line(path, job_id)
        with open(path) as f:
            attempt = sum(1 for _ in f)
        if attempt <= param:
            if kind == "crash_once":
                os._exit(5)
            raise ValueError(f"job {job_id} attempt {attempt} failed")
        return job_id * 2
    if kind == "crash":
        os._exit(5)
    if kind == "timeout":
        time.sleep(param)
        return "should have timed out"
    if kind == "hold":
        _touch(os.path.join(log_dir, f"holding-{job_id}"))
        time.sleep(param)
        return "should have been killed"
    raise AssertionError(kind)


def read_runs(log_dir):
    runs = {}
    for path in Path(log_dir).glob("runs-*.log"):
        for line in path.read_text().split():
            job_id = int(line)
            runs[job_id] = runs.get(job_id, 0) + 1
    return runs


# --------------------------------------------------------------------------------------------
# parent-side helpers
# --------------------------------------------------------------------------------------------


def wait_until(predicate, timeout=10.0, what="condition", interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid):
    """True if ``pid`` is a live process, or a zombie that *we* are responsible for reaping.

    A zombie whose parent is someone else (e.g. a forkserver or init) is not ours: it counts as
    gone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile (read: ESRCH)
        return False
    # the command name may contain spaces/parens: fields after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    state, ppid = fields[0], int(fields[1])
    if state in ("Z", "X"):
        return ppid == os.getpid()
    return True


def assert_all_gone(pids, timeout=0.0, what="worker"):
    """Every pid in ``pids`` is gone (polling up to ``timeout`` seconds)."""
    pids = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        alive = sorted(p for p in pids if pid_alive(p))
        if not alive:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} process(es) still alive after {timeout}s: {alive}")
        time.sleep(0.02)


def error_text(exc):
    """All the text an error carries: str, type name, cause chain, RemoteError fields."""
    parts = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(type(exc).__name__)
        parts.append(str(exc))
        for attr in ("type_name", "message", "traceback_text"):
            value = getattr(exc, attr, None)
            if isinstance(value, str):
                parts.append(value)
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def exit_at(x, bad):
    if x == bad:
        os._exit(3)
    return x


# --------------------------------------------------------------------------------------------
# counters under fire, fork server, inherited signal handlers
# --------------------------------------------------------------------------------------------


class _OneThatWaits(int):
    """The integer 1; adding it to a counter runs ``__radd__`` *inside* the counters' lock
    (``stored + amount`` asks an int subclass first), where it announces itself and waits."""

    def __new__(cls, started_path):
        one = super().__new__(cls, 1)
        one.started_path = started_path
        return one

    def __radd__(self, other):
        tmp = f"{self.started_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, self.started_path)
        time.sleep(60)  # whatever stops the job comes now, while the lock is held
        return other + 1


def add_holding_the_lock(name, started_path):
    """Add 1 to counter ``name``, then start another add and stay inside it (lock held);
    this worker's pid is written to ``started_path`` once it is in there."""
    import taskq

    c = taskq.counter(name)
    c.add(1)
    return c.add(_OneThatWaits(started_path))


CREATION_STATE = "unset"  # a test sets it before creating a pool and changes it after


def creation_state():
    """(pid, parent pid, CREATION_STATE) as this worker sees them."""
    return os.getpid(), os.getppid(), CREATION_STATE


def signal_dispositions():
    """{signal name: "default" | "ignore" | "handler"} for the signals a worker resets."""
    names = ["SIGINT", "SIGTERM", "SIGHUP", "SIGALRM", "SIGCHLD", "SIGUSR1", "SIGUSR2"]
    kinds = {signal.SIG_DFL: "default", signal.SIG_IGN: "ignore"}
    return {n: kinds.get(signal.getsignal(getattr(signal, n)), "handler") for n in names}


def thread_count(pid):
    """How many threads process ``pid`` runs (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no thread count for pid {pid}")
