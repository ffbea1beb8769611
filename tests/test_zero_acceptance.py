"""A draft the target never agrees with (another tokenizer, same vocabulary size) is named once, not silently slow."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import LlamaForCausalLM

from speckv_hf import SpecKVGenerator
from speckv_hf.decoding.generator import ZERO_ACCEPTANCE_WARNING_TOKENS

from .conftest import llama_config


def _pair_that_never_agrees():
    torch.manual_seed(0)
    target = LlamaForCausalLM(llama_config(eos_token_id=None)).eval()
    draft = copy.deepcopy(target)
    with torch.no_grad():
        draft.model.norm.weight.zero_()  # hidden state 0, logits 0: the draft always proposes token 0 (the pad)
    return target, draft


def _generate(target, draft, generator, new_tokens: int = 40):
    return target.generate(
        torch.tensor([[5, 6, 7, 8]]),
        assistant_model=draft,
        candidate_generator=generator,
        max_new_tokens=new_tokens,
        pad_token_id=0,
    )


def test_a_call_with_nothing_accepted_warns_once_naming_the_tokenizer():
    target, draft = _pair_that_never_agrees()
    generator = SpecKVGenerator("fixed:2")
    with pytest.warns(UserWarning, match="another tokenizer") as caught:
        out = _generate(target, draft, generator)
    assert 0 not in out[0, 4:].tolist()  # the target never emits the draft's token: nothing can be accepted
    assert generator.last_stats.drafted_tokens >= ZERO_ACCEPTANCE_WARNING_TOKENS
    assert generator.last_stats.accepted_tokens == 0
    assert len([w for w in caught if "another tokenizer" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per generator: the second call is silent
        _generate(target, draft, generator)


def test_short_calls_and_accepting_drafts_do_not_warn(llama_pairs):
    target, draft = _pair_that_never_agrees()
    good_target, good_draft = llama_pairs["llama-noisy"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _generate(target, draft, SpecKVGenerator("fixed:2"), new_tokens=8)  # too few drafted tokens to judge
        _generate(good_target, good_draft, SpecKVGenerator("fixed:2"))
