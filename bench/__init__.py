"""baton's benchmark suite (see ``docs/benchmarks.md`` and ``BENCH.md``).

Run it from a source checkout with ``python -m bench [--quick] [--only T4,B1] [--out DIR]``
or ``baton bench``. It starts its own Kafka broker (unless ``BATON_BOOTSTRAP`` is set) and
``baton worker`` subprocesses, and writes one JSON report (``report-<time>.json`` and
``latest.json``) and a PNG plot into ``bench/out``.

Modules: ``_suite`` (what runs, in what order), ``_plan`` (what a selection needs),
``_subjects`` (baton workers and the raw pipe under load), ``_rawpipe`` (B1),
``_faustpipe`` (B2, bare Faust), ``_peer`` (P1, LangGraph), ``_codec`` (T7), ``_schedule``
(open-loop load), ``_latency`` and ``_readback`` (latencies from recorded timestamps; run
events are decoded in ``_readback.run_events_of`` only), ``_overhead`` (T6 and T10 from
them), ``_inflight`` (T5), ``_crash`` (T8), ``_scaling`` (T11), ``_stats`` (percentiles,
histograms), ``_verdicts`` (targets and verdicts), ``_figures``, ``_baseline_figures`` and
``_load_figures`` (the figures), ``_report`` (the JSON schema), ``_summary`` and ``_plot``
(output), ``_cli`` (the command line), ``_processes`` (broker, workers, CPU, memory),
``_kafka`` (topics); for T9 ``_questions`` (the labelled workload, the two models'
answers, the judge), ``_costload`` (its workflows and model catalog), ``_chatserver``
(the loopback model server) and ``_cost`` (the two arms under load).

The public names load lazily, so the pure modules (and their unit tests) do not need the
suite's optional dependencies (psutil, matplotlib, LangGraph).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["MEASURED", "Options", "Report", "main", "parse_only", "run", "run_suite"]

_HOMES = {
    "MEASURED": "bench._plan",
    "Options": "bench._suite",
    "parse_only": "bench._plan",
    "run_suite": "bench._suite",
    "Report": "bench._report",
    "main": "bench._cli",
    "run": "bench._cli",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'bench' has no attribute {name!r}")
    return getattr(import_module(home), name)
