"""Coupled sampling (`SpecKVGenerator(sampling="coupled")`): the target's distribution, and one output whatever
the policy, γ or draft."""

from __future__ import annotations

import copy
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaForCausalLM
from transformers.generation.logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper

from speckv_hf import SpecKVGenerator
from speckv_hf.bench.harness import run_benchmark
from speckv_hf.bench.methods import Method, parse_methods
from speckv_hf.decoding.coupling import GumbelNoise
from speckv_hf.policies.base import FixedPolicy

from .conftest import AlwaysContext, llama_config, prompt
from .test_bench import _prompts
from .test_sampling import SAMPLES, VOCAB, _chi_square_pvalue, _two_token_distribution, first_two_token_counts

NEW_TOKENS = 24
WARPERS = {"temperature": 0.8, "top_k": 20, "top_p": 1.0}


def _coupled(target, draft, ids, policy, seed, mask=None, eos_token_id=None, **kwargs):
    """One coupled call with the tests' warpers, seeded; `policy` is a policy spec or a ready `SpecKVGenerator`."""
    generator = (
        policy if isinstance(policy, SpecKVGenerator) else SpecKVGenerator(policy, sampling="coupled", **kwargs)
    )
    torch.manual_seed(seed)
    out = target.generate(
        ids,
        attention_mask=mask,
        assistant_model=draft,
        candidate_generator=generator,
        do_sample=True,
        max_new_tokens=NEW_TOKENS,
        eos_token_id=eos_token_id,
        pad_token_id=0,
        **WARPERS,
    )
    return out, generator.last_stats


@torch.no_grad()
def _gumbel_reference(target, prompts: list[list[int]], seed: int) -> list[list[int]]:
    """Target-alone sampling by the Gumbel-max trick with the noise the loop draws: each row's token at position n is
    `argmax(warped logits + g_n)`."""
    warpers = LogitsProcessorList(
        [TemperatureLogitsWarper(WARPERS["temperature"]), TopKLogitsWarper(WARPERS["top_k"])]
    )
    torch.manual_seed(seed)
    noise = GumbelNoise(len(prompts), target.config.vocab_size, "cpu")
    rows = []
    for row, ids in enumerate(prompts):
        sequence = list(ids)
        for position in range(NEW_TOKENS):
            logits = target(torch.tensor([sequence])).logits[:, -1].float()
            scores = warpers(torch.tensor([sequence]), logits)
            sequence.append(int((scores + noise.at([row], [position])).argmax()))
        rows.append(sequence[len(ids) :])
    return rows


def test_coupled_output_is_the_target_gumbel_sample_for_every_policy_and_draft(llama_pairs):
    """The output is a function of the noise and the target alone: the same tokens for constant γ 1 and 4, the
    adaptive and the speckv policies, and a close or an unrelated draft, equal to target-alone Gumbel-max sampling."""
    target, close = llama_pairs["llama-noisy"]
    unrelated = llama_pairs["llama-random"][1]
    ids = prompt(8, seed=3)
    expected = _gumbel_reference(target, [ids[0].tolist()], seed=11)[0]
    outputs, accepted = {}, {}
    for name, draft in (("close", close), ("unrelated", unrelated)):
        for policy in ("fixed:1", "fixed:4", "adaptive", "speckv", "context+adaptive", AlwaysContext(FixedPolicy(2))):
            out, stats = _coupled(target, draft, ids, policy, seed=11, cost_ratio=0.05, verify_slope=0.0)
            outputs[name, policy] = out[0, ids.shape[1] :].tolist()
            accepted[name, policy] = stats.accepted_tokens
            assert stats.verification == "coupled" and stats.loop == "speckv"
    assert all(output == expected for output in outputs.values()), outputs
    # The check has teeth: drafts were accepted (the close draft) and rejected (the unrelated one).
    assert accepted["close", "fixed:4"] > NEW_TOKENS // 2
    assert accepted["unrelated", "fixed:4"] < accepted["close", "fixed:4"]
    # And another seed gives another sample.
    assert _coupled(target, close, ids, "fixed:4", seed=12)[0][0, ids.shape[1] :].tolist() != expected


def test_a_draft_equal_to_the_target_is_always_accepted(llama_pairs):
    """Draft token j and verification position j read the same noise: a draft that is the target's copy proposes
    the target's perturbed argmax, so every drafted token is accepted."""
    target, _ = llama_pairs["llama-noisy"]
    ids = prompt(8, seed=6)
    out, stats = _coupled(target, copy.deepcopy(target), ids, "fixed:4", seed=13)
    assert stats.drafted_tokens > NEW_TOKENS // 2
    assert stats.accepted_tokens == stats.drafted_tokens
    assert out[0, ids.shape[1] :].tolist() == _gumbel_reference(target, [ids[0].tolist()], seed=13)[0]


def test_coupled_output_stops_at_eos_like_the_reference(llama_pairs):
    """With an EOS id, every policy's output is the reference sample cut after its first EOS, then padding."""
    target, draft = llama_pairs["llama-noisy"]
    ids = prompt(8, seed=3)
    reference = _gumbel_reference(target, [ids[0].tolist()], seed=11)[0]
    eos = reference[5]  # a token the sample reaches, so the call ends early
    end = reference.index(eos) + 1
    for policy in ("fixed:1", "fixed:4", "adaptive"):
        out, _ = _coupled(target, draft, ids, policy, seed=11, eos_token_id=eos, cost_ratio=0.05, verify_slope=0.0)
        assert out[0, ids.shape[1] :].tolist() == reference[:end], policy


class _NeverPays(FixedPolicy):
    """A policy whose evidence says speculation does not pay (so the generator would fall back to plain decoding)."""

    can_skip_drafting: ClassVar[bool] = True

    def speculation_pays(self) -> bool:
        return False


def test_coupled_sampling_never_falls_back_to_plain_decoding(llama_pairs):
    """Plain decoding would sample with transformers' own RNG draws, not the noise: coupled calls stay in the loop
    and keep their text."""
    target, draft = llama_pairs["llama-noisy"]
    ids = prompt(8, seed=3)
    expected = _gumbel_reference(target, [ids[0].tolist()], seed=11)[0]
    generator = SpecKVGenerator(_NeverPays(num_tokens=2), sampling="coupled")
    for _ in range(3):
        out, _ = _coupled(target, draft, ids, generator, seed=11)
        assert not generator.last_stats.plain_decoding and generator.last_stats.verification == "coupled"
        assert out[0, ids.shape[1] :].tolist() == expected
    # The same policy with speculative sampling does fall back (the check above has teeth).
    speculative = SpecKVGenerator(_NeverPays(num_tokens=2), sampling="speculative")
    for _ in range(2):
        target.generate(ids, assistant_model=draft, candidate_generator=speculative, do_sample=True, max_new_tokens=4)
    assert speculative.last_stats.plain_decoding and speculative.last_stats.verification == "none"


def test_coupled_batch_rows_follow_their_own_noise(llama_pairs):
    """In a left-padded batch each row has its own noise: every policy gives each row its Gumbel-max sample."""
    target, draft = llama_pairs["llama-noisy"]
    prompts = [prompt(5, seed=4)[0].tolist(), prompt(9, seed=5)[0].tolist()]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    expected = _gumbel_reference(target, prompts, seed=21)
    for policy in ("fixed:1", "fixed:3", "adaptive"):
        out, stats = _coupled(target, draft, ids, policy, seed=21, mask=mask, cost_ratio=0.05, verify_slope=0.0)
        assert out[:, width:].tolist() == expected, policy
        assert stats.verification == "coupled" and all(row.verification == "coupled" for row in stats.rows)
    assert expected[0] != expected[1]


class _Spy(FixedPolicy):
    seen: ClassVar[list[bool]] = []

    def bind(self, context) -> None:
        super().bind(context)
        _Spy.seen.append(context.do_sample)


def test_policies_are_told_that_coupled_acceptance_is_a_match(llama_pairs):
    """Policies read `do_sample` as "acceptance is random": True under speculative sampling only."""
    target, draft = llama_pairs["llama-noisy"]
    ids = prompt(6)
    stats = []
    for sampling, do_sample in (("speculative", False), ("speculative", True), ("coupled", True), ("coupled", False)):
        generator = SpecKVGenerator(_Spy(num_tokens=2), sampling=sampling)
        kwargs = {"do_sample": do_sample, "max_new_tokens": 6}
        target.generate(ids, assistant_model=draft, candidate_generator=generator, **kwargs)
        stats.append(generator.last_stats)
    assert [s.verification for s in stats] == ["greedy", "speculative", "coupled", "greedy"]
    assert _Spy.seen[-4:] == [False, True, False, False]
    assert "verification=coupled" in repr(stats[2]) and stats[2].to_dict()["verification"] == "coupled"


def test_sampling_setting_errors_name_the_fix():
    with pytest.raises(ValueError, match="sampling must be one of 'auto', 'speculative', 'coupled'"):
        SpecKVGenerator(sampling="gumbel")
    with pytest.raises(ValueError, match="own loop only: drop loop='transformers'"):
        SpecKVGenerator(sampling="coupled", loop="transformers")


@settings(max_examples=40, deadline=None)
@given(
    chunk=st.integers(1, 5),
    requests=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4)), min_size=1, max_size=12),
)
def test_noise_does_not_depend_on_which_positions_were_asked_for(chunk, requests):
    """Position n's noise is the same however the loop walks the positions (draft one at a time, verify a span,
    release what was emitted): the n-th vector the row's generator draws."""
    torch.manual_seed(5)
    reference = GumbelNoise(2, 7, "cpu", chunk=chunk)
    torch.manual_seed(5)
    walked = GumbelNoise(2, 7, "cpu", chunk=chunk)
    position = 0
    for advance, length in requests:
        span = walked.span([1, 0], [position, position], length)
        for j in range(length):
            assert torch.equal(span[0, j], reference.at([1], [position + j])[0])
            assert torch.equal(walked.at([0], [position + j])[0], reference.at([0], [position + j])[0])
        position += advance
        walked.release(0, position)
        walked.release(1, position)
    if position >= chunk:
        with pytest.raises(RuntimeError, match="released"):
            walked.at([0], [0])
    kept = [c is None for c in walked._chunks[0]]
    walked.release(1)  # a finished row frees every chunk it drew, and only its own
    assert all(c is None for c in walked._chunks[1]) and [c is None for c in walked._chunks[0]] == kept


def test_noise_is_standard_gumbel():
    """Mean ≈ Euler's constant and variance ≈ π²/6: the Gumbel(0, 1) the Gumbel-max trick needs."""
    torch.manual_seed(0)
    values = GumbelNoise(1, 4000, "cpu", chunk=25).span([0], [0], 25).flatten().double()
    assert abs(values.mean().item() - 0.5772) < 0.01
    assert abs(values.var().item() - torch.pi**2 / 6) < 0.03


@pytest.mark.slow
def test_coupled_sampling_matches_target_distribution():
    """The first two coupled tokens follow the target's distribution, with a draft that is often rejected."""
    torch.manual_seed(0)
    config = llama_config(layers=1, vocab=VOCAB, initializer_range=0.5, max_position_embeddings=32, eos_token_id=None)
    target = LlamaForCausalLM(config).eval()
    draft = LlamaForCausalLM(config).eval()
    input_ids = torch.tensor([[3, 5, 4]])
    target_probs = _two_token_distribution(target, input_ids)
    draft_probs = _two_token_distribution(draft, input_ids)
    generator = SpecKVGenerator("fixed:2", sampling="coupled")
    counts, drafted, accepted = first_two_token_counts(target, draft, input_ids, generator)
    assert drafted > SAMPLES and 0 < accepted < drafted, "the test must exercise accepted and rejected drafts"
    assert _chi_square_pvalue(counts, target_probs) > 1e-3
    assert _chi_square_pvalue(counts, draft_probs) < 1e-6  # power: the draft's own distribution is rejected


def test_coupled_benchmark_gives_every_speckv_method_one_output(llama_pairs):
    """`run_benchmark(sampling="coupled")`: every SpecKV method samples the same text per prompt and repeat; a
    method can name its own scheme, so one run interleaves both."""
    target, draft = llama_pairs["llama-noisy"]
    methods = [
        *parse_methods("fixed:1,fixed:3"),
        Method("fixed:3 speculative", "speckv", policy="fixed:3", sampling="speculative"),
    ]
    records, _ = run_benchmark(
        target, draft, _prompts(2), methods, max_new_tokens=12, do_sample=True, sampling="coupled", repeats=2
    )
    outputs: dict[tuple[str, int], dict[str, list[int]]] = {}
    for record in records:
        outputs.setdefault((record.prompt_id, record.repeat), {})[record.method] = record.output
    for by_method in outputs.values():
        assert by_method["fixed:1"] == by_method["fixed:3"]
    assert any(m["fixed:3"] != m["fixed:3 speculative"] for m in outputs.values())  # the other scheme, other text
    with pytest.raises(ValueError, match="sampling must be one of"):
        run_benchmark(target, draft, _prompts(1), parse_methods("fixed:1"), do_sample=True, sampling="gumbel")
