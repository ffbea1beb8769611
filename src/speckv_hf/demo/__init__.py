"""Embedded offline target/draft model pair and a held-out prompt suite for demos, tests and benchmarks.

The pair is a ~12M-parameter Llama target and a ~1.2M-parameter Llama draft distilled from it, sharing one byte-level
BPE tokenizer. Both were trained on CPU from text that ships with CPython plus generated arithmetic and structured
data; see `scripts/build_demo_pair.py` (the recipe, outside the wheel) and `docs/demo-pair.md`. The prompt suite's
first four categories are cut from held-out text of the pair's four training categories; `grounded` holds prompts
whose continuation repeats the prompt (`scripts/build_grounded_prompts.py`). Nothing here touches the network.

Example:

```python
>>> from speckv_hf.demo import load_pair, load_prompts
>>> target, draft, tokenizer = load_pair()
>>> prompt = load_prompts("code")[0]
>>> ids = tokenizer(prompt.text, return_tensors="pt").input_ids
>>> out = target.generate(ids, max_new_tokens=16)
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["CATEGORIES", "PAIR_DIR", "PROMPTS_FILE", "Prompt", "load_pair", "load_prompts", "pair_path"]

PAIR_DIR: Path = Path(__file__).resolve().parent / "pair"
PROMPTS_FILE: Path = Path(__file__).resolve().parent / "prompts.json"
CATEGORIES: tuple[str, ...] = ("code", "prose", "math", "structured", "grounded")
MODELS: tuple[str, ...] = ("target", "draft")
PROMPTS_VERSION = 1


@dataclass(frozen=True)
class Prompt:
    """One held-out demo prompt.

    Args:
        id (`str`): Unique id such as `"code-000"`.
        category (`str`): One of `CATEGORIES`.
        text (`str`): Prompt text; it ends mid-stream so a continuation is natural.
        source (`str`): Held-out source it was cut from, e.g. `"stdlib:json/decoder.py"` or
            `"generated:math:98765"` (see `is_heldout` in `scripts/build_demo_pair.py`).
    """

    id: str
    category: str
    text: str
    source: str = ""


def pair_path(which: str) -> Path:
    """Returns the folder holding one model of the pair (config, safetensors weights and tokenizer).

    Useful to load the model yourself, e.g. quantized with `BitsAndBytesConfig`.

    Args:
        which (`str`): `"target"` or `"draft"`.

    Returns:
        `Path`: The model folder, usable with `from_pretrained`.

    Raises:
        ValueError: If `which` is not `"target"` or `"draft"`.
        FileNotFoundError: If the weights are missing from the installed package.
    """
    if which not in MODELS:
        raise ValueError(f"unknown model {which!r}; expected one of {', '.join(map(repr, MODELS))}")
    path = PAIR_DIR / which
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"demo {which} model not found at {path}; is the package data installed?")
    return path


def load_pair(
    dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[LlamaForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Loads the embedded target and draft models and their shared tokenizer, offline.

    Args:
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): Floating-point dtype of the loaded weights
            (they are stored in float16).
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): Device to move both models to.

    Returns:
        `tuple[LlamaForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast]`: `(target, draft, tokenizer)`, both
        models in eval mode.

    Raises:
        TypeError: If `dtype` is not a floating-point `torch.dtype`.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    models = []
    for which in MODELS:
        model = LlamaForCausalLM.from_pretrained(pair_path(which), dtype=dtype, local_files_only=True)
        models.append(model.to(device).eval())
    tokenizer = AutoTokenizer.from_pretrained(pair_path("target"), local_files_only=True)
    return models[0], models[1], tokenizer


@lru_cache(maxsize=1)
def _all_prompts() -> tuple[Prompt, ...]:
    data = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    if data.get("version") != PROMPTS_VERSION:
        raise ValueError(f"{PROMPTS_FILE} has version {data.get('version')!r}, expected {PROMPTS_VERSION}")
    return tuple(Prompt(p["id"], p["category"], p["text"], p.get("source", "")) for p in data["prompts"])


def load_prompts(category: str | None = None) -> list[Prompt]:
    """Returns the held-out demo prompts, optionally for one category.

    Args:
        category (`str`, *optional*): One of `CATEGORIES` (`"code"`, `"prose"`, `"math"`, `"structured"`,
            `"grounded"`); `None` returns every prompt.

    Returns:
        `list[Prompt]`: Prompts in a stable order.

    Raises:
        ValueError: If `category` is not a known category.
    """
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown prompt category {category!r}; expected one of {', '.join(CATEGORIES)}")
    return [p for p in _all_prompts() if category is None or p.category == category]
