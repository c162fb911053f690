"""Step kinds a package adds: the ``baton.processors`` entry-point group.

A package declares a kind in its ``pyproject.toml``::

    [project.entry-points."baton.processors"]
    sentiment = "baton_sentiment:SentimentProcessor"

The entry point's name is the kind (``kind: sentiment`` in a workflow, topic
``<prefix>.steps.sentiment``) and its target a ``CustomProcessor`` subclass, typed by its
parameter model::

    class SentimentParams(BaseModel):
        text: str

    class SentimentProcessor(CustomProcessor[SentimentParams]):
        async def run(self, params: SentimentParams, request: StepRequested) -> JsonValue:
            ...

The coordinator handles a custom step like a built-in one: its ``params:`` are checked
against the model when the workflow is deployed, rendered (templates) at dispatch, counted in
the budgets, gated by approval policies, retried by the step's ``retry:`` policy, bounded by
its ``timeout:`` and recorded in the run events. The processor validates the rendered params
again (``InvalidParams`` when they break the model) and bounds each attempt by its deadline.

Errors say what happens next, as for built-in kinds: raise a ``RetryableError`` (a
``KindUnavailable``, or one of your own subclasses) to have the step tried again, a
``PermanentError`` (``KindFailed``) to fail it. ``classify`` maps a package's own exceptions
onto that tree; anything left unclassified is a bug, reported as ``InternalError`` and not
retried. There is no in-process retry: every retry is a new attempt the coordinator
dispatches, durable and visible in the run events.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

import httpx
from pydantic import BaseModel, JsonValue
from pydantic_core import PydanticCustomError

from processors._errors import KindFailed, KindTimeout, KindUnavailable
from processors._processor import StepOutput, parse_params
from topics import BatonError, ConfigurationError, StepRequested, check_kind

__all__ = [
    "KIND_ENTRY_POINT_GROUP",
    "CustomKindProcessor",
    "CustomProcessor",
    "InstalledKind",
    "KindFailed",
    "KindSetup",
    "KindTimeout",
    "KindUnavailable",
    "installed_kinds",
    "load_kinds",
]

#: The entry-point group custom step kinds are registered under.
KIND_ENTRY_POINT_GROUP = "baton.processors"

_P = TypeVar("_P", bound=BaseModel)


@dataclass(frozen=True)
class KindSetup:
    """What a worker gives the processors of custom kinds when it builds them.

    Attributes:
        http_client: The worker's shared HTTP client (it does not retry on its own, and the
            worker closes it).
        environ: Where secrets and settings are read, e.g. ``os.environ``.
    """

    http_client: httpx.AsyncClient
    environ: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class CustomProcessor(ABC, Generic[_P]):
    """The base of a step kind a package adds, typed by its parameter model ``_P``.

    Subclass it as ``CustomProcessor[MyParams]``: ``params_model`` is taken from the type
    argument. A worker builds one instance per kind with a ``KindSetup`` and calls ``run``
    concurrently for many steps, so keep per-step state in ``run``.

    Attributes:
        params_model: The pydantic model a step's ``params:`` must satisfy, at deploy (the
            fields that hold no template) and again, rendered, in the processor.
        description: One line on what the kind does (shown by the editor schema).
    """

    params_model: ClassVar[type[BaseModel]]
    description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is CustomProcessor:
                (model,) = typing.get_args(base)
                if isinstance(model, type) and issubclass(model, BaseModel):
                    cls.params_model = model

    def __init__(self, setup: KindSetup) -> None:
        self.setup = setup

    @abstractmethod
    async def run(self, params: _P, request: StepRequested) -> StepOutput | JsonValue:
        """Run one attempt of a step.

        Args:
            params: The step's ``params:``, rendered and validated against ``params_model``.
            request: The whole request: ``run_id``, ``attempt``, ``idempotency_key`` (the
                same on every attempt of the step: send it to outside systems), ...

        Returns:
            The step's output (JSON), or a ``StepOutput`` when it also reports usage.

        Raises:
            RetryableError: The step should be tried again (as the retry policy allows).
            PermanentError: Trying again cannot help; the step fails.
        """

    def classify(self, error: Exception) -> BatonError | None:
        """Where an exception ``run`` raised sits in baton's tree; ``None``: it is a bug.

        Baton's own errors are never passed here. Override it to map a library's exceptions
        (a client's timeout to ``KindUnavailable``, say) instead of catching them in ``run``.
        """
        return None


class CustomKindProcessor:
    """Runs the steps of one custom kind: the ``Processor`` a ``CustomProcessor`` becomes.

    Args:
        kind: The kind's name.
        processor: The package's processor.
        clock: Wall time (the deadline is a wall time), replaceable in tests.
    """

    def __init__(
        self,
        kind: str,
        processor: CustomProcessor[Any],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._kind = kind
        self.processor = processor
        self._clock = clock

    @property
    def kind(self) -> str:
        """The custom kind this processor runs."""
        return self._kind

    async def run(self, request: StepRequested) -> StepOutput:
        """Run one attempt within its deadline, classifying what the package raises.

        Raises:
            InvalidParams: The rendered params break the kind's parameter model.
            KindTimeout: The attempt was still running at its deadline.
            BatonError: What the package raised, or ``classify`` made of it.
        """
        params = parse_params(self.processor.params_model, request)
        remaining = (request.deadline_at - self._clock()).total_seconds()
        scope = asyncio.timeout(max(remaining, 0.0))
        try:
            async with scope:
                outcome = await self.processor.run(params, request)
        except BatonError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and scope.expired():
                raise KindTimeout(
                    f"{self._kind} attempt {request.attempt} still running at its deadline"
                ) from None
            classified = self.processor.classify(exc)
            if classified is None:
                raise  # a bug: ``execute`` logs it and reports an InternalError
            raise classified from exc
        return outcome if isinstance(outcome, StepOutput) else StepOutput(outcome)


@dataclass(frozen=True)
class InstalledKind:
    """One custom kind found in the ``baton.processors`` group.

    Attributes:
        name: The kind (the entry point's name).
        processor: The ``CustomProcessor`` subclass it names.
        origin: ``distribution: module:attribute``, for messages.
    """

    name: str
    processor: type[CustomProcessor[Any]]
    origin: str

    def build(self, setup: KindSetup) -> CustomKindProcessor:
        """The processor a worker runs for this kind."""
        return CustomKindProcessor(self.name, self.processor(setup))


def load_kinds(
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> Mapping[str, InstalledKind]:
    """Every custom kind of the ``baton.processors`` group (or of ``entry_points``), loaded.

    Raises:
        ConfigurationError: An entry point is badly named, registered twice, cannot be
            imported, or is not a ``CustomProcessor`` subclass with a parameter model and a
            ``run``; the message names the entry point and its distribution.
    """
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=KIND_ENTRY_POINT_GROUP)
    by_name: dict[str, dict[str, importlib.metadata.EntryPoint]] = {}
    for entry_point in entry_points:
        # The same distribution can be found twice on sys.path; only distinct targets clash.
        by_name.setdefault(entry_point.name, {})[entry_point.value] = entry_point
    kinds: dict[str, InstalledKind] = {}
    for name, candidates in sorted(by_name.items()):
        where = f"entry point {name!r} in group {KIND_ENTRY_POINT_GROUP}"
        if len(candidates) > 1:
            raise ConfigurationError(
                f"{where} is registered more than once ({', '.join(sorted(candidates))})"
            )
        (entry_point,) = candidates.values()
        dist = entry_point.dist.name if entry_point.dist is not None else "unknown distribution"
        origin = f"{dist}: {entry_point.value}"
        try:
            check_kind(name)
        except PydanticCustomError as exc:
            raise ConfigurationError(f"{where} ({origin}): {exc}") from None
        try:
            target = entry_point.load()
        except Exception as exc:  # user code: any import error is a configuration mistake
            raise ConfigurationError(
                f"{where} ({origin}) cannot be loaded: {type(exc).__name__}: {exc}"
            ) from None
        if not (isinstance(target, type) and issubclass(target, CustomProcessor)):
            raise ConfigurationError(f"{where} ({origin}) is not a CustomProcessor subclass")
        if not hasattr(target, "params_model"):
            raise ConfigurationError(
                f"{where} ({origin}) has no parameter model: subclass CustomProcessor[YourParams]"
            )
        if inspect.isabstract(target):
            raise ConfigurationError(f"{where} ({origin}) does not implement run")
        kinds[name] = InstalledKind(name, target, origin)
    return MappingProxyType(kinds)


@cache
def installed_kinds() -> Mapping[str, InstalledKind]:
    """The custom kinds installed in this environment (read once per process).

    Raises:
        ConfigurationError: As ``load_kinds``.
    """
    return load_kinds()
