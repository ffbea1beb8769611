"""bitsandbytes targets: compression is detected, and greedy output is the target's up to near-ties."""

from __future__ import annotations

import pytest
import torch
from transformers import BitsAndBytesConfig, LlamaForCausalLM

from speckv_hf import SpecKVGenerator, detect_compression

from .conftest import greedy, llama_config, noisy_copy, prompt

pytest.importorskip("bitsandbytes", reason="bitsandbytes is the 'quant' extra")

NEAR_TIE = 0.03  # top-2 logit gap under which multi-token verification may pick the other token
QUANT = {
    "int8": BitsAndBytesConfig(load_in_8bit=True),
    "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
}


@pytest.fixture(scope="module")
def saved_target(tmp_path_factory):
    torch.manual_seed(7)
    # bitsandbytes' CPU NF4 path needs every linear input width to be a multiple of 64.
    model = LlamaForCausalLM(llama_config(layers=2, hidden_size=128, intermediate_size=256)).eval()
    path = tmp_path_factory.mktemp("target")
    model.save_pretrained(path)
    return path, model


@pytest.mark.quant
@pytest.mark.parametrize("kind", ["int8", "nf4"])
@torch.no_grad()
def test_quantized_target(saved_target, kind):
    path, fp_target = saved_target
    target = LlamaForCausalLM.from_pretrained(path, quantization_config=QUANT[kind], device_map="cpu").eval()
    info = detect_compression(target)
    assert info.method == f"bnb-{kind}" and info.quantized and info.label == kind
    draft = noisy_copy(fp_target, 0.01)
    accepted = 0
    for seed in range(6):
        input_ids = prompt(8, seed=seed)
        generator = SpecKVGenerator("fixed:4")
        out = target.generate(
            input_ids,
            assistant_model=draft,
            candidate_generator=generator,
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=None,
        )
        stats = generator.last_stats
        assert stats.compression.method == f"bnb-{kind}"
        # Every emitted token must be the target's argmax in its own verification forward: re-verify the whole
        # output in one forward and compare position by position.
        logits = target(out).logits[0, input_ids.shape[1] - 1 : -1].float()
        top2 = logits.topk(2, dim=-1)
        emitted = out[0, input_ids.shape[1] :]
        gaps = top2.values[:, 0] - top2.values[:, 1]
        mismatched = emitted != top2.indices[:, 0]
        assert bool((gaps[mismatched] < 0.1).all()), "a token differs from the target's argmax away from a near-tie"
        # Against target-alone greedy: any divergence must start at a near-tie, i.e. where the top-2 gap of the
        # target is within the numerical difference between its one-token and its multi-token forward.
        expected = greedy(target, input_ids, max_new_tokens=24, eos_token_id=None)[0, input_ids.shape[1] :]
        diverged = (emitted != expected).nonzero()
        if diverged.numel():
            first = int(diverged[0])
            single = target(torch.cat((input_ids[0], expected[:first]))[None]).logits[0, -1].float()
            multi = logits[first]
            gap = float(single.topk(2).values[0] - single.topk(2).values[1])
            path_noise = float((single - multi).abs().max())
            assert gap < max(NEAR_TIE, 2 * path_noise), f"divergence at a clear decision ({kind}): gap {gap:.4f}"
            assert gap < 0.1
        accepted += stats.accepted_tokens
    assert accepted > 0, "the quantized target accepted no draft token: the check above was vacuous"


def test_detect_floating_point():
    model = LlamaForCausalLM(llama_config(layers=1))
    assert detect_compression(model).label == "fp32"
    assert detect_compression(model.to(torch.bfloat16)).label == "bf16"
    assert not detect_compression(model).quantized
