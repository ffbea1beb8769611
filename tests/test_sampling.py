"""With do_sample=True the emitted distribution is the target's (speculative sampling stays exact), and a seeded
call with the default generator repeats."""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaForCausalLM

from speckv_hf import SpecKVGenerator
from speckv_hf.policies.base import FixedPolicy

from .conftest import AlwaysContext, GuessOnly, llama_config, noisy_copy

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


def first_two_token_counts(target, draft, input_ids, generator) -> tuple[torch.Tensor, int, int]:
    """Counts of the first two sampled tokens over `SAMPLES` seeded calls, and the drafted and accepted tokens."""
    counts = torch.zeros(VOCAB, VOCAB)
    drafted = accepted = 0
    start = input_ids.shape[1]
    for seed in range(SAMPLES):
        torch.manual_seed(seed)
        # 3 new tokens: the first step may draft 2 (budget = max_length - length - 1), so chained acceptance and
        # rollback are exercised; the test checks the marginal of the first two tokens.
        out = target.generate(
            input_ids,
            assistant_model=draft,
            candidate_generator=generator,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=3,
            eos_token_id=None,
            pad_token_id=0,
        )
        t1, t2 = out[0, start : start + 2].tolist()
        counts[t1, t2] += 1
        drafted += generator.last_stats.drafted_tokens
        accepted += generator.last_stats.accepted_tokens
    return counts, drafted, accepted


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "draft_kind"), [("fixed:2", "unrelated"), ("adaptive", "noisy")])
def test_sampling_matches_target_distribution(policy, draft_kind):
    torch.manual_seed(0)
    config = llama_config(layers=1, vocab=VOCAB, initializer_range=0.5, max_position_embeddings=32, eos_token_id=None)
    target = LlamaForCausalLM(config).eval()
    # An unrelated draft is rejected often, so resampling from the residual is exercised; a noisy copy is close
    # enough that the adaptive policy keeps drafting, far enough to be rejected at times.
    draft = LlamaForCausalLM(config).eval() if draft_kind == "unrelated" else noisy_copy(target, 0.15)
    input_ids = torch.tensor([[3, 5, 4]])
    target_probs = _two_token_distribution(target, input_ids)
    draft_probs = _two_token_distribution(draft, input_ids)

    # Both tiny models cost the same per forward, so the adaptive policy would rightly draft nothing: tell it the
    # draft is cheap and verification flat, and keep it speculating (this test is about the sampling arithmetic, not
    # about the policy's reading of the machine's timings).
    generator = (
        SpecKVGenerator(policy, cost_ratio=0.05, verify_slope=0.0, plain_fallback=False, sampling="speculative")
        if policy == "adaptive"
        else SpecKVGenerator(policy, sampling="speculative")
    )
    counts, drafted, _ = first_two_token_counts(target, draft, input_ids, generator)
    assert drafted > SAMPLES // 2, "the test must exercise drafted tokens"
    assert generator.last_stats is not None
    if policy == "fixed:2":
        assert generator.last_stats.gamma_histogram[2] >= 1, "the first step drafts two tokens"
    assert _chi_square_pvalue(counts, target_probs) > 1e-3
    if draft_kind == "unrelated":  # power check: the same counts clearly reject the draft's own distribution
        assert _chi_square_pvalue(counts, draft_probs) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("draft_policy", [None, FixedPolicy(2)], ids=["context", "context+fixed:2"])
def test_context_candidates_keep_the_target_distribution(draft_policy):
    """Context candidates are deterministic proposals (accepted with p(x), else resampled from p without x); mixed
    with an unrelated draft's tokens in one step, the first two tokens still follow the target's distribution."""
    torch.manual_seed(0)
    config = llama_config(layers=1, vocab=VOCAB, initializer_range=0.5, max_position_embeddings=32, eos_token_id=None)
    target = LlamaForCausalLM(config).eval()
    draft = LlamaForCausalLM(config).eval()
    input_ids = torch.tensor([[3, 5, 4, 6, 3, 5]])  # the tail "3 5" occurred: the context proposes "4 6"
    target_probs = _two_token_distribution(target, input_ids)
    policy = AlwaysContext(draft_policy, take=1 if draft_policy is not None else 2)
    generator = SpecKVGenerator(policy, sampling="speculative", warm_start=False)
    counts, drafted, _ = first_two_token_counts(target, draft, input_ids, generator)
    stats = generator.last_stats
    assert stats.context_tokens >= 1 and drafted > SAMPLES
    if draft_policy is not None:
        assert stats.draft_forwards >= 1  # a context token and a drafted token in the first step
    assert _chi_square_pvalue(counts, target_probs) > 1e-3
    # Power check: the proposal itself ("4 6") is far likelier in the counts than it would be if accepted always.
    assert counts[4, 6] < 0.9 * SAMPLES


@pytest.mark.parametrize("sampling", ["speculative", "coupled"])
def test_sampled_calls_feed_the_draft_no_guesses(sampling):
    """Sampled, the draft's tokens match the context's guesses too seldom to pay for their columns: none are fed,
    where the same greedy call confirms some."""
    torch.manual_seed(0)
    config = llama_config(layers=1, vocab=VOCAB, initializer_range=0.5, max_position_embeddings=64, eos_token_id=None)
    target = LlamaForCausalLM(config).eval()
    input_ids = torch.tensor([[3, 5, 4, 6, 3, 5, 4, 6, 3, 5]])
    draft = copy.deepcopy(target)
    kwargs = dict(assistant_model=draft, max_new_tokens=20, eos_token_id=None, pad_token_id=0, top_k=0)
    generator = SpecKVGenerator(GuessOnly(FixedPolicy(2)), sampling=sampling)
    target.generate(input_ids, candidate_generator=generator, do_sample=True, **kwargs)
    assert generator.last_stats.guessed_tokens == 0 and generator.last_stats.drafted_tokens > 0
    target.generate(input_ids, candidate_generator=generator, do_sample=False, **kwargs)
    assert generator.last_stats.guessed_tokens > 0


def test_sampling_returns_processed_draft_logits(llama_pairs):
    """With do_sample the candidates come with the processed (here top-k) draft logits, one row per token."""
    from transformers import GenerationConfig
    from transformers.generation.logits_process import LogitsProcessorList, TopKLogitsWarper

    target, draft = llama_pairs["llama-noisy"]
    input_ids = torch.tensor([[5, 6, 7, 8]])
    config = GenerationConfig(do_sample=True, max_length=20, eos_token_id=None)
    processors = LogitsProcessorList([TopKLogitsWarper(top_k=5)])
    bound = SpecKVGenerator("fixed:3").bind(target, draft, input_ids, config, processors, {})
    candidates, logits = bound.get_candidates(input_ids)
    assert candidates.shape == (1, 7) and torch.equal(candidates[:, :4], input_ids)
    assert logits.shape == (1, 3, target.config.vocab_size) and logits.dtype == torch.float32
    assert (torch.isfinite(logits).sum(-1) == 5).all()  # top-k applied to every drafted row
    drafted = candidates[0, 4:]
    assert torch.isfinite(logits[0, torch.arange(3), drafted]).all()  # each token was allowed by its row


@pytest.mark.slow
def test_batched_sampling_keeps_each_rows_distribution():
    """In a batch (own loop), each row's first two sampled tokens follow the target's distribution for that row's
    prompt, for rows of different lengths (left padding) that accept different numbers of tokens."""
    torch.manual_seed(0)
    config = llama_config(layers=1, vocab=VOCAB, initializer_range=0.5, max_position_embeddings=32, eos_token_id=None)
    target = LlamaForCausalLM(config).eval()
    draft = LlamaForCausalLM(config).eval()  # unrelated: rejections and residual sampling in every row
    prompts = [[3, 5, 4], [6, 2, 7, 7, 1]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    expected = [_two_token_distribution(target, torch.tensor([p])) for p in prompts]
    counts = torch.zeros(len(prompts), VOCAB, VOCAB)
    generator = SpecKVGenerator("fixed:2", sampling="speculative")
    samples = SAMPLES * 2 // 3
    for seed in range(samples):
        torch.manual_seed(seed)
        out = target.generate(
            ids,
            attention_mask=mask,
            assistant_model=draft,
            candidate_generator=generator,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            max_new_tokens=3,
            eos_token_id=None,
            pad_token_id=0,
        )
        for row in range(len(prompts)):
            t1, t2 = out[row, width : width + 2].tolist()
            counts[row, t1, t2] += 1
    assert generator.last_stats.loop == "speckv" and generator.last_stats.drafted_tokens > 0
    for row in range(len(prompts)):
        assert _chi_square_pvalue(counts[row], expected[row]) > 1e-3
    # Power: the rows' distributions differ, and each row's counts reject the other row's distribution.
    assert _chi_square_pvalue(counts[0], expected[1]) < 1e-6


def _seeded_text(target, draft, generator, seed: int = 0) -> list[int]:
    torch.manual_seed(seed)
    out = target.generate(
        torch.tensor([[5, 6, 7, 8]]),
        assistant_model=draft,
        candidate_generator=generator,
        do_sample=True,
        top_k=0,
        max_new_tokens=24,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0].tolist()


def test_seeded_sampling_repeats_with_the_default_generator(llama_pairs):
    """`torch.manual_seed` then `generate(do_sample=True)` gives the same text twice with `SpecKVGenerator()`,
    although the second call starts from the costs the first one measured; any γ gives that text."""
    target, draft = llama_pairs["llama-noisy"]
    generator = SpecKVGenerator()
    first = _seeded_text(target, draft, generator)
    assert generator.last_stats.verification == "coupled"
    assert _seeded_text(target, draft, generator) == first
    assert _seeded_text(target, draft, SpecKVGenerator("fixed:1")) == first
    assert _seeded_text(target, draft, SpecKVGenerator("fixed:6")) == first
    assert _seeded_text(target, draft, generator, seed=1) != first


def test_speculative_sampling_is_opt_in_and_the_transformers_loop_keeps_it(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    generator = SpecKVGenerator("fixed:3", sampling="speculative")
    _seeded_text(target, draft, generator)
    assert generator.last_stats.verification == "speculative"
    assert SpecKVGenerator().sampling_scheme == "coupled"
    assert SpecKVGenerator(loop="transformers").sampling_scheme == "speculative"
