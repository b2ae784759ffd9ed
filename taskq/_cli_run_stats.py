"""``taskq run --stats``: the per-priority summary printed at the end of a run."""

from __future__ import annotations

from taskq._stats import WINDOW, PoolStats

__all__ = ["format_seconds", "stats_table"]

COLUMNS = ("priority", "jobs", "wait p50", "wait p99", "run p50", "run p99")


def format_seconds(seconds: float | None) -> str:
    """A duration in the unit that reads best: ``850 µs``, ``12.3 ms``, ``1.25 s``."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def stats_table(stats: PoolStats) -> str:
    """One line per priority level (most urgent first): how many jobs ran, and their
    queue wait and run time percentiles; a note when older jobs left the window."""
    rows = [COLUMNS]
    for priority, level in stats.priorities.items():
        rows.append((
            f"{priority:g}", str(level.recent),
            format_seconds(level.wait_p50), format_seconds(level.wait_p99),
            format_seconds(level.run_p50), format_seconds(level.run_p99),
        ))  # fmt: skip
    if len(rows) == 1:
        return "taskq: stats: no job ran"
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["taskq: stats per priority (the smaller number runs first):"]
    for row in rows:
        cells = (cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  " + "  ".join(cells))
    ran = sum(level.recent for level in stats.priorities.values())
    if ran >= WINDOW:
        lines.append(f"  (over the last {WINDOW} jobs that ran, of {stats.run_seconds.count})")
    return "\n".join(lines)
