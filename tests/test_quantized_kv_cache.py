"""Quantized KV caches: assisted generation cannot crop them, so SpecKV refuses them before any forward.

transformers' `QuantizedCache` layers are not croppable (`is_croppable = False`), and assisted generation crops the
target's cache whenever it rejects drafted tokens. transformers 5.x raises only after the target's prefill;
4.57 silently replaces the quantized cache with a dynamic one. SpecKV refuses it on both, before any forward (the
check in `hook.py`, see docs/quantized.md).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version
from transformers import LlamaForCausalLM

from speckv_hf import SpecKVGenerator

from .conftest import llama_config, noisy_copy, prompt

pytest.importorskip("optimum.quanto", reason="the quanto KV cache backend is the 'quanto' extra")


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    target = LlamaForCausalLM(llama_config(layers=2)).eval()
    return target, noisy_copy(target, 0.02)


def _count_forwards(*models: torch.nn.Module) -> list[int]:
    calls = [0]
    for model in models:
        model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@torch.no_grad()
def test_what_transformers_does_without_speckv(pair):
    target, draft = pair
    kwargs = {
        "assistant_model": draft,
        "cache_implementation": "quantized",
        "cache_config": {"backend": "quanto", "nbits": 4, "q_group_size": 16},
        "max_new_tokens": 8,
        "do_sample": False,
    }
    if Version(transformers.__version__) >= Version("5"):
        # The target runs its prefill, then transformers raises.
        with pytest.raises(ValueError, match="cache that can be cropped"):
            target.generate(prompt(8), **kwargs)
    else:
        # 4.57 drops the quantized cache for a dynamic one (with a warning): not the cache the user asked for.
        out = target.generate(prompt(8), **kwargs)
        assert torch.equal(out, target.generate(prompt(8), max_new_tokens=8, do_sample=False))


@pytest.mark.parametrize("how", ["cache_implementation", "past_key_values"])
@torch.no_grad()
def test_speckv_refuses_a_quantized_cache_before_any_forward(pair, how):
    from transformers import QuantizedCache

    target, draft = pair
    fresh_target, fresh_draft = LlamaForCausalLM(target.config).eval(), LlamaForCausalLM(draft.config).eval()
    calls = _count_forwards(fresh_target, fresh_draft)
    if how == "cache_implementation":
        kwargs = {"cache_implementation": "quantized", "cache_config": {"backend": "quanto", "nbits": 4}}
    else:
        kwargs = {"past_key_values": QuantizedCache(backend="quanto", config=fresh_target.config, nbits=4)}
    with pytest.raises(ValueError, match=r"quantized KV cache.*drop cache_implementation="):
        fresh_target.generate(
            prompt(8),
            assistant_model=fresh_draft,
            candidate_generator=SpecKVGenerator(),
            max_new_tokens=8,
            do_sample=False,
            **kwargs,
        )
    assert calls[0] == 0, "a forward ran before the quantized cache was refused"
