"""P1, a peer: LangGraph running the same five-step chain, in this process, no network hop.

The graph is the workflow's twin: ``draft`` (the model) -> ``shape`` (wrap the answer) ->
``review`` (the model) -> ``package`` (wrap it) -> ``check`` (the same JSON Schema and rule
as the ``validate`` step, with a compiled ``jsonschema`` validator); its state is a
``TypedDict`` holding each step's output. The model is a plain function returning the same
fixed 1 KB answer as the scripted route ``zero``.

Two subjects, both closed loop: one invocation after the other, each on its own
``thread_id``, timed from the first to the last return:

- ``closed/langgraph_sqlite``: durable, ``SqliteSaver`` on a file in the scratch directory
  (``SqliteSaver.setup`` turns on WAL; ``synchronous`` stays SQLite's default, FULL) and
  ``durability="sync"``: each step's checkpoint is committed before the next step runs,
  as baton commits a run's state before its next step is dispatched;
- ``closed/langgraph_memory``: no checkpointer, the "no durability" line.

The graph runs in a worker thread of the bench process (``asyncio.to_thread``), so its CPU
is the bench process's.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from bench._report import Repetition
from bench._subjects import BENCH_ROLE, Bench, Subject
from bench._workload import PAYLOAD_BYTES, payload

__all__ = [
    "GRAPH_STEPS",
    "PeerState",
    "PeerSubject",
    "build_graph",
    "missing_dependency",
    "model",
    "nodes",
]

#: The graph's nodes, in order (the workflow's steps).
GRAPH_STEPS = ("draft", "shape", "review", "package", "check")

_ANSWER = payload(PAYLOAD_BYTES, seed=3)
_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 4096}


class PeerState(TypedDict, total=False):
    """The graph's state: the input and each step's output."""

    text: str
    draft: str
    shape: dict[str, str]
    review: str
    package: dict[str, str]
    check: str


def missing_dependency() -> str | None:
    """Why P1 cannot run here (LangGraph or its SQLite checkpointer missing), or ``None``."""
    from importlib.util import find_spec

    for module, package in (
        ("langgraph", "langgraph"),
        ("langgraph.checkpoint.sqlite", "langgraph-checkpoint-sqlite"),
    ):
        try:
            found = find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            return f"P1 needs {package}: pip install -e '.[bench]'"
    return None


def model(prompt: str) -> str:
    """The zero-latency model: the route ``zero``'s fixed 1 KB answer, whatever the prompt."""
    return _ANSWER


def nodes() -> dict[str, Callable[[PeerState], PeerState]]:
    """The five steps as LangGraph nodes (each returns its state update)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(_SCHEMA)

    def draft(state: PeerState) -> PeerState:
        return {"draft": model(state["text"])}

    def shape(state: PeerState) -> PeerState:
        return {"shape": {"text": state["draft"], "stage": "shaped"}}

    def review(state: PeerState) -> PeerState:
        return {"review": model(state["shape"]["text"])}

    def package(state: PeerState) -> PeerState:
        return {"package": {"text": state["review"], "stage": "packaged"}}

    def check(state: PeerState) -> PeerState:
        value = state["package"]["text"]
        validator.validate(value)
        if "password" in value:
            raise ValueError("no passwords in replies")
        return {"check": value}

    return {"draft": draft, "shape": shape, "review": review, "package": package, "check": check}


def build_graph(checkpointer: Any | None) -> Any:
    """The compiled graph: the five nodes in a line."""
    from langgraph.graph import END, START, StateGraph

    # Any: LangGraph's node protocols do not accept a plain Callable[[State], State].
    graph: Any = StateGraph(PeerState)
    previous = START
    for name, node in nodes().items():
        graph.add_node(name, node)
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph.compile(checkpointer=checkpointer)


class PeerSubject(Subject):
    """LangGraph, durable (SqliteSaver) or in memory (no checkpointer)."""

    counts_events = False

    def __init__(self, bench: Bench, durable: bool) -> None:
        self.bench = bench
        self.durable = durable
        name = "langgraph_sqlite" if durable else "langgraph_memory"
        self.key = f"closed/{name}"
        self.kind = name
        self.role = BENCH_ROLE
        self.guarantee = "sqlite_sync" if durable else "none"
        self.prefix = f"p1-{'sqlite' if durable else 'memory'}"
        # A sequential in-memory pass is ~10x quicker than baton's; three per round.
        self.passes = 1 if durable else 3
        self.text = payload(PAYLOAD_BYTES)
        self.graph: Any = None
        self.connection: sqlite3.Connection | None = None
        self.database: Path | None = None
        self.notes: list[str] = []

    async def setup(self) -> None:
        checkpointer = None
        if self.durable:
            from langgraph.checkpoint.sqlite import SqliteSaver

            home = self.bench.scratch / self.prefix
            home.mkdir(parents=True, exist_ok=True)
            self.database = home / "checkpoints.sqlite"
            self.connection = sqlite3.connect(self.database, check_same_thread=False)
            checkpointer = SqliteSaver(self.connection)
            checkpointer.setup()
            journal = self.connection.execute("PRAGMA journal_mode").fetchone()[0]
            synchronous = self.connection.execute("PRAGMA synchronous").fetchone()[0]
            self.notes.append(
                f"SqliteSaver on {self.database} (a file on this machine's disk): "
                f"journal_mode={journal}, synchronous={synchronous} (2 = FULL), "
                "durability='sync'"
            )
        else:
            self.notes.append("no checkpointer: nothing survives the process")
        self.graph = build_graph(checkpointer)
        self.notes.append(_versions())

    def report_notes(self) -> list[str]:
        return list(self.notes)

    def _invoke_all(self, thread_ids: list[str]) -> tuple[int, float]:
        """Invoke the graph once per thread id, one after the other; (completed, seconds)."""
        graph = self.graph
        options: dict[str, Any] = {"durability": "sync"} if self.durable else {}
        completed = 0
        started = time.perf_counter()
        for thread_id in thread_ids:
            out = graph.invoke(
                {"text": self.text}, {"configurable": {"thread_id": thread_id}}, **options
            )
            completed += out.get("check") == _ANSWER
        return completed, time.perf_counter() - started

    async def warmup(self, runs: int, label: str = "w") -> None:
        self.warmup_runs += runs
        repetition = await self.closed_loop(runs, label)
        if repetition.completed_runs < runs:
            raise RuntimeError(f"{self.key}: {repetition.completed_runs} of {runs} completed")

    async def closed_loop(self, runs: int, label: str) -> Repetition:
        thread_ids = [f"{self.prefix}-{label}-{i:06d}" for i in range(runs)]
        meter = self.bench.meter()
        meter.start()
        completed, elapsed = await asyncio.to_thread(self._invoke_all, thread_ids)
        cpu = meter.stop()
        elapsed = max(elapsed, 1e-9)
        return Repetition(
            elapsed_s=round(elapsed, 4),
            runs=runs,
            completed_runs=completed,
            events=0,
            runs_per_s=completed / elapsed,
            events_per_s=0.0,
            cpu_percent=cpu,
        )

    async def teardown(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _versions() -> str:
    from importlib import metadata

    names = ("langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found) + f"; SQLite {sqlite3.sqlite_version}"
