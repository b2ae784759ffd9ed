"""Run CPython's own ProcessPoolExecutor tests against ``taskq.Pool``.

Usage (with a Python whose standard library ships the ``test`` package)::

    python tests/compat/cpython_futures.py [--start-method fork|spawn|forkserver]
                                           [--module NAME] [--json PATH] [-v]

Both options may be repeated; by default every start method and every module
below is run. Nothing of CPython's test code lives in this repository: the
installed ``test.test_concurrent_futures`` package is imported at run time and
the executor is substituted, so the tests are whatever your interpreter ships.

How the substitution is done
----------------------------
* ``executor_type`` of ``util.ProcessPoolForkMixin``, ``...SpawnMixin`` and
  ``...ForkserverMixin`` is set to ``taskq.Pool`` (its constructor takes the
  same arguments as ``ProcessPoolExecutor``, so no adapter is needed). Every
  generated test class (``ProcessPoolForkWaitTest``...) inherits it.
* A few tests construct ``concurrent.futures.ProcessPoolExecutor`` by name
  (``HARDCODED_PPE``): while they run, that name points at ``taskq.Pool``.
* Tests that start a fresh interpreter with ``from concurrent.futures import
  {executor_type.__name__}`` (``assert_python_ok("-c", CODE)``) get a prelude
  (``SUBPROCESS_PRELUDE``) that hooks ``concurrent.futures.__getattr__`` so
  that ``Pool`` is ``taskq.Pool``, imported at that line (as PPE would be: the
  order of atexit hooks matters there) from the directory this process took
  taskq from. ``test_hang_gh83386`` calls ``multiprocessing.set_start_method``
  without importing multiprocessing (CPython skips it for PPE, so the slip
  never shows): the harness adds that import.
* Only the process-pool classes of the chosen start method run: thread-pool
  and interpreter-pool classes are skipped (not collected).
  ``test_init.FailingInitializerResourcesTest.test_spawn`` / ``test_forkserver``
  run with their start method.

Isolation
---------
Each module runs in its own child process (``--module-timeout``, default
300 s). Inside it, ``faulthandler.dump_traceback_later`` guards every test and
the gaps between them (``--test-timeout``, default 120 s): a hang dumps every
thread's stack and ends the child; the parent records HANG with that dump
(the test, or "module setup/teardown" for a hang outside any test), then
starts a new child for the tests not run yet. A child that dies otherwise is
recorded as CRASH for the test it was running. After each test the child runs
``gc.collect()``: a test that fails before its ``shutdown()`` leaves its pool
in a traceback cycle, whose live workers would otherwise hang
multiprocessing's module cleanup (it waits for the resource tracker and the
forkserver, which wait for every process holding their pipes).

To test another copy of taskq, put it first on ``PYTHONPATH``; the header
says which one was imported.

Reading the output
------------------
One line per test that did not pass (every test with ``-v``): outcome, start
method, module, class.method, then the exception it ended with::

    FAIL   fork       test_process_pool  ProcessPoolForkProcessPoolExecutorTest.test_traceback
           AssertionError: <class 'taskq._errors.RemoteTraceback'> is not <class ...>

The outcome is PASS, FAIL (an assertion failed), ERROR (the test raised
something else), SKIP, HANG or CRASH (see above). Where the error is a read of
a private ``ProcessPoolExecutor`` attribute that ``taskq.Pool`` lacks, the line
says ``[private attribute _processes]``: such tests check PPE's internals, not
its behaviour. Then come the tracebacks of the failing tests (the last lines of
each; all with ``-v``), and a table of counts per start method and module. The
header names the interpreter and the git commit and dirty files of the
checkout, so a report can say what it ran against. The exit status is 0 when
nothing failed, 1 otherwise. Each child's stdout and stderr are kept in a
directory under the system temp dir, printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import gc
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import unittest
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PACKAGE = "test.test_concurrent_futures"
MODULES = (
    "test_process_pool",
    "test_shutdown",
    "test_wait",
    "test_as_completed",
    "test_deadlock",
    "test_init",
)
START_METHODS = ("fork", "spawn", "forkserver")
MIXINS = ("ProcessPoolForkMixin", "ProcessPoolSpawnMixin", "ProcessPoolForkserverMixin")

# Test methods whose body calls ``futures.ProcessPoolExecutor(...)`` instead of
# ``self.executor_type(...)``.
HARDCODED_PPE = frozenset(
    {
        "test_context_manager_shutdown",
        "test_del_shutdown",
        "test_shutdown_no_wait",
        "test_max_workers_too_large",
    }
)
# Prepended to the code of ``assert_python_ok("-c", CODE)``. It only hooks the
# module ``__getattr__`` of concurrent.futures, so taskq is imported exactly
# where the snippet imports its executor (atexit order matters to these tests),
# and from the directory the harness imported it from ({path}).
SUBPROCESS_PRELUDE = """\
import concurrent.futures as _cf
def _cf_getattr(name, _original=_cf.__getattr__):
    if name == "Pool":
        import sys
        sys.path.insert(0, {path!r})
        import taskq
        return taskq.Pool
    return _original(name)
_cf.__getattr__ = _cf_getattr
"""


# Worst first: a test with several events (a failed subtest, an error in
# tearDown...) gets the worst of them.
SEVERITY = ("HANG", "CRASH", "ERROR", "FAIL", "XPASS", "SKIP", "XFAIL", "PASS")
BAD = frozenset({"HANG", "CRASH", "ERROR", "FAIL", "XPASS"})
ROOT = Path(__file__).resolve().parents[2]


# -- child: run one module's tests -----------------------------------------------------------


class RecordingResult(unittest.TestResult):
    """Writes one JSON line per event, flushed at once, so a hang loses nothing."""

    def __init__(self, events: Any, test_timeout: float):
        super().__init__()
        self._events = events
        self._test_timeout = test_timeout

    def _write(
        self, event: str, test: Any, outcome: str | None = None, detail: str = "", err: Any = None
    ) -> None:
        record = {"event": event, "id": test.id(), "outcome": outcome, "detail": detail}
        if err is not None:
            exc_type, exc, _ = err
            message = str(exc).strip().splitlines()
            name = exc_type.__qualname__
            if exc_type.__module__ not in ("builtins", "__main__"):
                name = f"{exc_type.__module__}.{name}"
            record["summary"] = f"{name}: {message[0] if message else ''}"
        self._events.write(json.dumps(record) + "\n")
        self._events.flush()

    def startTest(self, test: Any) -> None:
        super().startTest(test)
        self._write("start", test)
        for stream in (sys.stdout, sys.stderr):  # so the logs say which test wrote what
            print(f"\n=== {test.id()}", file=stream, flush=True)
        faulthandler.dump_traceback_later(self._test_timeout, exit=True)

    def stopTest(self, test: Any) -> None:
        gc.collect()  # see "Isolation" in the module docstring
        self._write("stop", test)
        super().stopTest(test)
        # Still armed until the next test: a hang in tearDownModule is caught too.
        faulthandler.dump_traceback_later(self._test_timeout, exit=True)

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._write("result", test, "PASS")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._write("result", test, "FAIL", self._exc_info_to_string(err, test), err)

    def addError(self, test: Any, err: Any) -> None:
        # Also called for errors in setUpModule/setUpClass, with an _ErrorHolder.
        super().addError(test, err)
        self._write("result", test, "ERROR", self._exc_info_to_string(err, test), err)

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._write("result", test, "SKIP", reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._write("result", test, "XFAIL")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._write("result", test, "XPASS")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            detail = f"{subtest.id()}\n{self._exc_info_to_string(err, test)}"
            self._write("result", test, "FAIL" if failed else "ERROR", detail, err)


def _iter_tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _iter_tests(item)
        else:
            yield item


def _selected(test: unittest.TestCase, method: str, util: Any) -> bool:
    cls = type(test)
    if issubclass(cls, util.ExecutorMixin):
        return getattr(cls, "ctx", None) == method
    # test_init.FailingInitializerResourcesTest: test_spawn / test_forkserver
    return getattr(test, "_testMethodName", "") == f"test_{method}"


def _patch_subprocess_tests(module: Any) -> None:
    """Give ``assert_python_ok -c CODE`` the prelude that defines ``concurrent.futures.Pool``."""
    import taskq

    original = getattr(module, "assert_python_ok", None)
    if original is None:
        return
    prelude = SUBPROCESS_PRELUDE.format(path=str(Path(taskq.__file__).parents[1]))

    def assert_python_ok(*args: Any, **env: Any) -> Any:
        if len(args) >= 2 and args[0] == "-c":
            code = args[1]
            if "multiprocessing." in code and "import multiprocessing" not in code:
                code = "import multiprocessing\n" + code  # test_hang_gh83386 forgot it
            args = ("-c", prelude + code, *args[2:])
        return original(*args, **env)

    module.assert_python_ok = assert_python_ok


def _patch_hardcoded_ppe(test: unittest.TestCase) -> None:
    """While a HARDCODED_PPE test's body runs, ``futures.ProcessPoolExecutor`` is ``taskq.Pool``."""
    name = getattr(test, "_testMethodName", "")
    if name not in HARDCODED_PPE:
        return
    import concurrent.futures

    import taskq

    body = getattr(test, name)

    @functools.wraps(body)  # keeps unittest's skip marks
    def patched_body() -> None:
        original = concurrent.futures.ProcessPoolExecutor
        concurrent.futures.ProcessPoolExecutor = taskq.Pool  # type: ignore[misc]
        try:
            body()
        finally:
            concurrent.futures.ProcessPoolExecutor = original  # type: ignore[misc]

    setattr(test, name, patched_body)


def run_child(args: argparse.Namespace) -> int:
    faulthandler.enable()
    import taskq

    util = importlib.import_module(f"{PACKAGE}.util")
    for name in MIXINS:
        getattr(util, name).executor_type = taskq.Pool
    module = importlib.import_module(f"{PACKAGE}.{args.module}")
    _patch_subprocess_tests(module)
    skip = set(json.loads(Path(args.skip_file).read_text())) if args.skip_file else set()
    loaded = unittest.defaultTestLoader.loadTestsFromModule(module)
    suite = unittest.TestSuite()
    for test in _iter_tests(loaded):
        if _selected(test, args.start_method[0], util) and test.id() not in skip:
            _patch_hardcoded_ppe(test)
            suite.addTest(test)
    with open(args.events, "a", encoding="utf-8") as events:
        result = RecordingResult(events, args.test_timeout)
        faulthandler.dump_traceback_later(args.test_timeout, exit=True)  # setUpModule too
        # A top-level suite run also runs setUpModule/tearDownModule and module cleanups.
        suite.run(result)
    faulthandler.cancel_dump_traceback_later()
    return 0


# -- parent: one child per module, restarted after a hang ------------------------------------


class ModuleRun:
    """The outcome of every test of one module under one start method."""

    def __init__(self, module: str, method: str, logdir: Path):
        self.module = module
        self.method = method
        self.logdir = logdir
        self.outcomes: dict[str, str] = {}
        self.summaries: dict[str, str] = {}  # one line: the exception of the worst event
        self.details: dict[str, list[str]] = defaultdict(list)
        self.events = logdir / f"{method}-{module}.jsonl"

    def record(self, test_id: str, outcome: str, detail: str = "", summary: str = "") -> None:
        if outcome == "PASS" and test_id in self.outcomes:
            return  # a PASS after a failed subtest does not hide it
        old = self.outcomes.get(test_id, "PASS")
        self.outcomes[test_id] = min(old, outcome, key=SEVERITY.index)
        if summary and (test_id not in self.summaries or self.outcomes[test_id] != old):
            self.summaries[test_id] = summary
        if detail:
            self.details[test_id].append(detail)

    def read_events(self) -> tuple[set[str], str | None]:
        """Parse the event file: (tests started, the test started but not stopped)."""
        started: set[str] = set()
        running: str | None = None
        self.outcomes.clear()
        self.summaries.clear()
        self.details.clear()
        if not self.events.exists():
            return started, running
        for line in self.events.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if ev["event"] == "start":
                    started.add(ev["id"])
                    running = ev["id"]
                elif ev["event"] == "stop":
                    running = None
                    self.outcomes.setdefault(ev["id"], "PASS")
                else:
                    summary = ev.get("summary") or ev["detail"].strip()[:160]
                    self.record(ev["id"], ev["outcome"], ev["detail"], summary)
        return started, running


def _child_command(run: ModuleRun, args: argparse.Namespace, skip_file: Path) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--module",
        run.module,
        "--start-method",
        run.method,
        "--events",
        str(run.events),
        "--skip-file",
        str(skip_file),
        "--test-timeout",
        str(args.test_timeout),
    ]


def _launch(run: ModuleRun, args: argparse.Namespace, attempt: int, skip: set[str]) -> tuple:
    skip_file = run.logdir / f"{run.method}-{run.module}.skip{attempt}.json"
    skip_file.write_text(json.dumps(sorted(skip)))
    out = run.logdir / f"{run.method}-{run.module}.{attempt}.stdout"
    err = run.logdir / f"{run.method}-{run.module}.{attempt}.stderr"
    with open(out, "wb") as fout, open(err, "wb") as ferr:
        child = subprocess.Popen(
            _child_command(run, args, skip_file),
            stdout=fout,
            stderr=ferr,
            stdin=subprocess.DEVNULL,
            cwd=run.logdir,
            start_new_session=True,  # its own process group, so a hang can be cleaned up
        )
        try:
            rc = child.wait(timeout=args.module_timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGABRT)  # faulthandler dumps the stacks
            time.sleep(2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            rc = child.wait()
            timed_out = True
    return rc, timed_out, err


def _stack_dump(stderr: Path, limit: int = 80) -> str:
    text = stderr.read_text(encoding="utf-8", errors="replace")
    for marker in ("Timeout (", "Fatal Python error"):
        at = text.rfind(marker)
        if at >= 0:
            return "\n".join(text[at:].splitlines()[:limit])
    return "\n".join(text.splitlines()[-limit:])


def _where(dump: str) -> str:
    """Where the test's own thread was stuck: its innermost frames outside unittest."""
    for block in dump.split("\n\n"):
        if "in run_child" not in block:
            continue
        frames = re.findall(r'File "([^"]+)", line (\d+) in (\w+)', block)
        frames = [f for f in frames if "/unittest/" not in f[0]]
        return " <- ".join(f"{Path(f[0]).name}:{f[1]} {f[2]}" for f in frames[:3])
    return "no stack dump"


def run_module(run: ModuleRun, args: argparse.Namespace) -> ModuleRun:
    """Run the module in children until every test has run (a hang or crash ends one child)."""
    run.events.unlink(missing_ok=True)
    verdicts: dict[str, tuple[str, str, str]] = {}
    for attempt in range(1, args.max_restarts + 2):
        started, _ = run.read_events()
        rc, timed_out, stderr = _launch(run, args, attempt, started)
        started, running = run.read_events()
        if running is None and rc == 0 and not timed_out:
            break
        hung = timed_out or "Timeout (" in stderr.read_text(errors="replace")
        culprit = running or f"{PACKAGE}.{run.module}.(module setup/teardown, outside any test)"
        dump = _stack_dump(stderr)
        limit = args.module_timeout if timed_out else args.test_timeout
        summary = (
            f"no result within {limit:g} s; stuck at {_where(dump)}"
            if hung
            else f"the test process died (exit status {rc})"
        )
        verdicts[culprit] = ("HANG" if hung else "CRASH", summary, f"stderr: {stderr}\n{dump}")
        if running is None:
            break
    for test_id, (why, summary, detail) in verdicts.items():
        run.record(test_id, why, detail, summary)
    return run


# -- report ----------------------------------------------------------------------------------

_PRIVATE = re.compile(r"AttributeError: '\w+' object has no attribute '(_\w+)'")


def _short_id(test_id: str) -> str:
    return test_id.split(f"{PACKAGE}.", 1)[-1].split(".", 1)[-1]


def _reason(run: ModuleRun, test_id: str) -> str:
    """One line: the exception of the worst event, with a private-attribute hint."""
    line = run.summaries.get(test_id, "")
    line = line if len(line) <= 170 else line[:167] + "..."
    hint = _PRIVATE.search("\n".join(run.details.get(test_id, [])[:1]))
    return line + (f"  [private attribute {hint.group(1)}]" if hint else "")


def _git(*argv: str) -> str:
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(ROOT), *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"(git failed: {exc})"
    return out.stdout.rstrip() or out.stderr.strip()


def print_header() -> None:
    print(f"python: {sys.executable} {sys.version.split()[0]}")
    print(f"tests:  {importlib.import_module(PACKAGE).__file__}")
    print(f"taskq:  {importlib.import_module('taskq').__file__}")
    print(f"commit: {_git('log', '--oneline', '-1')}")
    dirty = _git("status", "--short")
    print("uncommitted changes:" + ("\n  " + dirty.replace("\n", "\n  ") if dirty else " none"))
    print()


def print_report(runs: list[ModuleRun], verbose: bool) -> int:
    bad_total = 0
    for run in runs:
        for test_id in sorted(run.outcomes):
            outcome = run.outcomes[test_id]
            if outcome in BAD or verbose:
                reason = _reason(run, test_id)
                print(f"{outcome:6} {run.method:10} {run.module:18} {_short_id(test_id)}")
                if reason and outcome != "PASS":
                    print(f"{'':7}{reason}")
    print("\n== tracebacks ==")
    for run in runs:
        for test_id in sorted(run.outcomes):
            if run.outcomes[test_id] not in BAD:
                continue
            bad_total += 1
            print(f"\n--- {run.outcomes[test_id]} [{run.method}] {_short_id(test_id)}")
            for detail in run.details.get(test_id, []):
                lines = detail.rstrip().splitlines()
                print("\n".join(lines if verbose else lines[-14:]))
    print("\n== summary ==")
    print(f"{'start':10} {'module':18} " + " ".join(f"{o:>5}" for o in reversed(SEVERITY)))
    totals: Counter[str] = Counter()
    for run in runs:
        counts = Counter(run.outcomes.values())
        totals.update(counts)
        print(
            f"{run.method:10} {run.module:18} "
            + " ".join(f"{counts.get(o, 0):5}" for o in reversed(SEVERITY))
        )
    print(f"{'total':29} " + " ".join(f"{totals.get(o, 0):5}" for o in reversed(SEVERITY)))
    return 1 if bad_total else 0


def _write_json(path: str, runs: list[ModuleRun]) -> None:
    data = [
        {
            "start_method": r.method,
            "module": r.module,
            "id": t,
            "outcome": o,
            "summary": r.summaries.get(t, ""),
            "details": r.details.get(t, []),
        }
        for r in runs
        for t, o in sorted(r.outcomes.items())
    ]
    Path(path).write_text(json.dumps(data, indent=1), encoding="utf-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--start-method", action="append", choices=START_METHODS)
    p.add_argument("--module", action="append", choices=MODULES)
    p.add_argument("--module-timeout", type=float, default=300.0, help="seconds per child")
    p.add_argument("--test-timeout", type=float, default=120.0, help="seconds per test")
    p.add_argument("--max-restarts", type=int, default=10, help="children per module after a hang")
    p.add_argument("--json", help="also write every outcome to this file")
    p.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--events", help=argparse.SUPPRESS)
    p.add_argument("--skip-file", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        args.module = args.module[0]
        return run_child(args)
    try:
        importlib.import_module(f"{PACKAGE}.util")
    except ImportError as exc:
        sys.exit(f"{sys.executable} has no CPython test suite ({exc}); use one that has")
    print_header()
    logdir = Path(tempfile.mkdtemp(prefix="taskq-cpython-futures-"))
    runs = []
    for method in args.start_method or START_METHODS:
        for module in args.module or MODULES:
            t0 = time.monotonic()
            run = run_module(ModuleRun(module, method, logdir), args)
            counts = Counter(run.outcomes.values())
            print(
                f"ran {method:10} {module:18} in {time.monotonic() - t0:6.1f} s: "
                + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())),
                flush=True,
            )
            runs.append(run)
    print()
    status = print_report(runs, args.verbose)
    if args.json:
        _write_json(args.json, runs)
    print(f"\nlogs: {logdir}")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.exit(130)
