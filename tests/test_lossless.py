"""Greedy output with SpecKVGenerator is token-for-token the target's own."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speckv_hf import GammaPredictor, SpecKVGenerator
from speckv_hf.policies.base import FixedPolicy

from .conftest import EOS, VOCAB, AlwaysContext, GuessOnly, greedy, mistral_config, paper_weights, prompt, write_npz

POLICIES = ["adaptive", "fixed:1", "fixed:4", "fixed:0", "heuristic", "confidence"]
# The policies that need a checkpoint too: the paper's rule runs one converted from weights of the paper's shape.
CHECKPOINT_POLICIES = ["speckv-paper"]
#: Context candidates run in the library's own loop only.
CONTEXT_POLICIES = ["context", "context+adaptive", "context+fixed:3"]
# Every proposal taken (mixing whatever the timings), or none taken but every draft forward fed the guesses.
MIXING = [AlwaysContext(FixedPolicy(3)), AlwaysContext(None), GuessOnly(FixedPolicy(3))]
PAIRS = ["llama-noisy", "llama-layers", "llama-random", "gpt2-noisy"]
LOOPS = [(policy, loop) for policy in [*POLICIES, *CHECKPOINT_POLICIES] for loop in ("speckv", "transformers")] + [
    (policy, "speckv") for policy in [*CONTEXT_POLICIES, *MIXING]
]


@pytest.fixture(scope="module")
def paper_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("paper")
    GammaPredictor.from_paper_npz(write_npz(folder / "w.npz", paper_weights(28))).save_pretrained(folder / "ckpt")
    return folder / "ckpt"


@pytest.mark.parametrize("pair_name", PAIRS)
@pytest.mark.parametrize(("policy", "loop"), LOOPS)
def test_greedy_matches_target_alone(all_pairs, paper_checkpoint, pair_name, policy, loop):
    target, draft = all_pairs[pair_name]
    settings = {"predictor": str(paper_checkpoint)} if policy == "speckv-paper" else {}
    for seed in range(2):
        input_ids = prompt(8, seed=seed)
        expected = greedy(target, input_ids, max_new_tokens=30, eos_token_id=None)
        generator = SpecKVGenerator(policy, loop=loop, **settings)
        out = greedy(
            target,
            input_ids,
            assistant_model=draft,
            candidate_generator=generator,
            max_new_tokens=30,
            eos_token_id=None,
        )
        assert torch.equal(out, expected), f"{pair_name}/{policy} diverged from target-alone greedy"
        stats = generator.last_stats
        assert stats.tokens_emitted == 30 and stats.loop == loop
        assert stats.accepted_tokens <= stats.drafted_tokens
        assert stats.policy["name"] == generator.policy.config()["name"]
        assert stats.context_accepted <= stats.context_tokens <= stats.drafted_tokens
        if policy == "context":
            assert stats.draft_forwards == 0 and stats.context_tokens == stats.drafted_tokens
        if isinstance(policy, AlwaysContext):
            assert stats.context_tokens > 0
            assert (stats.draft_forwards > 0) == policy.uses_draft
        if isinstance(policy, GuessOnly):
            assert stats.context_tokens == 0


@pytest.fixture(scope="module")
def demo_pair():
    from speckv_hf.demo import load_pair

    return load_pair()


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("max_guesses", [1, 8])
def test_confirmed_guesses_save_draft_forwards_and_stay_lossless(demo_pair, rows, max_guesses):
    """The embedded pair, with the target's copy as its draft, on prose that repeats phrases: the context's guesses
    are often the draft's own next tokens, so drafted tokens come without forwards of their own; the output is
    target-alone greedy, batched too (one text, rows of different lengths, so that rows confirm guesses alike)."""
    from speckv_hf.demo import load_prompts

    target, _, tokenizer = demo_pair
    ids = tokenizer(load_prompts("prose")[0].text).input_ids
    width = len(ids)
    prompts = [ids[2 * b :] for b in range(rows)]
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kwargs = dict(attention_mask=mask, max_new_tokens=32, eos_token_id=None, pad_token_id=0)
    expected = greedy(target, input_ids, **kwargs)
    generator = SpecKVGenerator(GuessOnly(FixedPolicy(3), max_guesses=max_guesses))
    out = greedy(target, input_ids, assistant_model=copy.deepcopy(target), candidate_generator=generator, **kwargs)
    assert torch.equal(out, expected)
    stats = generator.last_stats
    assert stats.guessed_tokens > 0 and stats.context_tokens == 0
    # The draft is the target: any misplaced cache entry, position or mask after the guesses would show as a
    # rejected token.
    assert stats.accepted_tokens == stats.drafted_tokens
    if rows == 1:  # each draft forward drafts one token, and one more per guess it confirms
        assert stats.draft_forwards == stats.drafted_tokens - stats.guessed_tokens


@pytest.mark.parametrize("policy", CONTEXT_POLICIES)
def test_context_candidates_on_text_that_repeats_are_lossless_and_used(demo_pair, policy):
    """The embedded pair on prose (where its text repeats phrases): the context proposes continuations, the target
    accepts some, and the output is still target-alone greedy; the context alone runs with or without a draft."""
    from speckv_hf.demo import load_prompts

    target, draft, tokenizer = demo_pair
    input_ids = tokenizer(load_prompts("prose")[0].text, return_tensors="pt").input_ids
    expected = greedy(target, input_ids, max_new_tokens=64, eos_token_id=None)
    generator = SpecKVGenerator(policy, plain_fallback=False)
    for assistant in [None, draft] if policy == "context" else [draft]:
        kwargs = {} if assistant is None else {"assistant_model": assistant}
        out = greedy(target, input_ids, candidate_generator=generator, max_new_tokens=64, eos_token_id=None, **kwargs)
        assert torch.equal(out, expected)
        stats = generator.last_stats
        assert stats.context_tokens > 0 and stats.context_accepted > 0
        assert (stats.draft_forwards == 0) == (policy == "context")


def test_context_runs_in_a_batch_follow_the_quorum(demo_pair):
    """Every column widens the whole batch's verification: with `batch_quorum=1.0` a context column is taken only
    where every open row has one, so the rows' runs are cut to the same length; with a tiny quorum they are not.
    Outputs stay target-alone batched greedy either way."""
    from speckv_hf.demo import load_prompts

    target, draft, tokenizer = demo_pair
    texts = [load_prompts("prose")[0].text, load_prompts("math")[0].text]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    expected = greedy(target, **batch, max_new_tokens=48, eos_token_id=None)
    taken = {}
    for quorum in (1.0, 0.01):
        # Runs taken whatever the timings say, so that the test sees runs of different lengths on every machine.
        generator = SpecKVGenerator(AlwaysContext(FixedPolicy(2), take=8), batch_quorum=quorum, plain_fallback=False)
        out = greedy(target, **batch, assistant_model=draft, candidate_generator=generator, max_new_tokens=48,
                     eos_token_id=None)  # fmt: skip
        assert torch.equal(out, expected)
        rows = generator.last_stats.rows
        per_step = [{s.step: s.context_tokens for s in row.steps} for row in rows]
        both = sorted(set(per_step[0]) & set(per_step[1]))
        taken[quorum] = [(per_step[0][k], per_step[1][k]) for k in both]
    assert all(a == b for a, b in taken[1.0]), taken[1.0]
    assert any(a != b for a, b in taken[0.01]), taken[0.01]


def test_no_draft_model_needs_a_context_policy(llama_pairs):
    target, _ = llama_pairs["llama-noisy"]
    with pytest.raises(ValueError, match="SpecKVGenerator\\('context'\\)"):
        greedy(target, prompt(8), candidate_generator=SpecKVGenerator("adaptive"), max_new_tokens=4)
    with pytest.raises(ValueError, match="own loop only"):
        SpecKVGenerator("context+adaptive", loop="transformers")


def test_agreeing_draft_gets_long_accepted_runs(llama_target):
    """A draft identical to the target is always accepted: γ grows and tokens per forward exceed 1."""
    input_ids = prompt(8, seed=3)
    generator = SpecKVGenerator("fixed:4")
    out = greedy(
        llama_target,
        input_ids,
        assistant_model=llama_target,
        candidate_generator=generator,
        max_new_tokens=40,
        eos_token_id=None,
    )
    assert torch.equal(out, greedy(llama_target, input_ids, max_new_tokens=40, eos_token_id=None))
    stats = generator.last_stats
    assert stats.acceptance_rate == 1.0
    assert stats.tokens_per_target_forward > 4.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes(llama_pairs, dtype):
    target, draft = llama_pairs["llama-noisy"]
    target, draft = target.to(dtype), draft.to(dtype)
    try:
        input_ids = prompt(8, seed=5)
        expected = greedy(target, input_ids, max_new_tokens=24, eos_token_id=None)
        generator = SpecKVGenerator("fixed:3")
        out = greedy(
            target,
            input_ids,
            assistant_model=draft,
            candidate_generator=generator,
            max_new_tokens=24,
            eos_token_id=None,
        )
        assert torch.equal(out, expected)
        assert generator.last_stats.compression.dtype == {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    finally:
        target.float(), draft.float()


def test_eos_stops_like_target_alone(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    input_ids = prompt(8, seed=0)
    free_run = greedy(target, input_ids, max_new_tokens=20, eos_token_id=None)
    eos = int(free_run[0, input_ids.shape[1] + 6])  # the 7th generated token becomes the eos
    expected = greedy(target, input_ids, max_new_tokens=20, eos_token_id=eos, pad_token_id=0)
    for policy in ("adaptive", "fixed:8"):
        out = greedy(
            target,
            input_ids,
            assistant_model=draft,
            candidate_generator=SpecKVGenerator(policy),
            max_new_tokens=20,
            eos_token_id=eos,
            pad_token_id=0,
        )
        assert torch.equal(out, expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt_tokens=st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=24),
    max_new_tokens=st.integers(1, 40),
    to_cache_edge=st.booleans(),
    eos_at=st.one_of(st.none(), st.integers(0, 12)),
    policy=st.sampled_from(POLICIES),
    pair_name=st.sampled_from(["llama-noisy", "llama-layers", "gpt2-noisy"]),
)
def test_property_greedy_lossless(all_pairs, prompt_tokens, max_new_tokens, to_cache_edge, eos_at, policy, pair_name):
    target, draft = all_pairs[pair_name]
    input_ids = torch.tensor([prompt_tokens])
    if to_cache_edge:  # end exactly at the model's last position
        max_new_tokens = target.config.max_position_embeddings - input_ids.shape[1]
    eos = EOS
    if eos_at is not None:
        free_run = greedy(target, input_ids, max_new_tokens=eos_at + 1, eos_token_id=None)
        eos = int(free_run[0, -1])
    expected = greedy(target, input_ids, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=0)
    generator = SpecKVGenerator(policy)
    out = greedy(
        target,
        input_ids,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=0,
    )
    assert torch.equal(out, expected)
    assert generator.last_stats.tokens_emitted == out.shape[1] - input_ids.shape[1]


def test_left_padded_prompt(llama_pairs):
    """A single prompt with left padding: the draft gets the mask and matching positions."""
    target, draft = llama_pairs["llama-noisy"]
    input_ids = torch.cat((torch.zeros(1, 3, dtype=torch.long), prompt(8, seed=9)), dim=1)
    mask = torch.cat((torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)), dim=1)
    expected = greedy(target, input_ids, attention_mask=mask, max_new_tokens=24, eos_token_id=None, pad_token_id=0)
    generator = SpecKVGenerator("fixed:4")
    out = greedy(
        target,
        input_ids,
        attention_mask=mask,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=24,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert torch.equal(out, expected)
    assert generator.last_stats.accepted_tokens > 0  # the padded draft still agrees with its target


def test_sliding_window_draft_past_its_window():
    """A sliding-window draft (Mistral-style) keeps working after the sequence outgrows its window."""
    from transformers import MistralForCausalLM

    torch.manual_seed(3)
    config = mistral_config()
    target = MistralForCausalLM(config).eval()
    from .conftest import noisy_copy

    draft = noisy_copy(target, 0.02)
    input_ids = prompt(6, seed=2)
    expected = greedy(target, input_ids, max_new_tokens=30, eos_token_id=None)
    generator = SpecKVGenerator("fixed:3")
    out = greedy(
        target, input_ids, assistant_model=draft, candidate_generator=generator, max_new_tokens=30, eos_token_id=None
    )
    assert torch.equal(out, expected)
    assert generator.last_stats.accepted_tokens < generator.last_stats.drafted_tokens  # rollbacks happened
