"""The `speckv` policy: the predictor runs exactly as trained, decides per token, corrects itself, stays lossless."""

from __future__ import annotations

import copy

import pytest
import torch

from speckv_hf import GammaPredictor, SpecKVGenerator, SpeckvPolicy, get_policy
from speckv_hf.compression.detection import CompressionInfo
from speckv_hf.core.cost import CostModel, CostSettings
from speckv_hf.core.signals import TokenSignals
from speckv_hf.policies.base import DraftState, PolicyContext, StepOutcome
from speckv_hf.predictor.features import PORTABLE_FEATURES, token_features

from .conftest import greedy, prompt

INT8 = CompressionInfo(method="bnb-int8", dtype="fp32", bits=8)


def _predictor(seed: int = 0, confidence_weight: float = 6.0) -> GammaPredictor:
    """A predictor whose acceptance grows with confidence (first layer tilted towards it), plus random weights."""
    predictor = GammaPredictor(list(PORTABLE_FEATURES), hidden_sizes=[16, 8], init_seed=seed)
    predictor.set_normalization(
        torch.linspace(0.1, 1.0, len(PORTABLE_FEATURES)), torch.full((len(PORTABLE_FEATURES),), 0.7)
    )
    with torch.no_grad():
        first = predictor.mlp[0]
        first.weight[:, 0] = confidence_weight * first.weight[:, 0].abs()
        predictor.mlp[-1].weight.abs_()
        predictor.mlp[2].weight.abs_()
    return predictor


def _logistic(confidence_weight: float = 8.0, bias: float = -4.0) -> GammaPredictor:
    """`p = sigmoid(confidence_weight * confidence + bias)`: no hidden layer, every other feature ignored."""
    predictor = GammaPredictor(list(PORTABLE_FEATURES), hidden_sizes=[])
    with torch.no_grad():
        predictor.mlp[0].weight.zero_()
        predictor.mlp[0].weight[0, 0] = confidence_weight
        predictor.mlp[0].bias.fill_(bias)
    return predictor


def _cost(ratio: float = 0.1) -> CostModel:
    cost = CostModel(CostSettings(verify_slope=0.02))
    for _ in range(5):
        cost.observe_verify(2, 0.010 * 1.04)
        cost.observe_draft(0.010 * ratio)
    return cost


def _token(confidence: float, position: int, ngram_found: bool = True, ngram_agrees: bool = False) -> TokenSignals:
    return TokenSignals(
        confidence, min(confidence + 0.05, 1.0), 1.0 - confidence, confidence / 2, position, ngram_found, ngram_agrees
    )


@pytest.mark.parametrize("hidden_sizes", [[], [8], [16, 8], [32, 32]])
def test_numpy_mlp_equals_the_torch_predictor(hidden_sizes):
    predictor = GammaPredictor(list(PORTABLE_FEATURES), hidden_sizes=hidden_sizes, init_seed=3)
    predictor.set_normalization(
        torch.linspace(0.1, 1.0, len(PORTABLE_FEATURES)), torch.full((len(PORTABLE_FEATURES),), 0.7)
    )
    policy = SpeckvPolicy(predictor=predictor, warmup_steps=0)
    cost = _cost(0.2)
    policy.bind(PolicyContext(cost=cost, compression=INT8))
    policy.observe(StepOutcome(step=0, tokens=[_token(0.9, 0), _token(0.5, 1)], num_accepted=1))
    for confidence, position, agrees in ((0.95, 0, True), (0.4, 3, False), (0.7, 7, True)):
        token = _token(confidence, position, ngram_agrees=agrees)
        here, following = policy._raw(token, position)
        rows = [
            token_features(
                token.confidence,
                token.max_prob,
                token.entropy,
                token.margin,
                token.ngram_found,
                token.ngram_agrees,
                p,
                0.5,
                0.5,
                False,
                8,
                True,
                cost.cost_ratio,
            )
            for p in (position, position + 1)
        ]
        expected = predictor.predict_proba(torch.tensor(rows, dtype=torch.float32)).tolist()
        assert [here, following] == pytest.approx(expected, abs=1e-5)


def test_drafts_longer_for_confident_tokens_and_cheap_drafts():
    def drafted(confidence: float, ratio: float) -> int:
        policy = SpeckvPolicy(predictor=_logistic(), warmup_steps=0, max_tokens=12)
        policy.bind(PolicyContext(cost=_cost(ratio), compression=INT8))
        policy._first_token.successes, policy._first_token.trials = 9.0, 10.0
        tokens: list[TokenSignals] = []
        state = DraftState(step=5, tokens=tokens, max_tokens=12, throughput=250.0)
        while policy.should_draft(state):
            tokens.append(_token(confidence, len(tokens)))
        return len(tokens)

    assert drafted(0.95, 0.1) > drafted(0.6, 0.1) > drafted(0.3, 0.1)
    assert drafted(0.8, 0.02) > drafted(0.8, 0.4)


def test_online_correction_follows_the_pair():
    """A predictor far too optimistic for this pair: observing rejections lowers its corrected probabilities."""
    policy = SpeckvPolicy(predictor=_logistic(), warmup_steps=0)
    policy.bind(PolicyContext(cost=_cost(), compression=INT8))
    token = _token(0.9, 0)
    before = policy._corrected(policy._raw(token, 0)[0])
    for step in range(100):
        policy.should_draft(DraftState(step=step, tokens=[], max_tokens=8, throughput=50.0))
        policy.observe(StepOutcome(step=step, tokens=[token], num_accepted=0))
    after = policy._corrected(policy._raw(token, 0)[0])
    assert before > 0.5 and after < before / 2


def test_rejects_a_pair_predictor_and_other_features(tmp_path):
    pair = GammaPredictor(list(PORTABLE_FEATURES), kind="pair", hidden_state_dim=4)
    with pytest.raises(ValueError, match="portable predictors"):
        SpeckvPolicy(predictor=pair)
    other = GammaPredictor(["confidence", "position"])
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="missing features"):
        SpeckvPolicy(predictor=str(tmp_path / "other"))


@pytest.mark.parametrize("pair_name", ["llama-noisy", "llama-layers", "llama-random"])
def test_lossless_and_from_pretrained(llama_pairs, pair_name, tmp_path):
    target, draft = llama_pairs[pair_name]
    _predictor().save_pretrained(tmp_path / "ckpt")
    generator = SpecKVGenerator.from_pretrained(tmp_path / "ckpt", policy_kwargs={"warmup_steps": 1})
    assert generator.policy.config()["predictor"] == str(tmp_path / "ckpt")
    for seed in range(3):
        input_ids = prompt(8, seed=seed)
        expected = greedy(target, input_ids, max_new_tokens=24)
        out = greedy(target, input_ids, assistant_model=draft, candidate_generator=generator, max_new_tokens=24)
        assert torch.equal(out, expected)
        assert generator.last_stats.policy["name"] == "speckv"


def test_policy_copies_are_independent():
    policy = get_policy("speckv", predictor=_predictor())
    twin = copy.deepcopy(policy)
    policy.bind(PolicyContext(cost=_cost(), compression=INT8))
    twin.bind(PolicyContext(cost=_cost(), compression=INT8))
    policy.observe(StepOutcome(step=0, tokens=[_token(0.9, 0)], num_accepted=0))
    assert policy._observed != twin._observed


def test_shipped_default_predictor_loads_strictly():
    from speckv_hf.policies.speckv import default_predictor_path

    predictor = GammaPredictor.from_pretrained(str(default_predictor_path()), expected_features=PORTABLE_FEATURES)
    assert predictor.kind == "portable" and predictor.metadata["metrics"]
    assert "AUC" in (default_predictor_path() / "README.md").read_text()
    assert SpeckvPolicy().config()["predictor"] == "default"
