"""`testbed:` and `hf:` Llama models serve strategies through the cached sampler: the same greedy
completions as `HFProposer` (stop strings and all), each row's sample fixed by its own seed whatever
its batch, sampled tokens distributed as the model says, and strategies solving end to end."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from db import queries
from db.session import connect
from flows.service.config import ModelSettings
from flows.service.solving import solve_question
from ttc_nodes.engines import EngineError, load_proposer
from ttc_nodes.engines.batched import Row, Sampling
from ttc_nodes.engines.batcher import WINDOW_MS
from ttc_nodes.engines.cached_sampler import CachedProposer, _mix, _mix_int, _signed, uniforms
from ttc_nodes.engines.hf import HFProposer
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed import task
from ttc_nodes.testbed.checkpoints import SHIPPED

pytestmark = pytest.mark.skipif(
    not (SHIPPED / "proposer" / "config.json").is_file(), reason="shipped proposer not present"
)
STEP = DEFAULT_FORMAT.step_separator


@pytest.fixture(scope="module")
def proposer() -> CachedProposer:
    engine = load_proposer("testbed:proposer?device=cpu")
    assert isinstance(engine, CachedProposer) and engine.row_seeded
    return engine


@pytest.fixture(scope="module")
def reference() -> HFProposer:
    engine = load_proposer("testbed:proposer?device=cpu&sampler=generate")
    assert type(engine) is HFProposer and not engine.row_seeded
    return engine


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    # Levels 1..8: prompts of different lengths (left padding) and answers of 1 to 12 steps; the
    # last two start mid-solution, as step-wise search prompts do.
    problems = [task.problems(1, 3, level)[0] for level in range(1, 9)]
    return [DEFAULT_FORMAT.solution(p.question) for p in problems] + [
        DEFAULT_FORMAT.solution(p.question, p.steps[:2]) for p in problems[-2:]
    ]


def fields(rows):
    """What a completion is, but its logprob: a sum of floats that batch shapes round differently."""
    return [[_fields(c) for c in row] for row in rows]


def _fields(c):
    return (c.text, c.stop_reason, c.finish_reason, c.prompt_tokens, c.completion_tokens)


# --- the same completions as HFProposer -------------------------------------------------------------


@pytest.mark.parametrize(("stop", "max_tokens"), [((), 160), ((), 9), ((STEP,), 160), ((" = ", STEP), 40)], ids=repr)
def test_greedy_completions_equal_hf_generate(proposer, reference, prompts, stop, max_tokens):
    got = proposer.generate(prompts, 1, max_tokens=max_tokens, temperature=0.0, stop=stop)
    expected = reference.generate(prompts, 1, max_tokens=max_tokens, temperature=0.0, stop=stop)
    assert fields(got) == fields(expected)
    for [mine], [theirs] in zip(got, expected, strict=True):
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-3)
    if stop:  # else the test would not exercise a cut
        assert any(row[0].stop_reason for row in got)


def test_stop_strings_cut_a_sampled_completion_where_the_uncut_one_first_holds_one(proposer, reference, prompts):
    """Rows keep their seeds, so the stopped completion is the free one cut as HFProposer cuts it:
    before the stop string that occurs first, with the tokens that wrote it counted."""
    from ttc_nodes.engines.hf import _first_stop, _tokens_until

    stops = (" = ", STEP, "+")
    free = proposer.generate(prompts, 3, max_tokens=160, temperature=1.0, seed=4)
    cut = proposer.generate(prompts, 3, max_tokens=160, temperature=1.0, stop=stops, seed=4)
    tokenizer = proposer.tokenizer
    stopped = 0
    for whole, short in zip((c for row in free for c in row), (c for row in cut for c in row), strict=True):
        string, at = _first_stop(whole.text, stops)
        if string is None:
            assert _fields(short) == _fields(whole) and short.logprob == pytest.approx(whole.logprob, abs=1e-5)
            continue
        ids = tokenizer(whole.text, add_special_tokens=False)["input_ids"]
        assert (short.text, short.stop_reason, short.finish_reason) == (whole.text[:at], string, "stop")
        assert short.completion_tokens == _tokens_until(tokenizer, ids, short.text, string)
        assert short.logprob >= whole.logprob - 1e-4  # a prefix of the same tokens
        stopped += 1
    assert stopped > len(prompts)
    # A stop string inside the prompt ("+" in every question) does not end the completion at once.
    assert all(c.completion_tokens > 1 for row in cut for c in row)


# --- each row its own seed ------------------------------------------------------------------------------


def test_a_row_samples_the_same_alone_beside_others_and_at_any_max_batch(proposer, prompts):
    one_row_batches = load_proposer("testbed:proposer?device=cpu&max_batch=1")
    for stop in ((), (STEP,)):
        together = proposer.generate(prompts, 3, max_tokens=64, temperature=1.0, stop=stop, seed=9)
        assert fields(one_row_batches.generate(prompts, 3, max_tokens=64, temperature=1.0, stop=stop, seed=9)) == (
            fields(together)
        )
        alone = proposer.generate(prompts[:1], 3, max_tokens=64, temperature=1.0, stop=stop, seed=9)
        assert fields(alone) == fields(together[:1])
        assert len({c.text for row in together for c in row}) > len(prompts)  # samples, not one answer


def test_a_seeded_row_samples_the_same_at_any_place_in_any_batch(proposer, prompts):
    sampling = Sampling(samples=1, max_tokens=64, temperature=1.0, stop=(STEP,), seed=None)
    rows = [Row(position, prompt, seed=1000 + position) for position, prompt in enumerate(prompts)]
    reference = dict(zip(rows, (c for [c] in proposer._generate_batch(rows, sampling)), strict=True))
    shuffled = rows[3:] + rows[:3]
    mixed = [*shuffled, replace(rows[0], seed=7), replace(rows[0], seed=8)]  # rows of other calls beside them
    for batch in (shuffled, mixed, rows[4:5]):
        for row, [completion] in zip(batch, proposer._generate_batch(batch, sampling), strict=True):
            if row in reference:
                assert _fields(completion) == _fields(reference[row])
                assert completion.logprob == pytest.approx(reference[row].logprob, abs=1e-5)


def test_concurrent_calls_merged_into_shared_batches_get_what_they_get_alone(prompts, monkeypatch):
    monkeypatch.setenv(WINDOW_MS, "200")  # wide enough that the three calls always meet
    engine = CachedProposer(str(SHIPPED / "proposer"), device="cpu")

    def call(index: int) -> list:
        return engine.generate(prompts[index::3], 2, max_tokens=48, temperature=1.0, stop=(STEP,), seed=index)

    alone = [call(index) for index in range(3)]
    merged: dict[int, list] = {}
    threads = [threading.Thread(target=lambda i=i: merged.update({i: call(i)})) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [fields(merged[index]) for index in range(3)] == [fields(rows) for rows in alone]
    assert {c.batch_rows for row in alone[0] for c in row} == {2 * len(prompts[::3])}
    assert {c.batch_rows for index in range(3) for row in merged[index] for c in row} == {2 * len(prompts)}


def test_the_same_seed_repeats_samples_and_other_seeds_change_them(proposer, prompts):
    first = fields(proposer.generate(prompts, 4, max_tokens=64, temperature=1.0, seed=11))
    assert fields(proposer.generate(prompts, 4, max_tokens=64, temperature=1.0, seed=11)) == first
    assert fields(proposer.generate(prompts, 4, max_tokens=64, temperature=1.0, seed=12)) != first
    # Without a seed each row draws one: an unseeded call's samples still differ from each other.
    [unseeded] = proposer.generate(["Question: Compute "], 16, max_tokens=8, temperature=1.0)
    assert len({c.text for c in unseeded}) > 1


def test_the_streams_are_splitmix64_on_wrapping_int64() -> None:
    values = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF, *(7919 * k**5 for k in range(50))]
    mixed = _mix(torch.tensor([_signed(v) for v in values], dtype=torch.long))
    assert [m & (2**64 - 1) for m in mixed.tolist()] == [_mix_int(v) for v in values]
    assert _mix_int(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF  # splitmix64's first output for seed 0
    draws = uniforms(torch.arange(1000, dtype=torch.long), 0)
    assert float(draws.min()) > 0 and float(draws.max()) < 1 and abs(float(draws.mean()) - 0.5) < 0.05


# --- sampled tokens follow the model ---------------------------------------------------------------------


def test_first_tokens_over_many_seeds_follow_the_models_softmax(proposer):
    prompt, draws = "Question: Compute ", 4000  # about 20 likely next characters
    tokenizer = proposer.tokenizer
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        logits = proposer.model(input_ids=ids).logits[0, -1].double()
    [samples] = proposer.generate([prompt], draws, max_tokens=1, temperature=1.0, seed=3)

    def token(completion) -> int:
        if completion.ended_sequence:
            return tokenizer.eos_token_id
        [token] = tokenizer(completion.text, add_special_tokens=False)["input_ids"]
        return token

    counts = Counter(token(c) for c in samples)
    probabilities = torch.softmax(logits, dim=-1)
    for c in samples[:50]:  # each sample's logprob is its token's
        assert c.logprob == pytest.approx(float(probabilities[token(c)].log()), abs=1e-4)
    # As HFProposer's, under the distribution it was drawn from: after temperature.
    [cooler] = proposer.generate([prompt], 20, max_tokens=1, temperature=0.5, seed=3)
    tempered = torch.log_softmax(logits / 0.5, dim=-1)
    assert [c.logprob for c in cooler] == pytest.approx([float(tempered[token(c)]) for c in cooler], abs=1e-4)

    def chi_square(expected_probabilities: torch.Tensor) -> tuple[float, int]:
        expected = expected_probabilities * draws
        common = [token for token in range(len(expected)) if expected[token] >= 5]
        rare_expected = draws - sum(float(expected[t]) for t in common)
        rare_seen = draws - sum(counts[t] for t in common)
        statistic = sum((counts[t] - float(expected[t])) ** 2 / float(expected[t]) for t in common)
        statistic += (rare_seen - rare_expected) ** 2 / max(rare_expected, 1.0)
        return statistic, len(common)  # degrees of freedom: the common tokens and the rest, less one

    statistic, freedom = chi_square(probabilities)
    assert freedom >= 10
    assert statistic < freedom + 6 * (2 * freedom) ** 0.5  # six standard deviations of chi-square
    # The bound has teeth: the same draws against the softmax at temperature 2 fail it.
    wrong, freedom = chi_square(torch.softmax(logits / 2, dim=-1))
    assert wrong > freedom + 6 * (2 * freedom) ** 0.5


# --- engines and URIs ------------------------------------------------------------------------------------


def test_hf_llama_in_float32_on_cpu_samples_through_the_cached_sampler_unless_told(tiny_lm: Path):
    assert type(load_proposer(f"hf:{tiny_lm}?device=cpu")) is CachedProposer
    assert type(load_proposer(f"hf:{tiny_lm}?device=cpu&sampler=generate")) is HFProposer
    assert type(load_proposer(f"hf:{tiny_lm}?device=cpu&dtype=bfloat16")) is HFProposer
    assert type(load_proposer(f"hf:{tiny_lm}?device=cpu&dtype=bfloat16&sampler=cached")) is CachedProposer
    with pytest.raises(ValueError, match="unknown sampler 'fast'; known: generate, cached"):
        load_proposer(f"hf:{tiny_lm}?device=cpu&sampler=fast")


def test_prefix_cache_mb_sets_the_cached_samplers_budget_and_is_refused_by_generate(tiny_lm: Path):
    def budget(uri: str) -> int:
        engine = load_proposer(uri)
        assert isinstance(engine, CachedProposer) and engine.sampler.prefix_cache is not None
        return engine.sampler.prefix_cache.budget_bytes

    assert budget(f"hf:{tiny_lm}?device=cpu") == 256 * 2**20
    assert budget(f"hf:{tiny_lm}?device=cpu&prefix_cache_mb=1.5") == 3 * 2**19
    assert budget(f"hf:{tiny_lm}?device=cpu&prefix_cache_mb=0") == 0
    with pytest.raises(ValueError, match="prefix_cache_mb must be >= 0, got -1"):
        load_proposer(f"hf:{tiny_lm}?device=cpu&prefix_cache_mb=-1")
    with pytest.raises(EngineError, match="prefix_cache_mb is an option of sampler=cached"):
        load_proposer(f"hf:{tiny_lm}?device=cpu&sampler=generate&prefix_cache_mb=8")


def test_cached_sampling_of_a_model_that_is_not_llama_is_refused(tmp_path: Path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.model_fixtures import build_tokenizer

    model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    assert type(load_proposer(f"hf:{tmp_path}?device=cpu")) is HFProposer
    with pytest.raises(EngineError, match=r"sampler=cached samples from a LlamaForCausalLM.*GPT2LMHeadModel"):
        load_proposer(f"hf:{tmp_path}?device=cpu&sampler=cached")


def test_the_testbed_reviser_is_served_by_the_cached_sampler_too(proposer):
    reviser = load_proposer("testbed:reviser?device=cpu")
    assert isinstance(reviser, CachedProposer)
    assert (reviser.uri, reviser.context, reviser.max_batch) == ("testbed:reviser?device=cpu", 1280, 64)
    assert reviser.parameters == sum(p.numel() for p in reviser.model.parameters())


# --- strategies end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "values"),
    [
        ("beam", {"budget": 4, "beam_width": 2, "max_step_tokens": 48, "max_rounds": 8}),
        ("best_of_n_weighted", {"budget": 4, "max_answer_tokens": 192}),
    ],
)
def test_a_strategy_solves_a_testbed_question_through_the_cached_sampler(strategy, values, tmp_path: Path):
    problem = task.problems(1, seed=2, difficulty=2)[0]
    database = f"sqlite:///{tmp_path / 'ttc.db'}"
    outcome = solve_question(
        problem.question,
        strategy=strategy,
        values=values,
        models=ModelSettings(proposer="testbed:proposer", verifier="testbed:prm", reviser=None, seed=5),
        database=database,
        reference=problem.answer,
    )
    with connect(database)() as session:
        [trace] = queries.trace_of(session, outcome.run_id)
    assert trace.status == "done" and trace.error is None
    assert 0 < outcome.spend.generations <= values["budget"] and outcome.spend.proposer_tokens > 0
    assert outcome.correct  # a two-operation question: the testbed proposer gets it right


# --- prefix reuse across search rounds ------------------------------------------------------------------


class Recorded:
    """A proposer that notes, call by call, the prefix-cache counts of the engine it wraps."""

    def __init__(self, engine: CachedProposer) -> None:
        self.engine, self.uri, self.parameters = engine, engine.uri, engine.parameters
        self.calls: list = []

    def generate(self, prompts, n, **options):
        before = self.engine.prefix_cache()
        rows = self.engine.generate(prompts, n, **options)
        self.calls.append(self.engine.prefix_cache() - before)
        return rows


class Steps:
    """A trace sink keeping every step event."""

    def __init__(self) -> None:
        self.events: list = []

    def step(self, event) -> None:
        self.events.append(event)


def test_beam_search_reuses_earlier_rounds_prefixes_and_finds_what_it_finds_without(tmp_path: Path):
    from graphs import registry
    from graphs.runner import run_graph
    from ttc_nodes.engines import load_verifier
    from ttc_nodes.state import SolveContext

    graph = registry.compile_graph("beam", registry.get("beam").configure({"budget": 8, "beam_width": 2}))
    verifier = load_verifier("testbed:prm?device=cpu")
    problem = task.problems(1, seed=4, difficulty=4)[0]
    traces, calls = {}, {}
    for megabytes in (64, 0):
        engine = load_proposer(f"testbed:proposer?device=cpu&prefix_cache_mb={megabytes}")
        assert isinstance(engine, CachedProposer)
        recorded = Recorded(engine)
        steps = Steps()
        result = run_graph(graph, problem.question, SolveContext(proposer=recorded, verifier=verifier, seed=3), steps)
        candidates = [(c.key, c.text, c.answer, c.tokens) for event in steps.events for c in event.new]
        traces[megabytes] = (result.answer, result.chosen, candidates)
        calls[megabytes] = recorded.calls
    assert traces[64] == traces[0]
    assert len(calls[64]) >= 3  # rounds of step-wise search
    assert calls[64][0].cached_tokens == 0 and all(call.cached_tokens > 0 for call in calls[64][1:])
    assert [call.prompt_tokens for call in calls[64]] == [call.prompt_tokens for call in calls[0]]
    assert not any(call.cached_tokens for call in calls[0])
