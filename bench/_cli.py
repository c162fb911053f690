"""The command line of the suite, shared by ``python -m bench`` and ``baton bench``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from bench._plan import MEASURED, parse_levels, parse_only
from bench._plot import write_plot
from bench._report import Report, write_report
from bench._suite import Options, run_suite
from bench._summary import render

__all__ = ["main", "run", "show"]


def run(options: Options, console: Console | None = None) -> Report:
    """Run the suite, write the report and plot, print the summary."""
    console = console or _console()
    report = run_suite(options, say=lambda line: console.log(line, highlight=False))
    dated, latest = write_report(report, options.out)
    plot = None
    if options.plot:
        plot = write_plot(report, dated.with_suffix(".png"))
        if plot is not None:
            (options.out / "latest.png").write_bytes(plot.read_bytes())
    render(report, console)
    console.print(f"report: {dated} (and {latest})")
    if plot is not None:
        console.print(f"plot:   {plot} (and {options.out / 'latest.png'})")
    return report


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # a log file or a pipe: do not wrap at 80 columns
    return console


def show(path: Path, console: Console | None = None) -> Report:
    """Print the summary of a report written earlier."""
    report = Report.model_validate_json(path.read_text(encoding="utf-8"))
    render(report, console or _console())
    return report


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run baton's benchmarks (BENCH.md) and write one JSON report and a plot.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument(
        "--out", type=Path, default=Options.out, help="output directory (default: bench/out)"
    )
    parser.add_argument(
        "--only", default=None, help=f"comma-separated figures ({','.join(MEASURED)})"
    )
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic")
    parser.add_argument("--repetitions", type=int, default=None, help="measured repetitions")
    parser.add_argument("--runs", type=int, default=None, help="runs per closed-loop repetition")
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per open-loop repetition"
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs per subject")
    parser.add_argument(
        "--load", type=float, default=0.3, help="open-loop rate as a fraction of the maximum"
    )
    parser.add_argument(
        "--tasks", type=int, default=None, help="T9 tasks per question set (default 200)"
    )
    parser.add_argument(
        "--t5-levels",
        default=None,
        metavar="N,N,...",
        help="T5 in-flight levels, increasing (default 25,50,100 quick; 50,...,4000 full)",
    )
    parser.add_argument(
        "--t8-runs",
        type=int,
        default=None,
        help="T8 runs held by the killed worker (default 300 quick, 3000 full)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--show",
        type=Path,
        default=None,
        metavar="REPORT",
        help="print the summary of an existing report (JSON) and exit; runs nothing",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m bench") -> None:
    """Parse arguments and run the suite."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(args_list)
    if args.show is not None:
        show(args.show)
        return
    try:
        only = parse_only(args.only)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    for name in ("partitions", "repetitions", "runs", "warmup"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"error: --{name} must be at least 1")
    if args.tasks is not None and args.tasks < 10:
        raise SystemExit("error: --tasks must be at least 10")
    if not 0 < args.load <= 1:
        raise SystemExit("error: --load must be in (0, 1]")
    if args.t8_runs is not None and args.t8_runs < 1:
        raise SystemExit("error: --t8-runs must be at least 1")
    try:
        levels = parse_levels(args.t5_levels)
    except ValueError as exc:
        raise SystemExit(f"error: --t5-levels: {exc}") from None
    options = Options(
        quick=args.quick,
        out=args.out,
        only=only,
        partitions=args.partitions,
        repetitions=args.repetitions,
        runs=args.runs,
        open_seconds=args.seconds,
        warmup_runs=args.warmup,
        load_fraction=args.load,
        tasks=args.tasks,
        t5_levels=levels,
        t8_runs=args.t8_runs,
        plot=not args.no_plot,
        command=" ".join([prog, *map(shlex.quote, args_list)]),
    )
    run(options)
