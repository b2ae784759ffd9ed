"""taskq's Redis broker side by side with the Redis task queues (issue 10, "Benchmarks").

    python -m benchmarks.broker_redis [--quick] [--repeat K] [--peers rq,huey,...] [--out DIR]

One run against the local Redis at 127.0.0.1:6379, in a database of its own (``--db``,
default 12, emptied with ``FLUSHDB`` between measurements and at the end; nothing else
is touched). Each contestant runs its own worker command as subprocesses with 2
worker processes (see ``redis_peers/``). Repetitions are interleaved (taskq, peer 1,
peer 2, ..., taskq, ...); every cell is the median over the repetitions with its
min-max range. Every result is verified: a wrong or missing result makes the cell an
error, never a number.

Scenarios, per contestant and repetition:

* ``enqueue``: N no-op jobs enqueued one call at a time, no worker running (jobs/s);
  verified by the broker's queue length.
* ``e2e``: N no-op jobs submitted, then every result read back and compared (jobs/s).
* ``latency``: one job in flight, submit and wait, repeated (p50 / p99 µs); the Redis
  ``PING`` round trip (redis-py) is the floor row.
* ``urgent``: a backlog of 10,000 no-op jobs enqueued before the workers start; once
  they consume it, probes at random moments, each the peer's most urgent job (taskq:
  priority -1); delay = the probe's start in a worker (``time.monotonic()``) minus the
  moment before it was submitted (p50 / p99 ms; also: backlog left at the first probe).
* ``recovery``: worker A runs a job, worker B is up, every process of A's session is
  SIGKILLed; time until the job starts again in B, and until its result is back
  (bounded: "not recovered within 30 s" is a result). taskq uses ``--lease 2``.
* ``correctness`` (taskq only): 10,000 jobs with ``retries=5`` while worker processes
  of a ``taskq worker`` are SIGKILLed at random; every result checked, each outcome
  stored exactly once (the store's stream of ended jobs and its counts).

Exit status: 0 when every contestant that ran was verified, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.redis_peers import (
    ENV_URL,
    PEERS,
    QUEUE,
    Peer,
    Unavailable,
    load,
    session_members,
)
from benchmarks.runner import TrialTimeout, VerificationError, check, percentile, time_budget

HERE = Path(__file__).resolve().parent
ALL_SCENARIOS = ("enqueue", "e2e", "latency", "urgent", "recovery", "correctness")
LATENCY_CAP = 20.0  # seconds of one-job round trips per contestant and repetition (>= 20)
DASH = "\N{EN DASH}"
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass
class Sizes:
    enqueue: int
    e2e: int
    latency: int
    backlog: int
    probes: int
    probe_wait: float
    recovery_wait: float
    correctness: int
    repeat: int
    budget: float


MODES = {
    "full": Sizes(5000, 5000, 500, 10_000, 20, 60.0, 30.0, 10_000, 3, 300.0),
    "quick": Sizes(2000, 2000, 200, 10_000, 10, 30.0, 30.0, 10_000, 2, 200.0),
    "tiny": Sizes(300, 300, 50, 300, 3, 20.0, 20.0, 300, 1, 60.0),
}


@dataclass
class Result:
    key: str
    label: str
    note: str = ""
    status: str = "ok"  # ok | error | skipped
    error: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.samples.setdefault(name, []).append(float(value))

    def fail(self, what: str, exc: BaseException) -> None:
        self.status = "error"
        self.error = f"{what}: {type(exc).__name__}: {exc}"[:400]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- redis helpers ---------------------------------------------------------------------------
def flush(url: str) -> None:
    """Empty this benchmark's own database (never anything else)."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def ping_floor(url: str, count: int) -> dict[str, float]:
    import redis

    client = redis.Redis.from_url(url)
    client.ping()
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        client.ping()
        times.append(time.perf_counter() - t0)
    client.close()
    return {"p50_us": percentile(times, 50) * 1e6, "p99_us": percentile(times, 99) * 1e6}


# -- scenarios ---------------------------------------------------------------------------------
def warm_up(peer: Peer, count: int, timeout: float) -> None:
    values = list(range(10_000_000, 10_000_000 + count))
    got = peer.results(peer.submit_many(values), timeout)
    check(got == values, f"warm-up: wrong results {got[:5]}...")


def measure_enqueue(peer: Peer, n: int) -> dict[str, float]:
    values = list(range(n))
    t0 = time.perf_counter()
    handles = peer.submit_many(values)
    elapsed = time.perf_counter() - t0
    check(len(handles) == n, "enqueue: missing handles")
    queued = peer.queued()
    if queued is not None:
        check(queued == n, f"enqueue: the broker holds {queued} jobs, not {n}")
    return {"jobs_per_s": n / elapsed}


def measure_e2e(peer: Peer, n: int, timeout: float) -> dict[str, float]:
    values = list(range(n))
    t0 = time.perf_counter()
    handles = peer.submit_many(values)
    got = peer.results(handles, timeout)
    elapsed = time.perf_counter() - t0
    check(got == values, "e2e: wrong or missing results")
    return {"jobs_per_s": n / elapsed}


def measure_latency(peer: Peer, n: int, timeout: float) -> dict[str, float]:
    times: list[float] = []
    stop = time.monotonic() + LATENCY_CAP
    for i in range(n):
        if len(times) >= 20 and time.monotonic() > stop:
            break  # a slow peer (arq polls every 0.5 s): fewer samples, said in the JSON
        t0 = time.perf_counter()
        value = peer.one(i, timeout)
        times.append(time.perf_counter() - t0)
        check(value == i, f"latency: job {i} returned {value!r}")
    return {"p50_us": percentile(times, 50) * 1e6, "p99_us": percentile(times, 99) * 1e6,
            "samples": len(times)}


def measure_urgent(
    peer: Peer, sizes: Sizes, rng: random.Random, start: Callable[[], None]
) -> dict[str, float]:
    """Backlog first (no worker yet), then the workers, then the probes."""
    peer.submit_many(range(sizes.backlog))
    start()
    deadline = time.monotonic() + 60
    while True:  # the workers are consuming the backlog
        left = peer.queued()
        if left is None:
            time.sleep(peer.startup_grace)
            break
        if left < sizes.backlog:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the workers did not start on the backlog within 60 s")
        time.sleep(0.005)
    moments = sorted(rng.uniform(0, 0.5) for _ in range(sizes.probes))
    begin = time.monotonic()
    first_left = peer.queued()
    sent = []
    for tag, at in enumerate(moments):
        pause = begin + at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        t0 = time.monotonic()
        sent.append((tag, t0, peer.submit_probe(tag, urgent=True)))
    last_left = peer.queued()
    try:
        got = peer.results([h for _, _, h in sent], sizes.probe_wait)
    except TimeoutError:  # still behind the backlog: a result ("> wait"), not an error
        return {"unfinished": 1.0, "backlog_at_first_probe": first_left or 0,
                "backlog_after_last_probe": last_left or 0}
    delays = []
    for (tag, t0, _), value in zip(sent, got, strict=True):
        check(
            isinstance(value, (list, tuple)) and int(value[0]) == tag, f"probe {tag}: {value!r}"
        )
        delays.append(float(value[1]) - t0)
    out = {"p50_ms": percentile(delays, 50) * 1e3, "p99_ms": percentile(delays, 99) * 1e3}
    if first_left is not None and last_left is not None:
        out["backlog_at_first_probe"] = first_left
        out["backlog_after_last_probe"] = last_left
    return out


def measure_recovery(peer: Peer, sizes: Sizes, log_dir: Path) -> dict[str, float]:
    """Kill the process group of the worker running the job; B must finish it."""
    markers = Path(tempfile.mkdtemp(prefix="taskq-bench-recovery-"))
    try:
        group_a = peer.start_workers(log_dir)
        warm_up(peer, 10, 60)
        handle = peer.submit_recovery_job("job", 600.0, str(markers))
        deadline = time.monotonic() + 30
        while not list(markers.glob("job.*")):
            if time.monotonic() > deadline:
                raise TimeoutError("the recovery job did not start within 30 s")
            time.sleep(0.002)
        (first,) = list(markers.glob("job.*"))
        first_pid = int(first.name.split(".")[1])
        peer.start_workers(log_dir)  # B
        time.sleep(peer.startup_grace)
        victims = [pid for proc in group_a for pid in session_members(proc.pid)]
        for pid in victims:  # every process of A's session: the machine is lost
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        for proc in group_a:
            peer.kill_group(proc)
        deadline = killed + sizes.recovery_wait
        while True:  # some clients give up early (a socket timeout): ask again until then
            try:
                (value,) = peer.results([handle], max(0.1, deadline - time.monotonic()))
                break
            except Exception as exc:  # not recovered in the bounded wait: a result
                if time.monotonic() < deadline - 0.1:
                    time.sleep(0.05)
                    continue
                return {"recovered": 0.0, "waited_s": time.monotonic() - killed,
                        "why": repr(exc)[:200]}  # type: ignore[dict-item]
        back = time.monotonic() - killed
        tag, pid, started = value
        check(tag == "job" and pid != first_pid, f"recovery: result {value!r} from pid {pid}")
        return {"recovered": 1.0, "restart_s": float(started) - killed, "result_s": back}
    finally:
        shutil.rmtree(markers, ignore_errors=True)


# -- one contestant, one repetition ----------------------------------------------------------------
class Session:
    def __init__(self, url: str, sizes: Sizes, log_dir: Path, rng: random.Random):
        self.url, self.sizes, self.log_dir, self.rng = url, sizes, log_dir, rng

    def run(self, peer: Peer, results: dict[str, Result], scenarios: set[str]) -> None:
        """One repetition of every scenario for ``peer`` (fresh workers for each part)."""
        parts: list[tuple[str, Callable[[], dict[str, float]]]] = []
        scenarios = scenarios & set(results)
        if "enqueue" in scenarios:
            parts.append(("enqueue", lambda: measure_enqueue(peer, self.sizes.enqueue)))
        if "e2e" in scenarios:
            parts.append(("e2e+latency", lambda: self._served(peer, scenarios, results)))
        if "urgent" in scenarios:
            parts.append(("urgent", lambda: self._urgent(peer)))
        for name, action in parts:
            self._attempt(peer, results, name, action)

    def _attempt(
        self, peer: Peer, results: dict[str, Result], name: str,
        action: Callable[[], dict[str, float]],
    ) -> None:
        key = name.split("+")[0]
        result = results[key]
        if result.status != "ok":
            return
        flush(self.url)
        try:
            peer.open()
            with time_budget(self.sizes.budget):
                metrics = action()
            if metrics:
                result.add(metrics)
        except Exception as exc:
            result.fail(name, exc)
            if name == "e2e+latency" and "latency" in results:
                results["latency"].fail(name, exc)
            log(f"    {peer.label} {name}: {result.error}")
            if not isinstance(exc, (VerificationError, TrialTimeout, TimeoutError)):
                log(traceback.format_exc(limit=8))
        finally:
            with contextlib.suppress(Exception):
                peer.close()
            peer.stop_workers()
            flush(self.url)

    def _served(
        self, peer: Peer, scenarios: set[str], results: dict[str, Result]
    ) -> dict[str, float]:
        peer.start_workers(self.log_dir)
        warm_up(peer, 100, 90)
        out: dict[str, float] = {}
        if "e2e" in scenarios:
            out = measure_e2e(peer, self.sizes.e2e, self.sizes.budget / 2)
        if "latency" in scenarios and results["latency"].status == "ok":
            warm_up(peer, 20, 30)
            results["latency"].add(
                measure_latency(peer, self.sizes.latency, self.sizes.probe_wait)
            )
        return out

    def _urgent(self, peer: Peer) -> dict[str, float]:
        return measure_urgent(
            peer, self.sizes, self.rng, lambda: peer.start_workers(self.log_dir) and None
        )


# -- correctness under SIGKILLs (taskq only) ----------------------------------------
def _children(pid: int) -> list[int]:
    try:
        return [
            int(k)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for k in (task / "children").read_text().split()
        ]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def pool_workers(pid: int, fork_servers: set[int]) -> list[int]:
    """The worker processes of the serving process ``pid``. With the fork start method
    taskq forks them from its fork server, a child of the serving process: they are its
    grandchildren, and the fork server (remembered in ``fork_servers`` once seen with
    children) is never a victim: killing it is another failure (see the README)."""
    own = _cmdline(pid)
    children = [c for c in _children(pid) if _cmdline(c) == own]
    for child in children:
        if _children(child):
            fork_servers.add(child)
    if not fork_servers:  # no fork server: the workers are the children
        return children
    return [g for c in children if c in fork_servers for g in _children(c) if _cmdline(g) == own]


def correctness_run(url: str, n: int, log_dir: Path, seed: int) -> dict[str, Any]:
    import redis

    import taskq
    from benchmarks.redis_peers.jobs import checked
    from benchmarks.redis_peers.taskq_peer import TaskqPeer

    flush(url)
    peer = TaskqPeer()
    peer.lease = 5.0
    rng = random.Random(seed)
    kills: list[int] = []
    stop = threading.Event()
    pool = None
    try:
        (server,) = peer.start_workers(log_dir)

        def killer() -> None:
            while not stop.wait(rng.uniform(0.02, 0.2)):
                kids = pool_workers(server.pid, fork_servers)
                if kids:
                    victim = rng.choice(kids)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
                        kills.append(victim)

        pool = taskq.Pool(0, broker=url, queue=QUEUE)
        warm = [pool.submit(checked, -i) for i in range(1, 21)]  # the workers are up
        check([f.result(timeout=60) for f in warm] == [i * i + 7 for i in range(1, 21)],
              "correctness: warm-up results")
        fork_servers: set[int] = set()
        pool_workers(server.pid, fork_servers)
        client = redis.Redis.from_url(url)
        prefix = f"taskq:{QUEUE}:"
        before = int(client.hget(prefix + "stats", "succeeded") or 0)  # the warm-up's
        t0 = time.perf_counter()
        futures = [pool.schedule(checked, (i,), retries=5, retry_delay=0.01) for i in range(n)]
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        wrong, errors = 0, []
        for i, future in enumerate(futures):
            try:
                value = future.result(timeout=max(0.001, 600 - (time.perf_counter() - t0)))
            except Exception as exc:
                errors.append(f"job {i}: {type(exc).__name__}: {exc}"[:200])
                continue
            wrong += value != i * i + 7
        elapsed = time.perf_counter() - t0
        stop.set()
        thread.join()
        # Each job's stored state, and the store's count of stored outcomes: an outcome
        # stored twice for one job (a late duplicate accepted) would count twice there.
        pipe = client.pipeline(transaction=False)
        for future in futures:
            pipe.hget(f"{prefix}job:{future.job_id}", "state")
        states = pipe.execute()
        stored = sum(1 for state in states if state == b"succeeded")
        stats = {k.decode(): int(v) for k, v in client.hgetall(prefix + "stats").items()}
        stats["succeeded_before"] = before
        client.close()
        counted = stats.get("succeeded", 0) - before
        return {
            "jobs": n,
            "kills": len(kills),
            "seconds": elapsed,
            "wrong_results": wrong,
            "errors": len(errors),
            "error_samples": errors[:5],
            "lost": n - stored,
            "duplicated": max(0, counted - stored),
            "store_counts": stats,
            "verified": wrong == 0 and not errors and stored == n and counted == n,
        }
    finally:
        stop.set()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        peer.stop_workers()
        flush(url)


# -- report --------------------------------------------------------------------------------------
METRICS = {
    "enqueue": [("jobs_per_s", "jobs/s", True)],
    "e2e": [("jobs_per_s", "jobs/s", True)],
    "latency": [("p50_us", "p50 µs", False), ("p99_us", "p99 µs", False)],
    "urgent": [("p50_ms", "p50 ms", False), ("p99_ms", "p99 ms", False)],
    "recovery": [("restart_s", "kill → re-run starts, s", False),
                 ("result_s", "kill → result back, s", False)],
}
TITLES = {
    "enqueue": "Enqueue rate (no worker running, one call per job)",
    "e2e": "End-to-end no-op throughput (submit all, read every result)",
    "latency": "One-job latency (submit, wait; one in flight)",
    "urgent": "Urgent job behind a {backlog:,}-job backlog",
    "recovery": "SIGKILL of a serving process: its job completes elsewhere",
}


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def cell(res: Result, metric: str, wait: float = 0.0) -> str:
    values = res.samples.get(metric)
    if not values:
        if res.samples.get("unfinished"):
            return f"> {fmt(wait * 1000)}"
        return DASH
    s = summary(values)
    if len(values) == 1:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}{DASH}{fmt(s['max'])})"


def row_note(data: dict[str, Any], scenario: str, res: Result) -> str:
    """What a cell cannot say: runs that did not finish in the bounded wait, backlog left."""
    extra = res.note
    if scenario == "recovery":
        rec = res.samples.get("recovered", [])
        if rec and not all(rec):
            extra = (f"recovered in {int(sum(rec))}/{len(rec)} runs; not recovered "
                     f"within {data['sizes']['recovery_wait']:.0f} s otherwise. {extra}")
    if scenario == "urgent" and res.samples.get("backlog_at_first_probe"):
        first = statistics.median(res.samples["backlog_at_first_probe"])
        last = statistics.median(res.samples["backlog_after_last_probe"])
        extra = f"backlog left at first probe {fmt(first)}, after last {fmt(last)}. {extra}"
    unfinished = int(sum(res.samples.get("unfinished", [])))
    if unfinished:
        extra = (f"in {unfinished} of {data['repeat']} runs the probes had not all "
                 f"started after {data['sizes']['probe_wait']:.0f} s. {extra}")
    return extra


def markdown(data: dict[str, Any], results: dict[str, dict[str, Result]]) -> str:
    lines = [
        "# taskq on Redis vs the Redis task queues",
        "",
        f"Mode `{data['mode']}`, {data['repeat']} interleaved repetitions, "
        f"{data['machine']['cores']} cores, Python {data['machine']['python']}, "
        f"Redis {data['redis_version']}, {data['machine']['date_utc']}. "
        f"Cells: median (min{DASH}max) over the repetitions.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t in data["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['met']} |")
    for scenario, title in TITLES.items():
        rows = results.get(scenario)
        if not rows:
            continue
        metrics = METRICS[scenario]
        title = title.format(backlog=data["sizes"]["backlog"])
        lines += ["", f"## {title}", "", "| contestant | "
                  + " | ".join(m[1] for m in metrics) + " | notes |",
                  "|---" * (len(metrics) + 2) + "|"]
        for res in rows.values():
            if res.status == "skipped":
                lines.append(f"| {res.label} | " + " | ".join(DASH for _ in metrics)
                             + f" | skipped: {res.error} |")
                continue
            if res.status == "error":
                lines.append(f"| {res.label} | " + " | ".join("error" for _ in metrics)
                             + f" | {res.error} |")
                continue
            extra = row_note(data, scenario, res)
            wait = data["sizes"]["probe_wait"]
            lines.append(f"| {res.label} | "
                         + " | ".join(cell(res, m[0], wait) for m in metrics)
                         + f" | {extra} |")
    corr = data.get("correctness")
    if corr:
        lines += ["", f"## Correctness: {corr['jobs']:,} jobs with random SIGKILLs of worker "
                  "processes (taskq, `retries=5`)",
                  "", "| jobs | kills | wrong results | errors | lost | duplicated outcomes "
                  "| seconds | verified |", "|---|---|---|---|---|---|---|---|",
                  f"| {corr['jobs']} | {corr['kills']} | {corr['wrong_results']} | "
                  f"{corr['errors']} | {corr['lost']} | {corr['duplicated']} | "
                  f"{corr['seconds']:.1f} | {corr['verified']} |"]
    lines += ["", "## How each contestant ran", "", "| contestant | workers | urgent job |",
              "|---|---|---|"]
    for info in data["contestants"]:
        lines.append(f"| {info['label']} | {info['workers']} | {info['urgent']} |")
    return "\n".join(lines) + "\n"


def med(res: Result | None, metric: str) -> float | None:
    if res is None or res.status != "ok" or not res.samples.get(metric):
        return None
    return statistics.median(res.samples[metric])


def targets(results: dict[str, dict[str, Result]], ping: Result) -> list[dict[str, str]]:
    out = []
    e2e = results.get("e2e", {})
    mine = med(e2e.get("taskq"), "jobs_per_s")
    peers = [(r.label, med(r, "jobs_per_s")) for k, r in e2e.items() if not k.startswith("taskq")]
    peers = [(label, v) for label, v in peers if v]
    if mine and peers:
        label, best = max(peers, key=lambda p: p[1])
        out.append({"target": f"end-to-end no-op ≥ 2{TIMES} the fastest peer",
                    "measured": f"{mine / best:.2f}{TIMES} "
                    f"({fmt(mine)} vs {label} {fmt(best)} jobs/s)",
                    "met": "yes" if mine >= 2 * best else "no"})
    lat = med(results.get("latency", {}).get("taskq"), "p50_us")
    floor = med(ping, "p50_us")
    if lat and floor:
        out.append({"target": f"latency p50 ≤ 3{TIMES} Redis PING",
                    "measured": f"{lat / floor:.1f}{TIMES} ({fmt(lat)} vs {fmt(floor)} µs)",
                    "met": "yes" if lat <= 3 * floor else "no"})
    urgent = med(results.get("urgent", {}).get("taskq"), "p99_ms")
    if urgent is not None:
        out.append({"target": "urgent job p99 ≤ 10 ms behind a 10,000-job backlog",
                    "measured": f"{fmt(urgent)} ms", "met": "yes" if urgent <= 10 else "no"})
    rec = results.get("recovery", {}).get("taskq")
    back = med(rec, "result_s")
    if back is not None:
        out.append({"target": "recovery ≤ 10 s (taskq: --lease 2)",
                    "measured": f"{fmt(back)} s to the result ({fmt(med(rec, 'restart_s') or 0)}"
                    " s to the re-run)", "met": "yes" if back <= 10 else "no"})
    return out


def machine() -> dict[str, Any]:
    import datetime as dt
    import importlib.metadata
    import platform

    versions = {}
    for name in ("taskq", "redis", "hiredis", *PEERS):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


# -- main ----------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.broker_redis",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 2 repetitions")
    parser.add_argument("--tiny", action="store_true",
                        help="a few hundred jobs, 1 repetition (the smoke test)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma-separated: rq,huey,arq,saq,dramatiq,celery (or none)")
    parser.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    parser.add_argument("--no-inproc", action="store_true",
                        help="leave out the in-process taskq Pool(2) row")
    parser.add_argument("--host", default="127.0.0.1:6379")
    parser.add_argument("--db", type=int, default=12, help="database number (emptied!)")
    parser.add_argument("--out", default=str(HERE / "results"), help="output directory")
    parser.add_argument("--seed", type=int, default=10)
    return parser.parse_args(argv)


def make_contestants(args: argparse.Namespace) -> tuple[list[Peer], dict[str, str]]:
    contestants: list[Peer] = []
    skipped: dict[str, str] = {}
    keys = ["taskq"] + ([] if args.no_inproc else ["taskq-inproc"])
    keys += [p for p in args.peers.split(",") if p and p != "none"]
    for key in keys:
        try:
            if key == "taskq-inproc":
                from benchmarks.redis_peers.taskq_peer import TaskqInProcess

                contestants.append(TaskqInProcess())
            else:
                contestants.append(load(key))
        except Unavailable as exc:
            skipped[key] = str(exc)
            log(f"  {key}: skipped: {exc}")
    return contestants, skipped


def make_results(
    contestants: list[Peer], skipped: dict[str, str], scenarios: set[str]
) -> dict[str, dict[str, Result]]:
    names = [s for s in ("enqueue", "e2e", "latency", "urgent", "recovery") if s in scenarios]
    results: dict[str, dict[str, Result]] = {s: {} for s in names}
    for s in results:
        for peer in contestants:
            # the in-process pool serves itself: no enqueue without workers, no kill
            if peer.processes == 0 and s in ("enqueue", "urgent", "recovery"):
                continue
            results[s][peer.key] = Result(peer.key, peer.label)
        for key, why in skipped.items():
            results[s][key] = Result(key, key, status="skipped", error=why)
    return results


def run_recovery(url: str, peer: Peer, sizes: Sizes, log_dir: Path, rec: Result) -> None:
    if peer.key == "taskq":
        peer.lease = 2.0  # type: ignore[attr-defined]
    flush(url)
    try:
        peer.open()
        with time_budget(sizes.budget):
            metrics = measure_recovery(peer, sizes, log_dir)
        why = metrics.pop("why", None)
        if why:
            rec.info.setdefault("not_recovered", []).append(why)
        rec.add(metrics)
    except Exception as exc:
        rec.fail("recovery", exc)
        log(f"    {peer.label} recovery: {rec.error}")
        log(traceback.format_exc(limit=8))
    finally:
        with contextlib.suppress(Exception):
            peer.close()
        peer.stop_workers()
        if peer.key == "taskq":
            peer.lease = 5.0  # type: ignore[attr-defined]
        flush(url)


def run_correctness(url: str, sizes: Sizes, log_dir: Path, seed: int) -> dict[str, Any]:
    log(f"  correctness: {sizes.correctness} jobs with random SIGKILLs of worker processes")
    try:
        correctness = correctness_run(url, sizes.correctness, log_dir, seed)
    except Exception as exc:
        correctness = {"jobs": sizes.correctness, "kills": 0, "wrong_results": 0,
                       "errors": 1, "lost": -1, "duplicated": -1, "seconds": 0.0,
                       "verified": False, "error_samples": [repr(exc)]}
        log(traceback.format_exc())
    log(f"    {correctness}")
    return correctness


def correctness_target(correctness: dict[str, Any] | None) -> dict[str, str]:
    measured = DASH
    if correctness:
        measured = (
            f"{correctness['jobs']} jobs, {correctness['kills']} kills: "
            f"{correctness['lost']} lost, {correctness['duplicated']} duplicated, "
            f"{correctness['wrong_results'] + correctness['errors']} wrong/failed"
        )
    return {
        "target": "zero lost, zero duplicated outcomes under random SIGKILLs",
        "measured": measured,
        "met": "yes" if correctness and correctness["verified"] else "no",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    sizes = MODES[mode]
    if args.repeat:
        sizes.repeat = args.repeat
    url = f"redis://{args.host}/{args.db}"
    os.environ[ENV_URL] = url
    scenarios = set(args.scenarios.split(","))
    import redis

    redis_version = redis.Redis.from_url(url).info("server")["redis_version"]
    flush(url)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="taskq-bench-redis-logs-"))
    log(f"Redis {redis_version} at {url}; mode {mode}, {sizes.repeat} repetitions; "
        f"worker logs in {log_dir}")
    contestants, skipped = make_contestants(args)
    results = make_results(contestants, skipped, scenarios)
    ping = Result("ping", "Redis PING (redis-py, floor)")
    session = Session(url, sizes, log_dir, random.Random(args.seed))
    for rep in range(sizes.repeat):
        for peer in contestants:
            log(f"  rep {rep + 1}/{sizes.repeat}: {peer.label}")
            if "latency" in scenarios:
                ping.add(ping_floor(url, 2000))
            mine = {s: rows[peer.key] for s, rows in results.items() if peer.key in rows}
            session.run(peer, mine, scenarios)
        for peer in contestants:
            rec = results.get("recovery", {}).get(peer.key)
            if rec is not None and rec.status == "ok":
                log(f"  rep {rep + 1}/{sizes.repeat}: {peer.label} recovery")
                run_recovery(url, peer, sizes, log_dir, rec)
    if "latency" in results:
        results["latency"] = {"ping": ping, **results["latency"]}
    correctness = None
    if "correctness" in scenarios:
        correctness = run_correctness(url, sizes, log_dir, args.seed)
    flush(url)

    data: dict[str, Any] = {
        "mode": mode,
        "repeat": sizes.repeat,
        "redis_url": url,
        "redis_version": redis_version,
        "machine": machine(),
        "sizes": sizes.__dict__,
        "contestants": [
            {"key": p.key, "label": p.label, "workers": p.workers_note,
             "urgent": p.urgent_note} for p in contestants
        ],
        "skipped": skipped,
        "results": {
            s: [
                {"key": r.key, "label": r.label, "status": r.status, "error": r.error,
                 "note": r.note, "info": r.info, "samples": r.samples,
                 "summary": {m: summary(v) for m, v in r.samples.items() if v},
                 "verified": r.status == "ok"}
                for r in rows.values()
            ]
            for s, rows in results.items()
        },
        "correctness": correctness,
        "targets": [*targets(results, ping), correctness_target(correctness)],
    }
    name = f"redis-{mode}"
    if scenarios != set(ALL_SCENARIOS):  # a partial run does not overwrite a whole one
        name += "-" + "-".join(s for s in ALL_SCENARIOS if s in scenarios)
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (out_dir / f"{name}.md").write_text(markdown(data, results))
    log(f"wrote {out_dir / name}.json and .md")
    print((out_dir / f"{name}.md").read_text())
    failed = [r for rows in results.values() for r in rows.values() if r.status == "error"]
    return 1 if failed or (correctness is not None and not correctness["verified"]) else 0


if __name__ == "__main__":
    sys.exit(main())
