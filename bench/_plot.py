"""The plot: throughput against the baseline, and latency percentiles and histograms."""

from __future__ import annotations

from collections.abc import Callable
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
    measurements = list(report.measurements.values())
    closed = [m for m in measurements if m.kind == "closed_loop" and not m.key.startswith("scale/")]
    opened = [m for m in measurements if m.kind == "open_loop" and m.key.startswith("open/")]
    runs = [m for m in measurements if m.kind == "closed_loop" and m.runs_per_s is not None]
    ramps = [m for m in measurements if m.kind == "inflight" and m.inflight]
    long_runs = [m for m in measurements if m.kind == "long_run" and m.long_runs]
    panels: list[Callable[[Axes], None]] = []
    if any(m.events_per_s is not None for m in closed):
        panels.append(lambda ax: _throughput(ax, closed))
    if runs:
        panels.append(lambda ax: _runs(ax, runs))
    if opened:
        panels.append(lambda ax: _percentiles(ax, opened))
        panels.append(lambda ax: _histograms(ax, opened))
    if ramps:
        panels.append(lambda ax: _ramp(ax, ramps[0]))
    if long_runs:
        panels.append(lambda ax: _long_run(ax, long_runs))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.2 * columns, 5.0 * rows), squeeze=False)
    cells = [ax for row in axes for ax in row]
    for panel, ax in zip(panels, cells, strict=False):
        panel(ax)
    for ax in cells[len(panels) :]:
        ax.set_visible(False)
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


_LABELS = {
    "raw_pipe": "B1 raw pipe",
    "faust_pipe": "B2 bare Faust",
    "langgraph_sqlite": "P1 LangGraph durable",
    "langgraph_memory": "P1 LangGraph in memory",
}


def _label(measurement: Measurement) -> str:
    if measurement.workers is not None:
        return f"T11 {measurement.workers} worker(s)"
    if measurement.subject in _LABELS:
        return _LABELS[measurement.subject]
    return f"baton {measurement.guarantee}"


def _runs(ax: Axes, measurements: list[Measurement]) -> None:
    labels, medians, low, high = [], [], [], []
    for m in measurements:
        assert m.runs_per_s is not None
        labels.append(_label(m))
        medians.append(m.runs_per_s.median)
        low.append(m.runs_per_s.median - m.runs_per_s.min)
        high.append(m.runs_per_s.max - m.runs_per_s.median)
    bars = ax.bar(labels, medians, yerr=[low, high], capsize=6, color="#6a9f58")
    for bar, above in zip(bars, high, strict=True):
        ax.annotate(
            f"{bar.get_height():,.1f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height() + above),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_yscale("log")
    ax.set_title("closed-loop runs/s (T4, P1, T11; log scale)")
    ax.set_ylabel("completed 5-step runs/s")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)


def _ramp(ax: Axes, measurement: Measurement) -> None:
    levels = measurement.inflight
    xs = [level.in_flight for level in levels]
    ax.plot(xs, [level.rate_per_s for level in levels], "o-", label="completed runs/s")
    ax.plot(xs, [level.ideal_rate_per_s for level in levels], "s--", label="ideal runs/s")
    settings = measurement.inflight_settings
    threshold = settings.threshold if settings is not None else 0.9
    ax.plot(
        xs,
        [threshold * level.ideal_rate_per_s for level in levels],
        ":",
        color="grey",
        label=f"{threshold:.0%} of ideal",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("runs in flight")
    ax.set_ylabel("runs/s")
    ax.set_title("T5: runs in flight on an 800 ms long-tail model")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def _long_run(ax: Axes, measurements: list[Measurement]) -> None:
    for m in measurements:
        run = m.long_runs[0]
        points = [(i + 2, v) for i, v in enumerate(run.overhead_ms) if v is not None]
        ax.plot(
            [x for x, _ in points],
            [y for _, y in points],
            _STYLES.get(m.guarantee or "", "-"),
            linewidth=0.8,
            label=f"{m.guarantee} (first run)",
        )
    ax.set_xlabel("step (overhead into it)")
    ax.set_ylabel("ms (broker clock)")
    ax.set_title("T10: step overhead along one 200-step run")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)


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
