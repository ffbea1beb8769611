"""The compiled loop (`SpecKVGenerator(compile=...)`): static caches, bounded feed lengths, compiled forwards.

The forwards compile with dynamo's `eager` backend (graphs captured, no code generated), which keeps the tests fast
and the arithmetic identical to eager PyTorch; `benchmarks/compiled_loop.py` runs inductor.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaForCausalLM, MistralForCausalLM, TextStreamer

from speckv_hf import CompileOptions, SpecKVGenerator
from speckv_hf.bench.methods import parse_methods
from speckv_hf.decoding import static_cache
from speckv_hf.decoding.compiled import bucket
from speckv_hf.policies.base import FixedPolicy

from .conftest import EOS, AlwaysContext, greedy, llama_config, mistral_config, noisy_copy
from .test_batch import left_padded

FAST = CompileOptions(backend="eager")


@pytest.fixture(scope="module")
def pairs(llama_pairs, gpt2_pair):
    return {
        "llama-noisy": llama_pairs["llama-noisy"],
        "llama-random": llama_pairs["llama-random"],
        "gpt2-noisy": gpt2_pair,
    }


POLICIES = [
    "fixed:1",
    "fixed:6",
    "adaptive",
    "context",
    "context+adaptive",
    AlwaysContext(FixedPolicy(2)),  # a context run, then drafted tokens, in one step
]


@pytest.mark.parametrize("pair", ["llama-noisy", "llama-random", "gpt2-noisy"])
@pytest.mark.parametrize("policy", POLICIES, ids=str)
@pytest.mark.parametrize("lengths", [[7], [3, 11, 1, 6]], ids=["one-row", "four-rows"])
@pytest.mark.parametrize("eos", [None, EOS, 17])
def test_greedy_equals_target_alone(pairs, pair, policy, lengths, eos):
    target, draft = pairs[pair]
    ids, mask = left_padded(lengths, seed=len(lengths) + (eos or 0))
    expected = greedy(target, ids, attention_mask=mask, max_new_tokens=24, eos_token_id=eos)
    generator = SpecKVGenerator(policy, compile=FAST)
    out = greedy(
        target,
        ids,
        attention_mask=mask,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=24,
        eos_token_id=eos,
    )
    assert torch.equal(out, expected)
    stats = generator.last_stats
    assert stats.compiled and stats.compiled_graphs >= 1 and stats.loop == "speckv"
    assert max(stats.gamma_histogram) <= FAST.max_candidates
    assert "compiled (" in repr(stats)


def test_holes_are_compacted_and_output_stays_lossless(llama_pairs, monkeypatch):
    """Rows that accept different numbers of tokens leave holes; with caches sized to the call exactly, the layout
    must compact them (in place, on both caches) to finish, and the output is still target-alone's."""
    target, draft = llama_pairs["llama-random"]  # an unrelated draft: rows accept 0..6 tokens, unevenly
    compactions = []
    original = static_cache.StaticLayout.compact

    def counted(self, caches):
        compactions.append(self.end)
        return original(self, caches)

    monkeypatch.setattr(static_cache.StaticLayout, "compact", counted)
    ids, mask = left_padded([5, 2, 9], seed=4)
    expected = greedy(target, ids, attention_mask=mask, max_new_tokens=60, eos_token_id=None)
    generator = SpecKVGenerator(AlwaysContext(FixedPolicy(6)), compile=CompileOptions(backend="eager", cache_step=1))
    out = greedy(
        target,
        ids,
        attention_mask=mask,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=60,
        eos_token_id=None,
    )
    assert torch.equal(out, expected)
    assert compactions, "the test must exercise compaction"


def test_one_row_never_needs_compaction(llama_pairs, monkeypatch):
    """A single row overwrites its rejected columns: no holes, so a cache sized exactly to the call suffices."""
    target, draft = llama_pairs["llama-random"]
    monkeypatch.setattr(static_cache.StaticLayout, "compact", lambda *_: pytest.fail("a single row compacted"))
    ids = torch.tensor([[5, 9, 12, 40]])
    generator = SpecKVGenerator("fixed:4", compile=CompileOptions(backend="eager", cache_step=1))
    out = greedy(
        target, ids, assistant_model=draft, candidate_generator=generator, max_new_tokens=50, eos_token_id=None
    )
    assert torch.equal(out, greedy(target, ids, max_new_tokens=50, eos_token_id=None))


@pytest.mark.parametrize("policy", ["fixed:3", "context+adaptive"])
def test_coupled_sampling_gives_the_eager_loops_text(llama_pairs, policy):
    """Coupled sampling's text depends on the seed only: the compiled loop writes what the eager loop writes."""
    target, draft = llama_pairs["llama-noisy"]
    ids, mask = left_padded([4, 8], seed=9)
    texts = []
    for compile in (False, FAST):
        torch.manual_seed(0)
        out = target.generate(
            ids,
            attention_mask=mask,
            assistant_model=draft,
            candidate_generator=SpecKVGenerator(policy, compile=compile),
            do_sample=True,
            top_k=0,
            max_new_tokens=20,
            eos_token_id=None,
            pad_token_id=0,
        )
        texts.append(out)
    assert torch.equal(texts[0], texts[1])


VOCAB = 8
ROWS = 3000


def test_speculative_sampling_keeps_the_targets_distribution():
    """Each of 3000 rows of one batch samples its first two tokens from the target's distribution, with an unrelated
    draft (rejections, residual sampling, rows that accept different numbers: holes)."""
    torch.manual_seed(0)
    config = llama_config(layers=1, vocab=VOCAB, initializer_range=0.5, max_position_embeddings=32, eos_token_id=None)
    target = LlamaForCausalLM(config).eval()
    draft = LlamaForCausalLM(config).eval()
    prompt = torch.tensor([[3, 5, 4]])
    with torch.no_grad():
        first = torch.softmax(target(prompt).logits[0, -1], -1)
        seconds = torch.softmax(
            target(torch.cat((prompt.repeat(VOCAB, 1), torch.arange(VOCAB)[:, None]), 1)).logits[:, -1], -1
        )
    expected = first[:, None] * seconds  # p(t1, t2)
    torch.manual_seed(1)
    generator = SpecKVGenerator(
        "fixed:2", sampling="speculative", compile=CompileOptions(backend="eager", cache_step=8)
    )
    out = target.generate(
        prompt.repeat(ROWS, 1),
        assistant_model=draft,
        candidate_generator=generator,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        max_new_tokens=3,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert generator.last_stats.drafted_tokens > ROWS and generator.last_stats.compiled
    counts = torch.zeros(VOCAB, VOCAB)
    for t1, t2 in out[:, 3:5].tolist():
        counts[t1, t2] += 1
    expected_counts = (expected * ROWS).flatten()
    big = expected_counts >= 5
    observed = torch.cat((counts.flatten()[big], counts.flatten()[~big].sum()[None]))
    wanted = torch.cat((expected_counts[big], expected_counts[~big].sum()[None]))
    assert chisquare(observed.numpy(), wanted.numpy() * observed.sum().item() / wanted.sum().item()).pvalue > 1e-3
    # Power: the draft's own distribution is clearly rejected by the same counts.
    with torch.no_grad():
        draft_first = torch.softmax(draft(prompt).logits[0, -1], -1)
    draft_counts = draft_first * ROWS
    rows_first = counts.sum(1)
    assert (
        chisquare(
            rows_first.numpy(), draft_counts.numpy() * rows_first.sum().item() / draft_counts.sum().item()
        ).pvalue
        < 1e-6
    )


def test_processors_and_streamer_as_in_the_eager_loop(llama_pairs, capsys):
    """A repetition penalty and a no-repeat n-gram rule (they read each row's sequence) and a streamer."""
    target, draft = llama_pairs["llama-noisy"]
    ids = torch.tensor([[5, 9, 12, 5, 9, 30]])
    settings = dict(max_new_tokens=20, repetition_penalty=1.3, no_repeat_ngram_size=2, eos_token_id=None)
    expected = greedy(target, ids, **settings)

    class Collect(TextStreamer):
        def __init__(self):
            self.tokens = []

        def put(self, value):
            self.tokens.extend(value.flatten().tolist())

        def end(self):
            pass

    streamer = Collect()
    generator = SpecKVGenerator("fixed:3", compile=FAST)
    out = greedy(target, ids, assistant_model=draft, candidate_generator=generator, streamer=streamer, **settings)
    assert torch.equal(out, expected)
    assert streamer.tokens == out[0].tolist()  # the prompt first, as transformers streams it


def test_warmup_compiles_what_a_call_uses(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    options = CompileOptions(backend="eager", cache_step=100)  # graphs of their own: no other test's shapes
    generator = SpecKVGenerator("fixed:6", compile=options)
    seconds = generator.warmup(target, draft, batch_size=2, prompt_length=12, max_new_tokens=30)
    assert seconds > 0
    graphs = generator._compiled.graphs
    assert graphs == 2 * len(FAST.lengths)  # every feed length, for both models
    ids, mask = left_padded([12, 5], seed=1)
    greedy(target, ids, attention_mask=mask, assistant_model=draft, candidate_generator=generator, max_new_tokens=30)
    stats = generator.last_stats
    assert stats.compiled_graphs == graphs and stats.compile_seconds == 0.0
    # A shorter call reuses the warmed-up caches and graphs too.
    greedy(
        target,
        ids[:, -4:],
        attention_mask=mask[:, -4:],
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=8,
    )
    assert generator.last_stats.compiled_graphs == graphs


def test_settings_it_cannot_serve_are_refused_naming_the_fix(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    with pytest.raises(ValueError, match="drop loop='transformers'"):
        SpecKVGenerator(compile=True, loop="transformers")
    with pytest.raises(TypeError, match="CompileOptions"):
        SpecKVGenerator(compile="yes")
    with pytest.raises(ValueError, match="start at 1"):
        CompileOptions(lengths=(2, 4))
    with pytest.raises(ValueError, match="compile=True"):
        SpecKVGenerator().warmup(target, draft)
    torch.manual_seed(3)
    mistral = MistralForCausalLM(mistral_config()).eval()
    with pytest.raises(ValueError, match="sliding-window"):
        greedy(
            mistral,
            torch.tensor([[5, 6, 7]]),
            assistant_model=noisy_copy(mistral, 0.02),
            candidate_generator=SpecKVGenerator("fixed:2", compile=FAST),
            max_new_tokens=4,
        )
    assert not SpecKVGenerator(compile=True).plain_fallback  # plain decoding would run uncompiled


def test_feed_lengths_bucket_up():
    assert [bucket(n, (1, 2, 3, 5, 9)) for n in (1, 2, 3, 4, 5, 6, 9)] == [1, 2, 3, 5, 5, 9, 9]
    with pytest.raises(ValueError, match="longest compiled length"):
        bucket(10, (1, 2, 3, 5, 9))
    assert CompileOptions().max_candidates == 8


def test_bench_methods_for_the_compiled_path():
    names = [m.name for m in parse_methods("target-compiled,compiled:adaptive,compiled:fixed:1-2")]
    assert names == ["target-only", "target-compiled", "compiled:adaptive", "compiled:fixed:1", "compiled:fixed:2"]
    methods = parse_methods("target-compiled,compiled:fixed:3")
    assert methods[1].compiled and methods[1].kind == "target"
    assert methods[2].compiled and methods[2].policy == "fixed:3"
    oracle = parse_methods("compiled:oracle")[1]
    assert oracle.kind == "oracle" and oracle.compiled
    with pytest.raises(ValueError, match="compiled: takes a SpecKV policy"):
        parse_methods("compiled:hf-default")


def test_users_static_cache_request_is_served_by_the_compiled_loop(llama_pairs):
    """`cache_implementation="static"` asks for what the compiled loop does: accepted there, refused (naming
    `compile=True`) by the eager loop."""
    target, draft = llama_pairs["llama-noisy"]
    ids = torch.tensor([[5, 9, 12, 40]])
    expected = greedy(target, ids, max_new_tokens=12)
    generator = SpecKVGenerator("fixed:3", compile=FAST)
    out = greedy(
        target,
        ids,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=12,
        cache_implementation="static",
    )
    assert torch.equal(out, expected) and generator.last_stats.compiled
    with pytest.raises(ValueError, match="compile=True"):
        greedy(
            target, ids, assistant_model=draft, candidate_generator=SpecKVGenerator(), cache_implementation="static"
        )


def test_padded_slots_stay_inside_the_position_table():
    """A padded feed slot takes the last real position: near the end of a learned position table (GPT-2,
    32 positions) a position past the real tokens would index outside it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(5)
    config = GPT2Config(
        vocab_size=96, n_embd=32, n_layer=1, n_head=2, n_positions=32, eos_token_id=EOS, pad_token_id=0
    )
    target = GPT2LMHeadModel(config).eval()
    ids = torch.randint(3, 96, (1, 26))
    expected = greedy(target, ids, max_new_tokens=6, eos_token_id=None)
    for policy in ("fixed:5", "fixed:6"):
        generator = SpecKVGenerator(policy, compile=FAST)
        out = greedy(
            target, ids, assistant_model=target, candidate_generator=generator, max_new_tokens=6, eos_token_id=None
        )
        assert torch.equal(out, expected)


def test_dynamic_rope_sees_only_real_positions():
    """Dynamic RoPE scales by the largest position of a forward: padded slots must not raise it."""
    torch.manual_seed(6)
    config = llama_config(layers=1, max_position_embeddings=32, rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    target = LlamaForCausalLM(config).eval()
    ids = torch.randint(3, 96, (1, 26))
    expected = greedy(target, ids, max_new_tokens=6, eos_token_id=None)
    generator = SpecKVGenerator("fixed:6", compile=FAST)
    out = greedy(
        target, ids, assistant_model=target, candidate_generator=generator, max_new_tokens=6, eos_token_id=None
    )
    assert torch.equal(out, expected)


def test_inference_mode_calls_and_plain_calls_share_nothing_they_cannot(llama_pairs):
    """A cache allocated under `torch.inference_mode()` holds inference tensors; a later call outside it gets
    another cache instead of failing."""
    target, draft = llama_pairs["llama-noisy"]
    ids = torch.tensor([[5, 9, 12, 40]])
    expected = greedy(target, ids, max_new_tokens=10)
    options = CompileOptions(backend="eager", cache_step=64)
    with torch.inference_mode():
        inside = greedy(
            target,
            ids,
            assistant_model=draft,
            candidate_generator=SpecKVGenerator("fixed:3", compile=options),
            max_new_tokens=10,
        )
    outside = greedy(
        target,
        ids,
        assistant_model=draft,
        candidate_generator=SpecKVGenerator("fixed:3", compile=options),
        max_new_tokens=10,
    )
    assert torch.equal(inside, expected) and torch.equal(outside, expected)


def test_compiling_leaves_dynamos_limits_and_the_models_alone():
    """The recompile limit is raised only while the library compiles, and a dropped model is freed."""
    import gc
    import weakref

    import torch._dynamo.config as config

    from speckv_hf.decoding.compiled import _recompile_room

    before = {name: getattr(config, name) for name in ("recompile_limit", "cache_size_limit") if hasattr(config, name)}
    with _recompile_room(), _recompile_room():
        assert config.recompile_limit >= 256
    assert {name: getattr(config, name) for name in before} == before
    torch.manual_seed(7)
    target = LlamaForCausalLM(llama_config(layers=1)).eval()
    draft = noisy_copy(target, 0.02)
    generator = SpecKVGenerator("fixed:2", compile=FAST)
    greedy(target, torch.tensor([[5, 6, 7]]), assistant_model=draft, candidate_generator=generator, max_new_tokens=6)
    alive = weakref.ref(target)
    del target, draft
    gc.collect()
    assert alive() is None
