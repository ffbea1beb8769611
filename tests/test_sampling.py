"""With do_sample=True the emitted distribution is the target's (speculative sampling stays exact)."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaForCausalLM

from speckv_hf import SpecKVGenerator

from .conftest import llama_config

VOCAB = 8
SAMPLES = 3000


def _two_token_distribution(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Exact P(t1, t2) of the model's next two tokens, shape (VOCAB, VOCAB)."""
    with torch.no_grad():
        first = torch.softmax(model(input_ids).logits[0, -1].float(), -1)
        rows = []
        for token in range(VOCAB):
            extended = torch.cat((input_ids, torch.tensor([[token]])), dim=1)
            rows.append(torch.softmax(model(extended).logits[0, -1].float(), -1))
    return first[:, None] * torch.stack(rows)


def _chi_square_pvalue(counts: torch.Tensor, expected_probs: torch.Tensor) -> float:
    expected = expected_probs.flatten().double() * counts.sum()
    observed = counts.flatten().double()
    big = expected >= 5  # lump rare cells together, as the chi-square approximation needs
    obs = torch.cat((observed[big], observed[~big].sum()[None]))
    exp = torch.cat((expected[big], expected[~big].sum()[None]))
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    exp = exp * (obs.sum() / exp.sum())  # exact equal totals, as scipy requires
    return float(chisquare(obs.numpy(), exp.numpy()).pvalue)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["fixed:2"])
def test_sampling_matches_target_distribution(policy):
    torch.manual_seed(0)
    config = llama_config(layers=1, vocab=VOCAB, initializer_range=0.5, max_position_embeddings=32)
    target = LlamaForCausalLM(config).eval()
    draft = LlamaForCausalLM(config).eval()  # unrelated weights: many rejections, so resampling is exercised
    input_ids = torch.tensor([[3, 5, 4]])
    target_probs = _two_token_distribution(target, input_ids)
    draft_probs = _two_token_distribution(draft, input_ids)

    counts = torch.zeros(VOCAB, VOCAB)
    generator = SpecKVGenerator(policy)
    drafted = 0
    for seed in range(SAMPLES):
        torch.manual_seed(seed)
        out = target.generate(
            input_ids,
            assistant_model=draft,
            candidate_generator=generator,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=2,
            eos_token_id=None,
            pad_token_id=0,
        )
        t1, t2 = out[0, -2:].tolist()
        counts[t1, t2] += 1
        drafted += generator.last_stats.drafted_tokens
    assert drafted > SAMPLES // 2, "the test must exercise drafted tokens"
    assert _chi_square_pvalue(counts, target_probs) > 1e-3
    # Power check: the same counts clearly reject the draft's own distribution.
    assert _chi_square_pvalue(counts, draft_probs) < 1e-6


def test_sampling_returns_draft_logits(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    generator = SpecKVGenerator("fixed:3")
    torch.manual_seed(0)
    out = target.generate(
        torch.tensor([[5, 6, 7, 8]]),
        assistant_model=draft,
        candidate_generator=generator,
        do_sample=True,
        top_k=5,
        max_new_tokens=12,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert out.shape[1] == 16
    steps = generator.last_stats.steps
    assert all(len(step.confidences) == step.gamma for step in steps)
    assert all(0 < c <= 1 for step in steps for c in step.confidences)


def test_all_pairs_cover_the_table():
    assert len(list(itertools.product(range(VOCAB), repeat=2))) == VOCAB * VOCAB
