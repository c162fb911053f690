"""The report as tables for the terminal (rich): each ratio with its absolute figures."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench._report import Figure, Measurement, Report, Spread, Target

__all__ = ["format_spread", "format_value", "render"]

_VERDICT_STYLE = {
    "meets_stretch": ("meets stretch", "bold green"),
    "meets": ("meets", "green"),
    "misses": ("misses", "bold red"),
    "no_target": ("", "dim"),
    "not_measured": ("not measured yet", "yellow"),
    "failed": ("FAILED", "bold red"),
}


def format_value(value: float, unit: str) -> str:
    """A number the way a person reads it for its unit."""
    if unit == "ratio":
        return f"{value:.2f}"
    if unit == "runs" and float(value).is_integer():
        return f"{value:,.0f}"
    if unit == "events/s" or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_spread(value: Spread, unit: str) -> str:
    """``median [min–max] unit``; a single sample shows alone."""
    median = format_value(value.median, unit)
    suffix = "" if unit == "ratio" else f" {unit}"
    if value.min == value.max:
        return f"{median}{suffix}"
    return f"{median}{suffix} [{format_value(value.min, unit)}–{format_value(value.max, unit)}]"


def _target(target: Target | None, unit: str) -> str:
    if target is None:
        return ""
    sign = "≥" if target.better == "higher" else "≤"
    suffix = "" if unit == "ratio" else f" {unit}"
    text = f"{sign} {format_value(target.goal, unit)}{suffix}"
    if target.stretch is not None:
        text += f" ({format_value(target.stretch, unit)})"
    return text


def _absolute(figure: Figure) -> str:
    return "\n".join(f"{a.label}: {format_spread(a.value, a.unit)}" for a in figure.absolute)


def render(report: Report, console: Console) -> None:
    """Print the figures, what is not measured, the CPU shares and the notes."""
    machine = report.machine
    broker = report.broker
    header = (
        f"{report.settings.mode} run: {machine.cores_logical} cores ({machine.cpu_model}), "
        f"{report.settings.partitions} partitions, median of {report.settings.repetitions} "
        "repetition(s) [min–max]"
    )
    if broker is not None:
        where = "loopback" if broker.loopback else "NOT loopback"
        origin = "started by the bench" if broker.started_by_bench else "BATON_BOOTSTRAP"
        header += f"; broker on {where} ({origin})"
    table = Table(title="baton bench", caption=Text(header), title_justify="left", show_lines=True)
    for column in ("id", "figure", r"median \[min–max]", "target (stretch)", "beside it", ""):
        table.add_column(column, overflow="fold")
    later = Table(title="not measured yet", title_justify="left")
    later.add_column("id")
    later.add_column("figure")
    later.add_column("why")
    for figure in report.figures:
        if figure.status == "not_measured":
            later.add_row(Text(figure.id), Text(figure.name), Text(figure.note or ""))
            continue
        label, style = _VERDICT_STYLE[figure.verdict]
        name = figure.name + (f"\n[{figure.variant}]" if figure.variant else "")
        value = format_spread(figure.value, figure.unit) if figure.value else (figure.note or "")
        beside = _absolute(figure)
        if figure.value is not None and figure.note:
            beside = f"{beside}\n({figure.note})" if beside else f"({figure.note})"
        table.add_row(
            Text(figure.id),
            Text(name),
            Text(value),
            Text(_target(figure.target, figure.unit)),
            Text(beside),
            Text(label, style=style),
        )
    console.print(table)
    console.print(later)
    cpu = Table(title="CPU while measuring (median % of one core)", title_justify="left")
    cpu.add_column("measurement")
    cpu.add_column("processes")
    for key, measurement in report.measurements.items():
        if measurement.cpu:
            shares = ", ".join(f"{c.role} {c.percent.median:.0f}%" for c in measurement.cpu)
            cpu.add_row(Text(key), Text(shares))
    if cpu.rows:
        console.print(cpu)
    for measurement in report.measurements.values():
        if measurement.inflight:
            console.print(_ramp_table(measurement))
    for key, measurement in report.measurements.items():
        crash = measurement.crash
        if crash is not None:
            console.print(
                f"{key}: {crash.runs} runs held; after the restart: ready {_s(crash.ready_s)}, "
                f"next step dispatched {_s(crash.resume_s)}, first result "
                f"{_s(crash.first_result_s)}, last {_s(crash.all_results_s)}; "
                f"{crash.lost} lost, {crash.duplicates} duplicated",
                highlight=False,
            )
        for index, run in enumerate(measurement.long_runs):
            console.print(
                f"{key} run {index + 1}: {run.steps} steps in {run.elapsed_s:.1f} s; median "
                f"overhead first {run.window} {_ms(run.first_ms)}, last {run.window} "
                f"{_ms(run.last_ms)}",
                highlight=False,
            )
    for key, measurement in report.measurements.items():
        if measurement.bytes_per_run:
            total = measurement.bytes_per_run.get("total", 0.0)
            records = measurement.records_per_run.get("total", 0.0)
            console.print(
                f"{key}: {records:.0f} records, {total / 1024:.1f} KiB written per run",
                highlight=False,
            )
        for note in measurement.notes:
            console.print(Text(f"{key}: {note}", style="yellow"))
    for note in report.notes:
        console.print(Text(note, style="yellow"))


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _ramp_table(measurement: Measurement) -> Table:
    """T5's ramp, a row per level."""
    table = Table(title=f"{measurement.key}: runs kept in flight", title_justify="left")
    for column in ("in flight", "runs/s", "ideal runs/s", "share", "mean run", "RSS per run"):
        table.add_column(column, justify="right")
    for level in measurement.inflight:
        table.add_row(
            f"{level.in_flight:,}",
            f"{level.rate_per_s:,.1f}",
            f"{level.ideal_rate_per_s:,.1f}",
            Text(f"{level.fraction:.0%}", style="green" if level.keeps_ideal else "red"),
            f"{level.mean_run_ms:,.0f} ms",
            f"{level.rss_per_run_kib:,.1f} KiB",
        )
    return table
