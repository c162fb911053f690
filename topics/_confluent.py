"""Schema Registry mode: baton's event schemas in a Confluent-compatible registry.

With ``BATON_SCHEMA_REGISTRY_URL`` set, baton registers the schema of each topic's event under
the TopicNameStrategy subject ``<topic>-value`` (``baton.results-value``), writes the ids the
registry gives, and reads any id it meets by asking the registry (once per id: cached). A
downstream team then reads ``baton.results`` with the standard Avro deserializer of its
Kafka client, and an upstream producer's serializer registers ``TaskSubmitted`` ids baton
reads. Without the setting, the static ids of ``topics/schemas/registry.json`` stay.

Start-up refuses an incompatible registry (``register_schemas``): before anything is
registered, every subject's latest registered schema must be readable by baton's newest
schema of that event (BACKWARD: baton, the reader, reads what was written before), checked
by baton itself as well as by the registry, so a subject left at compatibility ``NONE`` still
cannot start a worker that misreads it. A subject baton creates is set to ``BACKWARD``; a
level ops chose is left alone.

The client speaks the REST API every registry of this family serves (Confluent's, Apicurio's
``/apis/ccompat/v7``, Karapace, Redpanda): a handful of endpoints, through httpx with bounded
retries of transport failures and 5xx answers. The URL may carry credentials
(``https://user:secret@host``, sent as basic auth); messages name the registry without them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from topics._avro import full_name
from topics._catalog import TopicCatalog
from topics._errors import ConfigurationError
from topics._events import Event
from topics._registry import SchemaRegistry, check_reads_old

__all__ = [
    "RegistryClient",
    "RegistryUnavailable",
    "SubjectCheck",
    "check_schemas",
    "register_schemas",
    "subjects",
]

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
#: Confluent's error codes for "no such subject / version / schema".
_NOT_FOUND = {40401, 40402, 40403, 40408}
#: How long an id the registry does not know stays unknown before it is asked again, and how
#: many such ids are remembered: a flood of records with made-up ids costs one request each
#: at most once a minute, not one per record.
_UNKNOWN_FOR = 60.0
_UNKNOWN_MAX = 4096


class RegistryUnavailable(ConfigurationError):
    """The registry could not be reached, or answered with an error baton cannot act on."""


def _redacted(url: httpx.URL) -> str:
    return str(url.copy_with(username=None, password=None))


def _retryable(error: BaseException) -> bool:
    if isinstance(error, httpx.TransportError):
        return True
    return isinstance(error, httpx.HTTPStatusError) and error.response.status_code >= 500


class RegistryClient:
    """A small client of the Confluent Schema Registry REST API.

    Args:
        url: The registry's base URL (``http://host:8081``, or Apicurio's
            ``http://host:8080/apis/ccompat/v7``); credentials in it are sent as basic auth.
        timeout: Seconds per request.
        attempts: Tries per request (transport failures and 5xx answers are retried).
        transport: An httpx transport (tests).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base = httpx.URL(url.rstrip("/") + "/")
        self.name = _redacted(base).rstrip("/")
        auth = None
        if base.username or base.password:
            auth = httpx.BasicAuth(base.username, base.password)
            base = base.copy_with(username=None, password=None)
        self._http = httpx.Client(
            base_url=base,
            auth=auth,
            timeout=timeout,
            headers={"Accept": _CONTENT_TYPE, "Content-Type": _CONTENT_TYPE},
            transport=transport,
        )
        self._attempts = attempts
        self._schemas: dict[int, dict[str, Any]] = {}
        self._unknown: dict[int, float] = {}

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """``(status, parsed body)``; 4xx answers are returned, the rest raised."""
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            retry=retry_if_exception(_retryable),
            reraise=False,
        )
        content = None if body is None else json.dumps(body).encode()
        try:
            for attempt in retrying:
                with attempt:
                    response = self._http.request(method, path, content=content)
                    if response.status_code >= 500:
                        response.raise_for_status()
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise RegistryUnavailable(
                f"schema registry {self.name}: {method} {path} failed after "
                f"{self._attempts} attempts: {type(cause).__name__}: {cause}"
            ) from cause
        try:
            parsed = response.json() if response.content else None
        except ValueError:
            parsed = None
        if response.status_code >= 400 and not isinstance(parsed, dict):
            parsed = {"message": response.text[:200]}
        return response.status_code, parsed

    def _fail(self, what: str, status: int, answer: Any) -> RegistryUnavailable:
        message = answer.get("message") if isinstance(answer, dict) else answer
        return RegistryUnavailable(f"schema registry {self.name}: {what}: {status} {message}")

    @staticmethod
    def _not_found(status: int, answer: Any) -> bool:
        code = answer.get("error_code") if isinstance(answer, dict) else None
        return status == 404 or code in _NOT_FOUND

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (its existing id when already registered).

        Raises:
            ConfigurationError: The registry refused it (409: incompatible), or failed.
        """
        body = {"schema": json.dumps(schema, sort_keys=True)}
        status, answer = self._call("POST", f"subjects/{subject}/versions", body)
        if status == 409:
            raise ConfigurationError(
                f"schema registry {self.name} refuses baton's schema for {subject}: "
                f"{answer.get('message') if isinstance(answer, dict) else answer}"
            )
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
            raise self._fail(f"registering {subject}", status, answer)
        schema_id: int = answer["id"]
        self._schemas[schema_id] = dict(schema)
        return schema_id

    def latest(self, subject: str) -> tuple[int, dict[str, Any]] | None:
        """``(id, schema)`` of the subject's latest version, or ``None`` if it has none."""
        status, answer = self._call("GET", f"subjects/{subject}/versions/latest")
        if self._not_found(status, answer):
            return None
        if status != 200 or not isinstance(answer, dict):
            raise self._fail(f"reading {subject}", status, answer)
        return int(answer["id"]), _parsed_schema(answer, f"{subject} latest")

    def compatibility(self, subject: str) -> str | None:
        """The subject's own compatibility level, or ``None`` when it has none of its own."""
        status, answer = self._call("GET", f"config/{subject}")
        if self._not_found(status, answer):
            return None
        if status != 200 or not isinstance(answer, dict):
            raise self._fail(f"reading the compatibility of {subject}", status, answer)
        level = answer.get("compatibilityLevel", answer.get("compatibility"))
        return str(level) if level is not None else None

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set the subject's compatibility level (``BACKWARD``, ...)."""
        status, answer = self._call("PUT", f"config/{subject}", {"compatibility": level})
        if status != 200:
            raise self._fail(f"setting the compatibility of {subject}", status, answer)

    def is_compatible(self, subject: str, schema: Mapping[str, Any]) -> bool:
        """Whether the registry accepts ``schema`` as the subject's next version."""
        body = {"schema": json.dumps(schema, sort_keys=True)}
        status, answer = self._call(
            "POST", f"compatibility/subjects/{subject}/versions/latest", body
        )
        if self._not_found(status, answer):
            return True  # no version yet: anything is compatible
        if status != 200 or not isinstance(answer, dict):
            raise self._fail(f"checking {subject}", status, answer)
        return bool(answer.get("is_compatible"))

    def schema(self, schema_id: int) -> dict[str, Any] | None:
        """The schema with this id (cached), or ``None`` when the registry has none.

        An unknown id is remembered for a minute, so records with made-up ids cannot turn
        into a request each.

        Raises:
            RegistryUnavailable: The registry cannot be reached or failed.
        """
        known = self._schemas.get(schema_id)
        if known is not None:
            return known
        now = time.monotonic()
        if self._unknown.get(schema_id, 0.0) > now:
            return None
        status, answer = self._call("GET", f"schemas/ids/{schema_id}")
        if self._not_found(status, answer):
            if len(self._unknown) >= _UNKNOWN_MAX:
                self._unknown = {k: v for k, v in self._unknown.items() if v > now}
                if len(self._unknown) >= _UNKNOWN_MAX:
                    self._unknown.clear()
            self._unknown[schema_id] = now + _UNKNOWN_FOR
            return None
        if status != 200 or not isinstance(answer, dict):
            raise self._fail(f"reading schema id {schema_id}", status, answer)
        if answer.get("schemaType", "AVRO") != "AVRO":
            self._unknown[schema_id] = now + _UNKNOWN_FOR
            return None
        schema = _parsed_schema(answer, f"schema id {schema_id}")
        self._schemas[schema_id] = schema
        return schema


def _parsed_schema(answer: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        schema = json.loads(answer["schema"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryUnavailable(f"the registry's {what} is not an Avro schema: {exc}") from exc
    if not isinstance(schema, dict):
        raise RegistryUnavailable(f"the registry's {what} is not an Avro record schema")
    return schema


def schema_name(schema: Mapping[str, Any]) -> str | None:
    """The Avro full name of a record schema (``baton.events.RunResult``)."""
    name = schema.get("name")
    if not isinstance(name, str):
        return None
    namespace = schema.get("namespace")
    return name if "." in name or not isinstance(namespace, str) else f"{namespace}.{name}"


def subjects(catalog: TopicCatalog) -> list[tuple[str, type[Event]]]:
    """``(subject, event type)`` per topic: TopicNameStrategy, the type baton writes there.

    A topic listing older types too (``run-events`` reads single ``RunEvent`` records of
    older releases) registers the first, the one written today.
    """
    return [(f"{topic.name}-value", topic.value_types[0]) for topic in catalog if topic.value_types]


@dataclass(frozen=True)
class SubjectCheck:
    """What the registry holds for one subject, against baton's schema.

    Attributes:
        subject: ``<topic>-value``.
        event: The event type baton writes on that topic.
        registered_id: The id of the subject's latest version (``None``: no version yet).
        same: The latest version is baton's newest schema.
        problem: Why baton's schema cannot follow the latest version (``None``: it can).
    """

    subject: str
    event: type[Event]
    registered_id: int | None
    same: bool
    problem: str | None


def check_schemas(
    client: RegistryClient, catalog: TopicCatalog, registry: SchemaRegistry | None = None
) -> list[SubjectCheck]:
    """Check every subject against baton's newest schemas, registering nothing."""
    released = registry or SchemaRegistry.load()
    checks = []
    for subject, event in subjects(catalog):
        ours = released.latest(full_name(event)).schema
        latest = client.latest(subject)
        if latest is None:
            checks.append(SubjectCheck(subject, event, None, False, None))
            continue
        registered_id, theirs = latest
        problem = _problem(client, subject, ours, theirs)
        checks.append(SubjectCheck(subject, event, registered_id, theirs == ours, problem))
    return checks


def _problem(
    client: RegistryClient, subject: str, ours: dict[str, Any], theirs: dict[str, Any]
) -> str | None:
    if theirs == ours:
        return None
    if schema_name(theirs) != schema_name(ours):
        return (
            f"the latest version is {schema_name(theirs)}, baton writes {schema_name(ours)} "
            "on this topic"
        )
    try:
        check_reads_old(ours, theirs)
    except ConfigurationError as exc:
        return str(exc)
    if not client.is_compatible(subject, ours):
        return "the registry's compatibility rule for the subject refuses baton's schema"
    return None


def register_schemas(
    client: RegistryClient, catalog: TopicCatalog, registry: SchemaRegistry | None = None
) -> dict[type[Event], int]:
    """Register baton's newest schemas; the id of each event type, to write with.

    Nothing is registered unless every subject can take baton's schema.

    Raises:
        ConfigurationError: A subject's registered schema is incompatible with baton's
            (every such subject is named), or the registry refused or failed.
    """
    released = registry or SchemaRegistry.load()
    checks = check_schemas(client, catalog, released)
    problems = [f"{c.subject}: {c.problem}" for c in checks if c.problem]
    if problems:
        raise ConfigurationError(
            f"schema registry {client.name} holds schemas baton's cannot follow "
            f"(BACKWARD): {'; '.join(problems)}"
        )
    ids: dict[type[Event], int] = {}
    for check in checks:
        ours = released.latest(full_name(check.event)).schema
        schema_id = client.register(check.subject, ours)
        if check.registered_id is None and client.compatibility(check.subject) in (None, "NONE"):
            client.set_compatibility(check.subject, "BACKWARD")
        ids.setdefault(check.event, schema_id)
    return ids
