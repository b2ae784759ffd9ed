"""Queue wait by priority, with and without aging: the README's plot.

    python -m benchmarks.aging_plot [--output benchmarks/results/aging.png]

Two workers are kept busy by a steady stream of priority-0 jobs (each one that
ends queues the next, so BACKLOG of them are always queued or running); every
INTERVAL seconds one job of priority 2 and one of priority 5 join it. Without
aging those wait until the stream stops; with ``aging=AGING`` a priority-p job
waits about ``p * AGING`` seconds plus the backlog ahead of it. Each point is
one job: when it was queued, and how long it waited to start.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import taskq

WORKERS = 2
JOB_SECONDS = 0.01
BACKLOG = 20
STREAM_SECONDS = 3.0
INTERVAL = 0.1
LOW_PRIORITIES = (2, 5)
AGING = 0.05
OUTPUT = Path(__file__).parent / "results" / "aging.png"


def started_at() -> float:
    """Sleep JOB_SECONDS; return when the job started (CLOCK_MONOTONIC is system-wide)."""
    start = time.monotonic()
    time.sleep(JOB_SECONDS)
    return start


def measure(aging: float | None) -> tuple[dict[float, list[tuple[float, float]]], taskq.PoolStats]:
    """{priority: [(queued at, waited)]}, seconds from the stream's start; and the stats."""
    queued: list[tuple[float, float, taskq.JobFuture[float]]] = []
    lock = threading.Lock()
    with taskq.Pool(WORKERS, aging=aging) as pool:
        t0 = time.monotonic()
        end = t0 + STREAM_SECONDS

        def add(priority: float) -> None:
            at = time.monotonic()
            future = pool.schedule(started_at, priority=priority)
            with lock:
                queued.append((priority, at, future))
            if priority == 0:
                future.add_done_callback(next_in_stream)

        def next_in_stream(_: object) -> None:
            if time.monotonic() < end:
                add(0)  # from the done-callback: the backlog stays BACKLOG deep

        for _ in range(BACKLOG):
            add(0)
        while time.monotonic() < end:
            time.sleep(INTERVAL)
            for priority in LOW_PRIORITIES:
                add(priority)
        with lock:
            jobs = list(queued)
        waits: dict[float, list[tuple[float, float]]] = {}
        for priority, at, future in jobs:
            waits.setdefault(priority, []).append((at - t0, future.result(timeout=60) - at))
        return waits, pool.stats()


def plot(results: dict[str, dict[float, list[tuple[float, float]]]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(9, 3.2), sharey=True)
    for ax, (title, waits) in zip(axes, results.items(), strict=True):
        for priority in sorted(waits):
            xs, ys = zip(*waits[priority], strict=True)
            ax.scatter(xs, ys, s=6, label=f"priority {priority:g}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("queued at (s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("queue wait (s)")
    axes[-1].legend(fontsize=8, loc="upper right")
    fig.suptitle(
        f"{WORKERS} workers saturated by priority-0 jobs of {JOB_SECONDS * 1e3:g} ms", fontsize=10
    )
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    results = {}
    for aging in (None, AGING):
        title = "without aging" if aging is None else f"aging={aging:g} s"
        waits, stats = measure(aging)
        results[title] = waits
        print(title)
        for priority, level in stats.priorities.items():
            print(f"  priority {priority:g}: {level.recent} jobs, wait p50 {level.wait_p50:.3f} s,"
                  f" p99 {level.wait_p99:.3f} s")  # fmt: skip
    plot(results, args.output)
    print(f"plot: {args.output}")


if __name__ == "__main__":
    main()
