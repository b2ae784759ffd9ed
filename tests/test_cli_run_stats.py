"""``taskq run --stats``: the per-priority table printed at the end of a run."""

from __future__ import annotations

import pytest

from taskq._cli_run_stats import format_seconds, stats_table
from taskq._stats import StatsBlock
from tests.test_cli import jobs_file, taskq

UNITS = {"µs": 1e-6, "ms": 1e-3, "s": 1.0}


def seconds_of(cell: str) -> float:
    number, unit = cell.split()
    return float(number) * UNITS[unit]


def table_rows(stderr: str) -> dict[str, list[str]]:
    """{priority: [jobs, wait p50, wait p99, run p50, run p99]} from the printed table."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("taskq: stats per"))
    rows = {}
    for line in lines[start + 2 :]:
        # "1.2 ms" is two words: a priority, a count, then four (number, unit) pairs
        cells = line.split()
        if len(cells) != 10:
            break
        rows[cells[0]] = [cells[1], *(" ".join(cells[i : i + 2]) for i in range(2, 10, 2))]
    return rows


def test_durations_read_in_the_best_unit():
    assert [format_seconds(s) for s in (None, 0.00085, 0.0123, 1.25)] == [
        "-", "850 µs", "12.3 ms", "1.25 s",
    ]  # fmt: skip


def test_the_table_has_one_row_per_priority_most_urgent_first():
    block = StatsBlock()
    block.ran([(2, 0.5, 0.01)] * 3 + [(-1, 0.001, 0.002)])
    text = stats_table(block.read())
    assert text.splitlines() == [
        "taskq: stats per priority (the smaller number runs first):",
        "  priority  jobs  wait p50  wait p99  run p50  run p99",
        "        -1     1    1.0 ms    1.0 ms   2.0 ms   2.0 ms",
        "         2     3  500.0 ms  500.0 ms  10.0 ms  10.0 ms",
    ]


def test_no_job_no_table():
    assert stats_table(StatsBlock().read()) == "taskq: stats: no job ran"


@pytest.mark.timeout(60)
def test_run_with_stats_prints_counts_and_times_of_a_known_workload(tmp_path):
    jobs = [{"args": [0.05], "priority": 0}] * 4 + [{"args": [0.1], "priority": 3}] * 2
    done = taskq("run", "tests.cli_jobs:nap", str(jobs_file(tmp_path, *jobs)),
                 "-w", "1", "--stats", "-q")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stderr)
    assert {priority: row[0] for priority, row in rows.items()} == {"0": "4", "3": "2"}
    assert 0.05 <= seconds_of(rows["0"][3]) <= seconds_of(rows["0"][4]) < 5
    assert 0.1 <= seconds_of(rows["3"][3]) <= seconds_of(rows["3"][4]) < 5
    assert all(seconds_of(row[1]) <= seconds_of(row[2]) < 5 for row in rows.values())


def test_aging_needs_priority_order(tmp_path):
    done = taskq("run", "tests.cli_jobs:nap", str(jobs_file(tmp_path, [0])),
                 "--aging", "1", "--order", "fifo")  # fmt: skip
    assert done.returncode == 2
    assert "--aging" in done.stderr
