"""`ttc gateway` as a real process on 127.0.0.1, spoken to with the official `openai` client: every
request is a solve traced in the database; concurrent requests all succeed; each kind of refusal
gets the API's error shape and status; a bearer token is required when set and never stored; a
client that disconnects, or a request that runs out of time, leaves no running search behind."""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from db import dispose
from db.models import Problem, Solve
from db.queries import trace_of
from db.session import connect
from tests.processes import free_port, start, stop, tail, wait_for_http

TTC_SCRIPT = str(Path(sys.executable).parent / "ttc")
TOKEN = "gateway-token-7f3a9c"
QUESTION = "Compute (12 + 5) * 2 - 3."
SLOW = "beam@256"  # rounds of 256 beams: seconds of search, stoppable at each node boundary

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Gateway:
    url: str
    database: str
    folder: Path
    log: Path

    def client(self, token: str = TOKEN, timeout: float = 60) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=token, max_retries=0, timeout=timeout)

    def health(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/health", timeout=5).json()
        return answer

    def solves_of(self, question: str) -> list[Solve]:
        with connect(self.database)() as session:
            query = select(Solve).join(Problem, Solve.problem_id == Problem.id).where(Problem.question == question)
            return list(session.scalars(query))

    def searches_settle(self, seconds: float = 30) -> bool:
        """Whether the gateway's running searches fall to 0 within `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.health()["in_flight"] == 0:
                return True
            time.sleep(0.1)
        return False


def policy_file(path: Path) -> Path:
    """A two-bin policy calibrated at N=4: beam for the harder bin, majority for the easier."""
    plans = {"beam": {"strategy": "beam", "label": "beam"}, "majority": {"strategy": "majority", "label": "majority"}}
    policy = {
        "difficulty": "predicted",
        "difficulty_samples": 2,
        "thresholds": [0.5],
        "plans": plans,
        "fit": {
            "choices": {"1": {"4": "beam"}, "2": {"4": "majority"}},
            "fold_choices": {"1": {"4": ["beam", "beam"]}, "2": {"4": ["majority", "majority"]}},
            "cv_accuracy": {"1": {"4": 0.5}, "2": {"4": 0.9}},
            "plan_accuracy": {"1": {"4": {"beam": 0.5}}, "2": {"4": {"majority": 0.9}}},
            "bins": {},
            "folds": {},
        },
        "budgets": [4],
    }
    path.write_text(json.dumps(policy))
    return path


def launched(folder: Path, extra: list[str], token: str | None) -> tuple[Gateway, Any]:
    folder.mkdir()
    port = free_port()
    database = f"sqlite:///{folder / 'ttc.db'}"
    environment = {
        **{k: v for k, v in os.environ.items() if k != "TTC_GATEWAY_TOKEN"},
        "OMP_NUM_THREADS": "1",
    }
    if token is not None:
        environment["TTC_GATEWAY_TOKEN"] = token
    log = folder / "gateway.log"
    command = [TTC_SCRIPT, "gateway", "--port", str(port), "--db", database, *extra]
    return Gateway(f"http://127.0.0.1:{port}", database, folder, log), start(command, environment, log)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateways started together: one with a bearer token, one with a policy and a 3 s timeout."""
    root = tmp_path_factory.mktemp("gateways")
    guarded, first = launched(root / "guarded", ["--timeout", "60"], TOKEN)
    policy = policy_file(root / "policy.json")
    timed, second = launched(root / "timed", ["--timeout", "3", "--policy", str(policy)], None)
    try:
        for gateway, process in ((guarded, first), (timed, second)):
            if not wait_for_http(process, f"{gateway.url}/health", timeout=120):
                pytest.fail(f"the gateway did not answer /health:\n{tail(gateway.log)}")
        yield guarded, timed
    finally:
        stop(first)
        stop(second)
        dispose(guarded.database)
        dispose(timed.database)


@pytest.fixture(scope="module")
def gateway(gateways: tuple[Gateway, Gateway]) -> Gateway:
    return gateways[0]


@pytest.fixture(scope="module")
def timed_gateway(gateways: tuple[Gateway, Gateway]) -> Gateway:
    return gateways[1]


def test_a_chat_completion_answers_with_the_chosen_solution_and_a_run_traced_in_the_database(gateway: Gateway) -> None:
    completion = gateway.client().chat.completions.create(
        model="beam@4", messages=[{"role": "user", "content": QUESTION}]
    )

    ttc = (completion.model_extra or {})["ttc"]
    content = completion.choices[0].message.content or ""
    assert ttc["strategy"] == "beam" and ttc["settings"]["budget"] == 4
    assert ttc["answer"] and f"\\boxed{{{ttc['answer']}}}" in content  # the whole solution, ending in its answer
    assert completion.usage is not None and completion.usage.total_tokens == ttc["tokens"] > 0
    assert completion.usage.prompt_tokens + completion.usage.completion_tokens == ttc["tokens"]
    assert ttc["generations"] == 4 and ttc["flops"] > 0
    with connect(gateway.database)() as session:
        [trace] = trace_of(session, ttc["run_id"])
    assert trace.status == "done" and trace.answer == ttc["answer"] and trace.id == ttc["solve_id"]
    assert trace.problem.key == ttc["problem_key"] and trace.problem.question == QUESTION
    assert trace.steps and trace.candidates and trace.tokens == ttc["tokens"]


def test_the_legacy_completions_route_and_extra_body_fields_name_the_plan(gateway: Gateway) -> None:
    completion = gateway.client().completions.create(
        model="ttc",
        prompt=QUESTION,
        temperature=0.5,
        max_tokens=256,
        extra_body={"strategy": "majority", "budget": 3},
    )

    ttc = (completion.model_extra or {})["ttc"]
    assert ttc["strategy"] == "majority" and ttc["settings"]["budget"] == 3
    assert ttc["settings"]["temperature"] == 0.5 and ttc["settings"]["max_answer_tokens"] == 256
    assert completion.choices[0].text and ttc["generations"] == 3


def test_eight_concurrent_requests_all_succeed_all_traced_and_search_at_once(gateway: Gateway) -> None:
    questions = [f"Compute ({a} + 4) * 3 - {a}." for a in range(2, 10)]
    client = gateway.client()

    def ask(question: str) -> dict[str, Any]:
        completion = client.chat.completions.create(model="beam@16", messages=[{"role": "user", "content": question}])
        return dict((completion.model_extra or {})["ttc"])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, questions))

    assert len({a["run_id"] for a in answers}) == 8
    solves = [solve for question in questions for solve in gateway.solves_of(question)]
    assert sorted(s.id for s in solves) == sorted(a["solve_id"] for a in answers)
    assert all(s.status == "done" for s in solves)
    # They ran at once: some solve started before another had finished.
    spans = sorted((s.started_at, s.finished_at) for s in solves)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def refusal(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as raised:
        call()
    return raised.value


@pytest.mark.parametrize(
    ("request_fields", "param", "code"),
    [
        ({"model": "nope@4"}, "model", "unknown_strategy"),
        ({"model": "beam@0"}, "model", "invalid_settings"),
        ({"model": "ttc", "extra_body": {"strategy": "beam", "budget": 0}}, "strategy", "invalid_settings"),
        ({"model": "beam@4", "extra_body": {"beams": 2}}, "beams", "unknown_parameter"),
        ({"model": "beam@4", "n": 2}, "n", "unsupported_value"),
        ({"model": "beam@4", "stop": ["\n"]}, "stop", "unsupported_value"),
        ({"model": "compute-optimal@16"}, "model", None),  # this gateway has no policy
    ],
    ids=["bad-strategy", "budget-0", "budget-0-in-body", "unknown-field", "n-2", "stop", "no-policy"],
)
def test_a_bad_request_gets_400_in_the_api_error_shape(
    gateway: Gateway, request_fields: dict[str, Any], param: str, code: str | None
) -> None:
    error = refusal(
        lambda: gateway.client().chat.completions.create(
            messages=[{"role": "user", "content": QUESTION}], **request_fields
        )
    )

    assert error.status_code == 400
    body = error.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error" and body["param"] == param and body["code"] == code
    assert body["message"]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        [{"role": "user", "content": "   "}],
    ],
    ids=["two-messages", "empty-question"],
)
def test_anything_but_one_question_gets_400_naming_the_messages(gateway: Gateway, messages: list[Any]) -> None:
    error = refusal(lambda: gateway.client().chat.completions.create(model="beam@4", messages=messages))

    assert error.status_code == 400 and error.response.json()["error"]["param"] == "messages"
    assert not gateway.solves_of("   ")


def test_a_wrong_or_missing_token_gets_401_and_the_token_is_never_stored_or_logged(gateway: Gateway) -> None:
    wrong = refusal(
        lambda: gateway.client(token="not-the-token").chat.completions.create(
            model="beam@4", messages=[{"role": "user", "content": QUESTION}]
        )
    )
    listed = gateway.client().models.list()  # the right token passes

    assert wrong.status_code == 401 and wrong.response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{gateway.url}/v1/models", timeout=5).status_code == 401
    assert {"beam@16", "majority@8", "best_of_n_weighted@16"} <= {m.id for m in listed.data}
    assert gateway.client().models.retrieve("beam@32").id == "beam@32"  # any strategy@N, listed or not
    assert refusal(lambda: gateway.client().models.retrieve("beam@0")).status_code == 404
    stored = b"".join(path.read_bytes() for path in gateway.folder.glob("ttc.db*"))
    assert stored and TOKEN.encode() not in stored
    assert TOKEN not in gateway.log.read_text()


def test_a_request_over_the_size_limit_gets_413_with_or_without_a_length(gateway: Gateway) -> None:
    huge = "Compute 1 + 1. " * 20_000  # 300 kB, over the 256 KiB default
    error = refusal(
        lambda: gateway.client().chat.completions.create(model="beam@4", messages=[{"role": "user", "content": huge}])
    )

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "beam@4", "messages": [{"role": "user", "content": "'
        for _ in range(300):
            yield b"x" * 1000
        yield b'"}]}'

    chunked = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=chunks(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=30,
    )

    assert error.status_code == 413 and error.response.json()["error"]["code"] == "request_too_large"
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"


def test_a_client_that_disconnects_leaves_no_running_search(gateway: Gateway) -> None:
    question = "Compute (81 + 7) * 4 - 19 + 6 * 5."
    with pytest.raises(openai.APITimeoutError):
        gateway.client(timeout=1.5).chat.completions.create(
            model=SLOW, messages=[{"role": "user", "content": question}]
        )

    assert gateway.searches_settle()
    [solve] = gateway.solves_of(question)
    assert solve.status == "failed" and "the client disconnected" in (solve.error or "")
    assert solve.generations < 256  # stopped mid-search, not finished


def test_a_streamed_completion_sends_progress_per_round_then_the_answer(gateway: Gateway) -> None:
    question = "Compute (7 + 8) * 2 - 4."
    stream = gateway.client().chat.completions.create(
        model="beam@4",
        messages=[{"role": "user", "content": question}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    progress = [
        (c.model_extra or {})["ttc"]["progress"] for c in chunks if "progress" in (c.model_extra or {}).get("ttc", {})
    ]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    [final] = [(c.model_extra or {})["ttc"] for c in chunks if "run_id" in (c.model_extra or {}).get("ttc", {})]
    assert {p["node"] for p in progress} >= {"expand", "verify"} and max(p["round"] for p in progress) >= 1
    assert f"\\boxed{{{final['answer']}}}" in content
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == final["tokens"]
    [solve] = gateway.solves_of(question)
    assert solve.status == "done" and solve.id == final["solve_id"]


def test_compute_optimal_bins_the_prompt_and_runs_the_policys_plan(timed_gateway: Gateway) -> None:
    client = timed_gateway.client(token="anything")  # no token set: any key passes
    completion = client.chat.completions.create(
        model="compute-optimal@4", messages=[{"role": "user", "content": QUESTION}]
    )

    ttc = (completion.model_extra or {})["ttc"]
    chosen = ttc["compute_optimal"]
    assert chosen["bin"] in (1, 2) and ttc["strategy"] == {1: "beam", 2: "majority"}[chosen["bin"]]
    assert chosen["difficulty_generations"] == 2 and ttc["generations"] == 4
    assert completion.usage is not None and completion.usage.total_tokens == ttc["tokens"] + chosen["difficulty_tokens"]
    assert "compute-optimal@4" in {m.id for m in client.models.list().data}
    assert {s.status for s in timed_gateway.solves_of(QUESTION)} == {"done"}  # the estimate and the solve


def test_a_request_past_the_timeout_gets_504_and_its_search_stops(timed_gateway: Gateway) -> None:
    question = "Compute (93 + 2) * 5 - 17 + 8 * 3."
    error = refusal(
        lambda: timed_gateway.client().chat.completions.create(
            model=SLOW, messages=[{"role": "user", "content": question}]
        )
    )

    assert error.status_code == 504 and error.response.json()["error"]["code"] == "timeout"
    assert timed_gateway.searches_settle()
    [solve] = timed_gateway.solves_of(question)
    assert solve.status == "failed" and "timeout" in (solve.error or "")


def test_a_streaming_client_that_goes_away_stops_its_search(gateway: Gateway) -> None:
    question = "Compute (64 + 9) * 3 - 28 + 7 * 4."
    stream = gateway.client().chat.completions.create(
        model=SLOW, messages=[{"role": "user", "content": question}], stream=True
    )
    for chunk in stream:
        if "progress" in (chunk.model_extra or {}).get("ttc", {}):
            break  # the search is running: hang up
    stream.close()

    assert gateway.searches_settle()
    [solve] = gateway.solves_of(question)
    assert solve.status == "failed" and "the client disconnected" in (solve.error or "")


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--policy", "no-such-policy.json"], "no-such-policy.json"),
        (["--policy", "ORACLE"], "oracle difficulty"),
        (["--concurrency", "0"], "--concurrency"),
    ],
    ids=["missing-policy", "oracle-policy", "no-threads"],
)
def test_the_gateway_refuses_bad_options_in_one_line_before_serving(
    tmp_path: Path, arguments: list[str], said: str
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    oracle = policy_file(tmp_path / "oracle.json")
    oracle.write_text(oracle.read_text().replace('"predicted"', '"oracle"'))
    arguments = [str(oracle) if a == "ORACLE" else a for a in arguments]
    database = f"sqlite:///{tmp_path / 'ttc.db'}"

    result = CliRunner().invoke(app, ["gateway", "--db", database, *arguments])

    assert result.exit_code == 2 and said in result.stderr and len(result.stderr.strip().splitlines()) == 1
    dispose(database)


def test_a_streamed_legacy_completion_ends_with_the_solution_text(gateway: Gateway) -> None:
    question = "Compute (5 + 6) * 2 - 1."
    chunks = list(gateway.client().completions.create(model="majority@2", prompt=question, stream=True))

    text = "".join(c.choices[0].text for c in chunks if c.choices)
    [final] = [(c.model_extra or {})["ttc"] for c in chunks if "run_id" in (c.model_extra or {}).get("ttc", {})]
    assert all(c.object == "text_completion" for c in chunks)
    assert f"\\boxed{{{final['answer']}}}" in text and chunks[-1].choices[0].finish_reason == "stop"
