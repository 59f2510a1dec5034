"""The HTTP side of the gateway: OpenAI's routes over the solver, a bearer token, a body size limit,
a per-request timeout, a search that stops when its client disconnects, and streamed progress."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flows.gateway.errors import ApiError, refused
from flows.gateway.requests import ChatRequest, CompletionRequest, Plan, listed_models, plan_of
from flows.gateway.solver import Control, SearchStopped, Solved, Solver
from flows.service.solving import check_question
from graphs.runner import SolveError, StepEvent

POLL_SECONDS = 0.1
"""How often a waiting request looks for its client having gone."""


@dataclass(frozen=True)
class GatewaySettings:
    token: str | None = None
    """The bearer token every request must carry; None: no token needed. Held in memory only."""
    timeout: float = 300.0
    """Seconds a request may take, queue included; then its search is stopped and it gets a 504."""
    max_request_bytes: int = 256 * 1024


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


class Guard:
    """In front of every route but /health: 401 without the bearer token (when one is set), 413 for a
    body over `limit` bytes, by its Content-Length or, when it has none, as it arrives."""

    def __init__(self, app: ASGIApp, token: str | None, limit: int) -> None:
        self.app, self.limit = app, limit
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            message = "a valid bearer token is required (the gateway was started with TTC_GATEWAY_TOKEN)"
            await error_response(ApiError(401, message, code="invalid_api_key"))(scope, receive, send)
            return
        too_large = ApiError(
            413, f"request body over the gateway's limit of {self.limit} bytes", code="request_too_large"
        )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await error_response(too_large)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large  # the app's handler answers it in the API's shape
            return message

        await self.app(scope, counted, send)


def create_app(solver: Solver, settings: GatewaySettings) -> ASGIApp:
    """The gateway's ASGI app over `solver`."""
    app = FastAPI(title="ttc gateway", docs_url=None, redoc_url=None, openapi_url=None)
    policy_budgets = solver.policy.budgets if solver.policy is not None else None

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(ApiError(error.status_code, str(error.detail), code=None))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "in_flight": solver.in_flight, "policy": solver.policy is not None}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        created = int(time.time())
        names = listed_models(policy_budgets)
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "ttc"} for name in names],
        }

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        """Any name a request may give as its model: listed or not (`beam@32`), refused as a request would be."""
        try:
            plan_of(ChatRequest(model=name, messages=[]), policy_budgets)
        except ApiError as error:
            raise ApiError(404, f"no model {name!r}: {error.message}", param="model", code="model_not_found") from None
        return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "ttc"}

    async def answered(request: Request, kind: type[ChatRequest] | type[CompletionRequest]) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, f"the request body is not JSON: {error}", code="invalid_json") from None
        try:
            parsed = kind.model_validate(body)
        except ValidationError as error:
            raise refused(error) from None
        question = parsed.question()
        try:
            check_question(question)  # empty, a NUL character, too long: refused before any search
        except ValueError as error:
            raise ApiError(400, str(error), param="messages" if kind is ChatRequest else "prompt") from None
        plan = plan_of(parsed, policy_budgets)
        reply = Reply(parsed, plan, chat=kind is ChatRequest)
        if parsed.stream:
            return StreamingResponse(
                streamed(request, solver, question, plan, parsed.seed, reply, settings.timeout),
                media_type="text/event-stream",
            )
        control = Control()
        solved = await waited(request, solver.submit(question, plan, control, parsed.seed), control, settings.timeout)
        return JSONResponse(reply.complete(solved))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await answered(request, ChatRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await answered(request, CompletionRequest)

    return Guard(app, settings.token, settings.max_request_bytes)


async def waited(request: Request, future: Future[Solved], control: Control, timeout: float) -> Solved:
    """The solve's result; stops the search when the client disconnects or the timeout passes."""
    waiting = asyncio.wrap_future(future)
    deadline = time.monotonic() + timeout
    try:
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=POLL_SECONDS)
            if waiting.done():
                break
            if await request.is_disconnected():
                control.stop("the client disconnected")
                raise ApiError(499, "the client disconnected", code="client_disconnected")
            if time.monotonic() > deadline:
                control.stop(f"the request ran past the gateway's timeout of {timeout:g} s")
                raise ApiError(504, f"the search ran past the gateway's timeout of {timeout:g} s", code="timeout")
    finally:
        if not waiting.done():  # cancelled (the server stopping): the search stops with the request
            control.stop("the request was cancelled")
    return result_of(waiting)


def result_of(done: asyncio.Future[Solved]) -> Solved:
    """A finished solve's result, its failure turned into the API's error shape."""
    try:
        return done.result()
    except (SearchStopped, SolveError) as error:
        raise ApiError(500, f"the search failed: {error} (the trace so far is stored)", code="search_failed") from None
    except ValueError as error:  # settings or a question the solve service refused
        raise ApiError(400, str(error), code="invalid_value") from None
    except Exception as error:  # an engine or the database failed: the API's shape, not a bare 500 page
        raise ApiError(500, f"the search failed: {type(error).__name__}: {error}", code="search_failed") from None


class Reply:
    """Builds the API's response objects for one request, chat or legacy completion."""

    def __init__(self, request: ChatRequest | CompletionRequest, plan: Plan, *, chat: bool) -> None:
        self.request, self.plan, self.chat = request, plan, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.request.model}

    def complete(self, solved: Solved) -> dict[str, Any]:
        text = content_of(solved)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self.head(kind), "choices": [choice], "usage": usage_of(solved), "ttc": ttc_fields(solved)}

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        if self.chat:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta.get("content", ""), "finish_reason": finish, "logprobs": None}
            kind = "text_completion"
        return sse({**self.head(kind), "choices": [choice], **extra})

    def usage_chunk(self, solved: Solved) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return sse({**self.head(kind), "choices": [], "usage": usage_of(solved)})


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def content_of(solved: Solved) -> str:
    """The chosen solution, whole; the bare answer where the strategy chose no candidate's text."""
    return solved.outcome.solution or solved.outcome.answer or ""


def usage_of(solved: Solved) -> dict[str, int]:
    """Every token the search spent: what its engines read (prompts, the PRM's inputs) and wrote."""
    total = solved.spend.tokens
    completion = min(solved.generated_tokens, total)
    return {"prompt_tokens": total - completion, "completion_tokens": completion, "total_tokens": total}


def ttc_fields(solved: Solved) -> dict[str, Any]:
    """ttc's own fields: where the trace is (`ttc trace RUN_ID`), what the search spent, the vote."""
    outcome = solved.outcome
    fields: dict[str, Any] = {
        "run_id": outcome.run_id,
        "solve_id": outcome.solve_id,
        "problem_key": outcome.problem_key,
        "strategy": outcome.strategy,
        "settings": outcome.settings,
        "answer": outcome.answer,
        **outcome.spend.as_dict(),
        "seconds": outcome.seconds,
        "votes": outcome.votes,
    }
    if solved.difficulty is not None:
        difficulty = solved.difficulty
        fields["compute_optimal"] = {
            **solved.chosen,
            "difficulty_solve_id": difficulty.solve_id,
            **{f"difficulty_{name}": value for name, value in difficulty.spend.as_dict().items()},
        }
    return fields


def progress_of(event: StepEvent) -> dict[str, Any]:
    return {
        "round": event.round,
        "node": event.node,
        "generations": event.spend.generations,
        "tokens": event.spend.tokens,
        "candidates": len(event.new),
    }


async def streamed(
    request: Request, solver: Solver, question: str, plan: Plan, seed: int | None, reply: Reply, timeout: float
) -> AsyncIterator[str]:
    """Server-sent events: the role, a progress chunk per node execution of the search (its round,
    node and spend in `ttc.progress`, an empty delta), the solution, the finish, usage if asked, [DONE].
    A client that goes away cancels this generator, and that stops the search."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[StepEvent] = asyncio.Queue()

    def queued(event: StepEvent) -> None:  # called on the solve's thread
        loop.call_soon_threadsafe(events.put_nowait, event)

    control = Control(on_step=queued)
    waiting = asyncio.wrap_future(solver.submit(question, plan, control, seed))
    deadline = time.monotonic() + timeout
    try:
        yield reply.chunk({"role": "assistant", "content": ""} if reply.chat else {})
        while not waiting.done() or not events.empty():
            getting: asyncio.Future[Any] = asyncio.ensure_future(events.get())
            await asyncio.wait(
                {getting, waiting}, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
            )
            if getting.done():
                yield reply.chunk({}, ttc={"progress": progress_of(getting.result())})
            else:
                getting.cancel()
            if not waiting.done() and time.monotonic() > deadline:
                control.stop(f"the request ran past the gateway's timeout of {timeout:g} s")
                error = ApiError(504, f"the search ran past the gateway's timeout of {timeout:g} s", code="timeout")
                yield sse(error.body())
                return
        try:
            solved = result_of(waiting)
        except ApiError as error:
            yield sse(error.body())
            return
        yield reply.chunk({"content": content_of(solved)})
        yield reply.chunk({}, "stop", ttc=ttc_fields(solved))
        options = reply.request.stream_options
        if options is not None and options.include_usage:
            yield reply.usage_chunk(solved)
        yield "data: [DONE]\n\n"
    finally:
        if not waiting.done():
            control.stop("the client disconnected")
