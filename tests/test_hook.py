"""The hook: generate(candidate_generator=...) works, validates early, and can be removed."""

from __future__ import annotations

import inspect
import threading

import pytest
import torch
from transformers import GenerationMixin, StaticCache, TextStreamer
from transformers.generation.utils import GenerationMixin as Mixin

import speckv_hf
from speckv_hf import SpecKVGenerator
from speckv_hf.decoding import _transformers, hook

from .conftest import greedy, llama_config, prompt


def test_install_is_idempotent_and_reversible():
    assert speckv_hf.is_installed()
    patched = GenerationMixin.generate
    speckv_hf.install()
    assert GenerationMixin.generate is patched
    speckv_hf.uninstall()
    try:
        assert not speckv_hf.is_installed()
        assert GenerationMixin.generate is not patched
        assert "candidate_generator" not in GenerationMixin.generate.__code__.co_varnames
    finally:
        speckv_hf.install()
    assert speckv_hf.is_installed() and Mixin.generate.__wrapped__ is not None


def test_constructing_a_generator_installs_the_hook():
    speckv_hf.uninstall()
    try:
        SpecKVGenerator()  # the package no longer installs it on import: the generator sees to it
        assert speckv_hf.is_installed()
        assert "candidate_generator" in GenerationMixin.generate.__code__.co_varnames
    finally:
        speckv_hf.install()


def test_unsupported_transformers_version_is_named():
    with pytest.raises(ImportError, match=r"transformers >=4\.57\.0,<6\.0\.0"):
        _transformers.check_transformers_version("4.40.0")
    assert _transformers.check_transformers_version("5.1.0").major == 5


def test_plain_generate_untouched(llama_pairs):
    target, _ = llama_pairs["llama-noisy"]
    input_ids = prompt(6)
    assert greedy(target, input_ids, max_new_tokens=5).shape[1] == 11


@pytest.mark.parametrize(
    ("make_kwargs", "error", "match"),
    [
        (lambda t, d: {"candidate_generator": SpecKVGenerator()}, ValueError, "assistant_model=draft_model"),
        (lambda t, d: {"candidate_generator": object(), "assistant_model": d}, TypeError, "SpecKVGenerator"),
        (
            lambda t, d: {
                "candidate_generator": SpecKVGenerator(),
                "assistant_model": d,
                "cache_implementation": "static",
            },
            ValueError,
            "dynamic KV cache",
        ),
        (
            lambda t, d: {"candidate_generator": SpecKVGenerator(), "assistant_model": d, "num_beams": 2},
            ValueError,
            "num_beams=1",
        ),
        (
            lambda t, d: {
                "candidate_generator": SpecKVGenerator(),
                "assistant_model": d,
                "assistant_tokenizer": object(),
            },
            ValueError,
            "assistant_tokenizer",
        ),
    ],
)
def test_bad_calls_fail_before_work(llama_pairs, monkeypatch, make_kwargs, error, match):
    target, draft = llama_pairs["llama-noisy"]
    calls = []
    monkeypatch.setattr(type(target), "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(error, match=match):
        target.generate(prompt(6), max_new_tokens=5, **make_kwargs(target, draft))
    assert calls == []  # no forward ran


def test_per_step_outputs_on_one_prompt_point_to_what_returns_them(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    kwargs = {"max_new_tokens": 4, "output_scores": True, "return_dict_in_generate": True}
    with pytest.raises(
        ValueError, match=r"output_scores=True.*for a single prompt, pass .*SpecKVGenerator\(loop='transformers'\)"
    ):
        target.generate(prompt(6), assistant_model=draft, candidate_generator=SpecKVGenerator(), **kwargs)


def test_transformers_loop_returns_scores_for_one_prompt(llama_pairs):
    """What the error above advises works: transformers' assisted loop returns one score tensor per new token."""
    target, draft = llama_pairs["llama-noisy"]
    kwargs = {"max_new_tokens": 4, "output_scores": True, "return_dict_in_generate": True}
    generator = SpecKVGenerator(loop="transformers", plain_fallback=False)
    out = target.generate(prompt(6), assistant_model=draft, candidate_generator=generator, **kwargs)
    assert len(out.scores) == out.sequences.shape[1] - 6 == 4


def test_static_cache_object_rejected(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    cache = StaticCache(config=target.config, max_cache_len=64)
    with pytest.raises(ValueError, match="dynamic KV cache"):
        target.generate(
            prompt(6),
            assistant_model=draft,
            candidate_generator=SpecKVGenerator(),
            past_key_values=cache,
            max_new_tokens=4,
        )


def test_batch_with_transformers_loop_rejected_naming_the_own_loop(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    batch = torch.cat([prompt(6, seed=0), prompt(6, seed=1)])
    generator = SpecKVGenerator(loop="transformers")
    with pytest.raises(ValueError, match=r"refuses batches \(batch size 2\).*loop='speckv'"):
        target.generate(batch, assistant_model=draft, candidate_generator=generator, max_new_tokens=4)
    out = target.generate(batch, assistant_model=draft, candidate_generator=SpecKVGenerator(), max_new_tokens=4)
    assert out.shape == (2, 10)


def test_unknown_loop_rejected():
    with pytest.raises(ValueError, match="loop must be one of"):
        SpecKVGenerator(loop="fast")


def test_vocabulary_mismatch_points_to_assistant_tokenizer(llama_pairs):
    from transformers import LlamaForCausalLM

    target, _ = llama_pairs["llama-noisy"]
    other = LlamaForCausalLM(llama_config(layers=1, vocab=128)).eval()
    with pytest.raises(ValueError, match=r"draft vocabulary \(128\) differs from target \(96\).*assistant_tokenizer"):
        target.generate(prompt(6), assistant_model=other, candidate_generator=SpecKVGenerator(), max_new_tokens=4)


def test_encoder_decoder_rejected():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=96, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config).eval()
    with pytest.raises(ValueError, match="encoder-decoder"):
        model.generate(prompt(6), assistant_model=model, candidate_generator=SpecKVGenerator(), max_new_tokens=4)


def test_unbound_generator_explains_itself():
    with pytest.raises(RuntimeError, match="candidate_generator="):
        SpecKVGenerator().get_candidates(prompt(4))


def test_streamer_receives_every_token(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]

    class Recorder(TextStreamer):
        def __init__(self):
            self.tokens: list[int] = []

        def put(self, value):
            self.tokens.extend(value.flatten().tolist())

        def end(self):
            self.ended = True

    recorder = Recorder()
    input_ids = prompt(6)
    out = greedy(
        target,
        input_ids,
        assistant_model=draft,
        candidate_generator=SpecKVGenerator(),
        streamer=recorder,
        max_new_tokens=20,
        eos_token_id=None,
    )
    assert recorder.tokens == out[0].tolist()  # the prompt first, then every generated token once
    assert recorder.ended


def test_pipeline_route(llama_pairs):
    from transformers import pipeline

    from .conftest import VOCAB

    target, draft = llama_pairs["llama-noisy"]
    tokenizer = _char_tokenizer(VOCAB)
    generate = pipeline("text-generation", model=target, tokenizer=tokenizer)
    generator = SpecKVGenerator("fixed:3")
    text = "hello world"
    expected = generate(text, max_new_tokens=12, do_sample=False, return_tensors=True)
    got = generate(
        text,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=12,
        do_sample=False,
        return_tensors=True,
    )
    assert got[0]["generated_token_ids"] == expected[0]["generated_token_ids"]
    assert generator.last_stats.tokens_emitted == 12


def _char_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 32 + vocab - 3)]
    tokenizer = Tokenizer(
        models.WordLevel(
            {**{c: i + 3 for i, c in enumerate(chars)}, "<pad>": 0, "</s>": 1, "<s>": 2}, unk_token="<pad>"
        )
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", bos_token="<s>")


def test_threads_do_not_share_state(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    generator = SpecKVGenerator("fixed:2")
    prompts = [prompt(6, seed=s) for s in range(4)]
    expected = [greedy(target, p, max_new_tokens=16 + 4 * i, eos_token_id=None) for i, p in enumerate(prompts)]
    results: dict[int, tuple[torch.Tensor, int]] = {}

    def work(i: int) -> None:
        out = greedy(
            target,
            prompts[i],
            assistant_model=draft,
            candidate_generator=generator,
            max_new_tokens=16 + 4 * i,
            eos_token_id=None,
        )
        results[i] = (out, generator.last_stats.tokens_emitted)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        assert torch.equal(results[i][0], expected[i])
        assert results[i][1] == 16 + 4 * i  # each thread sees its own call's stats


def test_custom_generate_route(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    input_ids = prompt(6, seed=4)
    generator = SpecKVGenerator("fixed:2")
    out = target.generate(
        input_ids,
        custom_generate=speckv_hf.speckv_generate,
        draft_model=draft,
        speckv_generator=generator,
        max_new_tokens=15,
        do_sample=False,
        eos_token_id=None,
    )
    assert torch.equal(out, greedy(target, input_ids, max_new_tokens=15, eos_token_id=None))
    assert generator.last_stats.tokens_emitted == 15


def test_inputs_embeds_rejected(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    embeds = target.get_input_embeddings()(prompt(6))
    with pytest.raises(ValueError, match="inputs_embeds"):
        target.generate(
            inputs_embeds=embeds, assistant_model=draft, candidate_generator=SpecKVGenerator(), max_new_tokens=4
        )


def test_model_default_cache_implementation_is_not_the_callers(llama_pairs):
    """Hub configs may default to cache_implementation='hybrid' (Gemma); transformers replaces it for assisted
    generation, so only an explicit request is refused."""
    target, draft = llama_pairs["llama-noisy"]
    saved = target.generation_config.cache_implementation
    target.generation_config.cache_implementation = "hybrid"
    try:
        hook.check_call(target, SpecKVGenerator(), {"assistant_model": draft, "inputs": prompt(4), "kwargs": {}})
        with pytest.raises(ValueError, match="dynamic KV cache"):
            hook.check_call(
                target,
                SpecKVGenerator(),
                {"assistant_model": draft, "inputs": prompt(4), "kwargs": {"cache_implementation": "static"}},
            )
    finally:
        target.generation_config.cache_implementation = saved


def test_cache_kwarg_follows_the_forward_signature(llama_pairs):
    _, draft = llama_pairs["llama-noisy"]
    expected = "cache" if "cache" in inspect.signature(draft.forward).parameters else "past_key_values"
    assert _transformers.cache_kwarg(draft) == expected
