"""taskq's performance targets, each checked against the medians of one run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.runner import Row
from benchmarks.scenarios import ScenarioResult

Results = dict[str, ScenarioResult]


@dataclass(frozen=True)
class Verdict:
    target: str
    met: bool | None  # None: could not be evaluated (scenario/peer not run or failed)
    measured: str


def _row(results: Results, scenario: str, key: str) -> Row | None:
    result = results.get(scenario)
    if result is None:
        return None
    for row in result.rows:
        if row.status == "ok" and (row.adapter_key == key or (key == "ref" and row.reference)):
            return row
    return None


def _median(results: Results, scenario: str, key: str, metric: str) -> float | None:
    row = _row(results, scenario, key)
    return None if row is None else row.median(metric)


def _ratio(
    target: str, scenario: str, peer: str, metric: str, factor: float
) -> Callable[[Results], Verdict]:
    """taskq's median must be at least ``factor`` times the peer's (higher is better)."""

    def check(results: Results) -> Verdict:
        ours = _median(results, scenario, "taskq", metric)
        theirs = _median(results, scenario, peer, metric)
        if ours is None or theirs is None or theirs <= 0:
            return Verdict(target, None, "not measured")
        ratio = ours / theirs
        return Verdict(target, ratio >= factor, f"{ratio:.2f}x ({ours:,.0f} vs {theirs:,.0f})")

    return check


def _limit(
    target: str, scenario: str, metric: str, limit: float, unit: str, at_least: bool = False
) -> Callable[[Results], Verdict]:
    """taskq's median must be at most (or at least) ``limit``."""

    def check(results: Results) -> Verdict:
        ours = _median(results, scenario, "taskq", metric)
        if ours is None:
            return Verdict(target, None, "not measured")
        met = ours >= limit if at_least else ours <= limit
        return Verdict(target, met, f"{ours:,.2f} {unit}")

    return check


def _latency_vs_pipe(results: Results) -> Verdict:
    target = "latency p50 ≤ 2x raw Pipe round trip"
    ours = _median(results, "latency", "taskq", "p50_us")
    pipe = _median(results, "latency", "ref", "p50_us")
    if ours is None or pipe is None:
        return Verdict(target, None, "not measured")
    return Verdict(
        target, ours <= 2 * pipe, f"{ours:,.0f} µs vs pipe {pipe:,.0f} µs ({ours / pipe:.2f}x)"
    )


def _below_every_peer(metric: str, label: str) -> Callable[[Results], Verdict]:
    target = f"latency {label} below every peer's {label}"

    def check(results: Results) -> Verdict:
        ours = _median(results, "latency", "taskq", metric)
        result = results.get("latency")
        if ours is None or result is None:
            return Verdict(target, None, "not measured")
        peers = {
            r.label: r.median(metric)
            for r in result.rows
            if r.status == "ok" and not r.reference and r.adapter_key != "taskq"
        }
        known = {k: v for k, v in peers.items() if v is not None}
        if not known:
            return Verdict(target, None, f"taskq {ours:,.0f} µs; no peer measured")
        best_label, best = min(known.items(), key=lambda kv: kv[1])
        return Verdict(
            target, ours < best, f"taskq {ours:,.0f} µs; best peer {best_label} {best:,.0f} µs"
        )

    return check


def _fraction_of_limit(scenario: str, metric: str, label: str) -> Callable[[Results], Verdict]:
    """Not a target: taskq's median as a fraction of the scenario's limit row."""
    target = f"{label}: taskq as a fraction of its limit (reported, no threshold)"

    def check(results: Results) -> Verdict:
        ours = _median(results, scenario, "taskq", metric)
        limit = _median(results, scenario, "ref", metric)
        if ours is None or limit is None or limit <= 0:
            return Verdict(target, None, "not measured")
        return Verdict(target, True, f"{100 * ours / limit:.0f} % ({ours:,.0f} vs {limit:,.0f})")

    return check


TARGETS: tuple[tuple[str, Callable[[Results], Verdict]], ...] = (
    (
        "submit",
        _ratio(
            "no-op submit ≥ 2.5x multiprocessing.Pool apply_async",
            "submit",
            "mp_pool",
            "jobs_per_s",
            2.5,
        ),
    ),
    (
        "map_best",
        _ratio(
            "map (best chunksize) ≥ 1.1x multiprocessing.Pool (best)",
            "map_best",
            "mp_pool",
            "items_per_s",
            1.1,
        ),
    ),
    (
        "map_default",
        _ratio(
            "map (default chunksize) ≥ 10x ProcessPoolExecutor",
            "map_default",
            "ppe",
            "items_per_s",
            10.0,
        ),
    ),
    (
        "map_default",
        _ratio(
            "map (default chunksize) ≥ 5x multiprocessing.Pool",
            "map_default",
            "mp_pool",
            "items_per_s",
            5.0,
        ),
    ),
    ("latency", _latency_vs_pipe),
    ("latency", _limit("latency p50 ≤ 120 µs", "latency", "p50_us", 120.0, "µs")),
    ("latency", _below_every_peer("p50_us", "p50")),
    ("latency", _below_every_peer("p99_us", "p99")),
    (
        "cpu_1ms",
        _limit(
            "1 ms jobs ≥ 92 % useful work", "cpu_1ms", "efficiency_pct", 92.0, "%", at_least=True
        ),
    ),
    (
        "payload_1mb",
        _ratio("1 MB payloads ≥ 2x ProcessPoolExecutor", "payload_1mb", "ppe", "mib_per_s", 2.0),
    ),
    (
        "numpy_64mb",
        _ratio(
            "64 MiB NumPy arrays ≥ 5x ProcessPoolExecutor", "numpy_64mb", "ppe", "mib_per_s", 5.0
        ),
    ),
    (
        "numpy_64mb",
        _ratio("64 MiB NumPy arrays ≥ 1.5x joblib", "numpy_64mb", "joblib", "mib_per_s", 1.5),
    ),
    ("numpy_64mb", _fraction_of_limit("numpy_64mb", "mib_per_s", "64 MiB NumPy arrays")),
    (
        "urgent_100us",
        _limit("urgent job behind 100 µs backlog: p99 ≤ 5 ms", "urgent_100us", "p99_ms", 5.0, "ms"),
    ),
    (
        "endless_map",
        _limit("endless map: memory growth ≤ 50 MB", "endless_map", "growth_mb", 50.0, "MB"),
    ),
    (
        "killed_worker",
        _limit(
            "killed worker replaced and serving within 100 ms", "killed_worker", "ms", 100.0, "ms"
        ),
    ),
    (
        "timeout",
        _limit("timeout=0.5 job stopped within 0.6 s", "timeout", "stopped_after_s", 0.6, "s"),
    ),
)


def evaluate(results: Results) -> list[Verdict]:
    verdicts = []
    for scenario, target in TARGETS:
        verdict = target(results)
        if scenario not in results:
            verdict = Verdict(verdict.target, None, "scenario not run")
        verdicts.append(verdict)
    return verdicts
