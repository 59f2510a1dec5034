"""The batcher in front of in-process engines: calls of concurrent solves that arrive together share
model calls, and each caller gets back exactly what it would have got alone.

A row-seeded fake proposer answers each row with a hash of (prompt, sampling, row seed) and records
the batches it was called with; the verifier side runs the tiny random-weight PRM. Every thread is
started behind a barrier and joined with a timeout.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ttc_nodes.engines import Completion, EngineError, PromptTooLong, load_verifier
from ttc_nodes.engines.base import check_fits
from ttc_nodes.engines.batched import BatchedProposer, Row, Sampling, row_seed
from ttc_nodes.engines.batcher import Batcher, BatchTimeout, shared_batcher
from ttc_nodes.engines.hf import HFValueHeadPRM
from ttc_nodes.propose import expand_steps, propose_answers
from ttc_nodes.state import SolveContext
from ttc_nodes.verify import verify

JOIN_S = 60.0  # no test here takes nearly this long; a thread still alive after it is a hang
POISON = "poison"
# Merged and solo PRM calls pad to different widths and so run different kernel shapes; measured
# on CPU float32: at most 6e-8 apart on the tiny PRM, 1.9e-6 on the testbed PRM.
SCORE_TOLERANCE = 1e-5


class HashProposer(BatchedProposer):
    """Row-seeded: a row's completion is a hash of its prompt, the sampling and its seed. Records
    every batch; a batch holding a poisoned prompt raises."""

    row_seeded = True
    uri = "hash:"
    parameters = 1000

    def __init__(self, max_batch: int | None, *, pause: float = 0.0) -> None:
        self.max_batch = max_batch
        self.pause = pause  # seconds a model call takes: calls arriving meanwhile queue up
        self.batches: list[list[Row]] = []
        self.seeds: list[int | None] = []

    def _check_prompts(self, prompts: Sequence[str]) -> None:
        check_fits(self.uri, max(len(prompt) for prompt in prompts), 40)

    def _generate_batch(self, rows: Sequence[Row], sampling: Sampling) -> list[list[Completion]]:
        self.batches.append(list(rows))
        self.seeds.append(sampling.seed)
        time.sleep(self.pause)
        if any(POISON in row.prompt for row in rows):
            raise EngineError("a poisoned prompt in the batch")
        return [[self._answer(row, sampling, sample) for sample in range(sampling.samples)] for row in rows]

    @staticmethod
    def _answer(row: Row, sampling: Sampling, sample: int) -> Completion:
        key = repr((row.prompt, row.seed, sample, sampling.max_tokens, sampling.temperature, sampling.stop))
        text = hashlib.sha256(key.encode()).hexdigest()[: sampling.max_tokens]
        return Completion(text, len(row.prompt), len(text), -float(len(text)), "stop")


class HashPerPrompt(HashProposer):
    one_row_per_sample = False


class PlainHash(HashProposer):
    """The same answers from an engine that does not promise row seeding: never batched."""

    row_seeded = False


def batched(engine: Any, *, window: float) -> Any:
    """`engine` with its batcher made now, with this window (the default would be TTC_BATCH_WINDOW_MS)."""
    shared_batcher(
        engine, lambda: Batcher(engine._run_merged, max_rows=engine.max_batch, name=engine.uri, window=window)
    )
    return engine


def concurrently(calls: Sequence[Callable[[], Any]], *, jitter: Sequence[float] | None = None) -> list[Any]:
    """Run each call in a thread of its own, all released at once (after its jitter, in seconds);
    the result or the exception of each, in order."""
    outcomes: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls), timeout=JOIN_S)

    def work(index: int) -> None:
        start.wait()
        if jitter:
            time.sleep(jitter[index])
        try:
            outcomes[index] = calls[index]()
        except Exception as error:
            outcomes[index] = error

    threads = [threading.Thread(target=work, args=(index,), daemon=True) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S)
    assert not any(thread.is_alive() for thread in threads), "a caller hung"
    return outcomes


def random_call(rng: random.Random) -> dict[str, Any]:
    return {
        "prompts": [rng.choice("abcdef") * rng.randint(1, 3) for _ in range(rng.randint(1, 3))],
        "n": rng.randint(1, 3),
        "max_tokens": rng.choice([6, 8]),
        "temperature": rng.choice([0.0, 0.8]),
        "stop": rng.choice([(), ("\n",)]),
        "seed": rng.choice([None, rng.randrange(2**32)]),
    }


def generate(engine: BatchedProposer, call: dict[str, Any]) -> list[list[Completion]]:
    return engine.generate(
        call["prompts"],
        call["n"],
        max_tokens=call["max_tokens"],
        temperature=call["temperature"],
        stop=call["stop"],
        seed=call["seed"],
    )


# --- row seeds --------------------------------------------------------------------------------------


def test_row_seeds_are_a_stable_hash_of_the_call_seed_position_and_sample() -> None:
    engine = HashProposer(max_batch=None)
    engine.generate(["a", "b"], 2, max_tokens=4, temperature=1.0, seed=7)
    [rows] = engine.batches

    assert [row.seed for row in rows] == [row_seed(7, 0, 0), row_seed(7, 0, 1), row_seed(7, 1, 0), row_seed(7, 1, 1)]
    assert len({row.seed for row in rows}) == 4
    assert row_seed(7, 0, 0) == 0x70CADCD6 and row_seed(None, 0, 0) is None  # the same in every process
    engine.generate(["a"], 1, max_tokens=4, temperature=1.0)
    assert engine.batches[-1][0].seed is None
    assert engine.seeds == [None, None]  # a row-seeded engine sees only the rows' seeds


# --- the proposer batcher ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine_class", [HashProposer, HashPerPrompt])
def test_results_are_the_same_with_and_without_batching_for_any_mix_of_calls(
    engine_class: type[HashProposer],
) -> None:
    rng = random.Random(20)
    merged = 0
    for _ in range(25):
        calls = [random_call(rng) for _ in range(rng.randint(2, 8))]
        alone = [generate(engine_class(max_batch=None), call) for call in calls]
        engine = batched(engine_class(max_batch=rng.choice([None, 2, 5])), window=0.01)

        def call_on(call: dict[str, Any], engine: HashProposer = engine) -> Callable[[], Any]:
            return lambda: generate(engine, call)

        together = concurrently([call_on(call) for call in calls], jitter=[rng.uniform(0, 0.01) for _ in calls])

        assert together == alone
        assert all(len(batch) <= (engine.max_batch or len(batch)) for batch in engine.batches)
        merged += any(len({row.prompt for row in batch}) > 1 for batch in engine.batches)
    assert merged > 0  # some of the mixes did share model calls


def test_concurrent_callers_share_model_calls() -> None:
    engine = batched(HashProposer(max_batch=None), window=1.0)
    calls = [lambda k=k: engine.generate([f"q{k}"], 2, max_tokens=8, temperature=0.8, seed=k) for k in range(6)]

    results = concurrently(calls)

    assert all(isinstance(result, list) for result in results)
    assert len(engine.batches) < len(calls)
    assert max(len(batch) for batch in engine.batches) > 2  # rows of several callers in one call


def test_calls_whose_sampling_differs_never_share_a_model_call() -> None:
    engine = batched(HashProposer(max_batch=None), window=0.3)
    calls = [
        lambda k=k: engine.generate([f"t{k % 2}"], 1, max_tokens=6 + k % 2, temperature=0.5, seed=k) for k in range(6)
    ]

    concurrently(calls)

    for batch in engine.batches:
        assert len({row.prompt for row in batch}) == 1  # prompt t0 is always 6 tokens, t1 always 7


def test_a_bad_call_fails_alone_before_it_reaches_the_batcher() -> None:
    engine = batched(HashProposer(max_batch=None), window=0.3)
    good = {"prompts": ["a", "b"], "n": 2, "max_tokens": 8, "temperature": 0.8, "stop": (), "seed": 1}
    expected = generate(HashProposer(max_batch=None), good)

    results = concurrently(
        [
            lambda: generate(engine, good),
            lambda: generate(engine, {**good, "n": 0}),
            lambda: generate(engine, {**good, "prompts": ["x" * 50]}),
            lambda: generate(engine, good),
        ]
    )

    assert results[0] == results[3] == expected
    assert isinstance(results[1], ValueError) and "n=0" in str(results[1])
    assert isinstance(results[2], PromptTooLong)
    assert all("x" * 50 not in row.prompt for batch in engine.batches for row in batch)


def test_a_merged_call_that_raises_is_rerun_per_caller_so_only_the_faulty_one_fails() -> None:
    engine = batched(HashProposer(max_batch=None), window=1.0)
    prompts = [["a"], [POISON], ["b", "c"]]
    solo = HashProposer(max_batch=None)
    expected = [solo.generate(p, 2, max_tokens=8, temperature=0.8, seed=3) for p in (prompts[0], prompts[2])]

    results = concurrently([lambda p=p: engine.generate(p, 2, max_tokens=8, temperature=0.8, seed=3) for p in prompts])

    assert [results[0], results[2]] == expected
    assert isinstance(results[1], EngineError) and "poisoned" in str(results[1])
    assert len(engine.batches[0]) == 8  # all three merged first, then each alone
    assert sorted(len(batch) for batch in engine.batches[1:]) == [2, 2, 4]


def test_calls_over_max_batch_together_are_split_and_no_model_call_exceeds_it() -> None:
    engine = batched(HashProposer(max_batch=4), window=1.0)
    calls = [lambda k=k: engine.generate([f"p{k}"], 2, max_tokens=8, temperature=0.8, seed=k) for k in range(5)]
    calls.append(lambda: engine.generate(["long"], 10, max_tokens=8, temperature=0.8, seed=9))

    results = concurrently(calls)

    assert all(isinstance(result, list) for result in results)
    assert all(len(batch) <= 4 for batch in engine.batches)
    assert sum(len(batch) for batch in engine.batches) == 5 * 2 + 10
    assert any(len({row.prompt for row in batch}) == 2 for batch in engine.batches)  # two callers in a call
    assert sorted(len(batch) for batch in engine.batches if batch[0].prompt == "long") == [2, 4, 4]


def test_completions_record_the_rows_of_the_model_call_they_came_from() -> None:
    engine = batched(HashProposer(max_batch=3), window=1.0)

    together = concurrently(
        [lambda k=k: engine.generate([f"p{k}"], 1, max_tokens=8, temperature=0.8) for k in range(2)]
    )
    [chunked] = engine.generate(["q"], 4, max_tokens=8, temperature=0.8)

    assert [result[0][0].batch_rows for result in together] == [2, 2]
    assert [completion.batch_rows for completion in chunked] == [3, 3, 3, 1]


def test_engines_that_are_not_row_seeded_are_not_batched() -> None:
    engine = PlainHash(max_batch=None, pause=0.05)

    results = concurrently([lambda k=k: engine.generate([f"p{k}"], 1, max_tokens=8, temperature=0.8) for k in range(3)])

    assert [len(batch) for batch in engine.batches] == [1, 1, 1]
    assert all(result[0][0].batch_rows is None for result in results)
    assert "_shared_batcher" not in engine.__dict__


# --- the batcher's bounds ---------------------------------------------------------------------------


def test_a_caller_whose_batch_never_runs_times_out_with_a_clear_error() -> None:
    release = threading.Event()

    def model(key: None, batches: list[list[int]]) -> list[int]:
        release.wait(JOIN_S)
        return [row for batch in batches for row in batch]

    batcher: Batcher[None, int, int] = Batcher(model, max_rows=1, name="stuck", window=0.0, timeout=0.3)
    first: list[Any] = []
    leader = threading.Thread(target=lambda: first.append(batcher.submit(None, [1])), daemon=True)
    leader.start()
    time.sleep(0.05)  # the first call is in the model now

    with pytest.raises(BatchTimeout, match=r"stuck: no model call finished in 0\.3 s"):
        batcher.submit(None, [2])
    release.set()
    leader.join(JOIN_S)
    assert not leader.is_alive() and first == [[1]]
    assert batcher.submit(None, [3, 4]) == [3, 4]  # the batcher serves calls again


def test_a_leader_that_stops_fails_the_calls_it_took_and_nobody_waits_on_it() -> None:
    class Stop(BaseException):
        pass

    def model(key: None, batches: list[list[int]]) -> list[int]:
        raise Stop

    batcher: Batcher[None, int, int] = Batcher(model, max_rows=None, name="stops", window=1.0, timeout=JOIN_S)
    outcomes: list[BaseException] = []
    start = threading.Barrier(3, timeout=JOIN_S)

    def call(row: int) -> None:
        start.wait()
        try:
            batcher.submit(None, [row])
        except BaseException as error:
            outcomes.append(error)

    threads = [threading.Thread(target=call, args=(row,), daemon=True) for row in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S)

    assert not any(thread.is_alive() for thread in threads)
    kinds = sorted(type(error).__name__ for error in outcomes)
    assert kinds == ["BatchAborted", "BatchAborted", "Stop"]


# --- the verifier batcher ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prm(tiny_prm: Path) -> Iterator[HFValueHeadPRM]:
    engine = load_verifier(f"hf:{tiny_prm}?device=cpu&max_batch=5")
    assert isinstance(engine, HFValueHeadPRM)
    yield engine


def random_solutions(rng: random.Random) -> list[list[str]]:
    step = lambda: "".join(rng.choice("0123+") for _ in range(rng.randint(1, 10)))  # noqa: E731
    return [[step() for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 4))]


def test_concurrent_score_calls_share_prm_calls_and_each_gets_what_it_gets_alone(
    prm: HFValueHeadPRM, tiny_prm: Path
) -> None:
    rng = random.Random(5)
    calls = [(f"What is {k}+{k + 2}?" * (1 + k % 3), random_solutions(rng)) for k in range(6)]
    alone = [prm.score(question, solutions) for question, solutions in calls]
    engine = HFValueHeadPRM(str(tiny_prm), device="cpu", max_batch=5)
    shared_batcher(
        engine, lambda: Batcher(engine._score_merged, max_rows=engine.max_batch, name=engine.uri, window=1.0)
    )

    together = concurrently([lambda c=c: engine.score(*c) for c in calls])

    for got, expected in zip(together, alone, strict=True):
        assert [s.tokens for s in got] == [s.tokens for s in expected]
        for mine, solo in zip(got, expected, strict=True):
            assert mine.step_scores == pytest.approx(solo.step_scores, abs=SCORE_TOLERANCE)
    assert all(s.batch_rows is not None and s.batch_rows <= 5 for result in together for s in result)
    assert any(
        s.batch_rows > len(solutions)  # type: ignore[operator]
        for result, (_, solutions) in zip(together, calls, strict=True)
        for s in result
    )


# --- the trace ----------------------------------------------------------------------------------------


def test_propose_and_verify_steps_record_the_batch_their_call_rode_in(prm: HFValueHeadPRM) -> None:
    engine = HashProposer(max_batch=None)
    runtime = SimpleNamespace(context=SolveContext(proposer=engine, verifier=prm, seed=1))
    state: Any = {"question": "What is 1+2?"}

    answers = propose_answers(state, runtime, n=3, max_tokens=8, temperature=0.8)
    steps = expand_steps(state, runtime, first_round=2, max_tokens=8, temperature=0.8)
    scored = verify({**state, "pool": answers["pool"]}, runtime)

    assert answers["detail"] == {"batch_rows": 3} and steps["detail"] == {"batch_rows": 2}
    assert scored["detail"] == {"batch_rows": 3}
    plain = SimpleNamespace(context=SolveContext(proposer=PlainHash(max_batch=None), seed=1))
    alone = propose_answers(state, plain, n=3, max_tokens=8, temperature=0.8)
    assert "detail" not in alone
    assert alone["spend"] == answers["spend"] and alone["pool"] == answers["pool"]


# --- end to end on the testbed --------------------------------------------------------------------


def test_evaluate_answers_the_same_at_concurrency_1_and_8(tmp_path: Path) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.testing.utilities import prefect_test_harness

    from db import queries
    from db.session import connect
    from flows.pipelines.evaluate import evaluate
    from ttc_nodes.engines import load_proposer

    proposer = load_proposer("testbed:proposer")
    if not getattr(proposer, "row_seeded", False):
        pytest.skip("the testbed proposer is not row-seeded yet: its calls are not batched")
    database = f"sqlite:///{tmp_path / 'ttc.db'}"

    def answers(strategy: str, concurrency: int) -> dict[str, str | None]:
        flow = evaluate.with_options(task_runner=ThreadPoolTaskRunner(max_workers=concurrency))
        summary = flow(
            dataset="testbed:arith?n=8&seed=3",
            strategy=strategy,
            budget=4,
            database=database,
            run_name=f"{strategy}-{concurrency}",
        )
        assert summary["done"] == 8 and summary["failed"] == 0
        with connect(database)() as session:
            traces = queries.trace_of(session, summary["run_id"])
        rode = [step.detail["batch_rows"] for trace in traces for step in trace.steps if "batch_rows" in step.detail]
        assert rode, "no step recorded the batch it rode in"
        return {trace.problem.key: trace.answer for trace in traces}

    with prefect_test_harness(server_startup_timeout=120):
        for strategy in ("best_of_n_weighted", "beam"):
            assert answers(strategy, 1) == answers(strategy, 8), strategy
