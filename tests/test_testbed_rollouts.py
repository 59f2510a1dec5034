"""Monte-Carlo step labels: the pure labelling rule, and a real (tiny) batched run."""

from __future__ import annotations

from ttc_nodes.engines.base import Completion
from ttc_nodes.testbed import task
from ttc_nodes.testbed.rollouts import label_prefixes, mc_labels, reaches


def test_label_is_the_fraction_of_rollouts_reaching_the_answer():
    assert mc_labels([[True, True, False, False], [False] * 4, [True]]) == [0.5, 0.0, 1.0]


def test_reaches_reads_the_boxed_answer():
    assert reaches("1 + 2 = 3\n\n3 * 2 = \\boxed{6}", "6")
    assert not reaches("1 + 2 = 3\n\n3 * 2 = \\boxed{7}", "6")
    assert not reaches("1 + 2 = 3", "6")


class ScriptedProposer:
    """Completes every prompt with the reference continuation on even samples, a wrong one on odd."""

    uri = "scripted"
    parameters = 0

    def __init__(self, problem: task.ArithProblem):
        self.problem = problem
        self.calls: list[int] = []

    def generate(self, prompts, n, *, max_tokens, temperature, stop=(), seed=None):
        self.calls.append(len(prompts))
        rows = []
        for prompt in prompts:
            done = prompt.count("\n\n")
            rest = "\n\n".join(self.problem.steps[done:])
            rows.append([Completion(rest if i % 2 == 0 else "1 = \\boxed{-1}", 0, 1, 0.0, "stop") for i in range(n)])
        return rows


def test_prefixes_of_a_batch_go_in_one_call_and_final_steps_need_no_rollouts():
    problem = task.problems(1, seed=0, difficulty=4)[0]
    wrong = [*problem.steps[:-1], problem.steps[-1].replace(problem.answer, problem.answer + "1")]
    engine = ScriptedProposer(problem)
    labelled = label_prefixes(
        engine, [(problem, list(problem.steps)), (problem, wrong)], rollouts=4, max_tokens=32, seed=0
    )
    assert engine.calls == [2 * (len(problem.steps) - 1)]
    (_, _, right_labels), (_, _, wrong_labels) = labelled
    assert right_labels == [0.5] * (len(problem.steps) - 1) + [1.0]
    assert wrong_labels[-1] == 0.0
