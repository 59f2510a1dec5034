"""A `--quick` training run end to end: its checkpoints load through the ordinary engines."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re

import pytest

from ttc_nodes.engines.hf import HFProposer, HFValueHeadPRM
from ttc_nodes.engines.uris import load_proposer, load_verifier
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed import task
from ttc_nodes.testbed.checkpoints import checkpoint_path
from ttc_nodes.testbed.train import QUICK_RECIPE, length_grouped_batches, train


@pytest.mark.slow
def test_quick_training_writes_checkpoints_the_engines_load(quick_models, monkeypatch):
    problem = task.problems(1, seed=0, difficulty=2)[0]
    proposer = HFProposer(str(quick_models / "proposer"), device="cpu")
    (samples,) = proposer.generate(
        [DEFAULT_FORMAT.solution(problem.question)], 2, max_tokens=8, temperature=1.0, stop=["\n\n"], seed=0
    )
    assert len(samples) == 2 and all(s.completion_tokens <= 8 for s in samples)

    prm = HFValueHeadPRM(str(quick_models / "prm"), device="cpu")
    (scored,) = prm.score(problem.question, [list(problem.steps)])
    assert len(scored.step_scores) == len(problem.steps)
    assert all(0.0 <= s <= 1.0 for s in scored.step_scores)

    reviser = HFProposer(str(quick_models / "reviser"), device="cpu")
    (revised,) = reviser.generate(
        [DEFAULT_FORMAT.revision(problem.question, ["1 + 1 = \\boxed{2}"])], 1, max_tokens=8, temperature=1.0
    )
    assert len(revised) == 1

    manifest = json.loads((quick_models / "training.json").read_text())
    assert manifest["seed"] == 0 and manifest["recipe"]["proposer_steps"] == QUICK_RECIPE.proposer_steps
    assert set(manifest["seconds"]) == {"proposer", "samples", "rollouts", "prm", "reviser"}

    monkeypatch.setenv("TTC_TESTBED_DIR", str(quick_models))
    assert checkpoint_path("prm") == quick_models / "prm"
    assert load_proposer("testbed:reviser?device=cpu").parameters == reviser.parameters
    assert load_verifier("testbed:prm?device=cpu").parameters == prm.parameters


def test_missing_checkpoint_tells_the_user_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv("TTC_TESTBED_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ttc testbed train"):
        checkpoint_path("proposer")
    with pytest.raises(ValueError, match="unknown testbed model"):
        checkpoint_path("critic")


@pytest.mark.slow
def test_later_stages_reuse_the_saved_proposer_and_training_data(quick_models, tmp_path):
    import shutil

    from ttc_nodes.testbed.train import DATA_DIR

    out = tmp_path / "models"
    shutil.copytree(quick_models, out)
    proposer_bytes = (out / "proposer" / "model.safetensors").read_bytes()
    prm_before = (out / "prm" / "model.safetensors").read_bytes()
    (out / "prm" / "model.safetensors").unlink()

    timings = train(out, quick=True, seed=0, start="prm")

    assert set(timings) == {"prm", "reviser"}
    assert (out / "proposer" / "model.safetensors").read_bytes() == proposer_bytes
    # Same proposer, same rollout labels, same seed: the PRM comes out exactly as the first time.
    assert (out / "prm" / "model.safetensors").read_bytes() == prm_before
    assert (out / DATA_DIR / "samples.json").is_file()
    manifest = json.loads((out / "training.json").read_text())
    assert manifest["command"] == "ttc testbed train --start prm"
    assert set(manifest["seconds"]) == {"prm", "reviser"}
    # The run that made the reused proposer, answers and labels stays on record.
    assert set(manifest["earlier_run"]["seconds"]) == {"proposer", "samples", "rollouts", "prm", "reviser"}


@pytest.mark.slow
def test_stop_retrains_one_stage_and_leaves_the_later_ones(quick_models, tmp_path):
    import shutil

    out = tmp_path / "models"
    shutil.copytree(quick_models, out)
    (out / "reviser" / "model.safetensors").write_bytes(b"not retrained")

    timings = train(out, quick=True, seed=0, start="prm", stop="prm")

    assert set(timings) == {"prm"}
    assert (out / "reviser" / "model.safetensors").read_bytes() == b"not retrained"
    assert (out / "prm" / "model.safetensors").read_bytes() == (quick_models / "prm" / "model.safetensors").read_bytes()
    assert json.loads((out / "training.json").read_text())["command"] == "ttc testbed train --start prm --stop prm"


def test_a_later_stage_without_earlier_output_or_an_unknown_stage_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="earlier stages"):
        train(tmp_path, quick=True, start="reviser")
    with pytest.raises(ValueError, match="unknown stage 'critic'"):
        train(tmp_path, quick=True, start="critic")
    with pytest.raises(ValueError, match="unknown stage 'critic'"):
        train(tmp_path, quick=True, stop="critic")
    with pytest.raises(ValueError, match="--stop samples comes before --start prm"):
        train(tmp_path, quick=True, start="prm", stop="samples")


def test_length_grouped_batches_cut_sorted_draws_into_non_overlapping_batches():
    lengths = [random.Random(index).randint(1, 1000) for index in range(300)]
    items = list(range(300))
    batches = list(length_grouped_batches(items, lengths, batch=4, steps=50, rng=random.Random(3), group=5))
    assert len(batches) == 50
    assert all(len(batch) == 4 for batch in batches)
    for start in range(0, 50, 5):  # each draw of 5 batches: no repeats, and length ranges that do not overlap
        draw = batches[start : start + 5]
        assert len({item for batch in draw for item in batch}) == 20
        ranges = sorted((min(lengths[i] for i in batch), max(lengths[i] for i in batch)) for batch in draw)
        assert all(high <= next_low for (_, high), (next_low, _) in itertools.pairwise(ranges))
    again = list(length_grouped_batches(items, lengths, batch=4, steps=50, rng=random.Random(3), group=5))
    assert again == batches
    padded = sum(4 * max(lengths[i] for i in batch) for batch in batches)
    rng = random.Random(3)
    random_padded = sum(4 * max(lengths[i] for i in rng.sample(items, 4)) for _ in range(50))
    assert padded < 0.8 * random_padded


def test_length_grouped_batches_with_fewer_items_than_a_batch():
    batches = list(length_grouped_batches(["a", "bb"], [1, 2], batch=4, steps=3, rng=random.Random(0)))
    assert batches == [["a", "bb"]] * 3


def test_weighted_length_grouped_batches_draw_in_proportion_to_the_weights():
    items = list(range(40))
    lengths = [index % 7 for index in items]
    weights = [0.0 if index % 2 else (3.0 if index < 20 else 1.0) for index in items]
    batches = list(length_grouped_batches(items, lengths, batch=8, steps=400, rng=random.Random(5), weights=weights))
    drawn = [item for batch in batches for item in batch]
    assert len(batches) == 400 and all(len(batch) == 8 for batch in batches)
    assert not [item for item in drawn if item % 2]  # weight 0: never drawn
    heavy = sum(item < 20 for item in drawn) / len(drawn)
    assert abs(heavy - 0.75) < 0.02  # 10 items of weight 3 against 10 of weight 1


def reviser_prompts_drawn(monkeypatch, recipe, examples, generated=()) -> list[str]:
    """The revision prompts `train_reviser` would train on, in the order its batches draw them."""
    from ttc_nodes.testbed import train as training
    from ttc_nodes.testbed.model import build_tokenizer, new_causal_lm

    tokenizer = build_tokenizer()
    proposer = new_causal_lm(QUICK_RECIPE.size, tokenizer, 0)
    seen: list[str] = []

    def record(model, tokenizer, batches, steps, lr, name):
        seen.extend(prompt for batch in batches for prompt, _ in batch)

    monkeypatch.setattr(training, "fit_causal_lm", record)
    training.train_reviser(recipe, tokenizer, proposer, examples, seed=0, generated=generated)
    return seen


def test_the_reviser_draws_every_question_equally_often(monkeypatch):
    easy = ("Compute 1 + 1.", [], "1 + 1 = \\boxed{2}")
    examples = [easy] * 9 + [("Compute 9 * 5.", ["9 * 5 = 44"], "9 * 5 = \\boxed{45}")]
    recipe = dataclasses.replace(QUICK_RECIPE, reviser_steps=50)
    seen = reviser_prompts_drawn(monkeypatch, recipe, examples)
    assert len(seen) == recipe.reviser_steps * recipe.reviser_batch
    share = sum("9 * 5" in prompt for prompt in seen) / len(seen)
    assert 0.4 < share < 0.6  # one example of ten, drawn half the time (uniform draws: a tenth)


def test_progress_bars_show_a_loss_only_for_training_stages(capsys):
    import torch

    from ttc_nodes.testbed.train import _progress_callback, optimise

    weight = torch.nn.Linear(2, 1)
    losses = (weight(torch.ones(1, 2)).pow(2).sum() for _ in range(3))
    optimise(weight, losses, 3, 0.01, "fitting")
    _progress_callback("scoring")(2, 2)

    printed = capsys.readouterr().out
    fitting, scoring = (
        next(line for line in printed.splitlines() if line.startswith(name)) for name in ("fitting", "scoring")
    )
    assert "3/3" in fitting and re.search(r"loss \d+\.\d{4}", fitting)
    assert "2/2" in scoring and "loss" not in scoring and "nan" not in printed


def test_generated_trajectories_fill_their_share_of_the_reviser_batches(monkeypatch):
    sampled = [("Compute 1 + 1.", [], "1 + 1 = \\boxed{2}")] * 6 + [("Compute 2 + 2.", [], "2 + 2 = \\boxed{4}")]
    generated = [(f"Compute {n} * 3.", [f"{n} * 3 = 1"], f"{n} * 3 = \\boxed{{{3 * n}}}") for n in range(10, 13)]
    recipe = dataclasses.replace(QUICK_RECIPE, reviser_steps=100, reviser_generated_share=0.8)
    seen = reviser_prompts_drawn(monkeypatch, recipe, sampled, generated)

    share = sum("* 3" in prompt for prompt in seen) / len(seen)
    assert 0.75 < share < 0.85
    among_sampled = [prompt for prompt in seen if "* 3" not in prompt]
    assert 0.4 < sum("2 + 2" in prompt for prompt in among_sampled) / len(among_sampled) < 0.6  # still per question
