"""The `openai:` proposer against a real OpenAI-compatible completions server on 127.0.0.1.

The server is written here (FastAPI + uvicorn in a background thread) and backed by `HFProposer` on
the tiny random-weight model, answering as vLLM's server does: choices ordered prompt-major,
`finish_reason` / `stop_reason`, per-token logprobs and `usage`. Switches make it misbehave the ways
real servers do: fail the first k requests with 503, hang, ignore `n`, leave the stop string in the
text, omit logprobs, not list its models. It counts requests and the most it had in flight.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from ttc_nodes.engines import Completion, EngineError, TransientEngineError, load_proposer, masked_uri
from ttc_nodes.engines.hf import HFProposer
from ttc_nodes.engines.openai import OpenAIProposer, parse_location

MODEL = "org/tiny-lm"
CONTEXT = 64  # the server refuses max_tokens above this, as vLLM refuses requests past its context
PROMPTS = ["\\boxed{3", "3+3+3+3", "+", "Question: 1+2?\nSolution:\n1+1\n\n"]


@dataclass
class Behaviour:
    fail_first: int = 0  # answer 503 to this many requests
    hang: float = 0.0  # seconds to sleep before answering (longer than the client's timeout)
    delay: float = 0.0  # seconds every request takes, so concurrent requests overlap
    ignore_n: bool = False  # llama.cpp / ollama: one choice per prompt whatever n asks
    stop_in_text: bool = False  # leave the stop string in the text and send no stop_reason
    logprobs: bool = True
    list_models: bool = True
    bodies: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


def completions_app(engine: HFProposer, behaviour: Behaviour) -> FastAPI:
    app = FastAPI()
    lock = threading.Lock()

    @app.get("/v1/models")
    def models() -> Any:
        if not behaviour.list_models:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    @app.post("/v1/completions")
    def completions(body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008 (FastAPI's way to take a JSON body)
        with lock:
            behaviour.bodies.append(body)
            failing = len(behaviour.bodies) <= behaviour.fail_first
            behaviour.in_flight += 1
            behaviour.max_in_flight = max(behaviour.max_in_flight, behaviour.in_flight)
        try:
            time.sleep(behaviour.delay + behaviour.hang)
            if failing:
                return JSONResponse({"error": {"message": "injected failure", "code": 503}}, status_code=503)
            return answer(body)
        finally:
            with lock:
                behaviour.in_flight -= 1

    def answer(body: dict[str, Any]) -> Any:
        if body.get("model") != MODEL:
            message = f"The model `{body.get('model')}` does not exist."
            return JSONResponse({"error": {"message": message, "type": "NotFoundError", "code": 404}}, 404)
        if body["max_tokens"] > CONTEXT:
            message = f"This model's maximum context length is {CONTEXT} tokens."
            return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": 400}}, 400)
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        stop = body.get("stop") or []
        n = 1 if behaviour.ignore_n else int(body.get("n", 1))
        rows = engine.generate(
            prompts,
            n,
            max_tokens=body["max_tokens"],
            temperature=body.get("temperature", 1.0),
            stop=[stop] if isinstance(stop, str) else stop,
            seed=body.get("seed"),
        )
        # Prompt-major, as vLLM orders them: index = prompt * n + sample.
        flat = [c for row in rows for c in row]
        choices = [as_choice(index, c, body.get("logprobs") is not None) for index, c in enumerate(flat)]
        return {
            "id": "cmpl-test",
            "object": "text_completion",
            "model": MODEL,
            "choices": choices,
            "usage": {
                "prompt_tokens": sum(row[0].prompt_tokens for row in rows),
                "completion_tokens": sum(c.completion_tokens for row in rows for c in row),
            },
        }

    def as_choice(index: int, c: Completion, logprobs: bool) -> dict[str, Any]:
        text, stop_reason = c.text, c.stop_reason
        if behaviour.stop_in_text and stop_reason is not None:
            text, stop_reason = text + stop_reason, None
        out: dict[str, Any] = {"index": index, "text": text, "finish_reason": c.finish_reason}
        if not behaviour.stop_in_text:
            out["stop_reason"] = stop_reason
        if logprobs and behaviour.logprobs:
            # The engine reports a sum; spread it over the tokens (the client only sums them).
            each = c.logprob / max(c.completion_tokens, 1)
            out["logprobs"] = {
                "tokens": ["?"] * c.completion_tokens,
                "token_logprobs": [each] * c.completion_tokens,
                "top_logprobs": None,
                "text_offset": [],
            }
        return out

    return app


class LiveServer:
    """A uvicorn server in a daemon thread on a free loopback port."""

    def __init__(self, engine: HFProposer, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        config = uvicorn.Config(completions_app(engine, self.behaviour), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "test server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def engine(tiny_lm: Path) -> HFProposer:
    return HFProposer(str(tiny_lm), device="cpu")


@pytest.fixture
def serve(engine: HFProposer) -> Iterator[Any]:
    """Starts servers for one test (`serve(Behaviour(...))`) and stops them after it."""
    servers: list[LiveServer] = []

    def start(behaviour: Behaviour | None = None) -> LiveServer:
        servers.append(LiveServer(engine, behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def connect() -> Iterator[Any]:
    """Makes OpenAIProposers for one test (fast retries) and closes them after it."""
    made: list[OpenAIProposer] = []

    def make(*servers: LiveServer, **options: Any) -> OpenAIProposer:
        settings = {"retries": 3, "backoff": 0.01, "timeout": 5.0, "params": 1e5, **options}
        made.append(OpenAIProposer([s.url for s in servers], MODEL, **settings))
        return made[-1]

    yield make
    for proposer in made:
        proposer.close()


def texts(rows: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in row] for row in rows]


def same_samples(got: list[list[Completion]], expected: list[list[Completion]]) -> None:
    """Text, ending and tokens as the engine gave them; log-probs up to float rounding."""
    assert [len(row) for row in got] == [len(row) for row in expected]
    for got_row, expected_row in zip(got, expected, strict=True):
        for g, e in zip(got_row, expected_row, strict=True):
            assert (g.text, g.finish_reason, g.stop_reason) == (e.text, e.finish_reason, e.stop_reason)
            assert g.completion_tokens == e.completion_tokens
            assert g.logprob == pytest.approx(e.logprob, abs=1e-4)


# --- what comes back ----------------------------------------------------------------------------------


def test_one_request_returns_exactly_what_the_engine_behind_the_server_samples(
    serve: Any, connect: Any, engine: HFProposer
) -> None:
    server = serve()
    proposer = connect(server, batch=16)

    got = proposer.generate(PROMPTS, 3, max_tokens=8, temperature=1.0, seed=5)

    same_samples(got, engine.generate(PROMPTS, 3, max_tokens=8, temperature=1.0, seed=5))
    [body] = server.behaviour.bodies
    assert (body["prompt"], body["n"], body["seed"], body["logprobs"]) == (PROMPTS, 3, 5, 1)
    # Prompt tokens are reported per request: the total is exact, and so is a lone prompt's count.
    direct = engine.generate(PROMPTS, 1, max_tokens=1, temperature=0.0)
    assert sum(row[0].prompt_tokens for row in got) == sum(row[0].prompt_tokens for row in direct)
    [[alone]] = proposer.generate([PROMPTS[1]], 1, max_tokens=4, temperature=0.0)
    assert alone.prompt_tokens == direct[1][0].prompt_tokens


@pytest.mark.parametrize("stop", ["\n\n", "+", "}"], ids=repr)
def test_stop_strings_end_completions_as_they_do_in_the_engine(
    serve: Any, connect: Any, engine: HFProposer, stop: str
) -> None:
    proposer = connect(serve())

    got = proposer.generate(PROMPTS, 4, max_tokens=10, temperature=1.0, stop=[stop], seed=0)

    same_samples(got, engine.generate(PROMPTS, 4, max_tokens=10, temperature=1.0, stop=[stop], seed=0))
    assert all(stop not in c.text for row in got for c in row)
    assert any(c.stop_reason == stop for row in got for c in row)


def test_a_stop_string_left_in_the_text_is_cut_and_reported(serve: Any, connect: Any, engine: HFProposer) -> None:
    proposer = connect(serve(Behaviour(stop_in_text=True)))

    got = proposer.generate(PROMPTS, 4, max_tokens=10, temperature=1.0, stop=["+"], seed=0)

    same_samples(got, engine.generate(PROMPTS, 4, max_tokens=10, temperature=1.0, stop=["+"], seed=0))


def test_without_logprobs_token_counts_come_from_usage(serve: Any, connect: Any, engine: HFProposer) -> None:
    proposer = connect(serve(Behaviour(logprobs=False)))

    [[got]] = proposer.generate([PROMPTS[0]], 1, max_tokens=8, temperature=1.0, seed=3)

    [[expected]] = engine.generate([PROMPTS[0]], 1, max_tokens=8, temperature=1.0, seed=3)
    assert (got.text, got.completion_tokens, got.prompt_tokens) == (
        expected.text,
        expected.completion_tokens,
        expected.prompt_tokens,
    )


def test_same_seed_reproduces_samples_and_another_seed_changes_them(serve: Any, connect: Any) -> None:
    proposer = connect(serve(), batch=2)

    def sample(seed: int) -> list[list[str]]:
        return texts(proposer.generate(PROMPTS, 3, max_tokens=8, temperature=1.0, seed=seed))

    first = sample(1)

    assert sample(1) == first
    assert sample(2) != first


def test_greedy_asks_for_one_sample_and_copies_it(serve: Any, connect: Any, engine: HFProposer) -> None:
    server = serve()
    proposer = connect(server)

    got = proposer.generate(PROMPTS, 3, max_tokens=8, temperature=0.0)

    assert [body["n"] for body in server.behaviour.bodies] == [1]
    assert texts(got) == [[row[0].text] * 3 for row in engine.generate(PROMPTS, 1, max_tokens=8, temperature=0.0)]


def test_a_server_that_ignores_n_is_asked_again_until_every_prompt_has_n_samples(
    serve: Any, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(Behaviour(ignore_n=True))
    proposer = connect(server, batch=2)

    with caplog.at_level(logging.WARNING, logger="ttc_nodes.engines.openai"):
        first = proposer.generate(PROMPTS, 3, max_tokens=8, temperature=1.0, seed=0)
        again = proposer.generate(PROMPTS, 3, max_tokens=8, temperature=1.0, seed=0)

    assert [len(row) for row in first] == [3] * len(PROMPTS)
    assert texts(again) == texts(first)
    assert all(len(set(row)) > 1 for row in texts(first))  # repeated requests got different seeds
    assert caplog.text.count("ignores n > 1") == 1
    # The first call found out (2 requests with n=3, then 2 x 2 fill-ins); the second asks n=1 at once.
    assert [body["n"] for body in server.behaviour.bodies] == [3, 3] + [1] * 4 + [1] * 6


# --- servers, requests in flight, failures -----------------------------------------------------------


def test_requests_go_round_robin_over_the_servers(serve: Any, connect: Any, engine: HFProposer) -> None:
    first, second = serve(), serve()
    proposer = connect(first, second, batch=1)

    got = proposer.generate(PROMPTS, 1, max_tokens=8, temperature=0.0)
    proposer.generate(PROMPTS[:2], 1, max_tokens=8, temperature=0.0)

    assert len(first.behaviour.bodies) == len(second.behaviour.bodies) == 3
    same_samples(got, engine.generate(PROMPTS, 1, max_tokens=8, temperature=0.0))


def test_requests_in_flight_never_exceed_the_concurrency_limit_across_threads(serve: Any, connect: Any) -> None:
    server = serve(Behaviour(delay=0.05))
    proposer = connect(server, batch=1, concurrency=2)
    results: list[list[list[Completion]]] = []

    def call() -> None:
        results.append(proposer.generate(PROMPTS, 1, max_tokens=2, temperature=1.0, seed=0))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(server.behaviour.bodies) == 3 * len(PROMPTS)
    assert server.behaviour.max_in_flight == 2
    assert [[len(row) for row in result] for result in results] == [[1] * len(PROMPTS)] * 3


def test_server_errors_are_retried_until_the_request_succeeds(serve: Any, connect: Any, engine: HFProposer) -> None:
    server = serve(Behaviour(fail_first=2))
    proposer = connect(server, retries=3)

    got = proposer.generate(PROMPTS, 2, max_tokens=8, temperature=1.0, seed=4)

    assert len(server.behaviour.bodies) == 3
    same_samples(got, engine.generate(PROMPTS, 2, max_tokens=8, temperature=1.0, seed=4))


def test_server_errors_past_the_retries_raise_a_transient_error_naming_the_server(serve: Any, connect: Any) -> None:
    server = serve(Behaviour(fail_first=1000))
    proposer = connect(server, retries=2)

    with pytest.raises(TransientEngineError, match=r"127\.0\.0\.1.*HTTP 503: injected failure after 3 attempt"):
        proposer.generate(PROMPTS, 1, max_tokens=4, temperature=1.0)
    assert len(server.behaviour.bodies) == 3


def test_a_server_killed_mid_run_raises_a_transient_error_after_the_retries(serve: Any, connect: Any) -> None:
    server = serve()
    proposer = connect(server, retries=2, timeout=1.0)
    assert len(proposer.generate(PROMPTS, 1, max_tokens=4, temperature=1.0)) == len(PROMPTS)

    server.stop()
    started = time.monotonic()
    with pytest.raises(TransientEngineError, match=rf"{server.url}: connection failed .* after 3 attempt"):
        proposer.generate(PROMPTS, 1, max_tokens=4, temperature=1.0)
    assert time.monotonic() - started < 5  # refused connections fail fast; only the backoff waits


def test_a_server_that_hangs_times_out_and_raises_a_transient_error(serve: Any, connect: Any) -> None:
    server = serve(Behaviour(hang=1.0))
    proposer = connect(server, retries=1, timeout=0.2)

    with pytest.raises(TransientEngineError, match=r"timed out .* after 2 attempt"):
        proposer.generate(PROMPTS[:1], 1, max_tokens=4, temperature=1.0)


def test_one_dead_server_among_two_is_skipped_by_the_retry(serve: Any, connect: Any) -> None:
    alive, dead = serve(), serve()
    proposer = connect(alive, dead, batch=1, retries=1)
    dead.stop()

    got = proposer.generate(PROMPTS, 1, max_tokens=4, temperature=1.0, seed=0)

    assert [len(row) for row in got] == [1] * len(PROMPTS)
    assert len(alive.behaviour.bodies) == len(PROMPTS)


def test_a_model_the_server_does_not_list_fails_at_load_naming_what_it_serves(serve: Any) -> None:
    server = serve()

    with pytest.raises(EngineError, match=r"does not serve model 'org/other'; it serves: org/tiny-lm"):
        OpenAIProposer([server.url], "org/other")


def test_a_client_error_is_not_retried_and_carries_the_servers_message(serve: Any, connect: Any) -> None:
    server = serve(Behaviour(list_models=False))  # so the wrong name is only found by the request
    proposer = OpenAIProposer([server.url], "org/other", retries=3, backoff=0.01, params=1)

    try:
        with pytest.raises(EngineError, match=r"HTTP 404: The model `org/other` does not exist") as raised:
            proposer.generate(PROMPTS, 1, max_tokens=4, temperature=1.0)
        assert not isinstance(raised.value, TransientEngineError)
        right = connect(server)
        with pytest.raises(EngineError, match=rf"HTTP 400: This model's maximum context length is {CONTEXT}"):
            right.generate(PROMPTS, 1, max_tokens=CONTEXT + 1, temperature=1.0)
    finally:
        proposer.close()
    assert len(server.behaviour.bodies) == 2


def test_a_server_down_at_start_is_an_engine_error_naming_it() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"

    with pytest.raises(EngineError, match=rf"cannot reach the OpenAI-compatible server at {url}"):
        OpenAIProposer([url], MODEL, timeout=1.0)


# --- URIs ---------------------------------------------------------------------------------------------


def test_openai_uri_loads_an_engine_with_its_options(serve: Any) -> None:
    first, second = serve(), serve()
    uri = f"openai:{first.url},{second.url}/#{MODEL}?concurrency=3&timeout=7&retries=1&batch=4&params=1.35e8"

    proposer = load_proposer(uri)

    assert isinstance(proposer, OpenAIProposer)
    try:
        assert proposer.base_urls == [first.url, second.url]
        assert (proposer.model, proposer.uri, proposer.parameters) == (MODEL, uri, 135_000_000)
        assert (proposer.retries, proposer.batch) == (1, 4)
        assert len(proposer.generate(PROMPTS, 2, max_tokens=2, temperature=1.0)) == len(PROMPTS)
    finally:
        proposer.close()


def test_an_engine_without_params_warns_that_its_flops_count_as_zero(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ttc_nodes.engines.openai"):
        proposer = OpenAIProposer([serve().url], MODEL)
    proposer.close()

    assert proposer.parameters == 0
    assert "no ?params= given" in caplog.text


def test_parse_location_splits_servers_and_model() -> None:
    assert parse_location("http://a:1/v1,https://b/v1#Qwen/Qwen2.5-Math-1.5B") == (
        ["http://a:1/v1", "https://b/v1"],
        "Qwen/Qwen2.5-Math-1.5B",
    )


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("openai:http://127.0.0.1:9/v1", "URL\\[,URL...\\]#MODEL"),
        ("openai:127.0.0.1:9/v1#m", "must start with http"),
        ("openai:http://127.0.0.1:9/v1?concurrency=2#m", "write the model before the options"),
        ("openai:http://127.0.0.1:9/v1#m?colour=red", "colour"),
        ("openai:http://127.0.0.1:9/v1#m?concurrency=0", "concurrency must be >= 1"),
    ],
)
def test_bad_openai_uris_are_rejected_with_a_message_naming_the_problem(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_proposer(uri)


def test_openai_is_a_known_proposer_scheme() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*known schemes: gguf, hf, openai, testbed"):
        load_proposer("nope:x")


# --- credentials in the URL ---------------------------------------------------------------------------

SECRET = "SECRETKEY123"


def with_credentials(server_url: str) -> str:
    return server_url.replace("http://", f"http://user:{SECRET}@")


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"


def failures_with_a_planted_key(serve: Any) -> Iterator[tuple[str, BaseException, str]]:
    """(what went wrong, the exception it raised, the engine's .uri) for every way a server fails."""
    with pytest.raises(EngineError) as refused:
        load_proposer(f"openai:{with_credentials(dead_url())}#{MODEL}?timeout=1")
    yield "refused at load", refused.value, ""

    cases = {
        "5xx past the retries": Behaviour(fail_first=1000),
        "hangs past the timeout": Behaviour(hang=1.0),
        "ignores n": Behaviour(ignore_n=True),  # only warns
        "rejects the request": Behaviour(),
        "killed mid-run": Behaviour(),
    }
    for what, behaviour in cases.items():
        server = serve(behaviour)
        uri = f"openai:{with_credentials(server.url)}#{MODEL}?retries=1&backoff=0.01&timeout=0.5&batch=1"
        proposer = load_proposer(uri)  # no ?params=, so it warns naming itself
        assert isinstance(proposer, OpenAIProposer)
        if what == "killed mid-run":
            server.stop()
        max_tokens = CONTEXT + 1 if what == "rejects the request" else 2
        try:
            proposer.generate(PROMPTS[:2], 2, max_tokens=max_tokens, temperature=1.0)
        except EngineError as error:
            yield what, error, proposer.uri
        else:
            yield what, RuntimeError("no error"), proposer.uri
        finally:
            proposer.close()


def test_a_key_in_the_url_appears_in_no_message_log_warning_or_uri(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        failures = list(failures_with_a_planted_key(serve))

    assert [what for what, _, _ in failures] == [
        "refused at load",
        "5xx past the retries",
        "hangs past the timeout",
        "ignores n",
        "rejects the request",
        "killed mid-run",
    ]
    for what, error, uri in failures:
        chain = [error, error.__cause__, error.__context__]
        assert not any(SECRET in str(part) for part in chain if part is not None), what
        assert SECRET not in uri, what
        assert not uri or uri.startswith("openai:http://user:***@127.0.0.1:"), what
    kinds = {what: type(error) for what, error, _ in failures}
    assert kinds["5xx past the retries"] is kinds["hangs past the timeout"] is TransientEngineError
    assert kinds["killed mid-run"] is TransientEngineError and kinds["rejects the request"] is EngineError
    assert "no ?params= given" in caplog.text and "ignores n > 1" in caplog.text
    assert "HTTP Request" in caplog.text  # httpx's own log lines are among those checked
    assert SECRET not in caplog.text
    assert not any(SECRET in record.getMessage() for record in caplog.records)
    assert not any(SECRET in str(warning.message) for warning in warned)


def test_credentials_in_the_url_still_reach_the_server_as_basic_auth(serve: Any, connect: Any) -> None:
    seen: list[str] = []
    server = serve()
    proposer = OpenAIProposer([with_credentials(server.url)], MODEL, params=1, retries=0)
    transport = proposer._client._transport
    original = transport.handle_request

    def spy(request: Any) -> Any:  # what goes on the wire, after httpx applied the auth
        seen.append(request.headers.get("authorization", ""))
        assert SECRET not in str(request.url)
        return original(request)

    transport.handle_request = spy  # type: ignore[method-assign]
    try:
        proposer.generate(PROMPTS[:1], 1, max_tokens=2, temperature=0.0)
    finally:
        proposer.close()

    expected = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
    assert seen == [expected]
    assert proposer.base_urls == [server.url]


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("openai:http://u:KEY@h:8000/v1#m?params=1", "openai:http://u:***@h:8000/v1#m?params=1"),
        ("openai:http://a:K1@h1/v1,https://b:K2@h2/v1#org/m", "openai:http://a:***@h1/v1,https://b:***@h2/v1#org/m"),
        ("judge:openai:http://TOKEN@h/v1#m?judge_max_tokens=4", "judge:openai:http://***@h/v1#m?judge_max_tokens=4"),
        ("openai:http://u:p@ss@h/v1#m", "openai:http://u:***@h/v1#m"),
        (
            "openai:http://h/v1#m?api_key=K&token=T&key=K2&params=1",
            "openai:http://h/v1#m?api_key=***&token=***&key=***&params=1",
        ),
        ("hf:/models/x?device=cpu", "hf:/models/x?device=cpu"),
        ("testbed:proposer", "testbed:proposer"),
        ("openai:http://127.0.0.1:8000/v1#m", "openai:http://127.0.0.1:8000/v1#m"),
    ],
)
def test_masked_uri_hides_passwords_keys_and_tokens_and_nothing_else(uri: str, masked: str) -> None:
    assert masked_uri(uri) == masked
    assert masked_uri(masked) == masked
