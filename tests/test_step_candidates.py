"""A step's candidates and a call's verification setting, as the loop reads them (no model)."""

from __future__ import annotations

import pytest
import torch

from speckv_hf import SpecKVGenerator
from speckv_hf.decoding.loop_call import LoopSettings
from speckv_hf.decoding.step import StepCandidates
from speckv_hf.decoding.verification import Processing


def _settings(verification: str) -> LoopSettings:
    return LoopSettings(
        max_new_tokens=4,
        eos_token_ids=frozenset(),
        pad_token_id=0,
        verification=verification,
        processing=Processing(None),
    )


@pytest.mark.parametrize(
    ("verification", "do_sample", "coupled", "speculative"),
    [("greedy", False, False, False), ("speculative", True, False, True), ("coupled", True, True, False)],
)
def test_verification_is_one_field_the_flags_read(verification, do_sample, coupled, speculative):
    settings = _settings(verification)
    assert (settings.do_sample, settings.coupled, settings.speculative) == (do_sample, coupled, speculative)


def test_an_unknown_verification_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="'greedy', 'speculative', 'coupled'"):
        _settings("sampled")


@pytest.mark.parametrize(
    ("loop", "sampling", "sampled"),
    [("speckv", "auto", "coupled"), ("transformers", "auto", "speculative"), ("speckv", "speculative", "speculative")],
)
def test_a_generator_resolves_its_calls_verification(loop, sampling, sampled):
    generator = SpecKVGenerator(loop=loop, sampling=sampling)
    assert generator.verification_for(False) == "greedy"
    assert generator.verification_for(True) == sampled


def test_proposal_distributions_are_the_drafts_and_one_hot_at_context_candidates():
    vocab = 5
    draft_column = torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.2], [0.5, 0.1, 0.1, 0.2, 0.1]])
    candidates = StepCandidates(
        tokens=torch.tensor([[3, 1, 2], [4, 0, 0]]),
        valid=torch.tensor([[True, True, True], [True, True, False]]),
        signals=[[], []],
        context=[2, 0],  # row 0: two context candidates, then a drafted one; row 1: drafted only
        proposals=[None, None],
        probs=[draft_column, draft_column, draft_column],
    )
    q = candidates.proposal_distributions(vocab)
    assert q.shape == (2, 3, vocab)
    assert torch.equal(q[0, 0], torch.eye(vocab)[3]) and torch.equal(q[0, 1], torch.eye(vocab)[1])
    assert torch.equal(q[0, 2], draft_column[0])
    assert torch.equal(q[1], draft_column[1].expand(3, vocab))


def test_a_context_column_without_a_draft_forward_is_one_hot_and_an_empty_step_has_none():
    candidates = StepCandidates(
        tokens=torch.tensor([[2]]),
        valid=torch.tensor([[True]]),
        signals=[[]],
        context=[1],
        proposals=[None],
        probs=[None],
    )
    assert torch.equal(candidates.proposal_distributions(4), torch.eye(4)[2].view(1, 1, 4))
    empty = StepCandidates(
        tokens=torch.zeros((1, 0), dtype=torch.long),
        valid=torch.zeros((1, 0), dtype=torch.bool),
        signals=[[]],
        context=[0],
        proposals=[None],
    )
    assert empty.proposal_distributions(4) is None
