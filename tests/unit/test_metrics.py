"""The worker's Prometheus metrics: what the counters count, when, and who may read them.

Counters of the coordinator move when a batch commits, from what it did; a batch that does not
commit counts nothing. ``/metrics`` is served by the real API on loopback and read with
``prometheus_client``'s own parser.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from processors import Breakers
from processors._errors import ProviderUnavailable
from streams._access import Access
from streams._metrics import Metrics, Tally
from streams.app import _measure_breakers
from streams.coordinator._batch import AtLeastOnceBatch
from streams.coordinator._store import PartitionStore, summary_record
from tests.unit.test_api_approvals import access, auth, runtime, serving, waiting
from tests.unit.test_batch_chain import CATALOG, CODEC, Consumer, Producer
from tests.unit.test_decide import LINEAR, Run, failed, ok, task
from tests.unit.test_store import T0, ended, running
from topics import RunStatus, Usage


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value as a scrape shows it (0 when the sample is not there)."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def drive(run: Run, tally: Tally, event: Any) -> None:
    """Send an event to a run, counting its decision as the coordinator's handler does."""
    decision = run.send(event)
    tenant = decision.state.tenant if decision.state is not None else None
    tally.decision(decision.emit, event, tenant)


def usage(
    cost: str, tokens: tuple[int, int], *, route: str = "fast", cached: bool = False
) -> Usage:
    return Usage(
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost_usd=Decimal(cost),
        route=route,
        cached=cached,
        saved_usd=Decimal(cost) if cached else Decimal(0),
    )


def test_a_batch_counts_runs_attempts_failures_tokens_and_cost_of_what_it_decided() -> None:
    run, tally = Run(LINEAR), Tally()
    drive(run, tally, task(tenant="acme"))
    drive(run, tally, failed(run.request("a"), "ProviderUnavailable", "503", retryable=True))
    drive(run, tally, ok(run.request("a"), "x", usage=usage("0.25", (100, 20))))
    drive(run, tally, ok(run.request("b"), {"said": "x"}))
    drive(run, tally, ok(run.request("c"), "y", usage=usage("0.5", (10, 5), cached=True)))
    (result,) = run.results()
    assert result.status == RunStatus.completed

    metrics = Metrics()
    assert value(metrics, "baton_runs_started_total", workflow="linear") == 0
    metrics.committed(tally, handled=5, seconds=0.02)
    assert value(metrics, "baton_runs_started_total", workflow="linear") == 1
    assert value(metrics, "baton_runs_finished_total", workflow="linear", status="completed") == 1
    assert value(metrics, "baton_step_attempts_total", kind="llm") == 3
    assert value(metrics, "baton_step_attempts_total", kind="transform") == 1
    assert value(metrics, "baton_step_failures_total", error_class="ProviderUnavailable") == 1
    tokens = {"route": "fast", "tenant": "acme"}
    assert value(metrics, "baton_model_tokens_total", type="input", **tokens) == 110
    assert value(metrics, "baton_model_tokens_total", type="output", **tokens) == 25
    assert value(metrics, "baton_model_cost_usd_total", **tokens) == 0.75
    assert value(metrics, "baton_cache_hits_total", route="fast") == 1
    assert value(metrics, "baton_cache_saved_usd_total", route="fast") == 0.5
    assert value(metrics, "baton_coordinator_events_total") == 5
    assert value(metrics, "baton_commit_duration_seconds_count") == 1


def test_workers_in_one_process_keep_their_counts_apart() -> None:
    one, two = Metrics(), Metrics()
    tally = Tally()
    tally.add(("dead_letters", "DecodeError"))
    one.committed(tally, handled=1, seconds=0.01)
    assert value(one, "baton_dead_letters_total", error_class="DecodeError") == 1
    assert value(two, "baton_dead_letters_total", error_class="DecodeError") == 0


class _Refusing(Consumer):
    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        raise RuntimeError("the group rebalanced")


async def test_the_coordinator_counts_a_batch_once_it_committed_and_never_one_that_did_not(
    tmp_path: Path,
) -> None:
    owner = runtime(access(tmp_path))
    loop = owner.loop
    store = PartitionStore(0, 3600)
    for consumer, committed in ((_Refusing(), False), (Consumer(), True)):
        batch = AtLeastOnceBatch(store, CATALOG, CODEC, Producer(), consumer)  # type: ignore[arg-type]
        state = running("r1")
        batch.put("r1", state, state.to_bytes())
        batch.consumed(TopicPartition("chain.tasks", 0), 3)
        batch.tally.add(("runs_started", "w"))
        batch.handled = 1
        assert await loop._commit_one(batch) is committed
    assert value(owner.metrics, "baton_runs_started_total", workflow="w") == 1
    assert value(owner.metrics, "baton_commit_failures_total") == 1
    assert value(owner.metrics, "baton_commit_duration_seconds_count") == 1
    assert value(owner.metrics, "baton_coordinator_events_total") == 1


def test_the_store_knows_the_size_of_what_it_holds() -> None:
    store = PartitionStore(0, 3600)
    one = running("r1")
    _, record = summary_record(1, one, one.to_bytes())
    store.install("r1", 1, one, record)
    assert store.stored_bytes == len(record)
    done = ended(one, RunStatus.completed)
    _, summary = summary_record(2, done, done.to_bytes())
    store.install("r1", 2, done, summary)
    assert store.stored_bytes == len(summary) < len(record)
    store.expire(T0.timestamp() + 7200)
    assert store.stored_bytes == 0


# -- GET /metrics --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer nobody-has-this"}, 401),
        (auth("dana"), 403),  # acts for acme only: the figures are every tenant's
        (auth("alice"), 403),  # the default tenant only
    ],
)
async def test_metrics_need_a_principal_of_every_tenant(
    tmp_path: Path, headers: dict[str, str], status: int
) -> None:
    async with serving(runtime(access(tmp_path))) as client:
        answer = await client.get("/metrics", headers=headers)
    assert answer.status_code == status
    assert "error" in answer.json()


async def test_metrics_are_served_in_the_prometheus_text_format(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path))
    held = waiting("r1")
    assert held.state is not None
    owner.hold(held.state)
    async with serving(owner) as client:
        answer = await client.get("/metrics", headers=auth("root"))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    assert families["baton_runs_started"].type == "counter"
    assert families["baton_commit_duration_seconds"].type == "histogram"
    gauges = {
        name: [s.value for s in families[name].samples]
        for name in ("baton_approvals_open", "baton_runs_in_flight", "baton_partitions_owned")
    }
    assert gauges == {
        "baton_approvals_open": [1.0],
        "baton_runs_in_flight": [1.0],
        "baton_partitions_owned": [4.0],
    }
    (age,) = families["baton_approvals_oldest_age_seconds"].samples
    assert age.value > 0
    assert all(name.startswith("baton_") for name in families)


async def test_metrics_are_refused_without_an_access_file() -> None:
    async with serving(runtime(Access())) as client:
        answer = await client.get("/metrics", headers=auth("root"))
    assert answer.status_code == 401


def test_circuit_breakers_show_their_state_when_scraped() -> None:
    clock = [0.0]
    breakers = Breakers(clock=lambda: clock[0])

    class Model:
        def __init__(self) -> None:
            self.breakers = breakers

    metrics = Metrics()
    _measure_breakers(metrics, [Model(), Model(), object()])  # one set, shared, is shown once
    breakers.before_call("openai:http://a", 2, 5.0)
    breakers.after_call("openai:http://a", 2, None)
    for _ in range(2):
        breakers.before_call("openai:http://b", 2, 5.0)
        breakers.after_call("openai:http://b", 2, ProviderUnavailable("503"))

    def state(endpoint: str) -> dict[str, float]:
        return {
            s: value(metrics, "baton_circuit_breaker_state", endpoint=endpoint, state=s)
            for s in ("closed", "open", "half_open")
        }

    assert state("openai:http://a") == {"closed": 1, "open": 0, "half_open": 0}
    assert state("openai:http://b") == {"closed": 0, "open": 1, "half_open": 0}
    clock[0] = 10.0
    breakers.before_call("openai:http://b", 2, 5.0)  # the cooldown passed: a probe goes out
    assert state("openai:http://b") == {"closed": 0, "open": 0, "half_open": 1}
