"""T7: the codec's cost for one ~1 KB event, in one process, no broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bench._report import Measurement
from bench._stats import spread
from bench._workload import PAYLOAD_BYTES, payload
from topics import Codec, StepResult, StepStatus, Usage

__all__ = ["codec_event", "measure_codec"]


def codec_event() -> StepResult:
    """A step result whose output is a 1 KB text: a typical record on the hot path."""
    started = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    return StepResult(
        run_id="bench-run-000001",
        step="draft",
        attempt=1,
        status=StepStatus.ok,
        output=payload(PAYLOAD_BYTES),
        usage=Usage(
            input_tokens=256,
            output_tokens=256,
            cost_usd=Decimal("0.000192"),
            route="zero",
            provider="scripted",
            model="bench-zero",
        ),
        started_at=started,
        finished_at=started + timedelta(microseconds=420),
        worker="bench",
    )


def _per_op_us(operation: Callable[[], object], iterations: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(iterations):
        operation()
    return (time.perf_counter_ns() - started) / iterations / 1000


def measure_codec(repetitions: int, iterations: int) -> Measurement:
    """Microseconds per encode, per decode (with validation) and per round trip.

    Each repetition times ``iterations`` operations in a loop (garbage collection on, as in
    a worker) after a warm-up of the same length.
    """
    codec = Codec()
    event = codec_event()
    data = codec.encode(event)
    if codec.decode(data, StepResult) != event:
        raise AssertionError("the codec does not round-trip the bench event")

    def round_trip() -> object:
        return codec.decode(codec.encode(event), StepResult)

    operations: dict[str, Callable[[], object]] = {
        "encode": lambda: codec.encode(event),
        "decode": lambda: codec.decode(data, StepResult),
        "round_trip": round_trip,
    }
    samples: dict[str, list[float]] = {name: [] for name in operations}
    for operation in operations.values():
        _per_op_us(operation, iterations)
    for _ in range(repetitions):
        for name, operation in operations.items():
            samples[name].append(round(_per_op_us(operation, iterations), 3))
    return Measurement(
        key="micro/codec",
        kind="micro",
        subject="codec",
        micro_us={name: spread(values) for name, values in samples.items()},
        notes=[
            f"event: StepResult with a {PAYLOAD_BYTES}-byte text output, {len(data)} bytes "
            f"encoded; {iterations} operations per repetition"
        ],
    )
