"""Real tiny targets quantized with each backend on CPU: the name loads, is detected with its bit width, the stats
and records carry it, and SpecKV's greedy output is the target's own."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from speckv_hf import SpecKVGenerator, detect_compression
from speckv_hf.compression.detection import quantization_config
from speckv_hf.training.rows import CallContext, call_rows

from .conftest import greedy, llama_config, noisy_copy, prompt

NEAR_TIE = 0.1  # bitsandbytes only: top-2 logit gap under which its multi-token verification may pick the other

# name -> (module that must import, label, bits)
BACKENDS = {
    "quanto-int8": ("optimum.quanto", "quanto-int8", 8),
    "quanto-int4": ("optimum.quanto", "quanto-int4", 4),
    "quanto-int2": ("optimum.quanto", "quanto-int2", 2),
    "quanto-float8": ("optimum.quanto", "quanto-float8", 8),
    "torchao-int8": ("torchao", "torchao-int8", 8),
    "torchao-int8-dynamic": ("torchao", "torchao-int8-dynamic", 8),
    "bnb-int8": ("bitsandbytes", "int8", 8),
    "bnb-nf4": ("bitsandbytes", "nf4", 4),
    "bnb-fp4": ("bitsandbytes", "fp4", 4),
}


@pytest.fixture(scope="module")
def saved_target(tmp_path_factory):
    torch.manual_seed(7)
    model = LlamaForCausalLM(llama_config(layers=2)).eval()  # hidden 64: bnb's CPU 4-bit path needs multiples of 64
    path = tmp_path_factory.mktemp("target")
    model.save_pretrained(path)
    return path, model


def _load(path, name: str) -> LlamaForCausalLM:
    module = BACKENDS[name][0]
    pytest.importorskip(module, reason=f"{name} needs {module} (the 'quant' extra)")
    qconfig = quantization_config(name)
    return LlamaForCausalLM.from_pretrained(path, quantization_config=qconfig, device_map="cpu", dtype=torch.float32)


@pytest.mark.quant
@pytest.mark.parametrize("name", list(BACKENDS))
@torch.no_grad()
def test_backend_detected_and_lossless(saved_target, name):
    path, fp_target = saved_target
    target = _load(path, name).eval()
    _, label, bits = BACKENDS[name]
    info = detect_compression(target)
    assert (info.label, info.bits, info.quantized) == (label, bits, True)
    draft = noisy_copy(fp_target, 0.01)
    accepted = 0
    for seed in range(2):
        input_ids = prompt(8, seed=seed)
        expected = greedy(target, input_ids, max_new_tokens=16, eos_token_id=None)
        generator = SpecKVGenerator("fixed:4")
        out = target.generate(
            input_ids,
            assistant_model=draft,
            candidate_generator=generator,
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=None,
        )
        stats = generator.last_stats
        assert stats.compression == info
        accepted += stats.accepted_tokens
        if not name.startswith("bnb-"):
            # quanto and torchao keep activations in fp32 (or quantize them per token): no near-ties to allow.
            assert torch.equal(out, expected), f"{name}: SpecKV output differs from the target's own greedy output"
            continue
        # bitsandbytes quantizes activations per call (see docs/quantized.md): a divergence may only start at a
        # near-tie of the target's own one-token forward.
        diverged = (out[0] != expected[0]).nonzero()
        if diverged.numel():
            first = int(diverged[0])
            top2 = target(expected[:, :first]).logits[0, -1].float().topk(2).values
            assert float(top2[0] - top2[1]) < NEAR_TIE, f"{name}: divergence at a clear decision"
    assert accepted > 0, f"{name}: no draft token was accepted, the equality check was vacuous"


@pytest.mark.quant
@torch.no_grad()
def test_bits_reach_records_and_features(saved_target):
    path, fp_target = saved_target
    target = _load(path, "quanto-int4").eval()
    generator = SpecKVGenerator("fixed:2")
    target.generate(
        prompt(8),
        assistant_model=noisy_copy(fp_target, 0.01),
        candidate_generator=generator,
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=None,
    )
    stats = generator.last_stats
    assert stats.to_dict()["compression"]["weights"] == "int4"
    context = CallContext(
        prompt_id="p0", task="t", compression="quanto-int4", setting="fixed:2", do_sample=False, pair="t | d"
    )
    token_rows, step_rows = call_rows(stats, context)
    assert step_rows and token_rows
    for row in step_rows + token_rows:
        assert (row["compression"], row["compression_method"], row["compression_bits"], row["quantized"]) == (
            "quanto-int4",
            "quanto",
            4,
            True,
        )
