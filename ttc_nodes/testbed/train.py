"""Train the three testbed models, top to bottom.

1. proposer: a small Llama learns to write step-by-step solutions from generated problems whose
   worked solutions contain occasional plausible slips (more carries, more slips), so its own
   mistakes grow with difficulty — on top of those its small capacity makes.
2. samples: the proposer answers training problems (a pool of full answers per problem).
3. PRM: its step prefixes are labelled by Monte-Carlo rollouts from the proposer (fraction that
   reach the right answer), and new layers with a value head on the proposer's frozen body learn
   them with BCE, after first learning to read the proposer's own confidence (see `train_prm`).
4. reviser: a copy of the proposer learns to write a correct answer with 0..4 wrong answers of the
   same question in its context (see `trajectories.py`).

`train(out, quick, seed, start, stop)` runs them in order and writes `out/{proposer,prm,reviser}/`, the
sampled answers and rollout labels in `out/training-data/` and the recipe, seed and stage times in
`out/training.json`; `start` resumes at a later stage from what the earlier ones left, `stop` ends
after an earlier one. Answers and rollouts are sampled with `CachedSampler`; the PRM's distillation
and the reviser train on length-grouped batches. Stage times on 2 CPU cores (`training.json` keeps
them), scaled to a machine doing a proposer step in 0.19 s: proposer 7.4 min, samples 1.0, rollouts
4.0, PRM 2.8, reviser 4.5; about 20 min.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from torch.nn import functional as F

from ttc_nodes.engines.confidence import running_confidence
from ttc_nodes.engines.transformers_io import prm_inputs, quiet_transformers, right_pad
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed import task
from ttc_nodes.testbed.model import (
    FULL,
    QUICK,
    ModelSize,
    assemble_prm,
    build_tokenizer,
    new_causal_lm,
    parameter_count,
    prm_head,
)
from ttc_nodes.testbed.rollouts import label_prefixes, reaches
from ttc_nodes.testbed.sampler import CachedSampler
from ttc_nodes.testbed.trajectories import generated_examples, revision_examples

log = logging.getLogger(__name__)
T = TypeVar("T")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU trains far more steps
TRAIN_SEED_OFFSET = 1_000_000  # training problems use seeds far from the small seeds of eval sets


@dataclass(frozen=True)
class Recipe:
    size: ModelSize
    proposer_steps: int
    proposer_batch: int
    proposer_lr: float
    slip_rate: float  # chance of a slip per carry in the proposer's training solutions
    pool_problems: int  # training problems the proposer answers for the PRM and reviser data
    pool_samples: int  # answers per pool problem
    prm_problems: int  # the first pool problems, whose answers' prefixes get rollouts
    prm_solutions: int  # sampled answers per such problem whose prefixes get rollouts
    rollouts: int  # Monte-Carlo rollouts per step prefix
    prm_layers: int  # new decoder layers the PRM puts on the proposer's (frozen) body
    prm_distill_steps: int  # steps learning the proposer's running confidence on the pool's answers
    prm_distill_lr: float
    prm_epochs: int  # epochs on the Monte-Carlo labels
    prm_batch: int
    prm_lr: float
    reviser_steps: int
    reviser_batch: int
    reviser_lr: float
    reviser_generated: int  # training problems whose generator-made trajectories join the paper's
    reviser_generated_share: float  # share of the reviser's batches drawn from those
    reviser_generated_attempts: tuple[int, int]  # k of a generated trajectory, uniform in this range
    max_tokens: int  # longest answer sampled


FULL_RECIPE = Recipe(
    size=FULL,
    proposer_steps=2200,
    proposer_batch=32,
    proposer_lr=2e-3,
    slip_rate=task.SLIP_RATE,
    pool_problems=512,
    pool_samples=16,
    prm_problems=256,
    prm_solutions=2,
    rollouts=8,
    prm_layers=2,
    prm_distill_steps=1500,
    prm_distill_lr=3e-3,
    prm_epochs=4,
    prm_batch=32,
    prm_lr=1e-4,
    reviser_steps=800,
    reviser_batch=16,
    reviser_lr=5e-4,
    reviser_generated=3000,
    reviser_generated_share=0.8,
    reviser_generated_attempts=(2, 4),
    max_tokens=192,
)
QUICK_RECIPE = Recipe(
    size=QUICK,
    proposer_steps=30,
    proposer_batch=16,
    proposer_lr=3e-3,
    slip_rate=task.SLIP_RATE,
    pool_problems=4,
    pool_samples=4,
    prm_problems=3,
    prm_solutions=1,
    rollouts=2,
    prm_layers=1,
    prm_distill_steps=4,
    prm_distill_lr=2e-3,
    prm_epochs=1,
    prm_batch=8,
    prm_lr=1e-3,
    reviser_steps=4,
    reviser_batch=4,
    reviser_lr=1e-3,
    reviser_generated=4,
    reviser_generated_share=0.5,
    reviser_generated_attempts=(1, 4),
    max_tokens=48,
)


STAGES = ("proposer", "samples", "prm", "reviser")
DATA_DIR = "training-data"  # sampled answers and rollout labels, kept beside the checkpoints (not shipped)


def train(
    out: Path, quick: bool = False, seed: int = 0, start: str = "proposer", stop: str = "reviser"
) -> dict[str, float]:
    """Train proposer, PRM and reviser into `out/{proposer,prm,reviser}`; returns stage timings.

    `start` skips the stages before it and reuses what they left in `out`: `samples` keeps the
    proposer, `prm` also the sampled answers and rollout labels, `reviser` trains the reviser alone.
    `stop` is the last stage run (`--start prm --stop prm` retrains the PRM alone).
    """
    for stage in (start, stop):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    if STAGES.index(stop) < STAGES.index(start):
        raise ValueError(f"--stop {stop} comes before --start {start}; stages run in order: {', '.join(STAGES)}")
    last = STAGES.index(stop)
    recipe = QUICK_RECIPE if quick else FULL_RECIPE
    out.mkdir(parents=True, exist_ok=True)
    data = out / DATA_DIR
    data.mkdir(exist_ok=True)
    first = STAGES.index(start)
    timings: dict[str, float] = {}
    tokenizer = build_tokenizer()
    pool = task.problems(recipe.pool_problems, TRAIN_SEED_OFFSET + seed)

    started = time.perf_counter()
    if first == 0:
        save(train_proposer(recipe, tokenizer, seed), tokenizer, out / "proposer")
        timings["proposer"] = time.perf_counter() - started
    if last == 0:
        write_manifest(out, recipe, seed, start, timings, stop)
        return timings
    # Later stages start from the saved (float16) proposer, so a restart at any stage trains the same.
    proposer = _load_saved(out / "proposer")

    if first <= 1:
        started = time.perf_counter()
        engine = CachedSampler(proposer, tokenizer)
        answers = sample_answers(engine, pool, recipe.pool_samples, recipe.max_tokens, seed)
        _write_json(data / "samples.json", answers)
        timings["samples"] = time.perf_counter() - started

        started = time.perf_counter()
        labelled = label_prefixes(
            engine,
            [
                (problem, DEFAULT_FORMAT.split_steps(text))
                for problem, texts in zip(pool[: recipe.prm_problems], answers[: recipe.prm_problems], strict=True)
                for text in texts[: recipe.prm_solutions]
            ],
            rollouts=recipe.rollouts,
            max_tokens=recipe.max_tokens,
            seed=seed,
            progress=_progress_callback("MC rollouts"),
        )
        _write_json(data / "rollouts.json", labelled)
        timings["rollouts"] = time.perf_counter() - started
    else:
        answers = _read_json(data / "samples.json", len(pool))

    if first <= 2 <= last:
        started = time.perf_counter()
        if first == 2:
            labelled = [tuple(row) for row in _read_json(data / "rollouts.json")]
        answered = [
            (problem.question, steps)
            for problem, texts in zip(pool, answers, strict=True)
            for steps in map(DEFAULT_FORMAT.split_steps, texts)
            if steps
        ]
        prm = train_prm(recipe, tokenizer, proposer, answered, labelled, seed)
        save(prm, tokenizer, out / "prm")
        timings["prm"] = time.perf_counter() - started

    if last < 3:
        write_manifest(out, recipe, seed, start, timings, stop)
        return timings
    started = time.perf_counter()
    examples = revision_examples(
        [(problem.question, problem.answer, texts) for problem, texts in zip(pool, answers, strict=True)],
        is_correct=reaches,
        seed=seed,
    )
    generated = generated_examples(
        task.problems(recipe.reviser_generated, TRAIN_SEED_OFFSET * 3 + seed),
        slip_rate=recipe.slip_rate,
        seed=seed,
        min_attempts=recipe.reviser_generated_attempts[0],
        max_attempts=recipe.reviser_generated_attempts[1],
    )
    reviser = train_reviser(recipe, tokenizer, proposer, examples, seed, generated)
    save(reviser, tokenizer, out / "reviser")
    timings["reviser"] = time.perf_counter() - started
    write_manifest(out, recipe, seed, start, timings, stop)
    return timings


def write_manifest(
    out: Path, recipe: Recipe, seed: int, start: str, timings: dict[str, float], stop: str = STAGES[-1]
) -> None:
    """`out/training.json`: how the checkpoints in `out` were made (recipe, seed, stage times, versions)."""
    import platform

    import transformers

    manifest: dict[str, Any] = {
        "command": "ttc testbed train"
        + (f" --start {start}" if start != STAGES[0] else "")
        + (f" --stop {stop}" if stop != STAGES[-1] else ""),
        "recipe": asdict(recipe),
        "seed": seed,
        "device": DEVICE.type,
        "torch_threads": torch.get_num_threads(),
        "seconds": {stage: round(value, 1) for stage, value in timings.items()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    # A restart keeps the record of the run that made the stages it reused.
    previous = out / "training.json"
    if start != STAGES[0] and previous.is_file():
        manifest["earlier_run"] = json.loads(previous.read_text())
    previous.write_text(json.dumps(manifest, indent=2) + "\n")


def _load_saved(directory: Path) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    quiet_transformers()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"no trained model at {directory}: run the earlier stages first")
    return on_device(LlamaForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32)).eval()


def load_sampler(directory: Path) -> CachedSampler:
    """A fast sampler over a saved testbed causal LM (its tokenizer saved beside it)."""
    from transformers import AutoTokenizer

    model = _load_saved(directory)
    return CachedSampler(model, AutoTokenizer.from_pretrained(directory, local_files_only=True))


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value))


def _read_json(path: Path, expected: int | None = None) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the stages before this one first")
    value = json.loads(path.read_text())
    if expected is not None and len(value) != expected:
        raise ValueError(f"{path} holds {len(value)} entries, the recipe expects {expected}: rerun the earlier stages")
    return value


# --------------------------------------------------------------------------------------- proposer


def proposer_text(question: str, steps: Sequence[str], eos: str) -> tuple[str, str]:
    """(prompt, target): what the proposer sees, and the solution it learns to write after it."""
    return DEFAULT_FORMAT.solution(question), DEFAULT_FORMAT.join_steps(steps) + eos


def proposer_batches(recipe: Recipe, eos: str, seed: int) -> Iterator[list[tuple[str, str]]]:
    """Endless batches of fresh problems, one difficulty per batch (similar lengths, little padding)."""
    for step in range(recipe.proposer_steps):
        rng = random.Random(f"proposer-{seed}-{step}")
        level = rng.randint(1, task.MAX_DIFFICULTY)
        batch = task.problems(recipe.proposer_batch, TRAIN_SEED_OFFSET * 2 + seed * 100_003 + step, level)
        yield [
            proposer_text(
                problem.question,
                task.worked_solution(problem.start, problem.operations, slip_rate=recipe.slip_rate, rng=rng),
                eos,
            )
            for problem in batch
        ]


def train_proposer(recipe: Recipe, tokenizer, seed: int) -> torch.nn.Module:
    model = on_device(new_causal_lm(recipe.size, tokenizer, seed))
    log.info("proposer: %d parameters", parameter_count(model))
    batches = proposer_batches(recipe, tokenizer.eos_token, seed)
    fit_causal_lm(model, tokenizer, batches, recipe.proposer_steps, recipe.proposer_lr, "proposer")
    return model


def fit_causal_lm(
    model: torch.nn.Module,
    tokenizer,
    batches: Iterator[list[tuple[str, str]]],
    steps: int,
    lr: float,
    name: str,
) -> None:
    """Next-token training on (prompt, target) pairs; the loss counts target tokens only."""

    def loss_of(pairs: list[tuple[str, str]]) -> torch.Tensor:
        input_ids, labels, mask = encode_pairs(tokenizer, pairs)
        return model(input_ids=input_ids.to(DEVICE), attention_mask=mask.to(DEVICE), labels=labels.to(DEVICE)).loss

    optimise(model, map(loss_of, batches), steps, lr, name)


def optimise(model: torch.nn.Module, losses: Iterator[torch.Tensor], steps: int, lr: float, name: str) -> None:
    """AdamW with warm-up and cosine decay over `steps` losses (each computed lazily, one per batch),
    gradients clipped at 1; a progress bar shows the running loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = warmup_cosine(steps)
    model.train()
    with _progress() as progress:
        bar = progress.add_task(name, total=steps, loss="")
        for step, loss in enumerate(losses):
            for group in optimizer.param_groups:
                group["lr"] = lr * schedule(step)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.update(bar, advance=1, loss=f"loss {loss.item():.4f}")
    model.eval()


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, labels (-100 on prompt and padding) and attention mask."""
    rows = []
    for prompt, target in pairs:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids))
    input_ids, mask = right_pad([ids for ids, _ in rows], tokenizer.pad_token_id)
    labels, _ = right_pad([targets for _, targets in rows], -100)
    return input_ids, labels, mask


def warmup_cosine(steps: int, warmup_fraction: float = 0.05, floor: float = 0.1) -> Callable[[int], float]:
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# ---------------------------------------------------------------------------------------- samples


def sample_answers(
    engine: CachedSampler, problems: Sequence[task.ArithProblem], n: int, max_tokens: int, seed: int
) -> list[list[str]]:
    """`n` full answers per problem, sampled at temperature 1."""
    answers: list[list[str]] = []
    chunk = max(1, engine.max_batch // n)
    with _progress() as progress:
        bar = progress.add_task("sampling answers", total=len(problems), loss="")
        for start in range(0, len(problems), chunk):
            group = problems[start : start + chunk]
            prompts = [DEFAULT_FORMAT.solution(problem.question) for problem in group]
            completions = engine.generate(prompts, n, max_tokens=max_tokens, temperature=1.0, seed=seed + start)
            answers.extend([c.text for c in row] for row in completions)
            progress.update(bar, advance=len(group))
    return answers


# -------------------------------------------------------------------------------------------- PRM


def train_prm(
    recipe: Recipe,
    tokenizer,
    proposer,
    answered: Sequence[tuple[str, list[str]]],
    labelled: Sequence[tuple[str, list[str], list[float]]],
    seed: int,
) -> torch.nn.Module:
    """The PRM: `recipe.prm_layers` new layers and a value head on the proposer's frozen body.

    1. Distillation (no reference answers needed): on every pool answer, at every answer token, BCE
       against the proposer's running confidence — the lowest probability it gave any of its answer
       tokens so far (`confidence_targets`) — and, through a second linear head used only here,
       against that token's own probability. A slip is a token the proposer itself would rarely
       have written, but a value head reading one position cannot see that; the new layers learn
       to compare each token with what the body predicted for it, and to carry the lowest forward.
    2. The paper's objective: BCE on the soft Monte-Carlo labels, read at each step's last separator
       token (as `prm_inputs` lays it out).
    Only the new layers train, so the body's states are computed once (`body_states`).
    """
    head = on_device(prm_head(proposer, recipe.prm_layers, seed))
    rng = random.Random(f"prm-{seed}")

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    separator = len(encode(DEFAULT_FORMAT.step_separator))
    encoded = [prm_inputs(tokenizer, question, steps) for question, steps in answered]
    states = body_states(proposer, [ids for ids, _ in encoded], "PRM body (answers)")
    confident = [
        (
            hidden,
            confidence_targets(
                log_probs,
                answer_start=len(encode(DEFAULT_FORMAT.solution(question))),
                skipped=[end - k for end in ends for k in range(separator)],
            ),
        )
        for (hidden, log_probs), (question, _), (_, ends) in zip(states, answered, encoded, strict=True)
    ]

    if confident and recipe.prm_distill_steps:
        token_head = on_device(torch.nn.Linear(head.config.hidden_size, 1))  # training only; not saved
        trained = torch.nn.ModuleList([head, token_head])
        distill_batches = length_grouped_batches(
            confident, [len(hidden) for hidden, _ in confident], recipe.prm_batch, recipe.prm_distill_steps, rng
        )
        optimise(
            trained,
            map(partial(_distill_loss, head, token_head), distill_batches),
            recipe.prm_distill_steps,
            recipe.prm_distill_lr,
            "PRM distil",
        )

    mc_encoded = [(*prm_inputs(tokenizer, question, steps), labels) for question, steps, labels in labelled]
    mc_rows = []
    for (hidden, _), (ids, positions, labels) in zip(
        body_states(proposer, [ids for ids, _, _ in mc_encoded], "PRM body (MC)"), mc_encoded, strict=True
    ):
        targets = torch.full((len(ids),), -1.0)
        targets[positions] = torch.tensor(labels, dtype=torch.float)
        mc_rows.append((hidden, targets))

    def mc_batches() -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        for _ in range(recipe.prm_epochs):
            rng.shuffle(mc_rows)
            for start in range(0, len(mc_rows), recipe.prm_batch):
                yield mc_rows[start : start + recipe.prm_batch]

    steps_total = recipe.prm_epochs * math.ceil(len(mc_rows) / recipe.prm_batch)
    optimise(head, map(partial(_head_loss, head), mc_batches()), steps_total, recipe.prm_lr, "PRM")
    return assemble_prm(proposer, head)


@torch.inference_mode()
def body_states(
    proposer, sequences: Sequence[list[int]], name: str, batch: int = 64
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each token sequence: the residual stream after the proposer's last layer (before its
    final norm), shape (T, hidden), and the log-probability the proposer gave each token (T,; 0 for
    the first). Kept on the CPU; sequences run in batches of similar length."""
    captured: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output) -> None:
        captured["hidden"] = output[0] if isinstance(output, tuple) else output

    hook = proposer.model.layers[-1].register_forward_hook(keep)
    results: list[tuple[torch.Tensor, torch.Tensor]] = [(torch.empty(0), torch.empty(0))] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    try:
        with _progress() as progress:
            bar = progress.add_task(name, total=len(sequences), loss="")
            for start in range(0, len(order), batch):
                chosen = order[start : start + batch]
                input_ids, mask = right_pad([sequences[i] for i in chosen], 0)
                logits = proposer(input_ids=input_ids.to(DEVICE), attention_mask=mask.to(DEVICE)).logits.float()
                picked = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None].to(DEVICE))[..., 0]
                for row, index in enumerate(chosen):
                    length = len(sequences[index])
                    log_probs = torch.cat([torch.zeros(1), picked[row, : length - 1].cpu()])
                    results[index] = (captured["hidden"][row, :length].float().cpu(), log_probs)
                progress.update(bar, advance=len(chosen))
    finally:
        hook.remove()
    return results


def confidence_targets(log_probs: torch.Tensor, answer_start: int, skipped: Sequence[int] = ()) -> torch.Tensor:
    """Per token, two targets: the lowest probability the proposer gave any of its answer tokens up
    to and including this one, and this token's own probability; -1 (not trained) before the
    answer. `skipped` positions count as certain: the step separators that `prm_inputs` writes are
    layout, not the proposer's writing (after the last step it would have ended the answer instead)."""
    targets = torch.full((len(log_probs), 2), -1.0)
    if answer_start < len(log_probs):
        answer = [position - answer_start for position in skipped if position >= answer_start]
        targets[answer_start:, 0] = running_confidence(log_probs[answer_start:], answer)
        own = log_probs[answer_start:].clone()
        own[answer] = 0.0
        targets[answer_start:, 1] = torch.exp(own)
    return targets


def _head_loss(head, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """BCE of the PRM head's logits on body states against soft targets (positions < 0 skipped)."""
    states, mask, targets = _padded(batch)
    return _soft_bce(head(inputs_embeds=states, attention_mask=mask).logits[..., 0], targets)


def _distill_loss(head, token_head, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The value head against running confidence plus a token head against each token's probability."""
    states, mask, targets = _padded(batch)
    hidden = head.dropout(head.model(inputs_embeds=states, attention_mask=mask).last_hidden_state)
    return _soft_bce(head.score(hidden)[..., 0], targets[..., 0]) + _soft_bce(
        token_head(hidden)[..., 0], targets[..., 1]
    )


def _padded(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """Body states, attention mask and targets (-1 on padding) of a batch, on the training device."""
    states, mask = right_pad([hidden for hidden, _ in batch], 0.0)
    targets, _ = right_pad([target for _, target in batch], -1.0)
    return states.to(DEVICE), mask.to(DEVICE), targets.to(DEVICE)


def _soft_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    scored = targets >= 0
    return F.binary_cross_entropy_with_logits(logits[scored], targets[scored])


# ---------------------------------------------------------------------------------------- reviser


def train_reviser(
    recipe: Recipe,
    tokenizer,
    proposer,
    examples: Sequence[tuple[str, list[str], str]],
    seed: int,
    generated: Sequence[tuple[str, list[str], str]] = (),
) -> torch.nn.Module:
    """A copy of the proposer fine-tuned on (revision prompt with wrong attempts → correct answer).

    `examples` are the paper's trajectories from the proposer's samples. Every question weighs the
    same: an easy question gives up to 16 examples (one per correct answer) and a hard one few or
    none, so drawing examples uniformly would teach mostly short, easy solutions. (On 100 held-out
    problems × 4 chains, pass@1 at chain positions 0–4 was 0.415, 0.390, 0.398, 0.410, 0.368 drawing
    uniformly and 0.422, 0.442, 0.438, 0.448, 0.422 per question.)

    `generated` are trajectories the task generator makes (`generated_examples`: the reference
    solution after the generator's own slipped solutions); they fill `recipe.reviser_generated_share`
    of the batches. Trained on the paper's trajectories alone the reviser ignores its context past
    easy questions (on the report's quintile 3, pass@1 0.47 after its own wrong answer, 0.46 after
    another question's, 0.45 with the reference solution itself in context) and its chains decline;
    with generated ones filling 80% of the batches its revisions of wrong answers are right more
    often than fresh samples (0.31 against 0.28) and its chains rise (0.517 at the first answer,
    0.599 at the third revision; the README's testbed section has the variants tried)."""
    reviser = on_device(new_causal_lm(recipe.size, tokenizer, seed))
    reviser.load_state_dict(proposer.state_dict())
    share = recipe.reviser_generated_share if generated else 0.0
    # One character is one token: drop the rare context of rambling attempts that would not fit.
    rows = [
        (question, DEFAULT_FORMAT.revision(question, attempts), target + tokenizer.eos_token, source)
        for source, rows_of in (("sampled", examples), ("generated", generated))
        for question, attempts, target in rows_of
    ]
    rows = [row for row in rows if len(row[1]) + len(row[2]) < recipe.size.max_positions]
    if not rows:
        return reviser
    per_question = Counter(question for question, _, _, source in rows if source == "sampled")
    generated_count = sum(source == "generated" for *_, source in rows)
    weights = [
        (1 - share) / (per_question[question] * len(per_question)) if source == "sampled" else share / generated_count
        for question, _, _, source in rows
    ]
    batches = length_grouped_batches(
        [(prompt, target) for _, prompt, target, _ in rows],
        [len(prompt) + len(target) for _, prompt, target, _ in rows],
        recipe.reviser_batch,
        recipe.reviser_steps,
        random.Random(f"reviser-{seed}"),
        weights=weights,
    )
    fit_causal_lm(reviser, tokenizer, batches, recipe.reviser_steps, recipe.reviser_lr, "reviser")
    return reviser


def length_grouped_batches(
    items: Sequence[T],
    lengths: Sequence[int],
    batch: int,
    steps: int,
    rng: random.Random,
    group: int = 8,
    weights: Sequence[float] | None = None,
) -> Iterator[list[T]]:
    """`steps` random batches of `batch` items with little padding: each draw of `group` batches'
    worth of items is sorted by length and cut into batches, which come out in random order.
    Items are drawn without replacement, or with replacement in proportion to `weights`.
    (Revision prompts run from a bare question to four attempts, 30 to 1200 tokens; random batches
    of them are 62% padding, grouped ones 22%. Random batches of PRM answers are 49% padding,
    grouped ones 8%.)"""
    made = 0
    while made < steps:
        if weights is None:
            drawn = rng.sample(range(len(items)), min(len(items), batch * group))
        else:
            drawn = rng.choices(range(len(items)), weights=weights, k=batch * group)
        drawn.sort(key=lambda index: lengths[index])
        chunks = [drawn[start : start + batch] for start in range(0, len(drawn), batch)]
        rng.shuffle(chunks)
        for chunk in chunks[: steps - made]:
            yield [items[index] for index in chunk]
            made += 1


# ---------------------------------------------------------------------------------------- helpers


def on_device(model: Any) -> Any:
    """The model moved to the training device."""
    return model.to(DEVICE)


def save(model: Any, tokenizer, directory: Path) -> None:
    """Standard `save_pretrained` in float16 (small enough to ship), with the tokenizer."""
    quiet_transformers()
    copy.deepcopy(model).to(torch.float16).save_pretrained(directory)
    # transformers 5 writes `dtype`; vLLM builds pinned to older transformers read `torch_dtype`.
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    config["torch_dtype"] = config.get("dtype", "float16")
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(directory)


def _progress() -> Progress:
    """Progress bars for the recipe's stages; a training stage shows its running loss in the
    `loss` field, other stages leave it empty."""
    return Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        transient=False,
    )


def _progress_callback(name: str) -> Callable[[int, int], None]:
    progress = _progress()
    state: dict[str, TaskID] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            progress.start()
            state["bar"] = progress.add_task(name, total=total, loss="")
        progress.update(state["bar"], completed=done)
        if done >= total:
            progress.stop()

    return update
