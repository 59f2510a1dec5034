"""Causal-LM process reward models (Math-Shepherd step tag, RLHFlow chat +/−) and the LLM judge, on
tiny random-weight Llama models whose tokenizer has the tag, `+`, `-` and chat-turn tokens.

The position logic is proven by reading the two logits ourselves from a direct forward pass over
text we lay out here, at positions we find by token id, and comparing with the engine's score.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from ttc_nodes.engines import Completion, EngineError, PromptTooLong, load_proposer, load_verifier
from ttc_nodes.engines.hf import HFProposer, HFValueHeadPRM
from ttc_nodes.engines.judge import JudgePRM, parse_rating
from ttc_nodes.engines.prm import NEUTRAL, ChatJudgePRM, StepTagPRM
from ttc_nodes.engines.uris import prompt_format_of

SPECIALS = ["[PAD]", "[EOS]", "[UNK]", "[BOS]", "<|user|>", "<|assistant|>", "<|end|>"]
PIECES = ["ки", "Step", "+", "-", "#", ":", " ", "\n", "=", "?", *"0123456789"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
QUESTION = "What is 1+2+3?"
SHORT = ["1+2=3", "3+3=6"]
LONG = ["1+2=3", "3+3=6", "6=6", "so 6"]


def build_tokenizer() -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIALS + PIECES)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    turns = "|".join(t.replace("|", r"\|") for t in SPECIALS[4:])
    core.pre_tokenizer = pre_tokenizers.Split(Regex(rf"{turns}|ки|Step|[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 3)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[4:]})
    return tokenizer


def save_judge_lm(directory: Path, *, chat: bool) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(2)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tag_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_judge_lm(tmp_path_factory.mktemp("tag-lm"), chat=False)


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_judge_lm(tmp_path_factory.mktemp("chat-lm"), chat=True)


@pytest.fixture(scope="module")
def step_tag(tag_lm: Path) -> StepTagPRM:
    engine = load_verifier(f"hf:{tag_lm}?format=step_tag&device=cpu")
    assert isinstance(engine, StepTagPRM)
    return engine


@pytest.fixture(scope="module")
def chat_judge(chat_lm: Path) -> ChatJudgePRM:
    engine = load_verifier(f"hf:{chat_lm}?format=chat_judge&device=cpu")
    assert isinstance(engine, ChatJudgePRM)
    return engine


def good_probability(model: Any, ids: list[int], positions: Sequence[int], good: int, bad: int) -> list[float]:
    """softmax over the (good, bad) logits at each position, from a plain forward pass."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return [float(torch.softmax(logits[p, [good, bad]], dim=-1)[0]) for p in positions]


def token_id(engine: Any, token: str) -> int:
    return int(engine.tokenizer.convert_tokens_to_ids(token))


# --- Math-Shepherd step tag ----------------------------------------------------------------------------


def test_step_tag_score_is_the_softmax_of_the_plus_minus_logits_at_each_tag(step_tag: StepTagPRM) -> None:
    text = f"{QUESTION} Step 1: {LONG[0]} ки\nStep 2: {LONG[1]} ки\nStep 3: {LONG[2]} ки\nStep 4: {LONG[3]} ки\n"
    ids = step_tag.tokenizer(text)["input_ids"]
    tags = [i for i, t in enumerate(ids) if t == token_id(step_tag, "ки")]
    assert ids[0] == step_tag.tokenizer.bos_token_id and len(tags) == len(LONG)

    [scored] = step_tag.score(QUESTION, [LONG])

    expected = good_probability(step_tag.model, ids, tags, token_id(step_tag, "+"), token_id(step_tag, "-"))
    assert scored.step_scores == pytest.approx(expected, abs=1e-5)
    assert scored.tokens == len(ids) and not scored.truncated


def test_step_tag_tag_and_judgement_tokens_come_from_the_uri(tag_lm: Path) -> None:
    engine = load_verifier(f"hf:{tag_lm}?format=step_tag&tag=%23&good=1&bad=0&device=cpu")
    assert isinstance(engine, StepTagPRM)
    text = f"{QUESTION} Step 1: {SHORT[0]} #\nStep 2: {SHORT[1]} #\n"
    ids = engine.tokenizer(text)["input_ids"]
    tags = [i for i, t in enumerate(ids) if t == token_id(engine, "#")]

    [scored] = engine.score(QUESTION, [SHORT])

    expected = good_probability(engine.model, ids, tags, token_id(engine, "1"), token_id(engine, "0"))
    assert scored.step_scores == pytest.approx(expected, abs=1e-5)


def test_judgement_words_that_are_not_one_token_are_rejected(tag_lm: Path) -> None:
    with pytest.raises(EngineError, match=r"good token 'Step\+' is 2 tokens"):
        StepTagPRM(str(tag_lm), good="Step+", device="cpu")


# --- RLHFlow chat +/- ----------------------------------------------------------------------------------


def test_chat_judge_score_is_p_plus_over_plus_and_minus_before_each_assistant_judgement(
    chat_judge: ChatJudgePRM,
) -> None:
    turns = [{"role": "user", "content": f"{QUESTION} {LONG[0]}"}, {"role": "assistant", "content": "+"}]
    for step in LONG[1:]:
        turns += [{"role": "user", "content": step}, {"role": "assistant", "content": "+"}]
    text = chat_judge.tokenizer.apply_chat_template(turns, tokenize=False)
    ids = chat_judge.tokenizer(text, add_special_tokens=False)["input_ids"]
    assistant = token_id(chat_judge, "<|assistant|>")
    judgements = [i for i in range(1, len(ids)) if ids[i - 1] == assistant]
    assert len(judgements) == len(LONG) and all(ids[i] == token_id(chat_judge, "+") for i in judgements)

    [scored] = chat_judge.score(QUESTION, [LONG])

    plus, minus = token_id(chat_judge, "+"), token_id(chat_judge, "-")
    expected = good_probability(chat_judge.model, ids, [i - 1 for i in judgements], plus, minus)
    assert scored.step_scores == pytest.approx(expected, abs=1e-5)
    assert scored.tokens == len(ids)


def test_chat_judge_needs_a_chat_template(tag_lm: Path) -> None:
    with pytest.raises(EngineError, match="needs a tokenizer with a chat template"):
        ChatJudgePRM(str(tag_lm), device="cpu")


# --- properties both layouts have ----------------------------------------------------------------------


@pytest.fixture(params=["step_tag", "chat_judge"])
def prm(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def test_one_score_in_the_unit_interval_per_step(prm: Any) -> None:
    solutions = [SHORT, LONG, ["6"]]

    scored = prm.score(QUESTION, solutions)

    assert [len(s.step_scores) for s in scored] == [len(steps) for steps in solutions]
    assert all(0.0 < x < 1.0 for s in scored for x in s.step_scores)
    assert [s.tokens for s in scored] == [len(prm.encode(QUESTION, steps)[0]) for steps in solutions]


def test_scores_do_not_depend_on_padding_or_batching(prm: Any, tag_lm: Path, chat_lm: Path) -> None:
    [alone] = prm.score(QUESTION, [SHORT])
    first, _ = prm.score(QUESTION, [SHORT, LONG])
    _, last = prm.score(QUESTION, [LONG, SHORT])
    one_at_a_time = type(prm)(str(chat_lm if isinstance(prm, ChatJudgePRM) else tag_lm), device="cpu", max_batch=1)

    assert first.step_scores == pytest.approx(alone.step_scores, abs=1e-5)
    assert last.step_scores == pytest.approx(alone.step_scores, abs=1e-5)
    chunked = one_at_a_time.score(QUESTION, [LONG, SHORT])
    assert [s.step_scores for s in chunked] == [
        pytest.approx(s.step_scores, abs=1e-5) for s in prm.score(QUESTION, [LONG, SHORT])
    ]


def test_scores_of_a_prefix_are_the_first_scores_of_the_whole(prm: Any) -> None:
    [whole] = prm.score(QUESTION, [LONG])
    prefixes = prm.score(QUESTION, [LONG[:k] for k in range(1, len(LONG) + 1)])

    for k, prefix in enumerate(prefixes, start=1):
        assert prefix.step_scores == pytest.approx(whole.step_scores[:k], abs=1e-5)


@pytest.mark.parametrize("layout", ["step_tag", "chat_judge"])
def test_long_inputs_keep_the_first_token_and_the_steps_and_are_flagged(
    layout: str, tag_lm: Path, chat_lm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = chat_lm if layout == "chat_judge" else tag_lm
    full = load_verifier(f"hf:{path}?format={layout}&device=cpu")
    short = load_verifier(f"hf:{path}?format={layout}&device=cpu&max_length=40")
    assert isinstance(full, StepTagPRM | ChatJudgePRM) and isinstance(short, StepTagPRM | ChatJudgePRM)
    long_question = "Sum 1, 2, 3 and 4 ? " + QUESTION
    ids, positions = full.encode(long_question, LONG)
    assert len(full.tokenizer(long_question, add_special_tokens=False)["input_ids"]) < 40 < len(ids)

    with caplog.at_level(logging.WARNING, logger="ttc_nodes.engines.prm"):
        [scored] = short.score(long_question, [LONG])
        [small] = short.score("1?", [["2"]])

    dropped = len(ids) - 40
    head = 1 if ids[0] == full.tokenizer.bos_token_id else 0
    kept = ids[:head] + ids[head + dropped :]
    kept_positions = [p - dropped for p in positions]
    plus, minus = token_id(full, full.good), token_id(full, full.bad)
    expected = [
        value if p >= head else NEUTRAL
        for p, value in zip(
            kept_positions,
            good_probability(full.model, kept, [max(p, 0) for p in kept_positions], plus, minus),
            strict=True,
        )
    ]
    assert scored.truncated and scored.tokens == 40
    assert scored.step_scores == pytest.approx(expected, abs=1e-5)
    assert not small.truncated
    assert f"PRM input of {len(ids)} tokens truncated to 40" in caplog.text


@pytest.mark.parametrize("layout", ["step_tag", "chat_judge"])
def test_a_question_that_alone_fills_the_context_is_refused_naming_its_tokens(
    layout: str, tag_lm: Path, chat_lm: Path
) -> None:
    path = chat_lm if layout == "chat_judge" else tag_lm
    short = load_verifier(f"hf:{path}?format={layout}&device=cpu&max_length=40")
    question = "Sum the numbers 1, 2, 3, 4, 5, 6, 7, 8 and 9 ? " + QUESTION  # 61 tokens

    with pytest.raises(PromptTooLong) as refused:
        short.score(question, [LONG])

    assert str(refused.value) == (
        f"{short.uri}: a question of 61 tokens does not fit the engine's context of 40 tokens"
    )
    assert (refused.value.tokens, refused.value.context) == (61, 40)


# --- chosen by URI -------------------------------------------------------------------------------------


def test_each_format_is_selected_by_its_uri_option(tag_lm: Path, chat_lm: Path, tiny_prm: Path) -> None:
    assert type(load_verifier(f"hf:{tag_lm}?format=step_tag&device=cpu")) is StepTagPRM
    assert type(load_verifier(f"hf:{chat_lm}?format=chat_judge&device=cpu")) is ChatJudgePRM
    assert type(load_verifier(f"hf:{tiny_prm}?format=value_head&device=cpu")) is HFValueHeadPRM
    assert type(load_verifier(f"hf:{tiny_prm}?device=cpu")) is HFValueHeadPRM
    assert type(load_verifier(f"judge:hf:{tag_lm}?device=cpu")) is JudgePRM


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("format=nope", "unknown PRM format 'nope'.*value_head, confidence, step_tag, chat_judge"),
        ("format=step_tag&colour=red", "colour"),
        ("format=chat_judge&tag=x", "tag"),
        ("format=value_head&good=x", "good"),
        ("format=step_tag&max_length=many", "max_length"),
    ],
)
def test_bad_prm_options_are_rejected_naming_them(tag_lm: Path, query: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_verifier(f"hf:{tag_lm}?{query}")


# --- LLM as judge --------------------------------------------------------------------------------------


class CountingProposer:
    """A real proposer that counts the calls and prompts it is given."""

    def __init__(self, inner: HFProposer) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.parameters = inner.parameters
        self.calls: list[tuple[list[str], float]] = []

    def generate(self, prompts: Sequence[str], n: int, **settings: Any) -> list[list[Completion]]:
        self.calls.append((list(prompts), settings["temperature"]))
        return self.inner.generate(prompts, n, **settings)


@pytest.fixture(scope="module")
def judge_lm(tag_lm: Path) -> HFProposer:
    engine = load_proposer(f"hf:{tag_lm}?device=cpu")
    assert isinstance(engine, HFProposer)
    return engine


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        (" 7", 0.7),
        ("10", 1.0),
        (" 8/10 because", 0.8),
        ("2.5", 0.25),
        (" Yes, it is.", 1.0),
        ("no", 0.0),
        ("Incorrect.", 0.0),
        ("+-", None),
        ("", None),
        ("42", None),
    ],
)
def test_parse_rating_reads_a_number_out_of_ten_or_yes_no(reply: str, rating: float | None) -> None:
    assert parse_rating(reply) == (pytest.approx(rating) if rating is not None else None)


def test_judge_rates_every_prefix_of_every_candidate_in_one_greedy_call(
    judge_lm: HFProposer, caplog: pytest.LogCaptureFixture
) -> None:
    solutions = [SHORT, LONG, ["6"]]
    seen: list[float | None] = []
    # The random model answers "1" in one token and "12" (out of range) in two: both kinds of reply.
    for max_tokens in (1, 2):
        counting = CountingProposer(judge_lm)
        judge = JudgePRM(counting, max_tokens=max_tokens)
        caplog.clear()

        with caplog.at_level(logging.WARNING, logger="ttc_nodes.engines.judge"):
            scored = judge.score(QUESTION, solutions)

        [(prompts, temperature)] = counting.calls
        assert temperature == 0.0
        assert prompts == [
            judge.prompt(QUESTION, steps[:k])[0] for steps in solutions for k in range(1, len(steps) + 1)
        ]
        replies = judge_lm.generate(prompts, 1, max_tokens=max_tokens, temperature=0.0, stop=["\n"])
        readings = [parse_rating(reply.text) for [reply] in replies]
        assert [x for s in scored for x in s.step_scores] == pytest.approx(
            [NEUTRAL if r is None else r for r in readings]
        )
        assert [len(s.step_scores) for s in scored] == [2, 4, 1]
        assert [s.tokens for s in scored] == [
            sum(r.prompt_tokens + r.completion_tokens for [r] in replies[:2]),
            sum(r.prompt_tokens + r.completion_tokens for [r] in replies[2:6]),
            sum(r.prompt_tokens + r.completion_tokens for [r] in replies[6:]),
        ]
        for [reply], reading in zip(replies, readings, strict=True):
            assert (f"unreadable rating {reply.text!r}" in caplog.text) == (reading is None)
        seen += readings
    assert None in seen and any(r is not None for r in seen)


def test_judge_scores_of_a_prefix_are_the_first_scores_of_the_whole(judge_lm: HFProposer) -> None:
    judge = JudgePRM(judge_lm, max_tokens=4)
    [whole] = judge.score(QUESTION, [LONG])

    prefixes = judge.score(QUESTION, [LONG[:k] for k in range(1, len(LONG) + 1)])

    for k, prefix in enumerate(prefixes, start=1):
        assert prefix.step_scores == pytest.approx(whole.step_scores[:k])


def test_judge_shortens_a_long_question_from_its_start_and_keeps_the_steps(
    judge_lm: HFProposer, caplog: pytest.LogCaptureFixture
) -> None:
    judge = JudgePRM(judge_lm, max_tokens=2, max_chars=200)
    question = "x" * 300 + " the end of the question?"

    text, cut = judge.prompt(question, LONG)
    with caplog.at_level(logging.WARNING, logger="ttc_nodes.engines.judge"):
        [scored] = judge.score(question, [LONG])

    assert cut and len(text) <= 201
    assert "the end of the question?" in text and "\n\n".join(LONG) in text
    assert scored.truncated and len(scored.step_scores) == len(LONG)
    assert "question shortened to fit 200 characters" in caplog.text


def test_judge_uri_wraps_the_proposer_uri_and_takes_its_own_options(tag_lm: Path, judge_lm: HFProposer) -> None:
    judge = load_verifier(f"judge:hf:{tag_lm}?judge_max_tokens=3&device=cpu&judge_max_chars=500")

    assert isinstance(judge, JudgePRM)
    assert judge.proposer is judge_lm  # the same URI loads the same engine
    assert (judge.max_tokens, judge.max_chars, judge.parameters) == (3, 500, judge_lm.parameters)
    with pytest.raises(ValueError, match="judge_colour"):
        load_verifier(f"judge:hf:{tag_lm}?judge_colour=red")


# --- chat prompts on a proposer URI --------------------------------------------------------------------


def test_chat_flag_on_a_proposer_uri_gives_its_chat_layout(chat_lm: Path, tag_lm: Path) -> None:
    engine = load_proposer(f"hf:{chat_lm}?chat=1&device=cpu")

    prompt_format = prompt_format_of(engine)
    assert prompt_format.chat
    assert prompt_format.solution("1+2?", ["1+2=3"]) == "<|user|>1+2?<|end|><|assistant|>1+2=3\n\n"
    assert not prompt_format_of(load_proposer(f"hf:{chat_lm}?device=cpu")).chat
    judge = JudgePRM(engine)
    text, _ = judge.prompt("1+2?", ["1+2=3"])
    assert text.startswith("<|user|>Question: 1+2?") and text.endswith("Rating:<|end|><|assistant|>")
    with pytest.raises(EngineError, match=r"chat=1 .* has none"):
        load_proposer(f"hf:{tag_lm}?chat=1&device=cpu")
    with pytest.raises(ValueError, match="chat='maybe' is not a valid flag"):
        load_proposer(f"hf:{chat_lm}?chat=maybe")


def test_judge_is_a_known_verifier_scheme() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*known schemes: hf, judge, testbed"):
        load_verifier("nope:x")
