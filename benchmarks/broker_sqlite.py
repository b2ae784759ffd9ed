"""The SQLite broker benchmark of issue 9: taskq's durable store side by side with Huey's
``SqliteHuey`` (and persist-queue's ``SQLiteAckQueue`` for the rows where a plain queue
applies), and a bare SQLite loop as the physical limit, in one run, repetitions interleaved.

    python -m benchmarks.broker_sqlite [--quick | --tiny] [--repeat K] [--out DIR]
                                       [--no-huey] [--profile]

Every number comes from a verified run (counts and sums of results); a failed
verification makes the row an error. See ``benchmarks/README.md`` ("SQLite broker").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import taskq
from benchmarks import _sqlite_jobs as jobs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORKERS = 2
HUEY_DELAYS = ("-d", "0.001", "-m", "0.01", "-b", "1.15")  # consumer polling: fast, stated
BACKLOG_PRIORITY = 10
URGENT_PRIORITY = -1  # taskq: smaller first
HUEY_URGENT_PRIORITY = 10  # Huey: *higher* first (the opposite of taskq / queue.PriorityQueue)

TARGETS = {
    "e2e_jobs_s": 10_000.0,
    "e2e_vs_huey": 5.0,
    "enqueue_jobs_s": 20_000.0,
    "urgent_p99_ms": 10.0,
    "recovery_margin_s": 1.0,
}


@dataclass
class Sizes:
    enqueue: int
    e2e: int
    latency: int
    backlog: int
    probes: int
    recovery: int
    repeat: int


SIZES = {
    "full": Sizes(
        enqueue=20_000, e2e=20_000, latency=500, backlog=10_000, probes=10, recovery=3, repeat=5
    ),
    "quick": Sizes(
        enqueue=5_000, e2e=5_000, latency=200, backlog=10_000, probes=5, recovery=2, repeat=3
    ),
    "tiny": Sizes(enqueue=300, e2e=300, latency=20, backlog=3000, probes=3, recovery=1, repeat=1),
}


class VerifyError(AssertionError):
    """A result that is wrong or missing: the row becomes an error."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise VerifyError(what)


# -- helpers -----------------------------------------------------------------------


class Scratch:
    """A temporary directory for the store files of one run."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="taskq-sqlbench-")
        self._n = 0

    def path(self, stem: str) -> str:
        self._n += 1
        return os.path.join(self.dir, f"{stem}-{self._n}.db")

    def url(self, stem: str = "taskq") -> str:
        return "sqlite:///" + self.path(stem)  # the path is absolute: sqlite:////...


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def env_with_root(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def wait_until(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.0005) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise VerifyError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a subprocess we started (its own session: its children go with it)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # orphans of a SIGKILLed leader


def count_rows(path: str, sql: str) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


# -- enqueue: jobs/s until submit returns, a transaction each ----------------------------


def enqueue_taskq(scratch: Scratch, n: int) -> dict[str, float]:
    url = scratch.url()
    pool = taskq.Pool(0, broker=url)  # a client: nobody runs these jobs
    try:
        pool.submit(jobs.noop, -1).cancel()  # warm: the file exists, the connection is open
        t0 = time.perf_counter()
        for i in range(n):
            pool.submit(jobs.noop, i)
        elapsed = time.perf_counter() - t0
        queued = count_rows(
            url[len("sqlite:///") :], "SELECT count(*) FROM jobs WHERE state='queued'"
        )
        check(queued == n, f"taskq: {queued} jobs queued in the store, expected {n}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # (a client waits for its jobs)
    return {"jobs_s": n / elapsed}


def enqueue_huey(scratch: Scratch, n: int) -> dict[str, float]:
    huey_app = _huey(scratch.path("huey"))
    huey_app.huey.storage.queue_size()  # warm: the file and the connection exist
    t0 = time.perf_counter()
    for i in range(n):
        huey_app.noop(i)
    elapsed = time.perf_counter() - t0
    pending = huey_app.huey.pending_count()
    check(pending == n, f"huey: {pending} tasks pending, expected {n}")
    huey_app.huey.storage.close()
    return {"jobs_s": n / elapsed}


def _pq_queue(path: str) -> Any:
    import persistqueue

    return persistqueue.SQLiteAckQueue(path, auto_commit=True, multithreading=False)


def enqueue_persistqueue(scratch: Scratch, n: int) -> dict[str, float]:
    q = _pq_queue(scratch.dir + f"/pq-{random.getrandbits(32):08x}")
    t0 = time.perf_counter()
    for i in range(n):
        q.put(i)
    elapsed = time.perf_counter() - t0
    check(q.qsize() == n, f"persist-queue: {q.qsize()} items, expected {n}")
    t0 = time.perf_counter()
    total = 0
    for _ in range(n):
        item = q.get(block=False)
        q.ack(item)
        total += item
    drained = time.perf_counter() - t0
    check(total == n * (n - 1) // 2, f"persist-queue: sum {total} of dequeued items")
    return {"jobs_s": n / elapsed, "dequeue_s": n / drained}


def bare_sqlite(scratch: Scratch, n: int) -> dict[str, float]:
    """The physical limit: one transaction per insert, then per insert+delete pair
    (WAL, synchronous=NORMAL), a 100-byte payload like a small pickled call."""
    conn = sqlite3.connect(scratch.path("bare"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, data BLOB)")
    payload = b"x" * 100
    t0 = time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO q (data) VALUES (?)", (payload,))
        conn.execute("COMMIT")
    inserts = time.perf_counter() - t0
    check(conn.execute("SELECT count(*) FROM q").fetchone()[0] == n, "bare: count")
    t0 = time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute("INSERT INTO q (data) VALUES (?)", (payload,))
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM q WHERE id = ?", (cur.lastrowid,))
        conn.execute("COMMIT")
    pairs = time.perf_counter() - t0
    check(conn.execute("SELECT count(*) FROM q").fetchone()[0] == n, "bare: count after pairs")
    conn.close()
    return {"jobs_s": n / inserts, "insert_delete_s": n / pairs}


def _huey(path: str) -> Any:
    """benchmarks._huey_app bound to the file ``path`` (re-imported for each file)."""
    os.environ["TASKQ_BENCH_HUEY_DB"] = path
    sys.modules.pop("benchmarks._huey_app", None)
    import benchmarks._huey_app as app

    return app


# -- a serving session: end-to-end throughput, latency, urgent behind a backlog --------------


def session_taskq(scratch: Scratch, sz: Sizes, rng: random.Random) -> dict[str, float]:
    url = scratch.url()
    out: dict[str, float] = {}
    with taskq.Pool(WORKERS, broker=url) as pool:
        warm = [pool.submit(jobs.noop, i) for i in range(200)]
        check([f.result(60) for f in warm] == list(range(200)), "taskq warm-up results")
        # end-to-end no-op throughput: submit all, wait all
        n = sz.e2e
        t0 = time.perf_counter()
        futures = [pool.submit(jobs.noop, i) for i in range(n)]
        total = sum(f.result(300) for f in futures)
        out["e2e_jobs_s"] = n / (time.perf_counter() - t0)
        check(total == n * (n - 1) // 2, f"taskq e2e: sum of results {total}")
        # latency: one job in flight
        lat = []
        for i in range(sz.latency):
            t0 = time.perf_counter()
            r = pool.submit(jobs.noop, i).result(60)
            lat.append(time.perf_counter() - t0)
            check(r == i, "taskq latency result")
        out["lat_p50_ms"] = percentile(lat, 50) * 1e3
        out["lat_p99_ms"] = percentile(lat, 99) * 1e3
        # urgent behind a backlog of 1 ms jobs
        backlog = [
            pool.schedule(jobs.sleep_ms, (i,), priority=BACKLOG_PRIORITY) for i in range(sz.backlog)
        ]
        delays, left = [], []
        for k in range(sz.probes):
            time.sleep(rng.uniform(0.02, 0.12))
            t0 = time.perf_counter()
            r = pool.schedule(jobs.noop, (10**9 + k,), priority=URGENT_PRIORITY).result(60)
            delays.append(time.perf_counter() - t0)
            check(r == 10**9 + k, "taskq urgent result")
            left.append(sum(not f.done() for f in backlog))
        out["urgent_p50_ms"] = percentile(delays, 50) * 1e3
        out["urgent_p99_ms"] = percentile(delays, 99) * 1e3
        out["urgent_backlog_left"] = float(min(left))
        check(min(left) > 0, "taskq urgent: the backlog ran out before the last probe")
        for f in backlog:
            f.cancel()  # queued ones leave the store; running/done ones are checked below
        for i, f in enumerate(backlog):
            if not f.cancelled():
                check(f.result(60) == i, "taskq backlog result")
        out["_urgent_samples"] = delays  # type: ignore[assignment]
    return out


def session_huey(scratch: Scratch, sz: Sizes, rng: random.Random) -> dict[str, float]:
    path = scratch.path("huey")
    app = _huey(path)
    huey = app.huey
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "huey.bin.huey_consumer",
            "benchmarks._huey_app.huey",
            "-k",
            "process",
            "-w",
            str(WORKERS),
            *HUEY_DELAYS,
            "-C",
            "-q",
        ],
        cwd=ROOT,
        env=env_with_root(TASKQ_BENCH_HUEY_DB=path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    out: dict[str, float] = {}
    try:
        warm = [app.noop(i) for i in range(50)]
        wait_until(lambda: huey.result_count() >= 50, 60, "huey warm-up")
        check([r.get() for r in warm] == list(range(50)), "huey warm-up results")
        n = sz.e2e
        t0 = time.perf_counter()
        results = [app.noop(i) for i in range(n)]
        wait_until(lambda: huey.result_count() >= n, 600, "huey e2e results", 0.002)
        out["e2e_jobs_s"] = n / (time.perf_counter() - t0)
        total = sum(r.get() for r in results)
        check(total == n * (n - 1) // 2, f"huey e2e: sum of results {total}")
        lat = []
        for i in range(sz.latency):
            t0 = time.perf_counter()
            r = app.noop(i)
            value = _huey_wait(r, 60)
            lat.append(time.perf_counter() - t0)
            check(value == i, "huey latency result")
        out["lat_p50_ms"] = percentile(lat, 50) * 1e3
        out["lat_p99_ms"] = percentile(lat, 99) * 1e3
        backlog = [app.sleep_ms(i) for i in range(sz.backlog)]  # default priority 0
        delays, left = [], []
        for k in range(sz.probes):
            time.sleep(rng.uniform(0.02, 0.12))
            t0 = time.perf_counter()
            r = app.noop(10**9 + k, priority=HUEY_URGENT_PRIORITY)
            value = _huey_wait(r, 60)
            delays.append(time.perf_counter() - t0)
            check(value == 10**9 + k, "huey urgent result")
            left.append(huey.pending_count())
        out["urgent_p50_ms"] = percentile(delays, 50) * 1e3
        out["urgent_p99_ms"] = percentile(delays, 99) * 1e3
        out["urgent_backlog_left"] = float(min(left))
        check(min(left) > 0, "huey urgent: the backlog ran out before the last probe")
        huey.flush()  # drop the rest of the backlog (and stored results)
        del backlog
        out["_urgent_samples"] = delays  # type: ignore[assignment]
    finally:
        stop_process(consumer, signal.SIGINT)
        huey.storage.close()
    return out


def _huey_wait(result: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = result.get()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise VerifyError("huey: no result in time")
        time.sleep(0.0002)


# -- recovery: SIGKILL `taskq worker` mid-job, a second one finishes the job -------------------


def recovery_taskq(scratch: Scratch, lease: float) -> dict[str, float]:
    url = scratch.url()
    marker = os.path.join(scratch.dir, f"running-{random.getrandbits(32):08x}")
    cmd = [
        sys.executable,
        "-m",
        "taskq",
        "worker",
        url,
        "--workers",
        "1",
        "--lease",
        str(lease),
        "--grace",
        "1",
    ]
    first = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env_with_root(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    second = None
    try:
        with taskq.Pool(0, broker=url) as client:
            future = client.submit(jobs.once_slow, marker, 42)
            wait_until(lambda: os.path.exists(marker), 60, "the job to start on worker 1")
            time.sleep(0.05)
            killed = time.perf_counter()
            os.kill(first.pid, signal.SIGKILL)
            second = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env_with_root(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            value = future.result(lease + 60)
            elapsed = time.perf_counter() - killed
            check(value == 42, "recovery result")
            with open(marker + ".runs") as f:
                check(f.read().count("again") == 1, "recovery: the job ran again exactly once")
    finally:
        stop_process(first, signal.SIGKILL)
        if second is not None:
            stop_process(second)
    return {"recovery_s": elapsed, "lease_s": lease}


# -- the run --------------------------------------------------------------------------------


def run(
    mode: str, repeat: int, huey_on: bool, pq_on: bool, lease: float, seed: int
) -> dict[str, Any]:
    sz = SIZES[mode]
    scratch = Scratch()
    rng = random.Random(seed)
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    errors: list[dict[str, str]] = []

    def measure(scenario: str, who: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            out = fn()
        except Exception as exc:  # a wrong result or a failure: an error row
            errors.append(
                {"scenario": scenario, "who": who, "error": f"{type(exc).__name__}: {exc}"}
            )
            print(f"  {scenario}/{who}: ERROR {exc}", file=sys.stderr)
            return
        samples.setdefault((scenario, who), []).append(out)
        shown = {k: round(v, 2) for k, v in out.items() if not k.startswith("_")}
        print(f"  {scenario}/{who}: {shown}", file=sys.stderr)

    for rep in range(repeat):
        print(f"repetition {rep + 1}/{repeat}", file=sys.stderr)
        enq: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("taskq", lambda: enqueue_taskq(scratch, sz.enqueue)),
            ("sqlite_bare", lambda: bare_sqlite(scratch, sz.enqueue)),
        ]
        if huey_on:
            enq.append(("huey", lambda: enqueue_huey(scratch, sz.enqueue)))
        if pq_on:
            enq.append(("persistqueue", lambda: enqueue_persistqueue(scratch, sz.enqueue)))
        sessions: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("taskq", lambda: session_taskq(scratch, sz, rng)),
        ]
        if huey_on:
            sessions.append(("huey", lambda: session_huey(scratch, sz, rng)))
        if rep % 2:  # alternate who goes first
            enq.reverse()
            sessions.reverse()
        for who, fn in enq:
            measure("enqueue", who, fn)
        for who, fn in sessions:
            measure("serve", who, fn)
        if rep < sz.recovery:
            measure("recovery", "taskq", lambda: recovery_taskq(scratch, lease))
    shutil.rmtree(scratch.dir, ignore_errors=True)
    return summarize(mode, repeat, sz, lease, seed, samples, errors, huey_on, pq_on)


def summarize(
    mode: str,
    repeat: int,
    sz: Sizes,
    lease: float,
    seed: int,
    samples: dict[tuple[str, str], list[dict[str, Any]]],
    errors: list[dict[str, str]],
    huey_on: bool,
    pq_on: bool,
) -> dict[str, Any]:
    stats: dict[str, dict[str, dict[str, Any]]] = {}
    for (scenario, who), runs in samples.items():
        for metric in runs[0]:
            if metric.startswith("_"):
                continue
            values = [r[metric] for r in runs]
            stats.setdefault(f"{scenario}.{metric}", {})[who] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "samples": values,
            }
    # urgent p99 over every probe of every repetition, too (the per-rep p99 is ~ the max)
    for who in ("taskq", "huey"):
        pooled = [d for r in samples.get(("serve", who), []) for d in r.get("_urgent_samples", [])]
        if pooled:
            stats.setdefault("serve.urgent_pooled_p99_ms", {})[who] = {
                "median": percentile(pooled, 99) * 1e3,
                "min": min(pooled) * 1e3,
                "max": max(pooled) * 1e3,
                "samples": [d * 1e3 for d in pooled],
            }

    def med(key: str, who: str) -> float | None:
        cell = stats.get(key, {}).get(who)
        return None if cell is None else float(cell["median"])

    targets = []

    def target(name: str, value: float | None, goal: float, higher: bool, unit: str) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        targets.append(
            {
                "target": name,
                "value": value,
                "goal": goal,
                "unit": unit,
                "higher_is_better": higher,
                "met": met,
            }
        )

    e2e_t, e2e_h = med("serve.e2e_jobs_s", "taskq"), med("serve.e2e_jobs_s", "huey")
    target("end-to-end no-op jobs/s (2 workers)", e2e_t, TARGETS["e2e_jobs_s"], True, "jobs/s")
    target(
        "end-to-end vs Huey (same run)",
        None if not (e2e_t and e2e_h) else e2e_t / e2e_h,
        TARGETS["e2e_vs_huey"],
        True,
        "x",
    )
    target(
        "durable enqueue jobs/s (a transaction each)",
        med("enqueue.jobs_s", "taskq"),
        TARGETS["enqueue_jobs_s"],
        True,
        "jobs/s",
    )
    target(
        f"urgent job p99 behind a {sz.backlog}-job backlog",
        med("serve.urgent_pooled_p99_ms", "taskq"),
        TARGETS["urgent_p99_ms"],
        False,
        "ms",
    )
    rec = stats.get("recovery.recovery_s", {}).get("taskq")
    target(
        f"recovery after SIGKILL (lease {lease:g} s + 1 s), worst",
        None if rec is None else rec["max"],
        lease + TARGETS["recovery_margin_s"],
        False,
        "s",
    )
    return {
        "machine": machine_info(),
        "config": {
            "mode": mode,
            "repeat": repeat,
            "sizes": asdict(sz),
            "workers": WORKERS,
            "lease_s": lease,
            "seed": seed,
            "huey": huey_on,
            "persistqueue": pq_on,
            "huey_consumer_args": ["-k", "process", "-w", str(WORKERS), *HUEY_DELAYS],
            "backlog_job": "time.sleep(0.001)",
            "priorities": {
                "taskq_backlog": BACKLOG_PRIORITY,
                "taskq_urgent": URGENT_PRIORITY,
                "huey_backlog": 0,
                "huey_urgent": HUEY_URGENT_PRIORITY,
            },
        },
        "stats": stats,
        "targets": targets,
        "errors": errors,
        "verified": not errors,
    }


def machine_info() -> dict[str, Any]:
    versions = {"taskq": getattr(taskq, "__version__", "?"), "sqlite": sqlite3.sqlite_version}
    for name, module in (("huey", "huey"), ("persist-queue", "persistqueue")):
        try:
            versions[name] = getattr(__import__(module), "__version__", "?")
        except ImportError:
            versions[name] = None
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "load_avg": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- the report ---------------------------------------------------------------------------------

ROWS = [  # (title, stats key, unit, higher is better)
    ("durable enqueue, a transaction per job", "enqueue.jobs_s", "jobs/s", True),
    ("dequeue + ack (persist-queue only)", "enqueue.dequeue_s", "jobs/s", True),
    ("bare SQLite insert+delete pairs (2 tx)", "enqueue.insert_delete_s", "pairs/s", True),
    ("end-to-end no-op, 2 worker processes", "serve.e2e_jobs_s", "jobs/s", True),
    ("one-job latency p50", "serve.lat_p50_ms", "ms", False),
    ("one-job latency p99", "serve.lat_p99_ms", "ms", False),
    ("urgent job behind the backlog, p50", "serve.urgent_p50_ms", "ms", False),
    ("urgent job behind the backlog, p99 per repetition", "serve.urgent_p99_ms", "ms", False),
    ("urgent job behind the backlog, p99 of all probes", "serve.urgent_pooled_p99_ms", "ms", False),
    (
        "recovery: SIGKILL of `taskq worker` to the job done elsewhere",
        "recovery.recovery_s",
        "s",
        False,
    ),
]
WHO = ("taskq", "huey", "persistqueue", "sqlite_bare")


def fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def markdown(data: dict[str, Any]) -> str:
    cfg, m = data["config"], data["machine"]
    lines = [
        f"# SQLite broker benchmark ({cfg['mode']}, {cfg['repeat']} repetitions)",
        "",
        f"{m['date_utc']} · {m['cores']} cores · Python {m['python']} · SQLite "
        f"{m['packages']['sqlite']} · huey {m['packages'].get('huey')} · persist-queue "
        f"{m['packages'].get('persist-queue')} · load "
        + ", ".join(f"{x:.2f}" for x in m["load_avg"]),
        "",
        f"Sizes: {cfg['sizes']}. Lease {cfg['lease_s']:g} s. Huey consumer "
        f"`{' '.join(cfg['huey_consumer_args'])}`. Cells: median (min-max); "
        "ratio = taskq / other (>1: taskq better).",
        "",
        "## Targets",
        "",
        "| target | value | goal | met |",
        "|---|---|---|---|",
    ]
    for t in data["targets"]:
        value = "n/a" if t["value"] is None else f"{fmt(t['value'])} {t['unit']}"
        goal = f"{'≥' if t['higher_is_better'] else '≤'} {fmt(t['goal'])} {t['unit']}"
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {value} | {goal} | {met} |")
    lines += [
        "",
        "## Results",
        "",
        "| scenario | unit | taskq | huey (SqliteHuey) | persist-queue | bare SQLite "
        "| taskq ÷ huey |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, key, unit, higher in ROWS:
        cells = data["stats"].get(key)
        if not cells:
            continue
        row = [title, unit]
        for who in WHO:
            c = cells.get(who)
            row.append(
                "-" if c is None else f"{fmt(c['median'])} ({fmt(c['min'])}-{fmt(c['max'])})"
            )
        t, h = cells.get("taskq"), cells.get("huey")
        if t and h and t["median"] and h["median"]:
            ratio = t["median"] / h["median"] if higher else h["median"] / t["median"]
            row.append(f"{ratio:.2f}x")
        else:
            row.append("-")
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Huey's priority is *higher first*: its urgent probe uses priority "
        f"{HUEY_URGENT_PRIORITY} over a backlog at 0; taskq's uses {URGENT_PRIORITY} over "
        f"{BACKLOG_PRIORITY} (smaller first). Huey has no recovery row: it pops a task "
        "destructively, so a task running when its consumer is SIGKILLed is lost. "
        "Huey's SqliteStorage runs with `synchronous=OFF` by default, persist-queue with "
        "SQLite's default `FULL`, taskq and the bare loop with `NORMAL` (all WAL).",
    ]
    if data["errors"]:
        lines += ["", "## Errors", ""]
        lines += [f"- {e['scenario']}/{e['who']}: {e['error']}" for e in data["errors"]]
    return "\n".join(lines) + "\n"


# -- profiling ----------------------------------------------------------------------------------


def profile(n: int, out_dir: Path) -> str:
    """cProfile of the end-to-end scenario (the submitting thread and the broker thread),
    plus the time spent in each SQL statement of the broker."""
    import cProfile
    import io
    import pstats

    from taskq import _broker_pool, _sqlite_file

    sql_time: dict[str, list[float]] = {}  # statement -> [calls, seconds, calls > 1 ms, max]

    def note(sql: str, seconds: float) -> None:
        cell = sql_time.setdefault(sql, [0, 0.0, 0, 0.0])
        cell[0] += 1
        cell[1] += seconds
        cell[2] += seconds > 0.001
        cell[3] = max(cell[3], seconds)

    class TimedConnection:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def execute(self, sql: str, params: Any = ()) -> Any:
            t0 = time.perf_counter()
            try:
                return self._conn.execute(sql, params)
            finally:
                note(" ".join(sql.split())[:90], time.perf_counter() - t0)

        def executemany(self, sql: str, params: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return self._conn.executemany(sql, params)
            finally:
                note("(many) " + " ".join(sql.split())[:83], time.perf_counter() - t0)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

    real_connect = _sqlite_file.StoreFile._connect
    _sqlite_file.StoreFile._connect = lambda self: TimedConnection(real_connect(self))  # type: ignore[assignment,method-assign,return-value]
    thread_prof = cProfile.Profile()
    real_run = _broker_pool.BrokerPool._run

    def profiled_run(self: Any) -> None:
        thread_prof.enable()
        try:
            real_run(self)
        finally:
            thread_prof.disable()

    _broker_pool.BrokerPool._run = profiled_run  # type: ignore[method-assign]
    main_prof = cProfile.Profile()
    scratch = Scratch()
    try:
        with taskq.Pool(WORKERS, broker=scratch.url()) as pool:
            [f.result() for f in [pool.submit(jobs.noop, i) for i in range(200)]]
            sql_time.clear()
            main_prof.enable()
            t0 = time.perf_counter()
            futures = [pool.submit(jobs.noop, i) for i in range(n)]
            t_submit = time.perf_counter() - t0
            total = sum(f.result() for f in futures)
            elapsed = time.perf_counter() - t0
            main_prof.disable()
            check(total == n * (n - 1) // 2, "profile: sum of results")
    finally:
        _sqlite_file.StoreFile._connect = real_connect  # type: ignore[method-assign]
        _broker_pool.BrokerPool._run = real_run  # type: ignore[method-assign]
    buf = io.StringIO()
    buf.write(f"# profile of end-to-end, {n} no-op jobs, {WORKERS} workers (under cProfile)\n\n")
    buf.write(
        f"{n / elapsed:,.0f} jobs/s end to end; submitting took {t_submit:.2f} s of "
        f"{elapsed:.2f} s\n\n## SQL statements (all threads): calls, seconds\n\n"
    )
    buf.write("   calls  seconds  >1ms   max ms  statement\n")
    for sql, (calls, secs, slow, worst) in sorted(sql_time.items(), key=lambda kv: -kv[1][1])[:20]:
        buf.write(f"{calls:8d} {secs:8.3f} {slow:5d} {worst * 1e3:8.2f}  {sql}\n")
    for title, prof in (
        ("submitting (main) thread", main_prof),
        ("taskq-broker thread", thread_prof),
    ):
        buf.write(f"\n## {title}: top by cumulative time\n\n")
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
        buf.write(f"\n## {title}: top by own time\n\n")
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    text = buf.getvalue()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "broker_sqlite_profile.txt").write_text(text)
    return text


# -- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.broker_sqlite", description=__doc__.split("\n\n")[0]
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="smaller sizes, 3 repetitions")
    group.add_argument(
        "--tiny", action="store_true", help="a few hundred jobs, 1 repetition (the smoke test)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (interleaved)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("--lease", type=float, default=2.0, help="lease of the recovery row")
    parser.add_argument("--no-huey", action="store_true", help="taskq rows only (and bare)")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile taskq's end-to-end scenario instead (cProfile + SQL)",
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "tiny" if args.tiny else "full"
    if args.profile:
        print(profile(SIZES[mode].e2e, args.out))
        return 0
    huey_on = not args.no_huey and _importable("huey")
    pq_on = not args.no_huey and _importable("persistqueue")
    repeat = args.repeat or SIZES[mode].repeat
    data = run(mode, repeat, huey_on, pq_on, args.lease, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"broker_sqlite_{mode}"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    text = markdown(data)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return 0 if data["verified"] else 1


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
