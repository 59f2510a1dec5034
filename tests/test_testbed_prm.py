"""The testbed PRM's parts: the proposer's frozen body, new layers trained on its states, and the
running-confidence targets of the distillation stage."""

from __future__ import annotations

import pytest
import torch

from ttc_nodes.engines.transformers_io import prm_inputs
from ttc_nodes.testbed import task
from ttc_nodes.testbed.model import QUICK, assemble_prm, build_tokenizer, new_causal_lm, prm_head
from ttc_nodes.testbed.train import body_states, confidence_targets


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def proposer(tokenizer):
    return new_causal_lm(QUICK, tokenizer, seed=3).eval()


def sequences(tokenizer, count: int) -> list[list[int]]:
    return [prm_inputs(tokenizer, p.question, list(p.steps))[0] for p in task.problems(count, seed=5)]


def test_body_states_hold_each_tokens_log_prob_whatever_the_batch(tokenizer, proposer):
    rows = sequences(tokenizer, 5)
    assert len({len(ids) for ids in rows}) > 1  # padding is exercised
    batched = body_states(proposer, rows, "test", batch=3)
    for ids, (hidden, log_probs) in zip(rows, batched, strict=True):
        with torch.no_grad():
            logits = proposer(input_ids=torch.tensor([ids])).logits[0]
        expected = torch.log_softmax(logits[:-1], dim=-1)[torch.arange(len(ids) - 1), ids[1:]]
        assert hidden.shape == (len(ids), QUICK.hidden)
        assert log_probs[0] == 0
        torch.testing.assert_close(log_probs[1:], expected, rtol=1e-4, atol=1e-5)
        # The residual, normed and read by the LM head, gives the proposer's logits back.
        torch.testing.assert_close(proposer.lm_head(proposer.model.norm(hidden)), logits, rtol=1e-4, atol=1e-4)


def test_confidence_is_the_lowest_answer_token_probability_so_far():
    log_probs = torch.log(torch.tensor([1.0, 0.2, 0.9, 0.5, 0.7, 0.3, 0.8]))
    targets = confidence_targets(log_probs, answer_start=2)
    assert (targets[:2] == -1).all()  # the question is not trained on
    answer = [0.9, 0.5, 0.7, 0.3, 0.8]
    torch.testing.assert_close(targets[2:, 0], torch.tensor([min(answer[: i + 1]) for i in range(5)]))
    torch.testing.assert_close(targets[2:, 1], torch.tensor(answer))
    assert (confidence_targets(log_probs, answer_start=7) == -1).all()
    # Skipped positions (layout separators) count as certain.
    skipping = confidence_targets(log_probs, answer_start=2, skipped=[3, 5])
    torch.testing.assert_close(skipping[2:, 0], torch.tensor([0.9, 0.9, 0.7, 0.7, 0.7]))
    torch.testing.assert_close(skipping[2:, 1], torch.tensor([0.9, 1.0, 0.7, 1.0, 0.8]))


def test_the_assembled_prm_is_the_proposer_body_under_the_trained_head(tokenizer, proposer):
    head = prm_head(proposer, extra_layers=2, seed=0)
    with torch.no_grad():  # as if trained: nothing left at its initial value
        for parameter in head.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    prm = assemble_prm(proposer, head)
    assert prm.config.num_hidden_layers == QUICK.layers + 2
    assert prm.config.architectures == ["LlamaForTokenClassification"] and prm.config.num_labels == 1
    assembled = prm.model.state_dict()
    for key, value in proposer.model.state_dict().items():  # embedding and layers; the norm is the head's
        if not key.startswith("norm."):
            assert torch.equal(assembled[key], value), key
    rows = sequences(tokenizer, 3)
    states = body_states(proposer, rows, "test")
    head.eval()
    with torch.no_grad():
        for ids, (hidden, _) in zip(rows, states, strict=True):
            whole = prm(input_ids=torch.tensor([ids])).logits
            split = head(inputs_embeds=hidden[None]).logits
            torch.testing.assert_close(whole, split, rtol=1e-4, atol=1e-5)


def test_a_prm_without_new_layers_is_refused(proposer):
    with pytest.raises(ValueError, match="at least one layer"):
        prm_head(proposer, extra_layers=0, seed=0)
