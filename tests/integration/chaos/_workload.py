"""What the fault suite runs: four workflows, their model and tool servers, the expected results.

Every run's result is a function of its task alone, whatever faults happen, so a result that
differs from ``expected(task)`` is a fault's doing. A fault-free batch at the start of each
suite run checks that the function is what baton produces without faults.

The servers are real HTTP on loopback (``tests.fakes``):

- **the model** (OpenAI-compatible) answers after a latency drawn from a log-normal
  distribution (median 120 ms, a tail to 1.5 s) and fails the first call of every ``flaky``
  prompt with a 503, which the coordinator retries after a wait in the 5 s retry tier;
- **the tool** applies an effect once per ``Idempotency-Key``, as a service honouring the
  header does, and counts requests per key and effects per logical call (named in the body):
  a key that changed between two deliveries of one call would show as two effects.
"""

from __future__ import annotations

import math
import random
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.openai_server import ChatAnswer, Delay, ErrorStatus, FakeOpenAIServer
from tests.fakes.openai_server import RecordedRequest as ModelRequest
from tests.fakes.tool_server import Delay as ToolDelay
from tests.fakes.tool_server import FakeToolServer, Json
from tests.fakes.tool_server import RecordedRequest as ToolRequest
from topics import RunResult, RunStatus, TaskSubmitted

#: Every step that fails or times out is tried again after 5 s (the first retry tier), up to
#: 8 times: a step a fault interrupted several times still ends as it would have.
#: Workflow of run ``n``: by ``n % 10``, 4 tool runs, 2 flaky, 2 approvals, 2 budget stops.
KINDS = ("tool",) * 4 + ("flaky",) * 2 + ("approval",) * 2 + ("budget",) * 2

WORKFLOWS = {
    "chaos-tool": """
workflow: chaos-tool
version: 1
steps:
  ask: {kind: llm, model: chat, prompt: "question {{ input.n }}", timeout: 8s,
        retry: {attempts: 8, backoff: {initial: 5s, max: 5s}}}
  act: {kind: tool, after: [ask], tool: effect, timeout: 8s,
        retry: {attempts: 8, backoff: {initial: 5s, max: 5s}},
        args: {call: "act-{{ input.n }}", n: "{{ input.n }}"}}
output: {n: "{{ input.n }}", answer: "{{ steps.ask.output }}", receipt: "{{ steps.act.output }}"}
""",
    "chaos-flaky": """
workflow: chaos-flaky
version: 1
steps:
  ask: {kind: llm, model: chat, prompt: "flaky question {{ input.n }}", timeout: 8s,
        retry: {attempts: 8, backoff: {initial: 5s, max: 5s}}}
  shape: {kind: transform, after: [ask], output: "shaped {{ steps.ask.output }}"}
output: {n: "{{ input.n }}", answer: "{{ steps.shape.output }}"}
""",
    "chaos-approval": """
workflow: chaos-approval
version: 1
steps:
  draft: {kind: llm, model: chat, prompt: "draft {{ input.n }}", timeout: 8s,
          retry: {attempts: 8, backoff: {initial: 5s, max: 5s}}}
  approve: {kind: approval, after: [draft], approvers: [group:leads], timeout: 1h,
            reason: "send draft {{ input.n }}"}
  send: {kind: tool, after: [approve], tool: effect, timeout: 8s,
         retry: {attempts: 8, backoff: {initial: 5s, max: 5s}},
         args: {call: "send-{{ input.n }}", n: "{{ input.n }}"}}
output: {n: "{{ input.n }}", draft: "{{ steps.draft.output }}", receipt: "{{ steps.send.output }}"}
""",
    # The second call's estimate (its max_tokens alone) is over the cap whatever the first
    # one used, so the run stops there with or without faults. The reason names the tokens
    # used and the estimate: prompts of one length make it the same for every run.
    "chaos-budget": """
workflow: chaos-budget
version: 1
budget: {max_tokens: 2000}
steps:
  ask: {kind: llm, model: chat, prompt: "small {{ '%07d' | format(input.n) }}", max_tokens: 50,
        timeout: 8s, retry: {attempts: 8, backoff: {initial: 5s, max: 5s}}}
  long: {kind: llm, after: [ask], model: chat, prompt: "long {{ '%07d' | format(input.n) }}",
         max_tokens: 4000,
         timeout: 8s}
output: "{{ steps.long.output }}"
""",
}

MODELS = """
routes:
  chat:
    provider: openai
    model: chaos-chat
    base_url: {base_url}
    timeout_s: 5
    retries: 0
    input_usd_per_mtok: 0.15
    output_usd_per_mtok: 0.60
"""

TOOLS = """
tools:
  effect:
    kind: http
    description: Applies one effect per idempotency key and returns its receipt.
    base_url: {base_url}
    method: POST
    path: /effects
    body: {{call: "{{{{ args.call }}}}", n: "{{{{ args.n }}}}"}}
    answer: receipt
    timeout_s: 5
    retries: 0
"""

#: The reviewer who approves every request (group ``leads``), and ``ops``, who reads runs.
ACCESS = """
principals:
  ops: {token_env: BATON_TOKEN_OPS, tenants: "*"}
  rita: {token_env: BATON_TOKEN_RITA, groups: [leads], tenants: "*"}
signing_keys:
  k1: {env: BATON_APPROVAL_KEY}
sign_with: k1
worker_key: {env: BATON_WORKER_KEY}
"""
REVIEWER_TOKEN = "chaos-reviewer-token-7f3a"
OPS_TOKEN = "chaos-ops-token-91c2"


def access_env(home: Path) -> dict[str, str]:
    """Workers' environment for the access file (written into ``home``)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "access.yaml").write_text(ACCESS)
    return {
        "BATON_ACCESS_FILE": str(home / "access.yaml"),
        "BATON_TOKEN_OPS": OPS_TOKEN,
        "BATON_TOKEN_RITA": REVIEWER_TOKEN,
        "BATON_TOKEN": OPS_TOKEN,
        "BATON_APPROVAL_KEY": "chaos-signing-key-0123456789abcdef",
        "BATON_WORKER_KEY": "chaos-worker-key-5e1d9b7a3c2f4e60",
    }


def kind_of(n: int) -> str:
    """The workflow kind of run ``n``."""
    return KINDS[n % len(KINDS)]


def task(prefix: str, n: int) -> TaskSubmitted:
    """The task of run ``n``."""
    return TaskSubmitted(task_id=f"{prefix}-{n}", workflow=f"chaos-{kind_of(n)}", input={"n": n})


def reply_to(prompt: str) -> str:
    """The model's answer to a prompt (the same on every call)."""
    return f"answer: {prompt}"


def receipt(call: str) -> str:
    """The tool's receipt for a logical call."""
    return f"receipt {call}"


@dataclass(frozen=True)
class Outcome:
    """What a run's result must be: what a downstream system acts on."""

    status: RunStatus
    output: Any
    reason: str | None

    @classmethod
    def of(cls, result: RunResult) -> Outcome:
        """The outcome a result carries."""
        return cls(result.status, result.output, result.reason)


def expected(n: int, budget_reason: str) -> Outcome:
    """The fault-free outcome of run ``n``.

    ``budget_reason`` is the reason a budget stop gives, read from the fault-free batch (it
    names the cap, the spend and the estimate).
    """
    kind = kind_of(n)
    if kind == "tool":
        output = {"n": n, "answer": reply_to(f"question {n}"), "receipt": receipt(f"act-{n}")}
        return Outcome(RunStatus.completed, output, None)
    if kind == "flaky":
        output = {"n": n, "answer": f"shaped {reply_to(f'flaky question {n}')}"}
        return Outcome(RunStatus.completed, output, None)
    if kind == "approval":
        output = {"n": n, "draft": reply_to(f"draft {n}"), "receipt": receipt(f"send-{n}")}
        return Outcome(RunStatus.completed, output, None)
    return Outcome(RunStatus.budget_exceeded, None, budget_reason)


class ModelScript:
    """The model server's answers: a latency per call, and one 503 for each flaky prompt."""

    def __init__(self, seed: int = 13) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._seed = seed

    def __call__(self, request: ModelRequest) -> Any:
        prompt = str(request.body["messages"][-1]["content"])
        with self._lock:
            self.calls[prompt] += 1
            first = self.calls[prompt] == 1
        rng = random.Random(zlib.crc32(f"{self._seed}/{prompt}/{first}".encode()))
        latency = min(1.5, 0.12 * math.exp(rng.gauss(0.0, 0.7)))
        if first and prompt.startswith("flaky"):
            return Delay(latency, ErrorStatus(503, "the model is overloaded, try again"))
        tokens = len(prompt) // 4 + 1
        return Delay(latency, ChatAnswer(reply_to(prompt), prompt_tokens=tokens))


@dataclass
class ToolLedger:
    """The tool server's books: requests per key, effects per key and per logical call."""

    requests_per_key: Counter[str] = field(default_factory=Counter)
    effects_per_key: Counter[str] = field(default_factory=Counter)
    effects_per_call: Counter[str] = field(default_factory=Counter)
    unkeyed: int = 0
    _answers: dict[str, dict[str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: ToolRequest) -> Any:
        key = request.header("idempotency-key")
        call = str(request.body["call"]) if isinstance(request.body, dict) else "?"
        with self._lock:
            if key is None:
                self.unkeyed += 1
                answer = {"receipt": receipt(call)}
            else:
                self.requests_per_key[key] += 1
                if key not in self._answers:
                    self.effects_per_key[key] += 1
                    self.effects_per_call[call] += 1
                    self._answers[key] = {"receipt": receipt(call)}
                answer = self._answers[key]
        return ToolDelay(0.02, Json(answer))


@dataclass
class Servers:
    """The model and tool servers, started."""

    model: FakeOpenAIServer
    tools: FakeToolServer
    script: ModelScript
    ledger: ToolLedger

    @classmethod
    def start(cls) -> Servers:
        """Start both on free loopback ports."""
        script, ledger = ModelScript(), ToolLedger()
        model = FakeOpenAIServer().start()
        model.reply(script)
        tools = FakeToolServer().start()
        tools.route("POST", "/effects", ledger)
        return cls(model, tools, script, ledger)

    def stop(self) -> None:
        """Stop both."""
        self.model.stop()
        self.tools.stop()

    def write_config(self, home: Path) -> dict[str, str]:
        """Write ``models.yaml`` and ``tools.yaml`` for these servers; the workers' env."""
        home.mkdir(parents=True, exist_ok=True)
        models, tools = home / "models.yaml", home / "tools.yaml"
        models.write_text(MODELS.format(base_url=self.model.base_url))
        tools.write_text(TOOLS.format(base_url=self.tools.url))
        return {"BATON_MODELS_FILE": str(models), "BATON_TOOLS_FILE": str(tools)}
