"""Tiny models built from configs, shared by the tests."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig

import speckv_hf.decoding.hook
from speckv_hf.policies.base import NO_CONTEXT, ContextPlan
from speckv_hf.policies.context import ContextPolicy

speckv_hf.decoding.hook.install()  # what `from speckv_hf import SpecKVGenerator` does; some tests call generate first

VOCAB = 96
EOS = 1


def llama_config(layers: int = 2, vocab: int = VOCAB, **overrides) -> LlamaConfig:
    settings = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,  # peaky logits: exact ties between top tokens are rare
        bos_token_id=2,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def gpt2_config(layers: int = 2, vocab: int = VOCAB) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab,
        n_embd=64,
        n_layer=layers,
        n_head=4,
        n_positions=128,
        initializer_range=0.2,
        bos_token_id=2,
        eos_token_id=EOS,
        pad_token_id=0,
    )


def mistral_config(sliding_window: int = 8) -> MistralConfig:
    """A sliding-window (Mistral-style) config, the window far shorter than the tests' sequences."""
    return MistralConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sliding_window=sliding_window,
        initializer_range=0.2,
        pad_token_id=0,
        eos_token_id=EOS,
    )


def noisy_copy(model: torch.nn.Module, scale: float, seed: int = 1) -> torch.nn.Module:
    """A draft that is the target with Gaussian noise on every weight: agrees often, not always."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return draft.eval()


def layer_draft(target: LlamaForCausalLM, layers: int = 1) -> LlamaForCausalLM:
    """A draft made of the target's embeddings, first layers and head (a self-speculative draft)."""
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = layers
    draft = LlamaForCausalLM(config)
    draft.load_state_dict(target.state_dict(), strict=False)
    return draft.eval()


@pytest.fixture(scope="session")
def llama_target() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config(layers=3)).eval()


@pytest.fixture(scope="session")
def llama_pairs(llama_target) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    torch.manual_seed(1)
    return {
        "llama-noisy": (llama_target, noisy_copy(llama_target, 0.02)),
        "llama-layers": (llama_target, layer_draft(llama_target, 1)),
        "llama-random": (llama_target, LlamaForCausalLM(llama_config(layers=1)).eval()),
    }


@pytest.fixture(scope="session")
def gpt2_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(2)
    target = GPT2LMHeadModel(gpt2_config(layers=3)).eval()
    return target, noisy_copy(target, 0.02)


@pytest.fixture(scope="session")
def all_pairs(llama_pairs, gpt2_pair) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    return {**llama_pairs, "gpt2-noisy": gpt2_pair}


def prompt(length: int = 8, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (1, length), generator=generator)


def greedy(model: torch.nn.Module, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    return model.generate(input_ids, do_sample=False, **kwargs)


def paper_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of the SpecKV paper's predictor's shape (6-16-1), as its `.npz` holds them."""
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.normal(size=(6, 16)),
        "b1": rng.normal(size=16),
        "W2": rng.normal(size=(16, 1)) * 0.3,
        "b2": np.array([0.4]),
    }


def write_npz(path: Path, weights: dict[str, np.ndarray]) -> Path:
    np.savez(path, **weights)
    return path


class AlwaysContext(ContextPolicy):
    """Takes up to `take` tokens of every context proposal, whatever they are likely to be worth: the tests of the
    loop's mixing (context candidates, then drafted ones, in one step) must not depend on the machine's timings."""

    def __init__(self, draft_policy=None, take: int = 3) -> None:
        super().__init__(draft_policy=draft_policy)
        self.take = take

    def plan_context(self, proposal, state):
        count = min(len(proposal), state.max_tokens, self.take)
        return ContextPlan(count, 0.5) if count else NO_CONTEXT


class GuessOnly(ContextPolicy):
    """Takes no context run: drafts with `draft_policy`, every draft forward running over the context's guesses of
    the draft's next tokens (so steps mix forward-drafted and guess-confirmed tokens, whatever the timings)."""

    def __init__(self, draft_policy, max_guesses: int = 8) -> None:
        super().__init__(draft_policy=draft_policy, max_guesses=max_guesses, guess_floor=0.0)

    def plan_context(self, proposal, state):
        return NO_CONTEXT
