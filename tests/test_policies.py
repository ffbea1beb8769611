"""Policies decide γ per step; the adaptive one follows costs and acceptance."""

from __future__ import annotations

import numpy as np
import pytest

from speckv_hf import (
    AdaptivePolicy,
    CompressionInfo,
    ConfidencePolicy,
    CostModel,
    CostSettings,
    DraftState,
    FixedPolicy,
    HeuristicPolicy,
    PolicyContext,
    StepOutcome,
    TokenSignals,
    available_policies,
    get_policy,
    register_policy,
)
from speckv_hf.policies.base import _roc_threshold

FP32 = CompressionInfo(method="none", dtype="fp32", bits=32)


def tok(confidence: float, position: int = 0) -> TokenSignals:
    return TokenSignals(
        confidence=confidence, max_prob=confidence, entropy=1 - confidence, margin=0.1, position=position
    )


def drafted_len(policy, confidences, throughput=None, max_tokens=64, step=10) -> int:
    """How many tokens the policy drafts when the draft's confidences come out as given."""
    tokens = []
    while policy.should_draft(DraftState(step=step, tokens=tokens, max_tokens=max_tokens, throughput=throughput)):
        tokens.append(tok(confidences[len(tokens)], len(tokens)))
    return len(tokens)


def bound(policy, cost=None):
    policy.bind(PolicyContext(cost=cost or CostModel(), compression=FP32))
    return policy


def measured_cost(target_seconds: float, draft_seconds: float, slope: float = 0.02) -> CostModel:
    cost = CostModel(CostSettings(verify_slope=slope))
    for _ in range(5):
        cost.observe_verify(2, target_seconds * (1 + 2 * slope))
        cost.observe_draft(draft_seconds)
        cost.observe_overhead(0.0)
    return cost


def test_fixed():
    assert drafted_len(bound(FixedPolicy(3)), [0.1] * 10) == 3
    assert drafted_len(bound(FixedPolicy(0)), [0.9] * 10) == 0


def test_heuristic_schedule_matches_transformers():
    policy = bound(HeuristicPolicy(initial_tokens=5))
    assert drafted_len(policy, [0.9] * 20) == 5
    policy.observe(StepOutcome(step=0, tokens=[tok(0.9)] * 5, num_accepted=5))
    assert policy.num_tokens == 7
    policy.observe(StepOutcome(step=1, tokens=[tok(0.9)] * 7, num_accepted=2))
    assert policy.num_tokens == 6
    for _ in range(10):
        policy.observe(StepOutcome(step=2, tokens=[tok(0.9)], num_accepted=0))
    assert policy.num_tokens == 1


def test_confidence_stops_after_low_confidence_token():
    policy = bound(ConfidencePolicy(threshold=0.5, adaptive=False))
    assert drafted_len(policy, [0.9, 0.8, 0.3, 0.9, 0.9]) == 3  # the low-confidence token is kept, then stop


def test_confidence_threshold_adapts():
    policy = bound(ConfidencePolicy(threshold=0.4))
    # Accepted tokens have confidence >= 0.7, rejected ones <= 0.6: the threshold moves into that gap.
    for _ in range(5):
        policy.observe(StepOutcome(step=0, tokens=[tok(0.9), tok(0.8), tok(0.6)], num_accepted=2))
        policy.observe(StepOutcome(step=0, tokens=[tok(0.7), tok(0.5)], num_accepted=1))
    assert 0.6 < policy.threshold <= 0.7


def test_roc_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    probs = rng.random(200)
    matches = (rng.random(200) < probs).astype(float)
    best = _roc_threshold(probs, matches, 3.0)
    candidates = np.r_[np.inf, np.unique(probs)]

    def cost(threshold):
        predicted = probs >= threshold
        fpr = (predicted & (matches == 0)).sum() / (matches == 0).sum()
        fnr = (~predicted & (matches == 1)).sum() / (matches == 1).sum()
        return fpr + 3 * fnr

    assert cost(best) == pytest.approx(min(cost(c) for c in candidates))


def _trained_adaptive(acceptance: float, cost: CostModel) -> AdaptivePolicy:
    policy = bound(AdaptivePolicy(warmup_steps=0), cost)
    rng = np.random.default_rng(0)
    for step in range(200):
        accepted = int(rng.random() < acceptance)
        policy.observe(StepOutcome(step=step, tokens=[tok(0.55), tok(0.55)], num_accepted=accepted))
    return policy


def test_adaptive_drafts_nothing_when_speculation_cannot_pay():
    cost = measured_cost(target_seconds=0.010, draft_seconds=0.008)  # an expensive draft
    policy = _trained_adaptive(acceptance=0.2, cost=cost)
    throughput = 1 / cost.step_time(0)
    lengths = [drafted_len(policy, [0.55] * 20, throughput=throughput) for _ in range(7)]
    assert lengths == [0] * 7


def test_adaptive_explores_while_skipping():
    cost = measured_cost(target_seconds=0.010, draft_seconds=0.008)
    policy = _trained_adaptive(acceptance=0.2, cost=cost)
    lengths = [drafted_len(policy, [0.55] * 20, throughput=1 / cost.step_time(0)) for _ in range(16)]
    assert sum(lengths) >= 2 and max(lengths) == 1


def test_adaptive_drafts_longer_when_drafting_is_relatively_cheaper():
    """The compression lesson: a slower (e.g. INT8) target makes the same draft relatively cheaper."""
    confidences = [0.8] * 40
    fast_target = measured_cost(target_seconds=0.006, draft_seconds=0.0015)
    slow_target = measured_cost(target_seconds=0.020, draft_seconds=0.0015)
    policies = []
    for cost in (fast_target, slow_target):
        policy = bound(AdaptivePolicy(warmup_steps=0), cost)
        rng = np.random.default_rng(0)
        for step in range(300):  # the draft's 0.8 confidence is calibrated: 80% of such tokens are accepted
            outcomes = rng.random(4) < 0.8
            accepted = int(np.argmin(outcomes)) if not outcomes.all() else 4
            policy.observe(StepOutcome(step=step, tokens=[tok(0.8)] * 4, num_accepted=accepted))
        policies.append(policy)
    # Throughput each call would achieve with ~4 tokens per step.
    gamma_fast = drafted_len(policies[0], confidences, throughput=4 / fast_target.step_time(4))
    gamma_slow = drafted_len(policies[1], confidences, throughput=4 / slow_target.step_time(4))
    assert gamma_slow > gamma_fast >= 1


def test_adaptive_warmup_uses_confidence_rule():
    policy = bound(AdaptivePolicy(warmup_steps=3))
    assert drafted_len(policy, [0.9, 0.9, 0.2, 0.9, 0.9], step=0) == 3
    assert drafted_len(policy, [0.9] * 10, step=0) == 4


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        ("nope", {}, "unknown policy 'nope'"),
        ("fixed:x", {}, "fixed:K"),
        ("heuristic:3", {}, "fixed:K"),
        ("fixed", {"num_tokens": -1}, "num_tokens"),
        ("confidence", {"threshold": 1.5}, "0 < threshold < 1"),
        ("adaptive", {"max_tokens": 0}, "max_tokens"),
        ("adaptive", {"bogus": 1}, "invalid settings for policy 'adaptive'"),
        ("heuristic", {"initial_tokens": 0}, "initial_tokens"),
    ],
)
def test_invalid_policy_settings(spec, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_policy(spec, **kwargs)


def test_get_policy_by_name():
    assert available_policies() == ["adaptive", "confidence", "fixed", "heuristic", "speckv", "speckv-paper"]
    assert get_policy("fixed:6").num_tokens == 6
    policy = FixedPolicy(2)
    assert get_policy(policy) is policy
    assert repr(get_policy("adaptive")).startswith("AdaptivePolicy(max_tokens=16")
    with pytest.raises(ValueError, match="policy object"):
        get_policy(policy, num_tokens=3)


def test_register_policy_third_party():
    class Greedy2(FixedPolicy):
        name = "greedy2"

        def __init__(self) -> None:
            super().__init__(2)

    register_policy("greedy2", Greedy2)
    try:
        assert "greedy2" in available_policies() and get_policy("greedy2").num_tokens == 2
        with pytest.raises(ValueError, match="already registered"):
            register_policy("greedy2", Greedy2)
        with pytest.raises(ValueError, match="letters, digits"):
            register_policy("bad:name", Greedy2)
        register_policy("not-a-policy", lambda: object())
        with pytest.raises(TypeError, match="not a DraftPolicy"):
            get_policy("not-a-policy")
    finally:
        from speckv_hf.policies import registry

        registry._POLICIES.pop("greedy2", None)
        registry._POLICIES.pop("not-a-policy", None)


def test_speculation_verdict_needs_evidence_over_many_steps():
    """No cliff: one call's worth of skipped steps gives no verdict; the verdict comes from many steps."""
    cost = measured_cost(target_seconds=0.01, draft_seconds=0.05)  # drafting costs 5 target forwards
    policy = bound(AdaptivePolicy(warmup_steps=0, explore_every=0), cost)
    assert FixedPolicy(2).speculation_pays() is None  # the default: no opinion
    for step in range(30):
        assert not policy.should_draft(DraftState(step=step, tokens=[], max_tokens=8, throughput=100.0))
        policy.observe(StepOutcome(step=step, tokens=[], num_accepted=0))
    assert policy.speculation_pays() is None
    for step in range(30, 80):
        policy.should_draft(DraftState(step=step, tokens=[], max_tokens=8, throughput=100.0))
    assert policy.speculation_pays() is False
    # Steps where drafting pays bring the verdict back.
    cheap = measured_cost(target_seconds=0.01, draft_seconds=0.0001)
    policy.bind(PolicyContext(cost=cheap, compression=FP32))
    policy._first_token.successes, policy._first_token.trials = 9.0, 10.0
    for step in range(80, 200):
        assert policy.should_draft(DraftState(step=step, tokens=[], max_tokens=8, throughput=100.0))
    assert policy.speculation_pays() is True
