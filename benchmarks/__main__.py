"""Command line: ``python -m benchmarks [--quick | --smoke] [options]``.

``taskq bench`` calls :func:`main` with its own arguments.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

from benchmarks.config import SIZES, Config
from benchmarks.peers import ALL_ADAPTERS, PEER_KEYS, Adapter, TaskqAdapter, adapter_class
from benchmarks.report import describe_machine, write_all
from benchmarks.runner import Runner, log_to_stderr
from benchmarks.scenarios import SCENARIO_KEYS, SCENARIOS, ScenarioResult
from benchmarks.scenarios._base import calibrate_spin
from benchmarks.targets import Verdict, evaluate

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"
SMOKE_PEERS = ("ppe",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark taskq against other process pools (interleaved, verified).",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes; under two minutes")
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes, one repetition, taskq + one stdlib peer"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIO_KEYS,
        metavar="NAME",
        help=f"run only this scenario (repeatable); one of: {', '.join(SCENARIO_KEYS)}",
    )
    parser.add_argument(
        "--peers",
        help=f"comma-separated peers to compare with, 'all' or 'none' "
        f"(default: all; --smoke: {','.join(SMOKE_PEERS)}); known: {', '.join(PEER_KEYS)}",
    )
    parser.add_argument(
        "--start-method",
        default="fork",
        choices=multiprocessing.get_all_start_methods(),
        help="multiprocessing start method (default: fork)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument(
        "--repeat", type=int, help="repetitions (default: full 5, quick 3, smoke 1)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"output dir (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--shared-pools",
        action="store_true",
        help="keep every pool open for a whole scenario instead of one fresh, warmed-up pool "
        "per measurement (faster; idle pools' threads then share the parent's GIL)",
    )
    parser.add_argument("--seed", type=int, default=12345, help="seed of the random probe moments")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def choose_peers(spec: str | None, smoke: bool) -> tuple[list[type[Adapter]], dict[str, str]]:
    """Taskq plus the requested peers that are installed; the others with the reason."""
    if spec is None:
        keys = list(SMOKE_PEERS if smoke else PEER_KEYS)
    elif spec.strip() == "all":
        keys = list(PEER_KEYS)
    elif spec.strip() == "none":
        keys = []
    else:
        keys = [k.strip() for k in spec.split(",") if k.strip()]
        unknown = [k for k in keys if k not in PEER_KEYS]
        if unknown:
            raise SystemExit(
                f"unknown peer(s): {', '.join(unknown)}; known: {', '.join(PEER_KEYS)}"
            )
    chosen: list[type[Adapter]] = [TaskqAdapter]
    missing: dict[str, str] = {}
    for key in keys:
        cls = adapter_class(key)
        try:
            cls.version()
        except ImportError as exc:
            missing[key] = f"not installed ({exc}); pip install 'taskq[bench]'"
            continue
        chosen.append(cls)
    order = {cls.key: i for i, cls in enumerate(ALL_ADAPTERS)}
    chosen.sort(key=lambda cls: order[cls.key])
    return chosen, missing


def _taskq_problem() -> str | None:
    try:
        import taskq

        taskq.Pool  # noqa: B018 - the attribute must exist
    except Exception as exc:
        return f"taskq is not importable: {type(exc).__name__}: {exc}"
    return None


def _summarise(
    results: list[ScenarioResult], paths: dict[str, Path], verdicts: list[Verdict]
) -> int:
    errors = [
        f"{r.key}: {row.label}: {row.error}"
        for r in results
        for row in r.rows
        if row.status == "error"
    ]
    met = sum(1 for v in verdicts if v.met)
    judged = sum(1 for v in verdicts if v.met is not None)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    print(f"targets met: {met}/{judged} evaluated ({len(verdicts)} defined)")
    for line in errors:
        print(f"ERROR {line}")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for cls in SCENARIOS:
            print(f"{cls.key:14} {cls.title}")
        return 0
    problem = _taskq_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = SIZES[mode]
    adapters, missing = choose_peers(args.peers, args.smoke)
    cfg = Config(
        mode=mode,
        sizes=sizes,
        workers=max(1, args.workers),
        start_method=args.start_method,
        repeat=max(1, args.repeat or sizes.repeat),
        adapters=adapters,
        missing=missing,
        seed=args.seed,
        shared_pools=args.shared_pools,
    )
    machine = describe_machine(cfg)
    runner = Runner(cfg.repeat, sizes.trial_budget_s, log_to_stderr)
    selected = [s for s in SCENARIOS if not args.scenario or s.key in args.scenario]
    results: list[ScenarioResult] = []
    started = time.perf_counter()
    for cls in selected:
        log_to_stderr(f"[{time.perf_counter() - started:6.1f}s] {cls.key}: {cls.title}")
        results.append(cls().run(cfg, runner))
    log_to_stderr(f"[{time.perf_counter() - started:6.1f}s] done")
    machine["total_seconds"] = round(time.perf_counter() - started, 1)
    # A second reading tells whether the VM's speed changed during the run.
    machine["spin_loops_per_ms_at_end"] = calibrate_spin(0.001)
    verdicts = evaluate({r.key: r for r in results})
    paths = write_all(results, verdicts, machine, cfg, args.output)
    return _summarise(results, paths, verdicts)


if __name__ == "__main__":
    sys.exit(main())
