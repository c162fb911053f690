"""The topic catalog: names, co-partitioning, configs."""

from __future__ import annotations

import pytest

from topics import (
    LLM_CACHE_RETENTION_MS,
    CacheEntry,
    ConfigurationError,
    RetryTier,
    StepKind,
    TopicCatalog,
)


def test_every_topic_of_the_design_is_in_the_catalog() -> None:
    names = {t.name for t in TopicCatalog()}
    assert names == {
        "baton.tasks",
        *(
            f"baton.steps.{k}"
            for k in ("llm", "tool", "retrieve", "validate", "transform", "agent")
        ),
        "baton.step-results",
        "baton.retry.5s",
        "baton.retry.1m",
        "baton.retry.10m",
        "baton.dead-letter",
        "baton.approvals.requested",
        "baton.approvals.decided",
        "baton.results",
        "baton.run-events",
        "baton.audit-anchors",
        "baton.workflows",
        "baton.control",
        "baton.timers",
        "baton.spend",
        "baton.llm-cache",
        "baton.run-state",
        "baton.run-journal",
        "baton.stream",
    }


def test_prefix_and_partitions_apply_to_every_run_topic() -> None:
    catalog = TopicCatalog(prefix="acme.prod", partitions=6)
    for topic in catalog:
        assert topic.name.startswith("acme.prod.")
        if topic.copartitioned:
            assert topic.partitions == 6 and topic.key == "run id"
    assert catalog.workflows.partitions == 1 and not catalog.workflows.copartitioned


def test_compacted_topics() -> None:
    catalog = TopicCatalog()
    compacted = {t.name for t in catalog if t.cleanup_policy == "compact"}
    assert compacted == {"baton.workflows", "baton.control"}
    # Finished runs are forgotten after the run retention: compacted, and deleted by time.
    assert catalog.run_state.configs()["cleanup.policy"] == "compact,delete"
    assert catalog.run_state.configs()["retention.ms"] == str(7 * 24 * 3600 * 1000)
    short = TopicCatalog(run_retention_s=30)
    assert short.run_state.configs()["retention.ms"] == "30000"
    assert short.run_journal.configs()["retention.ms"] == "30000"
    assert catalog.run_state.configs()["min.cleanable.dirty.ratio"] == "0.1"
    assert catalog.workflows.configs() == {"cleanup.policy": "compact", "retention.ms": "-1"}
    assert catalog.tasks.configs()["retention.ms"] == str(7 * 24 * 3600 * 1000)


def test_the_response_cache_topic_is_compacted_and_expires() -> None:
    catalog = TopicCatalog(prefix="acme", partitions=6)
    cache = catalog.llm_cache
    assert cache.name == "acme.llm-cache" and cache.partitions == 6
    assert not cache.copartitioned and cache.value_types == (CacheEntry,)
    assert cache.configs() == {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(LLM_CACHE_RETENTION_MS),
        "segment.ms": str(24 * 3600 * 1000),
    }
    assert LLM_CACHE_RETENTION_MS == 7 * 24 * 3600 * 1000


def test_only_the_tasks_topic_accepts_json() -> None:
    assert [t.name for t in TopicCatalog() if t.accepts_json] == ["baton.tasks"]


def test_lookups() -> None:
    catalog = TopicCatalog(retry_tiers=(RetryTier("30s", 30), RetryTier("5m", 300)))
    assert catalog.steps(StepKind.llm).name == "baton.steps.llm"
    assert catalog.steps("tool").name == "baton.steps.tool"
    assert catalog.retry("5m").name == "baton.retry.5m"
    assert catalog.by_name("baton.results") is catalog.results
    with pytest.raises(ConfigurationError, match="unknown step kind 'sql'"):
        catalog.steps("sql")
    with pytest.raises(ConfigurationError, match=r"unknown retry tier '1h' \(known: 30s, 5m\)"):
        catalog.retry("1h")
    with pytest.raises(ConfigurationError, match="not a baton topic"):
        catalog.by_name("other.results")


def test_bad_catalogs_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 1"):
        TopicCatalog(partitions=0)
    with pytest.raises(ConfigurationError, match="unique"):
        TopicCatalog(retry_tiers=(RetryTier("5s", 5), RetryTier("5s", 6)))
