"""Stats, the cost model and the draft signals."""

from __future__ import annotations

import math
import statistics
from collections import deque

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speckv_hf import CostModel, CostSettings, SpecKVGenerator, StepSignals, token_signals

from .conftest import greedy, prompt


def test_token_signals():
    probs = torch.tensor([0.5, 0.3, 0.2])
    signals = token_signals(probs, torch.tensor(1), position=2)
    assert signals.confidence == pytest.approx(0.3)
    assert signals.max_prob == pytest.approx(0.5)
    assert signals.margin == pytest.approx(0.2)
    assert signals.entropy == pytest.approx(-sum(p * math.log(p) for p in (0.5, 0.3, 0.2)), rel=1e-5)
    assert signals.position == 2


def test_step_signals_aggregates():
    tokens = [token_signals(torch.tensor(p), torch.tensor(0), i) for i, p in enumerate([[0.9, 0.1], [0.6, 0.4]])]
    step = StepSignals.from_tokens(tokens)
    assert step.num_drafted == 2
    assert step.min_confidence == pytest.approx(0.6)
    assert step.mean_confidence == pytest.approx(0.75)
    assert step.max_entropy == pytest.approx(tokens[1].entropy)
    assert StepSignals.from_tokens([]).num_drafted == 0


def test_cost_model_fits_verify_line():
    cost = CostModel()
    for k in (0, 2, 4, 8) * 3:
        cost.observe_verify(k, 0.010 + 0.001 * k)
    a, b = cost.verify_coefficients()
    assert a == pytest.approx(0.010, rel=1e-6)
    assert b == pytest.approx(0.001, rel=1e-6)
    cost.observe_draft(0.002)
    assert cost.cost_ratio == pytest.approx(0.2, rel=1e-6)
    assert cost.step_time(3) == pytest.approx(3 * 0.002 + 0.013, rel=1e-6)


def test_cost_estimates_are_robust_to_a_noisy_sample():
    cost = CostModel()
    for _ in range(20):
        cost.observe_verify(0, 0.010)
        cost.observe_verify(4, 0.014)
        cost.observe_draft(0.001)
        cost.observe_overhead(0.0005)
    before = (*cost.verify_coefficients(), cost.draft_time, cost.overhead)
    cost.observe_draft(0.5)  # a page fault, another process: 500 times the usual
    cost.observe_verify(4, 1.0)
    cost.observe_overhead(0.3)
    assert (*cost.verify_coefficients(), cost.draft_time, cost.overhead) == pytest.approx(before)
    with pytest.raises(ValueError, match="window"):
        CostSettings(window=0)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 12),
    samples=st.lists(
        st.floats(0.0, 1.0, allow_nan=False) | st.sampled_from([0.0, 0.25, 0.5, 1.0]),  # repeats test the eviction
        min_size=1,
        max_size=60,
    ),
)
def test_cost_window_median_is_the_median_of_the_last_samples(size, samples):
    from speckv_hf.core.cost import _Window

    window, last = _Window(size), deque(maxlen=size)
    for value in samples:
        window.append(value)
        last.append(value)
        assert len(window) == len(last)
        assert window.median() == statistics.median(last)


def test_verify_intercept_never_collapses():
    cost = CostModel()
    for _ in range(5):  # noisy: the long verifications happen to be fast, the short ones slow
        cost.observe_verify(1, 0.010)
        cost.observe_verify(2, 0.030)
        cost.observe_verify(3, 0.050)
    cost.observe_draft(0.001)
    a, b = cost.verify_coefficients()
    assert a >= 0.005 and b >= 0
    assert cost.cost_ratio <= 0.2


def test_cost_ratio_override():
    cost = CostModel(CostSettings(cost_ratio=0.1))
    cost.observe_verify(0, 0.02)
    assert cost.ready
    assert cost.draft_time == pytest.approx(0.002)
    with pytest.raises(ValueError, match="cost_ratio must be > 0"):
        CostSettings(cost_ratio=0)


def test_stats_are_consistent(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    generator = SpecKVGenerator("fixed:3")
    input_ids = prompt(8, seed=11)
    out = greedy(
        target, input_ids, assistant_model=draft, candidate_generator=generator, max_new_tokens=30, eos_token_id=None
    )
    stats = generator.last_stats
    assert stats.tokens_emitted == out.shape[1] - input_ids.shape[1] == 30
    assert stats.prompt_tokens == 8
    assert sum(stats.gamma_histogram.values()) == stats.target_forwards == len(stats.steps)
    assert sum(stats.accepted_histogram.values()) == stats.target_forwards
    assert sum(g * n for g, n in stats.gamma_histogram.items()) == stats.drafted_tokens
    assert sum(s.tokens_produced for s in stats.steps) == 30
    assert stats.tokens_per_target_forward == pytest.approx(30 / stats.target_forwards)
    assert 0 < stats.acceptance_rate <= 1
    assert stats.draft_forwards >= 1 and stats.draft_seconds > 0 and stats.verify_seconds > 0
    assert stats.policy == {"name": "fixed", "num_tokens": 3}
    text = repr(stats)
    assert "tokens=30" in text and "acceptance=" in text and "gamma_hist=" in text and "fp32" in text
    data = stats.to_dict()
    assert data["steps"][0]["gamma"] == stats.steps[0].gamma
    assert {"mean_draft_entropy", "min_draft_confidence", "accepted", "tokens_produced"} <= set(data["steps"][0])


def test_warm_start_carries_costs_between_calls(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    generator = SpecKVGenerator(plain_fallback=False)  # tiny pairs rarely pay: keep speculating
    greedy(target, prompt(8), assistant_model=draft, candidate_generator=generator, max_new_tokens=20)
    first = generator._handoff.warm.cost.num_verify_samples
    first_steps = generator.last_stats.target_forwards
    greedy(target, prompt(8, seed=1), assistant_model=draft, candidate_generator=generator, max_new_tokens=20)
    # The second call started from the first call's measurements and added its own steps (the prefill excluded).
    assert generator._handoff.warm.cost.num_verify_samples == first + generator.last_stats.target_forwards - 1
    assert first == first_steps - 1
    generator.reset()
    assert generator._handoff.warm is None
    cold = SpecKVGenerator(warm_start=False)
    greedy(target, prompt(8), assistant_model=draft, candidate_generator=cold, max_new_tokens=20)
    assert cold._handoff.warm is None


def test_last_stats_cleared_when_a_call_fails_before_binding(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    generator = SpecKVGenerator()
    greedy(target, prompt(8), assistant_model=draft, candidate_generator=generator, max_new_tokens=5)
    assert generator.last_stats is not None
    with pytest.raises(ValueError):
        greedy(target, prompt(8), assistant_model=draft, candidate_generator=generator, max_new_tokens=5, num_beams=2)
    assert generator.last_stats is None


def test_plain_fallback_when_speculation_does_not_pay(llama_pairs):
    """A draft that is never worth its cost: once the policy has judged enough steps (about 64, over calls, never
    one call), the generator runs plain decoding, probing again every `probe_every`-th call; output stays the
    target's."""
    target, draft = llama_pairs["llama-random"]
    generator = SpecKVGenerator(cost_ratio=3.0, probe_every=3)  # the draft costs 3 target forwards per token
    input_ids = prompt(8, seed=4)
    expected = greedy(target, input_ids, max_new_tokens=40, eos_token_id=None)
    modes = []
    for _ in range(6):
        out = greedy(
            target,
            input_ids,
            assistant_model=draft,
            candidate_generator=generator,
            max_new_tokens=40,
            eos_token_id=None,
        )
        assert torch.equal(out, expected)
        stats = generator.last_stats
        assert stats.tokens_emitted == 40
        modes.append(stats.plain_decoding)
    # ~37 judged steps per call: the verdict needs two calls and a half; then plain, plain, probe.
    assert modes == [False, False, False, True, True, False]
    assert "plain decoding" in repr(generator.last_stats.__class__(plain_decoding=True))

    useful = SpecKVGenerator("fixed:2", probe_every=1)  # fixed policies never fall back
    for _ in range(2):
        greedy(target, input_ids, assistant_model=draft, candidate_generator=useful, max_new_tokens=20)
        assert not useful.last_stats.plain_decoding
