"""Configuration, read in one place.

Every setting comes from the environment (``BATON_<FIELD>``) or from a YAML file named by
``BATON_CONFIG`` (environment wins). Values are validated when they are read; a bad value
fails at start with an error naming the field and where it came from.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from processors import DEFAULT_CLAIM_THRESHOLD, Claims, installed_kinds
from streams._blobs import open_blob_store
from streams.workflow import parse_duration
from topics import (
    DEFAULT_RUN_RETENTION_S,
    LLM_CACHE_RETENTION_MS,
    Codec,
    ConfigurationError,
    RetryTier,
    TopicCatalog,
    load_yaml,
)
from topics._confluent import RegistryClient, register_schemas

__all__ = ["Settings", "load_settings"]

_ENV_PREFIX = "BATON_"


def _default_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "baton"


class Settings(BaseModel):
    """Settings for every baton command and worker.

    Attributes:
        bootstrap: Kafka bootstrap servers (``host:port,...``). ``None`` means the local
            development broker started by ``baton kafka up``.
        topic_prefix: Prefix of every topic name (``<prefix>.tasks``, ...).
        partitions: Partition count shared by every co-partitioned topic (all topics keyed by
            run id). Fixed once the topics exist: it decides which worker owns a run.
        replication_factor: Replicas per topic. ``None`` means ``min(3, brokers in the cluster)``.
        home: Directory for local state: the development broker's data and pid, worker stores.
        kafka_version: Apache Kafka version the local development broker runs.
        kafka_heap: Maximum JVM heap of each local development broker node (``512m``, ``1g``).
        worker_id: This worker's name; it names its local store directory, so it must be
            unique per worker on a machine and stable across restarts (recovery is faster).
        processing_guarantee: ``exactly_once`` (Kafka transactions: the coordinator's state
            change and the events it emits commit together) or ``at_least_once``.
        commit_interval: Seconds a coordinator batch gathers transitions before it commits
            (one Kafka transaction under ``exactly_once``): longer means fewer records and
            transactions, shorter means a step's request is visible sooner. Processors
            commit their offsets at least this often.
        flush_interval: Seconds between the coordinator's flushes of each partition's runs
            to the compacted ``run-state`` topic. A takeover reads the journal written since
            the last flush, so shorter means faster takeovers, longer fewer writes.
        run_retention: How long a finished run is remembered (``7d``, ``12h``, or seconds):
            within it, a task with the run's id starts nothing; after it, the run is
            forgotten by the workers and by the broker, and the id may start a new run.
        stop_grace: Seconds a stopping worker (SIGTERM) lets the steps it is running
            finish before it hands the rest back to their coordinators.
        session_timeout: Seconds after which a silent worker is declared dead and its
            partitions move to the others. A worker restarted under the same ``worker_id``
            takes its partitions back at once (static group membership).
        web_host: Interface the HTTP API listens on.
        web_port: Port of the HTTP API (and the approval inbox).
        api_url: Where commands reach a worker's HTTP API; default ``http://127.0.0.1:<web_port>``.
        models_file: The model catalog (``models.yaml``); unset, there are no model routes
            and ``llm`` steps fail with ``UnknownRoute``.
        tools_file: The tool registry (``tools.yaml``): HTTP and python tools, retrieval
            sources. Unset, ``tool`` and ``retrieve`` steps have nothing to call.
        processor_concurrency: Steps one processor kind runs at once in one worker.
        retry_tiers: The delayed-retry tiers, shortest first (``5s,1m,10m``): each is a
            topic whose requests wait that long before they run again.
        policies_file: Organisation-wide policies (``policies.yaml``): approval gates, ...
        access_file: Principals (bearer tokens -> identity, groups and tenants), the keys
            approval decisions are signed with, and the workers' own key (``access.yaml``).
        approval_webhook: A URL told (POST, JSON) about every approval request and escalation.
        cache_ttl: Seconds a model answer in the response cache is served for repeated
            calls (temperature 0, steps that did not opt out), shared by every worker
            through the ``llm-cache`` topic. ``0`` turns the cache off. At most 7 days, how
            long the topic keeps entries.
        tracing: ``off``, or ``otlp``: OpenTelemetry traces, one per run, exported over
            OTLP/HTTP to where the ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` variables say.
        tracing_content: Put prompts, completions and tool arguments and results in spans
            (they may hold personal data; off by default).
        schema_registry_url: A Confluent-compatible Schema Registry (Apicurio's is under
            ``/apis/ccompat/v7``): baton registers its schemas under ``<topic>-value`` at
            start, writes the registry's ids and reads ids through it. Unset, the static ids
            of ``topics/schemas/registry.json`` are used. Credentials may be in the URL.
        blob_store: Claim checks (docs/payloads.md): where payloads over
            ``claim_threshold`` are kept, every worker naming the same store: a directory
            (a path or ``file:///...``) or a bucket (``s3://bucket/prefix``; credentials from
            the usual ``AWS_*`` variables). Unset, claim checks are off and a payload that
            does not fit in a record fails its step or run.
        blob_endpoint_url: The S3 API's address for an ``s3://`` store that is not AWS
            (MinIO, Ceph, ...).
        claim_threshold: Bytes of JSON above which a payload (task input, step output or
            parameters, run state) travels as a reference to the blob store.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str | None = None
    topic_prefix: str = Field(default="baton", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    partitions: int = Field(default=12, ge=1, le=1024)
    replication_factor: int | None = Field(default=None, ge=1, le=7)
    home: Path = Field(default_factory=_default_home)
    kafka_version: Literal["3.9.1"] = "3.9.1"
    kafka_heap: str | None = Field(default=None, pattern=r"^[1-9][0-9]*[kKmMgG]$")
    worker_id: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9_.-]+$")
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    commit_interval: float = Field(default=0.05, gt=0, le=60)
    flush_interval: float = Field(default=5.0, gt=0, le=3600)
    run_retention: Annotated[float, BeforeValidator(parse_duration)] = Field(
        default=DEFAULT_RUN_RETENTION_S, ge=1
    )
    stop_grace: float = Field(default=10.0, ge=0, le=600)
    session_timeout: float = Field(default=15.0, ge=6, le=300)
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    api_url: str | None = None
    models_file: Path | None = None
    tools_file: Path | None = None
    processor_concurrency: int = Field(default=256, ge=1, le=10_000)
    policies_file: Path | None = None
    access_file: Path | None = None
    approval_webhook: str | None = Field(default=None, pattern=r"^https?://")
    cache_ttl: float = Field(default=86_400.0, ge=0, le=LLM_CACHE_RETENTION_MS / 1000)
    retry_tiers: str = Field(
        default="5s,1m,10m", pattern=r"^\s*\d+(ms|s|m|h)\s*(,\s*\d+(ms|s|m|h)\s*)*$"
    )
    tracing: Literal["off", "otlp"] = "off"
    tracing_content: bool = False
    schema_registry_url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+")
    blob_store: str | None = Field(default=None, min_length=1)
    blob_endpoint_url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+")
    claim_threshold: int = Field(default=DEFAULT_CLAIM_THRESHOLD, ge=1024, le=512 * 1024)

    @field_validator("retry_tiers")
    @classmethod
    def _increasing(cls, value: str) -> str:
        delays = [_seconds(part) for part in value.split(",")]
        if delays != sorted(set(delays)):
            raise ValueError("retry tiers must be increasing, without repeats")
        return ",".join(part.strip() for part in value.split(","))

    def tiers(self) -> tuple[RetryTier, ...]:
        """The delayed-retry tiers."""
        return tuple(RetryTier(part, _seconds(part)) for part in self.retry_tiers.split(","))

    @property
    def api(self) -> str:
        """Base URL of a worker's HTTP API."""
        return (self.api_url or f"http://127.0.0.1:{self.web_port}").rstrip("/")

    def catalog(self) -> TopicCatalog:
        """The topic catalog these settings describe, with the custom kinds installed here.

        Raises:
            ConfigurationError: An installed custom kind cannot be loaded (its entry point).
        """
        return TopicCatalog(
            prefix=self.topic_prefix,
            partitions=self.partitions,
            retry_tiers=self.tiers(),
            run_retention_s=self.run_retention,
            custom_kinds=tuple(installed_kinds()),
        )

    def codec(self) -> Codec:
        """The codec these settings describe: with a schema registry, registered in it.

        Raises:
            ConfigurationError: The registry is unreachable, or holds a schema baton's
                cannot follow (``topics._confluent.register_schemas``).
        """
        if self.schema_registry_url is None:
            return Codec()
        client = RegistryClient(self.schema_registry_url)
        try:
            ids = register_schemas(client, self.catalog())
        except ConfigurationError as exc:
            client.close()
            raise ConfigurationError(f"schema_registry_url: {exc}") from None
        return Codec(remote=(client, ids))

    def claims(self) -> Claims | None:
        """The claim checks these settings describe; ``None`` when ``blob_store`` is unset.

        Raises:
            ConfigurationError: ``blob_store`` names no usable store.
        """
        if self.blob_store is None:
            return None
        store = open_blob_store(self.blob_store, endpoint_url=self.blob_endpoint_url)
        return Claims(store, self.claim_threshold)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text: str) -> float:
    text = text.strip()
    unit = "ms" if text.endswith("ms") else text[-1]
    return float(text[: -len(unit)]) * _UNITS[unit]


def _from_environment(environ: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Map field name -> (raw value, source) for every ``BATON_<FIELD>`` variable."""
    found: dict[str, tuple[str, str]] = {}
    for field in Settings.model_fields:
        name = _ENV_PREFIX + field.upper()
        if name in environ and environ[name] != "":
            found[field] = (environ[name], f"environment variable {name}")
    return found


def _from_file(path: Path) -> dict[str, tuple[Any, str]]:
    try:
        loaded = load_yaml(path.read_text(encoding="utf-8"), origin=str(path))
    except OSError as exc:
        raise ConfigurationError(f"cannot read configuration file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"configuration file {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigurationError(f"configuration file {path} must hold a mapping of settings")
    return {str(key): (value, f"{path}") for key, value in loaded.items()}


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Read and validate the settings.

    Args:
        environ: The environment to read (defaults to ``os.environ``).
        **overrides: Values that win over both the environment and the file (e.g. CLI flags).

    Raises:
        ConfigurationError: A value is invalid; the message names the field and its source.
    """
    env = dict(os.environ if environ is None else environ)
    values: dict[str, tuple[Any, str]] = {}
    config_file = env.get(_ENV_PREFIX + "CONFIG")
    if config_file:
        values.update(_from_file(Path(config_file)))
    values.update(_from_environment(env))
    values.update({k: (v, "command-line option") for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate({k: _coerce(v) for k, (v, _) in values.items()})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            source = values.get(field, (None, "defaults"))[1]
            problems.append(f"{field} ({source}): {error['msg']}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None


def _coerce(value: Any) -> Any:
    """Environment values are strings; JSON-looking ones (lists, objects) are parsed."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
