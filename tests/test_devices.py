"""Targets dispatched by accelerate (device_map, offload hooks) work."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from speckv_hf import SpecKVGenerator

from .conftest import greedy, prompt


def test_offloaded_target(llama_pairs, tmp_path):
    target, draft = llama_pairs["llama-noisy"]
    target.save_pretrained(tmp_path / "target")
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    offloaded = LlamaForCausalLM.from_pretrained(
        tmp_path / "target", device_map=device_map, offload_folder=tmp_path / "offload"
    ).eval()
    assert getattr(offloaded, "hf_device_map", None), "accelerate dispatched the model"
    assert any(hasattr(m, "_hf_hook") for m in offloaded.modules()), "layers carry accelerate's offload hooks"
    input_ids = prompt(8, seed=21)
    expected = greedy(target, input_ids, max_new_tokens=20, eos_token_id=None)
    generator = SpecKVGenerator("fixed:3")
    out = greedy(
        offloaded,
        input_ids,
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=20,
        eos_token_id=None,
    )
    assert torch.equal(out, expected)
    assert generator.last_stats.tokens_emitted == 20
