"""Fast checks of the embedded demo target/draft pair and its held-out prompt suite."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from speckv_hf.demo import CATEGORIES, PAIR_DIR, Prompt, load_pair, load_prompts, pair_path


def _load_recipe():
    """The demo pair's recipe is a script outside the wheel (scripts/build_demo_pair.py)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "build_demo_pair.py"
    spec = importlib.util.spec_from_file_location("build_demo_pair", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


_recipe = _load_recipe()
HELDOUT_SEED, TRAIN_SEED = _recipe.HELDOUT_SEED, _recipe.TRAIN_SEED
is_heldout, stdlib_sources = _recipe.is_heldout, _recipe.stdlib_sources


@pytest.fixture(scope="module")
def pair():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield load_pair()


def test_load_pair_offline(pair):
    target, draft, tokenizer = pair
    assert not target.training and not draft.training
    assert target.dtype == torch.float32 and draft.dtype == torch.float32
    assert target.num_parameters() > 5 * draft.num_parameters()
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"


def test_load_pair_dtype(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target, draft, _ = load_pair(dtype=torch.bfloat16)
    assert target.dtype == torch.bfloat16 and draft.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="floating-point"):
        load_pair(dtype=torch.int8)


def test_pair_path():
    assert pair_path("target") == PAIR_DIR / "target"
    assert (pair_path("draft") / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="'target', 'draft'"):
        pair_path("teacher")


def test_shared_vocab_and_shapes(pair):
    target, draft, tokenizer = pair
    assert target.config.vocab_size == draft.config.vocab_size == len(tokenizer)
    assert target.config.vocab_size % 64 == 0
    assert target.get_input_embeddings().weight.shape[0] == draft.get_input_embeddings().weight.shape[0]
    assert target.config.tie_word_embeddings and draft.config.tie_word_embeddings
    assert draft.config.num_hidden_layers < target.config.num_hidden_layers


@pytest.mark.parametrize("which", ["target", "draft"])
def test_linear_widths_multiple_of_64(pair, which):
    model = pair[0] if which == "target" else pair[1]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    assert all(m.in_features % 64 == 0 for m in linears), [m.in_features for m in linears]


def test_tokenizer_adds_bos_and_round_trips(pair):
    _, _, tokenizer = pair
    text = "def f(x):\n    return x + 1"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_prompt_suite():
    prompts = load_prompts()
    assert len({p.id for p in prompts}) == len(prompts)
    for category in CATEGORIES:
        subset = load_prompts(category)
        assert len(subset) >= 20
        assert all(isinstance(p, Prompt) and p.category == category and p.text.strip() for p in subset)
        assert all(p.id.startswith(f"{category}-") for p in subset)
    with pytest.raises(ValueError, match="code, prose, math, structured"):
        load_prompts("poetry")


def test_prompts_come_from_heldout_split():
    prompts = load_prompts()
    assert all(is_heldout(p.source) for p in prompts), [p.source for p in prompts if not is_heldout(p.source)]
    assert is_heldout(f"generated:math:{HELDOUT_SEED}") and not is_heldout(f"generated:math:{TRAIN_SEED}")
    sources = stdlib_sources()
    train = {key for key in sources if not is_heldout(key)}
    heldout = set(sources) - train
    assert train and heldout and len(heldout) < len(train) / 5
    assert not {p.source for p in prompts} & train


def test_target_greedy_is_deterministic(pair):
    target, _, tokenizer = pair
    ids = tokenizer(load_prompts("structured")[0].text, return_tensors="pt").input_ids
    outs = [
        target.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id) for _ in range(2)
    ]
    assert outs[0].shape == (1, ids.shape[1] + 12)
    assert torch.equal(outs[0], outs[1])
