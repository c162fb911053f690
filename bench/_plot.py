"""The plot: throughput against the baseline, and latency percentiles and histograms."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bench._report import Latency, Measurement, Report

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["write_plot"]

_PERCENTILES = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9"))
_LATENCIES = (
    ("step_overhead", "step overhead (T3)", "C0"),
    ("step_gap", "step gap", "C1"),
    ("run", "run (run events)", "C2"),
    ("end_to_end", "end to end (client)", "C3"),
)
_STYLES = {"at_least_once": "-", "exactly_once": "--"}


def write_plot(report: Report, path: Path) -> Path | None:
    """Write the PNG; ``None`` when there is nothing to plot (no Kafka measurement)."""
    closed = [m for m in report.measurements.values() if m.kind == "closed_loop"]
    opened = [m for m in report.measurements.values() if m.kind == "open_loop"]
    if not closed and not opened:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = int(bool(closed)) + 2 * int(bool(opened))
    figure, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 5.0), squeeze=False)
    row = list(axes[0])
    if closed:
        _throughput(row.pop(0), closed)
    if opened:
        _percentiles(row.pop(0), opened)
        _histograms(row.pop(0), opened)
    stamp = report.started_at.strftime("%Y-%m-%d %H:%M UTC")
    figure.suptitle(
        f"baton bench ({report.settings.mode}), {stamp}, {report.machine.cores_logical} cores, "
        f"{report.settings.partitions} partitions: median of {report.settings.repetitions}, "
        "bars span min-max"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _label(measurement: Measurement) -> str:
    if measurement.subject == "raw_pipe":
        return "B1 raw pipe"
    return f"baton {measurement.guarantee}"


def _throughput(ax: Axes, measurements: list[Measurement]) -> None:
    labels, medians, low, high = [], [], [], []
    for m in measurements:
        if m.events_per_s is None:
            continue
        labels.append(_label(m))
        medians.append(m.events_per_s.median)
        low.append(m.events_per_s.median - m.events_per_s.min)
        high.append(m.events_per_s.max - m.events_per_s.median)
    bars = ax.bar(labels, medians, yerr=[low, high], capsize=6, color="#4878a8")
    shown = [m for m in measurements if m.events_per_s is not None]
    for bar, m, above in zip(bars, shown, high, strict=True):
        runs = m.runs_per_s.median if m.runs_per_s else 0.0
        ax.annotate(
            f"{bar.get_height():,.0f} ev/s\n{runs:,.1f} runs/s",
            (bar.get_x() + bar.get_width() / 2, bar.get_height() + above),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.margins(y=0.18)
    ax.set_title("closed-loop throughput (events/s, 11 per run)")
    ax.set_ylabel("events/s")


def _latency(measurement: Measurement, name: str) -> Latency | None:
    return next((lat for lat in measurement.latencies if lat.name == name), None)


def _percentiles(ax: Axes, measurements: list[Measurement]) -> None:
    for m in measurements:
        for name, title, color in _LATENCIES:
            latency = _latency(m, name)
            if latency is None:
                continue
            ys = [getattr(latency.pooled, attribute) for attribute, _ in _PERCENTILES]
            ax.plot(
                [label for _, label in _PERCENTILES],
                ys,
                _STYLES.get(m.guarantee or "", "-"),
                color=color,
                marker="o",
                label=f"{title}, {m.guarantee}",
            )
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title("open-loop latency percentiles (pooled; solid at-least-once, dashed exactly-once)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def _histograms(ax: Axes, measurements: list[Measurement]) -> None:
    for m in measurements:
        for name, title, color in _LATENCIES[:2]:
            latency = _latency(m, name)
            if latency is None:
                continue
            hist = latency.histogram
            ax.stairs(
                hist.counts,
                hist.edges,
                color=color,
                linestyle=_STYLES.get(m.guarantee or "", "-"),
                label=f"{title}, {m.guarantee}",
            )
    ax.set_xscale("log")
    ax.set_xlim(0.1, 1000)
    ax.set_xlabel("ms (log buckets, 10 per decade)")
    ax.set_ylabel("step transitions")
    ax.set_title("per-step latency histograms")
    ax.legend(fontsize=7)
