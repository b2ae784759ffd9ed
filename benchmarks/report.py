"""Reporting: machine description, JSON, markdown table and PNG chart."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from benchmarks.config import Config
from benchmarks.peers import TaskqAdapter
from benchmarks.runner import Row
from benchmarks.scenarios import Metric, ScenarioResult
from benchmarks.scenarios._base import calibrate_spin
from benchmarks.targets import Verdict

TIMES = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"
RECORDED_PACKAGES = ("taskq", "loky", "pebble", "mpire", "joblib", "psutil", "matplotlib")


# -- machine --------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    if versions["taskq"] == "missing":
        with contextlib.suppress(ImportError):
            versions["taskq"] = TaskqAdapter.version()
    return versions


def describe_machine(cfg: Config) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu": _cpu_model(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        # The same VM kind has run Python 2.3x slower from one day to the next: this says
        # which kind of day a run had (absolute targets such as latency depend on it).
        "spin_loops_per_ms": calibrate_spin(0.001),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "start_method": cfg.start_method,
        "workers": cfg.workers,
        "packages": _package_versions(),
    }


# -- numbers --------------------------------------------------------------------------------
def _taskq_row(result: ScenarioResult) -> Row | None:
    return next((r for r in result.rows if r.adapter_key == "taskq" and r.status == "ok"), None)


def ratio(result: ScenarioResult, row: Row, metric: Metric) -> float | None:
    """The row's median divided by taskq's median in the same run."""
    base = _taskq_row(result)
    if base is None or row is base or not metric.ratio:
        return None
    ours, theirs = base.median(metric.key), row.median(metric.key)
    if ours is None or theirs is None or ours <= 0:
        return None
    return theirs / ours


def _fmt(value: float, digits: int) -> str:
    if digits == 0 and abs(value) < 10:
        digits = 1 if abs(value) >= 1 else 2
    return f"{value:,.{digits}f}"


# -- JSON -----------------------------------------------------------------------------------
def _row_json(result: ScenarioResult, row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {
        "label": row.label,
        "peer": row.adapter_key or None,
        "reference": row.reference,
        "status": row.status,
        "verified": row.status == "ok",
        "note": row.note,
    }
    if row.error:
        out["error"] = row.error
    if row.extra:
        out["extra"] = row.extra
    for metric in result.metrics:
        summary = row.summary(metric.key)
        if summary is None:
            continue
        med, lo, hi = summary
        out.setdefault("metrics", {})[metric.key] = {
            "median": med,
            "min": lo,
            "max": hi,
            "samples": row.samples[metric.key],
            "ratio_to_taskq": ratio(result, row, metric),
        }
    return out


def to_json(
    results: list[ScenarioResult], verdicts: list[Verdict], machine: dict[str, Any], cfg: Config
) -> dict[str, Any]:
    return {
        "machine": machine,
        "config": cfg.as_dict(),
        "targets": [{"target": v.target, "met": v.met, "measured": v.measured} for v in verdicts],
        "scenarios": [
            {
                "key": r.key,
                "title": r.title,
                "description": r.description,
                "params": r.params,
                "seconds": round(r.seconds, 2),
                "metrics": [
                    {"key": m.key, "label": m.label, "higher_is_better": m.higher_is_better}
                    for m in r.metrics
                ],
                "rows": [_row_json(r, row) for row in r.rows],
            }
            for r in results
        ],
    }


# -- markdown -------------------------------------------------------------------------------
def _cell(row: Row, metric: Metric) -> str:
    summary = row.summary(metric.key)
    if summary is None:
        return DASH
    med, lo, hi = summary
    if lo == hi:
        return _fmt(med, metric.digits)
    return f"{_fmt(med, metric.digits)} ({_fmt(lo, metric.digits)}{DASH}{_fmt(hi, metric.digits)})"


def _scenario_table(result: ScenarioResult) -> list[str]:
    ratio_metrics = [m for m in result.metrics if m.ratio]
    header = ["implementation"]
    for m in result.metrics:
        better = "higher" if m.higher_is_better else "lower"
        header.append(f"{m.label} ({better} is better)" if m.ratio else m.label)
    header += [f"{m.label} {TIMES} taskq" for m in ratio_metrics]
    header.append("notes")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result.rows:
        name = f"*{row.label}* (reference)" if row.reference else row.label
        if row.status != "ok":
            why = row.error or row.note
            cells = [DASH] * (len(result.metrics) + len(ratio_metrics))
            lines.append(f"| {name} | " + " | ".join(cells) + f" | **{row.status}**: {why} |")
            continue
        cells = [_cell(row, m) for m in result.metrics]
        for m in ratio_metrics:
            r = ratio(result, row, m)
            cells.append(DASH if r is None else f"{r:.2f}{TIMES}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row.note} |")
    return lines


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k.replace('_', ' ')} = {v:,}" if isinstance(v, int) else f"{k.replace('_', ' ')} = {v}"
        for k, v in params.items()
    )


def to_markdown(
    results: list[ScenarioResult], verdicts: list[Verdict], machine: dict[str, Any], cfg: Config
) -> str:
    pkgs = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    out = [
        f"# taskq benchmarks ({cfg.mode} run)",
        "",
        f"- date: {machine['date_utc']}",
        f"- machine: {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['cpu']}, load average at start {machine['load_average']}",
        f"- Python {machine['python']} ({machine['platform']})",
        f"- Python speed: {machine.get('spin_loops_per_ms', '?')} iterations of the 1 ms "
        "scenario's busy loop per ms of CPU at the start, "
        f"{machine.get('spin_loops_per_ms_at_end', '?')} at the end "
        "(higher is faster; compare runs with it)",
        f"- start method: {cfg.start_method}; workers: {cfg.workers}; "
        f"repetitions: {cfg.repeat} (interleaved, after a warm-up)",
        f"- packages: {pkgs}",
        "",
        f"Cells: median (min{DASH}max) over the repetitions. {TIMES} taskq = the peer's median "
        "divided by taskq's median from the same run. Every result is verified; a wrong or missing "
        "result is reported as an error, never as a number.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for v in verdicts:
        mark = {True: "✅ met", False: "❌ not met", None: f"{DASH} n/a"}[v.met]
        out.append(f"| {v.target} | {v.measured} | {mark} |")
    for result in results:
        out += ["", f"## {result.title}", "", result.description, ""]
        if result.params:
            out += [f"Parameters: {_params_text(result.params)}.", ""]
        out += _scenario_table(result)
    return "\n".join(out) + "\n"


# -- PNG ------------------------------------------------------------------------------------
def write_png(results: list[ScenarioResult], path: Path, title: str) -> str | None:
    """Grouped horizontal bars per scenario; returns None or why no chart was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    drawable = [r for r in results if any(row.samples for row in r.rows)]
    if not drawable:
        return "no measurements to draw"
    cols = 2
    nrows = (len(drawable) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(15, 3.3 * nrows), squeeze=False)
    for ax, result in zip(axes.flat, drawable, strict=False):
        _draw_scenario(ax, result)
    for ax in list(axes.flat)[len(drawable) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def _draw_scenario(ax: Any, result: ScenarioResult) -> None:
    metrics = [m for m in result.metrics if m.plot]
    rows = [r for r in result.rows if r.status == "ok" and r.samples]
    height = 0.8 / max(1, len(metrics))
    values: list[float] = []
    for i, metric in enumerate(metrics):
        for j, row in enumerate(rows):
            summary = row.summary(metric.key)
            if summary is None:
                continue
            med, lo, hi = summary
            values.append(med)
            ours = row.adapter_key == "taskq"
            ax.barh(
                j + (i - (len(metrics) - 1) / 2) * height,
                med,
                height=height,
                xerr=[[med - lo], [hi - med]],
                color=f"C{i}",
                hatch="//" if ours else None,
                edgecolor="black" if ours else None,
                alpha=0.5 if row.reference else 0.9,
                label=metric.label if j == 0 else None,
            )
            ax.annotate(
                _fmt(med, metric.digits),
                (med, j + (i - (len(metrics) - 1) / 2) * height),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r.label} (ref)" if r.reference else r.label for r in rows], fontsize=8)
    for tick, row in zip(ax.get_yticklabels(), rows, strict=True):
        if row.adapter_key == "taskq":
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_xscale("log")
    better = "higher" if metrics and metrics[0].higher_is_better else "lower"
    ax.set_title(f"{result.title} ({better} is better)", fontsize=9)
    if len(metrics) > 1:
        ax.legend(fontsize=7)
    else:
        ax.set_xlabel(metrics[0].label if metrics else "", fontsize=8)


# -- writing --------------------------------------------------------------------------------
def write_all(
    results: list[ScenarioResult],
    verdicts: list[Verdict],
    machine: dict[str, Any],
    cfg: Config,
    out_dir: Path,
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = cfg.mode
    paths = {
        "json": out_dir / f"{stem}.json",
        "markdown": out_dir / f"{stem}.md",
        "png": out_dir / f"{stem}.png",
    }
    data = to_json(results, verdicts, machine, cfg)
    paths["json"].write_text(json.dumps(data, indent=2, default=str) + "\n")
    paths["markdown"].write_text(to_markdown(results, verdicts, machine, cfg))
    why_not = write_png(
        results, paths["png"], f"taskq benchmarks ({cfg.mode}, {machine['date_utc']})"
    )
    if why_not is not None:
        del paths["png"]
        data["png"] = why_not
        paths["json"].write_text(json.dumps(data, indent=2, default=str) + "\n")
    return paths
