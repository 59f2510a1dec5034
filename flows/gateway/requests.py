"""What a request may say, and the plan it asks for.

The bodies are the OpenAI API's, minus what a search cannot honour, plus ttc's own fields (sent as
the client's `extra_body`): `strategy`, `budget`, `settings`. An unknown field is refused, and so is
an API field whose value would be silently ignored (`n` > 1, a stop sequence, `top_p` < 1).
The strategy and budget also ride on the model name: `beam@16`, `majority@8`, `compute-optimal@16`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flows.gateway.errors import ApiError
from graphs import registry
from graphs.registry import SettingsError, UnknownStrategy

COMPUTE_OPTIMAL = "compute-optimal"
GENERIC_MODEL = "ttc"
"""The model name that says nothing: strategy and budget come from the body, or the defaults."""
DEFAULT_STRATEGY = "best_of_n_weighted"
DEFAULT_BUDGET = 16
LISTED_BUDGETS = (4, 8, 16)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class Common(BaseModel):
    """The fields both endpoints take."""

    model_config = ConfigDict(extra="forbid")

    model: str
    n: int | None = None
    temperature: float | None = Field(None, ge=0.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    # ttc's own, from the client's extra_body
    strategy: str | None = None
    budget: int | None = None
    settings: dict[str, Any] | None = None


class ChatRequest(Common):
    messages: list[Message]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None

    def question(self) -> str:
        """The one user message: ttc solves one question per request."""
        if len(self.messages) != 1 or self.messages[0].role != "user":
            roles = ", ".join(m.role for m in self.messages) or "none"
            raise ApiError(
                400,
                f"messages must be exactly one user message (the question to solve), got: {roles}",
                param="messages",
                code="invalid_value",
            )
        content = self.messages[0].content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return content or ""

    def answer_tokens(self) -> int | None:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ApiError(400, "give max_tokens or max_completion_tokens, not both", param="max_completion_tokens")
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(Common):
    prompt: str | list[str]
    echo: bool | None = None
    logprobs: int | None = None

    def question(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, "prompt must be one string (one question per request)", param="prompt")
        return self.prompt[0]

    def answer_tokens(self) -> int | None:
        return self.max_tokens


@dataclass(frozen=True)
class Plan:
    """What a request asks for: a strategy (or the policy) at a budget, with its settings."""

    strategy: str
    budget: int
    values: dict[str, Any]
    """The strategy's settings, budget included; for compute-optimal, what the request adds to the
    plan the policy picks (temperature, token limit)."""

    @property
    def compute_optimal(self) -> bool:
        return self.strategy == COMPUTE_OPTIMAL


def refuse_ignored(request: ChatRequest | CompletionRequest) -> None:
    """Refuse every API field whose value a search would not honour."""
    checks: list[tuple[str, bool, str]] = [
        ("n", request.n not in (None, 1), "n must be 1: a search returns one chosen solution"),
        ("stop", bool(request.stop), "stop sequences are not supported: a solution ends with its answer"),
        ("top_p", request.top_p not in (None, 1.0), "top_p must be 1: the strategies sample with temperature"),
        ("presence_penalty", request.presence_penalty not in (None, 0.0), "presence_penalty must be 0"),
        ("frequency_penalty", request.frequency_penalty not in (None, 0.0), "frequency_penalty must be 0"),
        ("logprobs", bool(request.logprobs), "logprobs are not returned: the answer is a vote, not one sample"),
        ("echo", bool(getattr(request, "echo", None)), "echo is not supported"),
        ("stream_options", request.stream_options is not None and not request.stream, "stream_options needs stream"),
    ]
    for param, bad, message in checks:
        if bad:
            raise ApiError(400, message, param=param, code="unsupported_value")


def plan_of(request: ChatRequest | CompletionRequest, policy_budgets: list[int] | None) -> Plan:
    """The plan a request asks for, its settings validated: a refusal is a 400 naming the field."""
    refuse_ignored(request)
    named, _, suffix = request.model.partition("@")
    from_model = named != GENERIC_MODEL
    if from_model and request.strategy is not None and request.strategy != named:
        raise ApiError(400, f"model {request.model!r} and strategy {request.strategy!r} disagree", param="strategy")
    strategy = request.strategy or (named if from_model else DEFAULT_STRATEGY)
    budget = request.budget
    if suffix:
        try:
            named_budget = int(suffix)
        except ValueError:
            raise ApiError(
                400, f"model {request.model!r}: the budget after @ must be an integer", param="model"
            ) from None
        if budget is not None and budget != named_budget:
            raise ApiError(400, f"model {request.model!r} and budget {budget} disagree", param="budget")
        budget = named_budget
    budget = DEFAULT_BUDGET if budget is None else budget
    param = "model" if suffix or (from_model and request.strategy is None) else "strategy"
    settings = dict(request.settings or {})
    if "budget" in settings:
        raise ApiError(
            400, "settings must not hold the budget: give it as budget or in the model name", param="settings"
        )
    given = {"temperature": request.temperature, "max_answer_tokens": request.answer_tokens()}
    for name, value in given.items():
        if value is None:
            continue
        if name in settings and settings[name] != value:
            raise ApiError(400, f"settings.{name} disagrees with the request's own field", param="settings")
        settings[name] = value
    if strategy == COMPUTE_OPTIMAL:
        return compute_optimal_plan(budget, settings, policy_budgets, given, param)
    try:
        configured = registry.get(strategy).configure({**settings, "budget": budget})
    except UnknownStrategy as error:
        raise ApiError(400, str(error), param=param, code="unknown_strategy") from None
    except SettingsError as error:
        bad = "budget" if "budget" in str(error) else "settings"
        raise ApiError(
            400, str(error), param=param if bad == "budget" else "settings", code="invalid_settings"
        ) from None
    return Plan(strategy, budget, {**settings, "budget": configured.budget})


def compute_optimal_plan(
    budget: int, settings: dict[str, Any], policy_budgets: list[int] | None, given: dict[str, Any], param: str
) -> Plan:
    if policy_budgets is None:
        raise ApiError(400, "compute-optimal needs a policy: start the gateway with --policy FILE", param=param)
    own = {name: value for name, value in given.items() if value is not None}
    if settings != own:
        raise ApiError(400, "compute-optimal takes its settings from the policy: drop settings", param="settings")
    if budget < policy_budgets[0]:
        calibrated = ", ".join(map(str, policy_budgets))
        raise ApiError(
            400, f"budget {budget} is below the policy's smallest calibrated budget ({calibrated})", param=param
        )
    return Plan(COMPUTE_OPTIMAL, budget, own)


def listed_models(policy_budgets: list[int] | None) -> list[str]:
    """The model names `/v1/models` lists: every strategy at a few budgets it accepts, and
    compute-optimal at the policy's calibrated budgets. Any `strategy@N` works, listed or not."""
    names = [GENERIC_MODEL]
    for strategy in registry.all_strategies():
        for budget in LISTED_BUDGETS:
            try:
                strategy.configure({"budget": budget})
            except SettingsError:
                continue
            names.append(f"{strategy.name}@{budget}")
    names += [f"{COMPUTE_OPTIMAL}@{budget}" for budget in policy_budgets or []]
    return names
