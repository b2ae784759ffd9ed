"""Urgent jobs overtake a backlog: the smaller priority number runs first.

Eight slow "backlog" jobs (priority 10) are queued on two workers; a moment later three
"urgent" jobs (priority 0) arrive.  They start as soon as a worker is free, ahead of every
backlog job still waiting, as the timeline shows.

Run it:  python examples/priorities.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

try:
    import taskq
except ImportError:  # run from a source checkout without installing taskq
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import taskq

TICK = 0.05  # seconds per character of the timeline


def work(name: str, seconds: float) -> tuple[str, float, float]:
    """Sleep for ``seconds``; return the job's name and its start and end times."""
    start = time.time()
    time.sleep(seconds)
    return name, start, time.time()


def timeline(spans: list[tuple[str, float, float]], origin: float) -> None:
    for name, start, end in sorted(spans, key=lambda span: span[1]):
        offset, length = round((start - origin) / TICK), max(1, round((end - start) / TICK))
        bar = " " * offset + ("#" if name.startswith("urgent") else "=") * length
        print(f"  {name:<10} {start - origin:5.2f}s |{bar}")


def main() -> None:
    with taskq.Pool(2) as pool:
        origin = time.time()
        backlog = [pool.schedule(work, (f"backlog-{i}", 0.4), priority=10) for i in range(8)]
        time.sleep(0.5)  # the backlog is running; six of its jobs are still queued
        urgent = [pool.schedule(work, (f"urgent-{i}", 0.2), priority=0) for i in range(3)]
        spans = [future.result(timeout=30) for future in backlog + urgent]

    print("timeline ('=' backlog job, priority 10; '#' urgent job, priority 0):")
    timeline(spans, origin)
    first_urgent = min(start for name, start, _ in spans if name.startswith("urgent"))
    overtaken = [
        name for name, start, _ in spans if name.startswith("backlog") and start > first_urgent
    ]
    print(
        f"the urgent jobs, submitted last, overtook {len(overtaken)} queued backlog jobs: "
        f"{', '.join(overtaken)} started after them"
    )


if __name__ == "__main__":
    main()
