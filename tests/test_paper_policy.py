"""The SpecKV paper's predictor: strict npz conversion, the paper's γ rule run causally inside generate() (its
lossless check is test_lossless.py's, parametrized over every policy)."""

from __future__ import annotations

import itertools
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from speckv_hf import PAPER_FEATURES, GammaPredictor, PaperPolicy, PredictorLoadError, SpecKVGenerator, get_policy
from speckv_hf.compression.detection import CompressionInfo
from speckv_hf.core.cost import CostModel
from speckv_hf.core.signals import TokenSignals
from speckv_hf.policies.base import DraftState, PolicyContext, StepOutcome
from speckv_hf.policies.paper import default_paper_predictor_path
from speckv_hf.policies.registry import policy_from_pretrained
from speckv_hf.policies.speckv import SpeckvPolicy
from speckv_hf.predictor.features import PORTABLE_FEATURES
from speckv_hf.predictor.paper import paper_comp_enc

from .conftest import greedy, paper_weights, prompt, write_npz

FP16 = CompressionInfo(method="none", dtype="fp16", bits=16)
INT8 = CompressionInfo(method="bnb-int8", dtype="fp16", bits=8)
NF4 = CompressionInfo(method="bnb-nf4", dtype="fp16", bits=4)


def reference_rate(weights: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """The paper's formula in numpy: relu(x @ W1 + b1) @ W2 + b2."""
    return (np.maximum(features @ weights["W1"] + weights["b1"], 0.0) @ weights["W2"] + weights["b2"])[:, 0]


def reference_gamma(weights: dict[str, np.ndarray], signals: tuple[float, float, float, float], comp_enc: int) -> int:
    """The paper's argmax, by hand: signals are (mean entropy nats, mean confidence, max entropy nats, min conf)."""
    mean_entropy, mean_confidence, max_entropy, min_confidence = signals
    best, best_value = None, -math.inf
    for gamma in (2, 4, 6, 8):
        row = [mean_entropy / math.log(2), mean_confidence, max_entropy / math.log(2), min_confidence, comp_enc, gamma]
        rate = reference_rate(weights, np.array([row]))[0]
        value = min(max(rate, 0.0), 1.0) * gamma + 1
        if value > best_value:
            best, best_value = gamma, value
    return best


def gamma_only(rate_by_gamma: dict[int, float]) -> GammaPredictor:
    """A paper predictor whose rate depends on γ only, through the given points: piecewise linear in γ, hidden unit
    k is relu(γ - g_k) for each γ but the last."""
    predictor = GammaPredictor(list(PAPER_FEATURES), hidden_sizes=[16], kind="paper")
    gammas = sorted(rate_by_gamma)
    with torch.no_grad():
        for parameter in predictor.parameters():
            parameter.zero_()
        first, out = predictor.mlp[0], predictor.mlp[2]
        out.bias[0] = rate_by_gamma[gammas[0]]
        slopes = np.diff([rate_by_gamma[g] for g in gammas]) / np.diff(gammas)
        previous = 0.0
        for k, (gamma, slope) in enumerate(zip(gammas[:-1], slopes, strict=True)):
            first.weight[k, 5], first.bias[k] = 1.0, -gamma  # relu(γ - gamma)
            out.weight[0, k] = slope - previous
            previous = slope
    return predictor


def tokens(confidences: list[float], entropies: list[float]) -> list[TokenSignals]:
    return [
        TokenSignals(confidence=c, max_prob=c, entropy=e, margin=0.1, position=i)
        for i, (c, e) in enumerate(zip(confidences, entropies, strict=True))
    ]


def draft(policy: PaperPolicy, step: int = 0, signals=((0.5, 1.0),), max_tokens: int = 64) -> list[TokenSignals]:
    """Drafts one step as the generator does: `should_draft` before each token, with the live list of the step's
    tokens; token i gets (confidence, entropy in nats) `signals[i % len(signals)]`. Returns the drafted tokens."""
    drafted: list[TokenSignals] = []
    while policy.should_draft(DraftState(step=step, tokens=drafted, max_tokens=max_tokens)):
        confidence, entropy = signals[len(drafted) % len(signals)]
        drafted.append(TokenSignals(confidence, confidence, entropy, 0.1, len(drafted)))
        assert len(drafted) <= max_tokens
    return drafted


def run_step(policy: PaperPolicy, step: int = 0, signals=((0.5, 1.0),), accepted: int = 0) -> list[TokenSignals]:
    """`draft`, then `observe` with what the generator passes: every drafted token and how many were accepted."""
    drafted = draft(policy, step, signals)
    accepted = min(accepted, len(drafted))
    policy.observe(StepOutcome(step=step, tokens=drafted, num_accepted=accepted))
    return drafted


def aggregates(drafted: list[TokenSignals]) -> tuple[float, float, float, float]:
    entropies, confidences = [t.entropy for t in drafted], [t.confidence for t in drafted]
    return float(np.mean(entropies)), float(np.mean(confidences)), max(entropies), min(confidences)


def bound(policy: PaperPolicy, compression: CompressionInfo = FP16) -> PaperPolicy:
    policy.bind(PolicyContext(cost=CostModel(), compression=compression))
    return policy


# -- the npz conversion -------------------------------------------------------------------------------------------
def test_npz_round_trip_matches_the_papers_formula(tmp_path: Path) -> None:
    weights = paper_weights()
    npz = write_npz(tmp_path / "speckv_fast.npz", weights)
    predictor = GammaPredictor.from_paper_npz(npz)
    predictor.save_pretrained(tmp_path / "checkpoint")
    loaded = GammaPredictor.from_pretrained(tmp_path / "checkpoint")
    features = np.random.default_rng(1).uniform(0, 3, size=(32, 6))
    features[:, 5] = np.random.default_rng(2).choice([2, 4, 6, 8], size=32)
    expected = reference_rate(weights, features)
    x = torch.from_numpy(features).float()
    with torch.no_grad():
        converted, reloaded = predictor(x), loaded(x)
    assert torch.equal(converted, reloaded)
    np.testing.assert_allclose(reloaded.double().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert expected.min() < 0 or expected.max() > 1  # the output is linear: not squashed into (0, 1)
    assert loaded.kind == "paper" and loaded.features == PAPER_FEATURES and loaded.hidden_sizes == (16,)
    assert torch.equal(loaded.feature_mean, torch.zeros(6)) and torch.equal(loaded.feature_std, torch.ones(6))
    assert "2605.02888" in loaded.metadata["source"] and loaded.metadata["npz"] == "speckv_fast.npz"
    assert len(loaded.metadata["npz_sha256"]) == 64
    card = (tmp_path / "checkpoint" / "README.md").read_text()
    assert "SpecKV paper's predictor" in card and 'SpecKVGenerator("speckv-paper"' in card
    assert "`mean_draft_entropy`" in card and "from_pretrained" not in card
    assert not list((tmp_path / "checkpoint").glob("*.bin")) and not list((tmp_path / "checkpoint").glob("*.pkl"))


def test_a_paper_predictor_refuses_probabilities_and_normalization() -> None:
    predictor = gamma_only({2: 0.9, 4: 0.8, 6: 0.5, 8: 0.3})
    with pytest.raises(ValueError, match="acceptance rate, not a logit"):
        predictor.predict_proba(torch.zeros(1, 6))
    with pytest.raises(ValueError, match="identity normalization"):
        predictor.set_normalization(torch.zeros(6), torch.ones(6))
    with pytest.raises(ValueError, match="kind='paper' reads the paper's features"):
        GammaPredictor(list(PORTABLE_FEATURES), kind="paper")


def test_a_normalization_edited_into_a_paper_checkpoint_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    GammaPredictor.from_paper_npz(write_npz(tmp_path / "w.npz", paper_weights())).save_pretrained(tmp_path / "ckpt")
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    state["feature_std"] = torch.full((6,), 2.0)
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(PredictorLoadError, match="paper's reads raw features"):
        GammaPredictor.from_pretrained(tmp_path / "ckpt")


def _malformed(name: str, tmp_path: Path) -> Path:
    weights = paper_weights()
    path = tmp_path / "bad.npz"
    if name == "missing":
        del weights["b2"]
    elif name == "extra":
        weights["W3"] = np.zeros((1, 1))
    elif name == "shape":
        weights["W1"] = np.zeros((16, 6))
    elif name == "nan":
        weights["b1"][3] = np.nan
    elif name == "integer":
        weights["b2"] = np.array([1])
    elif name == "object":
        weights["W2"] = np.array([{"coefs_": 1}] * 16, dtype=object).reshape(16, 1)
    elif name == "pickle":
        path.write_bytes(pickle.dumps(weights))
        return path
    elif name == "npy":
        np.save(tmp_path / "bad.npy", weights["W1"])
        return tmp_path / "bad.npy"
    elif name == "truncated":
        write_npz(path, weights)
        path.write_bytes(path.read_bytes()[:100])
        return path
    return write_npz(path, weights)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", r"exactly \['W1', 'b1', 'W2', 'b2'\]: missing \['b2'\], unexpected \[\]"),
        ("extra", r"missing \[\], unexpected \['W3'\]"),
        ("shape", r"W1 in .* has shape \(16, 6\), the paper's predictor has \(6, 16\)"),
        ("nan", r"b1 in .* has 1 non-finite values"),
        ("integer", r"b2 in .* has dtype int64; it must be floating point"),
        ("object", r"W2 in .* is a pickled object array"),
        ("pickle", r"is not an \.npz: numpy would have to unpickle it .* never loaded"),
        ("npy", r"holds one array, not an \.npz"),
        ("truncated", r"cannot read .* as an \.npz"),
    ],
)
def test_malformed_npz_names_what_differs(tmp_path: Path, name: str, message: str) -> None:
    path = _malformed(name, tmp_path)
    with pytest.raises(PredictorLoadError, match=message) as info:
        GammaPredictor.from_paper_npz(path)
    assert "np.savez" in str(info.value) or name in {"nan", "integer", "shape"}


def test_missing_npz_says_how_to_export(tmp_path: Path) -> None:
    with pytest.raises(PredictorLoadError, match=r"no file .*W1=m\.coefs_\[0\], b1=m\.intercepts_\[0\]"):
        GammaPredictor.from_paper_npz(tmp_path / "absent.npz")


# -- the γ rule ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("compression", [FP16, INT8, NF4])
def test_gamma_is_the_papers_argmax_of_the_previous_step(tmp_path: Path, seed: int, compression) -> None:
    weights = paper_weights(seed)
    policy = bound(PaperPolicy(GammaPredictor.from_paper_npz(write_npz(tmp_path / "w.npz", weights))), compression)
    rng = np.random.default_rng(100 + seed)
    expected, chosen = 4, set()
    for step in range(10):
        signals = list(zip(rng.uniform(0.05, 1.0, 8), rng.uniform(0.0, 4.0, 8), strict=True))  # entropies in nats
        drafted = run_step(policy, step, signals, accepted=int(rng.integers(0, 9)))
        assert len(drafted) == expected, f"step {step}"
        expected = reference_gamma(weights, aggregates(drafted), paper_comp_enc(compression))
        chosen.add(expected)
    assert chosen <= {2, 4, 6, 8}


def test_entropy_is_converted_from_nats_to_bits_and_every_drafted_token_counts() -> None:
    # rate = 1 - mean_entropy_bits / 8 - gamma / 16 (hidden unit 0 carries the entropy, unit 1 γ, both positive).
    predictor = GammaPredictor(list(PAPER_FEATURES), hidden_sizes=[16], kind="paper")
    with torch.no_grad():
        for parameter in predictor.parameters():
            parameter.zero_()
        predictor.mlp[0].weight[0, 0], predictor.mlp[0].weight[1, 5] = 1.0, 1.0
        predictor.mlp[2].weight[0, 0], predictor.mlp[2].weight[0, 1], predictor.mlp[2].bias[0] = -1 / 8, -1 / 16, 1.0
    # Mean entropy 2.5 nats = 3.61 bits: rates 0.42/0.30/0.17/0.05 for γ 2/4/6/8, values 1.84/2.19/2.03/1.39 -> γ=4.
    # Read as bits (2.5), rates 0.56/0.44/0.31/0.19, values 2.12/2.75/2.88/2.50 -> γ=6.
    policy = bound(PaperPolicy(predictor))
    run_step(policy, 0, [(0.5, 2.5)], accepted=1)
    assert len(run_step(policy, 1, [(0.5, 0.1), (0.5, 5.0), (0.5, 5.0), (0.5, 5.0)], accepted=0)) == 4
    # All four drafts: mean 3.78 nats = 5.45 bits -> values 1.39/1.27/<1/<1 -> γ=2. Only the verified first token
    # (0.1 nats) would give γ=8.
    assert len(draft(policy, 2)) == 2


def test_first_step_drafts_initial_gamma_and_each_call_starts_over() -> None:
    policy = bound(PaperPolicy(gamma_only({2: 0.9, 4: 0.9, 6: 0.9, 8: 0.9}), initial_gamma=3))
    assert len(draft(policy)) == 3
    assert len(draft(policy)) == 3  # nothing observed yet: no new decision
    policy.observe(StepOutcome(step=0, tokens=tokens([0.9] * 3, [0.1] * 3), num_accepted=3))
    assert len(draft(policy, step=1)) == 8  # 0.9·8 + 1 is the largest
    assert len(run_step(policy, step=2)) == 8  # a decision lasts until the next observed step
    policy.observe(StepOutcome(step=3, tokens=[], num_accepted=0))  # a step without drafts brings no signals
    assert len(draft(policy, step=4)) == 8
    bound(policy)
    assert len(draft(policy)) == 3


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        ({2: 1.0, 4: 0.2, 6: 0.1, 8: 0.0}, 2),  # values 3, 1.8, 1.6, 1
        ({2: 0.5, 4: 0.45, 6: 0.4, 8: 0.1}, 6),  # 2, 2.8, 3.4, 1.8
        ({2: 2.0, 4: 0.55, 6: -1.0, 8: 0.3}, 8),  # clipped 3, 3.2, 1, 3.4 (unclipped, γ=2 would win with 5)
        ({2: -1.0, 4: -0.1, 6: -0.1, 8: -0.2}, 2),  # clipped all 1: the first γ (unclipped, γ=4 would win)
    ],
)
def test_rates_are_clipped_to_0_1_before_weighing_by_gamma(rates: dict[int, float], expected: int) -> None:
    policy = bound(PaperPolicy(gamma_only(rates)))
    run_step(policy, 0)
    assert len(draft(policy, 1)) == expected


def test_drafts_are_capped_by_the_step_budget() -> None:
    policy = bound(PaperPolicy(gamma_only({2: 0.0, 4: 0.0, 6: 0.0, 8: 1.0})))
    run_step(policy, 0)
    assert len(draft(policy, 1, max_tokens=5)) == 5
    assert len(draft(policy, 2, max_tokens=64)) == 8


@pytest.mark.parametrize(
    ("compression", "code"),
    [
        (CompressionInfo("none", "fp16", 16), 0),
        (CompressionInfo("none", "bf16", 16), 0),
        (CompressionInfo("none", "fp32", 32), 0),
        (CompressionInfo("bnb-int8", "fp16", 8), 1),
        (CompressionInfo("bnb-nf4", "fp16", 4), 2),
        (CompressionInfo("bnb-fp4", "fp32", 4), 2),
        (CompressionInfo("gptq", "fp16", 4), 2),
        (CompressionInfo("awq", "fp16", 3), 2),
        (CompressionInfo("torchao", "bf16", 8), 1),
        (CompressionInfo("hqq", "bf16", 6), 1),
    ],
)
def test_comp_enc_mapping(compression: CompressionInfo, code: int) -> None:
    assert paper_comp_enc(compression) == code


def test_unknown_compression_bits_name_the_override() -> None:
    unknown = CompressionInfo("gptq", "fp16", 0)
    with pytest.raises(ValueError, match="pass comp_enc=0, 1 or 2"):
        paper_comp_enc(unknown)
    policy = PaperPolicy(gamma_only({2: 0.9, 4: 0.1, 6: 0.1, 8: 0.1}), comp_enc=1)
    bound(policy, unknown)
    assert policy._step_x[4] == 1.0  # the override, not the target's compression


def test_comp_enc_reaches_the_decision() -> None:
    # rate falls with comp_enc: fp16 -> γ=8, nf4 -> γ=2 (unit 0 = comp_enc, unit 1 = γ; relu keeps both).
    predictor = GammaPredictor(list(PAPER_FEATURES), hidden_sizes=[16], kind="paper")
    with torch.no_grad():
        for parameter in predictor.parameters():
            parameter.zero_()
        predictor.mlp[0].weight[0, 4], predictor.mlp[0].weight[1, 5] = 1.0, 1.0
        predictor.mlp[2].weight[0, 0], predictor.mlp[2].weight[0, 1], predictor.mlp[2].bias[0] = -0.4, -0.05, 1.0
    for compression, expected in ((FP16, 8), (NF4, 2)):
        policy = bound(PaperPolicy(predictor), compression)
        run_step(policy, 0)
        assert len(draft(policy, 1)) == expected


# -- loading, settings, the registry ------------------------------------------------------------------------------
def test_settings_are_checked_and_reported(tmp_path: Path) -> None:
    predictor = gamma_only({2: 0.9, 4: 0.1, 6: 0.1, 8: 0.1})
    for bad in ({"gammas": ()}, {"gammas": (2, 2)}, {"gammas": (0, 4)}, {"initial_gamma": -1}, {"comp_enc": 3}):
        with pytest.raises(ValueError):
            PaperPolicy(predictor, **bad)
    with pytest.raises(ValueError, match=r"kind 'paper'.*'portable' predictor.*from_paper_npz"):
        PaperPolicy(GammaPredictor(list(PORTABLE_FEATURES)))
    predictor.save_pretrained(tmp_path / "ckpt")
    policy = get_policy("speckv-paper", predictor=str(tmp_path / "ckpt"), gammas=(1, 3), initial_gamma=2)
    assert isinstance(policy, PaperPolicy)
    assert policy.config() == {
        "name": "speckv-paper",
        "predictor": str(tmp_path / "ckpt"),
        "gammas": [1, 3],
        "initial_gamma": 2,
        "comp_enc": None,
    }


def test_missing_default_predictor_says_how_to_make_one() -> None:
    try:
        path = default_paper_predictor_path()
    except FileNotFoundError as error:
        message = str(error)
        assert "speckv paper --export-npz" in message and "from_paper_npz" in message and "save_pretrained" in message
        with pytest.raises(FileNotFoundError, match="speckv paper --export-npz"):
            PaperPolicy()
    else:  # once the package ships one, it loads as a paper predictor
        assert PaperPolicy().source == "default" and (path / "config.json").is_file()


def test_policy_from_pretrained_dispatches_on_the_checkpoint_kind(tmp_path: Path) -> None:
    gamma_only({2: 0.9, 4: 0.1, 6: 0.1, 8: 0.1}).save_pretrained(tmp_path / "paper")
    GammaPredictor(list(PORTABLE_FEATURES), hidden_sizes=[4]).save_pretrained(tmp_path / "portable")
    assert isinstance(policy_from_pretrained(tmp_path / "paper"), PaperPolicy)
    assert type(policy_from_pretrained(tmp_path / "portable")) is SpeckvPolicy
    assert isinstance(policy_from_pretrained(GammaPredictor.from_pretrained(tmp_path / "paper")), PaperPolicy)
    assert json.loads((tmp_path / "paper" / "config.json").read_text())["kind"] == "paper"
    with pytest.raises(PredictorLoadError, match=r"no config\.json"):
        policy_from_pretrained(tmp_path)  # an empty folder: the loader names why


# -- inside generate() --------------------------------------------------------------------------------------------
def test_generate_drafts_exactly_the_chosen_gamma(llama_pairs, tmp_path: Path) -> None:
    """Step 0 drafts initial_gamma; every later step the γ the paper's rule picks from the step before it."""
    target, draft = llama_pairs["llama-noisy"]
    weights = paper_weights(28)  # picks 8, 6 or 2 by the step's signals on this pair
    predictor = GammaPredictor.from_paper_npz(write_npz(tmp_path / "w.npz", weights))
    generator = SpecKVGenerator(PaperPolicy(predictor, initial_gamma=3), record_steps=True)
    input_ids = prompt(8, seed=4)
    max_new_tokens = 60
    out = greedy(
        target,
        input_ids,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=max_new_tokens,
        eos_token_id=None,
    )
    assert torch.equal(out, greedy(target, input_ids, max_new_tokens=max_new_tokens, eos_token_id=None))
    steps = generator.last_stats.steps
    assert steps[0].gamma == 3
    emitted, chosen_gammas = steps[0].tokens_produced, set()
    for previous, step in itertools.pairwise(steps):
        signals = previous.signals
        chosen = reference_gamma(
            weights, (signals.mean_entropy, signals.mean_confidence, signals.max_entropy, signals.min_confidence), 0
        )
        # The generator caps a step at the tokens left (minus the target's own one).
        budget = max(max_new_tokens - emitted - 1, 0)
        assert step.gamma == min(chosen, budget), f"step {step.step}"
        emitted += step.tokens_produced
        chosen_gammas.add(chosen)
    assert len(chosen_gammas) >= 2  # the choice follows the signals, it is not constant
