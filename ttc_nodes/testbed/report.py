"""How the testbed models stand against the issue's targets, measured on held-out problems.

- proposer pass@1 per oracle-difficulty quintile (and per generator level);
- PRM step-level AUC against exact step correctness and against Monte-Carlo rollout labels;
- weighted best-of-N (last-step PRM score, summed per answer) against majority vote at N=16, and
  how well the verifier ranks one question's answers (all that a vote can use);
- the same AUCs and vote for the proposer's own confidence (`engines.confidence`), a verifier
  without a reward model, as a baseline for the PRM;
- reviser pass@1 along a revision chain (positions 0..4), and what revisions do to the answer
  before them: keep it, fix it, break it, and whether a fix beats a fresh sample.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ttc_nodes.answers import extract_answer
from ttc_nodes.engines.confidence import ConfidencePRM
from ttc_nodes.engines.hf import HFValueHeadPRM
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed import task
from ttc_nodes.testbed.checkpoints import SHIPPED, checkpoint_dir
from ttc_nodes.testbed.rollouts import label_prefixes, reaches
from ttc_nodes.testbed.sampler import CachedSampler

REPORT_SEED = 99  # held out: training draws its problems from seeds of a million and more
BINS = 5


@dataclass(frozen=True)
class ReportSettings:
    problems: int = 200
    samples: int = 64
    budget: int = 16  # N for weighted best-of-N against majority
    draws: int = 64  # subsets of size N drawn from each problem's pool
    rollout_solutions: int = 100  # held-out solutions labelled by MC rollouts
    rollouts: int = 8
    chains: int = 4  # revision chains per problem
    chain_length: int = 5
    max_tokens: int = 192
    seed: int = 0


def build_report(settings: ReportSettings, models: Path | None = None) -> dict[str, Any]:
    """Measure everything; returns a JSON-ready dict."""
    models = models or checkpoint_dir()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    from ttc_nodes.testbed.train import load_sampler

    proposer = load_sampler(models / "proposer")
    prm = HFValueHeadPRM(str(models / "prm"), device="cpu")
    confidence = ConfidencePRM(str(models / "proposer"), device="cpu", max_batch=64)
    reviser = load_sampler(models / "reviser")
    timings["load"] = time.perf_counter() - started
    problems = task.problems(settings.problems, REPORT_SEED)

    started = time.perf_counter()
    from ttc_nodes.testbed.train import sample_answers

    pool = sample_answers(proposer, problems, settings.samples, settings.max_tokens, settings.seed)
    correct = np.array([[reaches(text, p.answer) for text in texts] for p, texts in zip(problems, pool, strict=True)])
    pass_at_1 = correct.mean(axis=1)
    bins = difficulty_bins(pass_at_1)
    timings["proposer"] = time.perf_counter() - started

    started = time.perf_counter()
    steps = [[DEFAULT_FORMAT.split_steps(text) for text in texts] for texts in pool]
    scores = step_scores(prm, problems, steps)
    timings["prm_scoring"] = time.perf_counter() - started
    started = time.perf_counter()
    confidence_scores = step_scores(confidence, problems, steps)
    timings["confidence_scoring"] = time.perf_counter() - started

    started = time.perf_counter()
    rollout_problems = range(min(settings.rollout_solutions, len(problems)))
    labelled = label_prefixes(
        proposer,
        [(problems[i], steps[i][0]) for i in rollout_problems if steps[i][0]],
        rollouts=settings.rollouts,
        max_tokens=settings.max_tokens,
        seed=settings.seed + 1,
    )
    timings["rollouts"] = time.perf_counter() - started

    started = time.perf_counter()
    chain_correct, chain_texts = revision_chains(reviser, problems, settings)
    timings["reviser"] = time.perf_counter() - started

    return {
        "settings": asdict(settings),
        "models": "shipped" if models == SHIPPED else str(models),
        "proposer": proposer_section(problems, pass_at_1, bins),
        "prm": prm_section(problems, steps, scores, labelled, rollout_problems),
        "best_of_n": best_of_n_section(pool, scores, correct, bins, settings),
        "confidence": {
            "verifier": "the proposer's lowest answer-token probability so far (format=confidence)",
            **step_aucs(problems, steps, confidence_scores),
            "best_of_n": best_of_n_section(pool, confidence_scores, correct, bins, settings),
        },
        "reviser": {
            **reviser_section(chain_correct, pass_at_1, bins),
            **revision_transitions(problems, chain_texts, chain_correct),
        },
        "seconds": timings,
    }


# ------------------------------------------------------------------------------------- proposer


def difficulty_bins(pass_at_1: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Oracle difficulty bin per problem: quantiles of pass@1, bin 0 the easiest fifth."""
    order = np.argsort(-pass_at_1, kind="stable")
    labels = np.empty(len(pass_at_1), dtype=int)
    for index, chunk in enumerate(np.array_split(order, bins)):
        labels[chunk] = index
    return labels


def proposer_section(problems: Sequence[task.ArithProblem], pass_at_1: np.ndarray, bins: np.ndarray) -> dict:
    levels = np.array([p.difficulty for p in problems])
    return {
        "pass_at_1": float(pass_at_1.mean()),
        "by_quintile": [
            {
                "bin": int(b) + 1,
                "problems": int((bins == b).sum()),
                "pass_at_1": float(pass_at_1[bins == b].mean()),
                "mean_level": float(levels[bins == b].mean()),
            }
            for b in range(BINS)
        ],
        "by_level": [
            {
                "level": int(level),
                "problems": int((levels == level).sum()),
                "pass_at_1": float(pass_at_1[levels == level].mean()),
            }
            for level in sorted(set(levels.tolist()))
        ],
    }


# ------------------------------------------------------------------------------------------ PRM


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None when one class is empty."""
    scores_array, labels_array = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    positives, negatives = scores_array[labels_array], scores_array[~labels_array]
    if len(positives) == 0 or len(negatives) == 0:
        return None
    ranks = _average_ranks(np.concatenate([positives, negatives]))
    rank_sum = ranks[: len(positives)].sum()
    return float((rank_sum - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def step_scores(verifier, problems, steps) -> list[list[list[float]]]:
    """Per problem, per answer: the verifier's step scores (an answer with no step is scored as one empty step)."""
    return [
        [s.step_scores for s in verifier.score(p.question, [x or [""] for x in solutions])]
        for p, solutions in zip(problems, steps, strict=True)
    ]


def step_aucs(problems, steps, scores) -> dict:
    """Step-level AUC of the scores against exact prefix correctness and against each step's own arithmetic."""
    flat_scores: list[float] = []
    prefix_ok: list[bool] = []
    arithmetic_ok: list[bool] = []
    for problem, solutions, solution_scores in zip(problems, steps, scores, strict=True):
        for solution, step_scores in zip(solutions, solution_scores, strict=True):
            if not solution:
                continue
            flat_scores.extend(step_scores)
            prefix_ok.extend(task.prefix_correct(problem, solution))
            arithmetic_ok.extend(task.arithmetic_correct(step) for step in solution)
    return {
        "steps_scored": len(flat_scores),
        "auc_vs_prefix_correctness": auc(flat_scores, prefix_ok),
        "auc_vs_step_arithmetic": auc(flat_scores, arithmetic_ok),
        "share_prefixes_correct": float(np.mean(prefix_ok)) if prefix_ok else None,
    }


def prm_section(problems, steps, scores, labelled, rollout_problems) -> dict:
    rollout_scores, rollout_labels = [], []
    kept = [i for i in rollout_problems if steps[i][0]]
    for i, (_, _, labels) in zip(kept, labelled, strict=True):
        rollout_scores.extend(scores[i][0])
        rollout_labels.extend(labels)
    return {
        **step_aucs(problems, steps, scores),
        "auc_vs_mc_labels": auc(rollout_scores, [label >= 0.5 for label in rollout_labels]),
        "mc_steps": len(rollout_labels),
    }


# ----------------------------------------------------------------------------------- best-of-N


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """The answer whose samples' scores sum highest (unanswered samples do not vote)."""
    totals: dict[str, float] = defaultdict(float)
    for answer, weight in zip(answers, weights, strict=True):
        if answer is not None:
            totals[answer] += weight
    return max(totals, key=totals.__getitem__) if totals else None


def majority_vote(answers: Sequence[str | None]) -> str | None:
    counts = Counter(answer for answer in answers if answer is not None)
    return counts.most_common(1)[0][0] if counts else None


def best_of_n_section(pool, scores, correct, bins, settings: ReportSettings) -> dict:
    rng = random.Random(f"best-of-n-{settings.seed}")
    n = min(settings.budget, settings.samples)
    weighted_hits, majority_hits = np.zeros(len(pool)), np.zeros(len(pool))
    finals = [[step_scores[-1] if step_scores else 0.0 for step_scores in answers] for answers in scores]
    for index, (texts, last) in enumerate(zip(pool, finals, strict=True)):
        answers = [_answer(text) for text in texts]
        right = {answers[j] for j in range(len(texts)) if correct[index, j]}
        for _ in range(settings.draws):
            chosen = rng.sample(range(len(texts)), n)
            weighted = weighted_vote([answers[j] for j in chosen], [last[j] for j in chosen])
            majority = majority_vote([answers[j] for j in chosen])
            weighted_hits[index] += weighted in right
            majority_hits[index] += majority in right
    weighted_hits /= settings.draws
    majority_hits /= settings.draws
    separation = within_problem_auc(finals, correct)
    return {
        "budget": n,
        "weighted": float(weighted_hits.mean()),
        "majority": float(majority_hits.mean()),
        "by_quintile": [
            {
                "bin": int(b) + 1,
                "weighted": float(weighted_hits[bins == b].mean()),
                "majority": float(majority_hits[bins == b].mean()),
                "within_problem_auc": _nanmean(separation[bins == b]),
            }
            for b in range(BINS)
        ],
        "within_problem_auc": _nanmean(separation),
    }


def within_problem_auc(final_scores: Sequence[Sequence[float]], correct: np.ndarray) -> np.ndarray:
    """Per problem: the AUC of its answers' final scores against their correctness (NaN where all
    are right or all wrong). A vote only compares answers to one question, so this, not the
    pooled step AUC (which also rewards telling easy questions from hard ones), is what it uses."""
    separation = [auc(answer_scores, right) for answer_scores, right in zip(final_scores, correct, strict=True)]
    return np.array([np.nan if value is None else value for value in separation])


def _nanmean(values: np.ndarray) -> float | None:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else None


def _answer(text: str) -> str | None:
    found = extract_answer(text)
    return found.strip() if found is not None else None


# -------------------------------------------------------------------------------------- reviser


def revision_chains(
    reviser: CachedSampler, problems, settings: ReportSettings
) -> tuple[np.ndarray, list[list[list[str]]]]:
    """Correctness [problem, chain, position] of revision chains, and their answers [problem][chain]
    [position]; each revision sees the chain's most recent (up to 4) answers."""
    chains: list[tuple[task.ArithProblem, list[str]]] = [(p, []) for p in problems for _ in range(settings.chains)]
    hits = np.zeros((len(problems), settings.chains, settings.chain_length), dtype=bool)
    for position in range(settings.chain_length):
        prompts = [DEFAULT_FORMAT.revision(p.question, history) for p, history in chains]
        completions = reviser.generate(
            prompts, 1, max_tokens=settings.max_tokens, temperature=1.0, seed=settings.seed + 7 * position
        )
        for row, ((problem, history), (completion,)) in enumerate(zip(chains, completions, strict=True)):
            history.append(completion.text)
            hits[row // settings.chains, row % settings.chains, position] = reaches(completion.text, problem.answer)
    answers = [history for _, history in chains]
    return hits, [answers[start : start + settings.chains] for start in range(0, len(answers), settings.chains)]


def reviser_section(hits: np.ndarray, pass_at_1: np.ndarray, bins: np.ndarray) -> dict:
    """Pass@1 at each chain position, overall and per oracle difficulty quintile (the paper reads
    revisions by difficulty: where a chain gains and where it loses differ)."""
    by_position = hits.mean(axis=(0, 1))
    was_right, now_wrong = hits[:, :, :-1], ~hits[:, :, 1:]
    broken = float((was_right & now_wrong).sum() / max(1, was_right.sum()))
    by_quintile = [
        {
            "bin": int(b) + 1,
            "problems": int((bins == b).sum()),
            "pass_at_1_by_position": [float(x) for x in hits[bins == b].mean(axis=(0, 1))],
            "proposer_pass_at_1": float(pass_at_1[bins == b].mean()),
        }
        for b in range(BINS)
    ]
    return {
        "pass_at_1_by_position": [float(x) for x in by_position],
        "by_quintile": by_quintile,
        "any_correct_in_chain": float(hits.any(axis=2).mean()),
        "share_of_correct_broken_by_next_revision": broken,
        "proposer_pass_at_1_same_problems": float(pass_at_1.mean()),
    }


def revision_transitions(problems, texts: Sequence[Sequence[Sequence[str]]], hits: np.ndarray) -> dict:
    """What each revision did to the answer before it.

    - `fix_rate`: the chance a wrong answer's revision is right; `resample_fix_baseline`: the
      chance that another chain's first answer to the same question is right, given this chain's
      was wrong: what a fresh sample would do. A reviser that uses its context fixes more often.
    - `kept_verbatim_after_right` / `_after_wrong`: revisions that copy the answer before them.
    - `changed_wrong_at_first_error`: of revisions that change a wrong answer, the share whose first
      changed step is that answer's first wrong step (the reviser found the error).
    """
    fixed, wrong_before, kept_right, right_before, kept_wrong, changed, at_error = 0, 0, 0, 0, 0, 0, 0
    for problem, chains, chain_hits in zip(problems, texts, hits, strict=True):
        for answers, right in zip(chains, chain_hits, strict=True):
            for position in range(len(answers) - 1):
                before, after = answers[position], answers[position + 1]
                if right[position]:
                    right_before += 1
                    kept_right += before == after
                    continue
                wrong_before += 1
                fixed += bool(right[position + 1])
                if before == after:
                    kept_wrong += 1
                    continue
                changed += 1
                old, new = DEFAULT_FORMAT.split_steps(before), DEFAULT_FORMAT.split_steps(after)
                flags = task.prefix_correct(problem, old)
                first_error = flags.index(False) if False in flags else len(old)
                at_error += _first_difference(old, new) == first_error
    first = hits[:, :, 0]
    others = max(1, first.shape[1] - 1)  # the other chains of the same question
    baseline = [(row.sum() - hit) / others for row in first for hit in row if not hit]
    return {
        "fix_rate": fixed / wrong_before if wrong_before else None,
        "resample_fix_baseline": float(np.mean(baseline)) if first.shape[1] > 1 and baseline else None,
        "kept_verbatim_after_right": kept_right / right_before if right_before else None,
        "kept_verbatim_after_wrong": kept_wrong / wrong_before if wrong_before else None,
        "changed_wrong_at_first_error": at_error / changed if changed else None,
    }


def _first_difference(old: Sequence[str], new: Sequence[str]) -> int:
    """The first step index where two step lists differ (the shorter length if one extends the other)."""
    return next((k for k, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
