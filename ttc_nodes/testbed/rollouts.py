"""Monte-Carlo step labels for the PRM, as in the paper: from every step prefix of a sampled
solution, the proposer rolls out several completions; the label is the fraction that reach the
right answer. All prefixes of a batch of solutions go to the engine in one `generate` call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ttc_nodes.answers import extract_answer
from ttc_nodes.engines.base import Completion
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed.task import ArithProblem

Labelled = tuple[str, list[str], list[float]]  # (question, steps, one label per step)


class Sampler(Protocol):
    """What rollouts need of an engine: any `Proposer`, or the testbed's `CachedSampler`."""

    def generate(
        self, prompts: Sequence[str], n: int, *, max_tokens: int, temperature: float, seed: int | None = None
    ) -> list[list[Completion]]: ...


def reaches(text: str, reference: str) -> bool:
    """Whether a (partial or full) answer text ends in the reference answer."""
    found = extract_answer(text)
    return found is not None and found.strip() == reference.strip()


def mc_labels(outcomes: Sequence[Sequence[bool]]) -> list[float]:
    """One label per step prefix: the fraction of its rollouts that reached the right answer."""
    return [sum(results) / len(results) if results else 0.0 for results in outcomes]


def label_prefixes(
    engine: Sampler,
    solutions: Sequence[tuple[ArithProblem, list[str]]],
    *,
    rollouts: int,
    max_tokens: int,
    seed: int,
    solutions_per_call: int = 16,
    temperature: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> list[Labelled]:
    """Label every step prefix of every (problem, steps) solution by `rollouts` rollouts.

    A prefix whose last step already states a final answer needs no rollout: its label is whether
    that answer is right.
    """
    labelled: list[Labelled] = []
    solutions = [(problem, steps) for problem, steps in solutions if steps]
    for start in range(0, len(solutions), solutions_per_call):
        group = solutions[start : start + solutions_per_call]
        outcomes: list[list[list[bool]]] = [[] for _ in group]
        open_prefixes: list[tuple[int, int]] = []  # (solution in group, prefix length)
        for index, (problem, steps) in enumerate(group):
            for length in range(1, len(steps) + 1):
                if extract_answer(steps[length - 1]) is not None:
                    outcomes[index].append([reaches(steps[length - 1], problem.answer)])
                else:
                    outcomes[index].append([])
                    open_prefixes.append((index, length))
        prompts = [DEFAULT_FORMAT.solution(group[i][0].question, group[i][1][:n]) for i, n in open_prefixes]
        if prompts:
            completions = engine.generate(
                prompts, rollouts, max_tokens=max_tokens, temperature=temperature, seed=seed + start
            )
            for (index, length), samples in zip(open_prefixes, completions, strict=True):
                reference = group[index][0].answer
                outcomes[index][length - 1] = [reaches(sample.text, reference) for sample in samples]
        for (problem, steps), results in zip(group, outcomes, strict=True):
            labelled.append((problem.question, list(steps), mc_labels(results)))
        if progress is not None:
            progress(min(start + solutions_per_call, len(solutions)), len(solutions))
    return labelled
