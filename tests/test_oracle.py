"""The hindsight oracle: drafts exactly what the target accepts, and nothing where it would be rejected."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speckv_hf import SpecKVGenerator
from speckv_hf.policies.oracle import (
    ContextOraclePolicy,
    ForwardCosts,
    OraclePolicy,
    acceptance_runs,
    oracle_steps,
)

from .conftest import VOCAB, greedy, prompt

NEW_TOKENS = 16


def _oracle_call(target, draft, input_ids, max_new_tokens=NEW_TOKENS):
    expected = greedy(target, input_ids, max_new_tokens=max_new_tokens, eos_token_id=None)
    runs = acceptance_runs(draft, input_ids, expected[0, input_ids.shape[1] :].tolist())
    generator = SpecKVGenerator(OraclePolicy(runs, input_ids.shape[1]), warm_start=False)
    out = greedy(
        target,
        input_ids,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=max_new_tokens,
        eos_token_id=None,
    )
    assert torch.equal(out, expected)
    return runs, generator.last_stats


def test_draft_equal_to_target_drafts_everything_allowed(llama_target):
    input_ids = prompt(8, seed=3)
    runs, stats = _oracle_call(llama_target, copy.deepcopy(llama_target), input_ids)
    assert runs == list(range(NEW_TOKENS, 0, -1))
    # One step: it drafts every token the length budget allows, all accepted, and the target adds the last.
    assert stats.target_forwards == 1
    assert stats.drafted_tokens == stats.accepted_tokens == NEW_TOKENS - 1


def _constant_draft(target, token: int):
    """A draft that proposes `token` whatever the context: no layers, positive normed embeddings, and a head whose
    only non-zero row is `token`'s."""
    draft = copy.deepcopy(target)
    with torch.no_grad():
        draft.model.layers = draft.model.layers[:0]
        draft.model.embed_tokens.weight.abs_()
        draft.model.norm.weight.fill_(1.0)
        draft.lm_head.weight.zero_()
        draft.lm_head.weight[token] = 1e-3
    draft.config.num_hidden_layers = 0
    return draft.eval()


def test_draft_that_never_agrees_drafts_nothing(llama_target):
    input_ids = prompt(8, seed=4)
    emitted = set(greedy(llama_target, input_ids, max_new_tokens=NEW_TOKENS, eos_token_id=None)[0].tolist())
    token = next(t for t in range(3, VOCAB) if t not in emitted)
    draft = _constant_draft(llama_target, token)
    assert draft(input_ids).logits[0].argmax(-1).eq(token).all()
    runs, stats = _oracle_call(llama_target, draft, input_ids)
    assert runs == [0] * NEW_TOKENS
    assert stats.drafted_tokens == 0 and stats.target_forwards == NEW_TOKENS


def test_random_draft_gets_only_its_agreeing_runs(llama_pairs):
    target, draft = llama_pairs["llama-random"]
    for seed in range(3):
        runs, stats = _oracle_call(target, draft, prompt(8, seed=seed))
        assert stats.drafted_tokens == stats.accepted_tokens  # nothing drafted is rejected
        assert stats.drafted_tokens == sum(oracle_steps(runs))


def test_noisy_draft_oracle_beats_every_constant(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    input_ids = prompt(8, seed=5)
    _, stats = _oracle_call(target, draft, input_ids)
    assert stats.accepted_tokens == stats.drafted_tokens > 0
    for gamma in (1, 2, 4, 8):
        generator = SpecKVGenerator(f"fixed:{gamma}")
        greedy(target, input_ids, assistant_model=draft, candidate_generator=generator, max_new_tokens=NEW_TOKENS)
        assert stats.target_forwards <= generator.last_stats.target_forwards


def test_context_oracle_takes_every_kept_context_token_then_the_drafts_run(llama_pairs):
    """On a prompt that repeats, the context's oracle proposes context tokens and drafted tokens that are all
    accepted, and needs no more target forwards than the draft's oracle or `context+fixed:K`."""
    target, draft = llama_pairs["llama-noisy"]
    input_ids = torch.tensor([[3, 9, 4, 7, 8, 11, 5] * 4])
    expected = greedy(target, input_ids, max_new_tokens=24, eos_token_id=None)
    continuation = expected[0, input_ids.shape[1] :].tolist()
    runs = acceptance_runs(draft, input_ids, continuation)
    forwards = {}
    for name, policy in (
        ("context+oracle", ContextOraclePolicy(runs, input_ids.shape[1], continuation)),
        ("oracle", OraclePolicy(runs, input_ids.shape[1])),
        *((f"context+fixed:{k}", f"context+fixed:{k}") for k in (1, 4)),
    ):
        generator = SpecKVGenerator(policy, warm_start=False, plain_fallback=False)
        out = greedy(target, input_ids, assistant_model=draft, candidate_generator=generator, max_new_tokens=24,
                     eos_token_id=None)  # fmt: skip
        assert torch.equal(out, expected)
        forwards[name] = generator.last_stats.target_forwards
        if name == "context+oracle":
            stats = generator.last_stats
            assert stats.accepted_tokens == stats.drafted_tokens and stats.context_accepted == stats.context_tokens > 0
    assert forwards["context+oracle"] <= min(forwards.values()), forwards
    with pytest.raises(ValueError, match="continuation"):
        ContextOraclePolicy(runs, input_ids.shape[1], continuation[:-1])


def test_acceptance_runs_refuses_a_batch(llama_pairs):
    _, draft = llama_pairs["llama-noisy"]
    with pytest.raises(ValueError, match="one prompt"):
        acceptance_runs(draft, torch.zeros(2, 4, dtype=torch.long), [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        OraclePolicy([-1], 3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=40), st.integers(min_value=1, max_value=50))
def test_oracle_steps_cover_the_budget(agree, budget):
    runs, following = [0] * len(agree), 0
    for j in range(len(agree) - 1, -1, -1):
        following = following + 1 if agree[j] else 0
        runs[j] = following
    steps = oracle_steps(runs, budget)
    total = min(budget, len(runs))
    assert sum(steps) + len(steps) == total  # every step emits its drafts plus the target's token
    position = 0
    for gamma in steps:
        assert gamma <= runs[position]  # never drafts past what is accepted
        position += gamma + 1


def test_forward_costs_interpolate_and_price_steps():
    costs = ForwardCosts(draft_forward=0.001, target_prefill=0.02, target_forward={0: 0.010, 2: 0.012, 4: 0.016})
    assert costs.verify(1) == pytest.approx(0.011)
    assert costs.verify(3) == pytest.approx(0.014)
    assert costs.verify(6) == pytest.approx(0.020)  # extends the last segment
    # Steps (3, 0, 1): prefill + 3 drafts + the extra of verifying 3; then 0 drafts; then 1 draft.
    expected = 0.02 + 0.003 + (0.014 - 0.010) + 0.010 + (0.001 + 0.011)
    assert costs.oracle_seconds([3, 0, 1]) == pytest.approx(expected)
    assert costs.target_seconds(6) == pytest.approx(0.02 + 5 * 0.010)
