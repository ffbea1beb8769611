"""Checks made before any work: what a call asks of `SpecKVGenerator` (the models, the prompt, the settings), and
whether a folder-or-Hub-id argument names a local folder that is missing.

A ground-floor module: the hook, the generator and the loaders call it, and it imports none of them.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

__all__ = [
    "is_int",
    "local_or_hub_id",
    "validate_batched_call",
    "validate_call",
    "validate_pair",
    "validate_prepared",
]

# What a Hub repo id can be: `name` or `namespace/name`, of letters, digits, `-`, `_` and `.` (huggingface_hub's
# rule, without its finer points on where `-` and `.` may stand).
_HUB_ID = re.compile(r"[\w-][\w.-]*(/[\w-][\w.-]*)?")


def is_int(value: Any) -> bool:
    """Whether `value` is an integer setting: an `int`, and not a `bool` (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def local_or_hub_id(source: str | os.PathLike[str], fix: str) -> str:
    """What to hand `from_pretrained`: a local path (`~` expanded), or a Hub repo id as given.

    `source` is a local path when it can be nothing else: a `Path`, an existing file or folder, or a string that
    cannot be a Hub repo id (absolute, starting with `./`, `../` or `~`, more than one `/`, a backslash or a
    space). Such a path that is not a folder is refused here, instead of by huggingface_hub as an invalid repo id.

    Args:
        source: a local folder or a Hub repo id.
        fix: what to pass instead, ending the message (e.g. "a folder written by save_pretrained, or a Hub id").

    Returns:
        The local path with `~` expanded, or `source` unchanged when it is a Hub repo id.

    Raises:
        FileNotFoundError: for a local path that does not exist.
        NotADirectoryError: for a local path that is a file.
    """
    name = os.fspath(source)
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{name} is a file, not a folder: pass {fix}")
    if isinstance(source, os.PathLike) or name.startswith("~") or not _HUB_ID.fullmatch(name):
        resolved = os.path.abspath(path)
        where = "" if resolved == name else f" (resolved to {resolved})"
        raise FileNotFoundError(f"no such folder: {name}{where}. Pass {fix}")
    return name


def _vocab_size(model: torch.nn.Module) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "vocab_size", None)


def validate_pair(target: torch.nn.Module, draft: torch.nn.Module, input_ids: torch.Tensor | None = None) -> None:
    """Checks that a target/draft pair and a prompt can be served by `SpecKVGenerator`.

    Args:
        target: the model generating.
        draft: the assistant model.
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): the prompt.

    Raises:
        ValueError: for a vocabulary mismatch, an encoder-decoder or non-generative model, or an empty prompt.
    """
    for role, model in (("target", target), ("draft", draft)):
        config = getattr(model, "config", None)
        if config is None or not callable(getattr(model, "can_generate", None)) or not model.can_generate():
            raise ValueError(
                f"the {role} ({type(model).__name__}) is not a transformers model that can generate; "
                "SpecKVGenerator needs causal language models such as AutoModelForCausalLM."
            )
        if getattr(config, "is_encoder_decoder", False):
            raise ValueError(
                f"the {role} ({type(model).__name__}) is an encoder-decoder model; SpecKVGenerator supports "
                "decoder-only models for now: use transformers' own assisted generation for it."
            )
    target_vocab, draft_vocab = _vocab_size(target), _vocab_size(draft)
    if target_vocab != draft_vocab:
        raise ValueError(
            f"draft vocabulary ({draft_vocab}) differs from target ({target_vocab}): SpecKVGenerator needs a draft "
            "that shares the target's tokenizer. For a draft with another tokenizer, drop candidate_generator= and "
            "use transformers' universal assisted generation: generate(..., assistant_model=draft, "
            "tokenizer=target_tokenizer, assistant_tokenizer=draft_tokenizer)."
        )
    if input_ids is not None and (input_ids.dim() != 2 or input_ids.shape[-1] == 0):
        raise ValueError(
            f"SpecKVGenerator needs a prompt of at least one token per row, shape (batch_size, length), got shape "
            f"{tuple(input_ids.shape)}: start the prompt with the tokenizer's BOS token (e.g. "
            "tokenizer(text, add_special_tokens=True)) or pass input_ids=torch.tensor([[bos_token_id]])."
        )


def validate_call(
    model: torch.nn.Module, arguments: dict[str, Any], draft_optional: bool = False, compiled: bool = False
) -> torch.Tensor | None:
    """Checks a `generate(candidate_generator=...)` call before transformers does any work.

    Args:
        model: the target.
        arguments: `generate()`'s bound arguments (`inputs`, `generation_config`, `assistant_model`, and the
            remaining keyword arguments under `kwargs`).
        draft_optional: whether the generator runs without a draft model (a context policy).
        compiled: whether the generator runs the compiled loop, which keeps static caches of its own (so
            `cache_implementation="static"` asks for what it does anyway).

    Returns:
        The prompt's `input_ids` when the call passes them as a tensor (None otherwise).

    Raises:
        ValueError: naming the fix, for what `SpecKVGenerator` cannot serve.
    """
    kwargs = arguments.get("kwargs", {})
    draft = arguments.get("assistant_model")
    if draft is None and not draft_optional:
        raise ValueError(
            "candidate_generator=SpecKVGenerator() needs a draft model: pass assistant_model=draft_model too, or "
            "use SpecKVGenerator('context'), which drafts from the context alone."
        )
    if kwargs.get("assistant_tokenizer") is not None:
        raise ValueError(
            "SpecKVGenerator needs a draft sharing the target's tokenizer; drop assistant_tokenizer=, or drop "
            "candidate_generator= to use transformers' universal assisted generation."
        )
    inputs = arguments.get("inputs")
    if inputs is None:
        inputs = kwargs.get("input_ids")
    if draft is not None:
        validate_pair(model, draft, inputs if isinstance(inputs, torch.Tensor) else None)

    if kwargs.get("inputs_embeds") is not None:
        raise ValueError("SpecKVGenerator needs input_ids: pass the prompt as token ids, not inputs_embeds=.")
    # Only what the call asks for: a model's default `cache_implementation` (e.g. Gemma's "hybrid") is replaced by
    # transformers itself for assisted generation.
    config = arguments.get("generation_config")
    cache_implementation = kwargs.get("cache_implementation", getattr(config, "cache_implementation", None))
    past = kwargs.get("past_key_values", kwargs.get("cache"))
    if compiled and cache_implementation == "static" and past is None:
        pass
    elif cache_implementation in {"static", "hybrid", "sliding_window", "offloaded_static"} or (
        past is not None and "Static" in type(past).__name__
    ):
        got = cache_implementation or type(past).__name__
        if compiled:
            raise ValueError(
                f"SpecKVGenerator(compile=True) keeps static caches of its own, got {got}: drop past_key_values= "
                "and pass at most cache_implementation='static'."
            )
        raise ValueError(
            f"SpecKVGenerator needs a dynamic KV cache, got {got}: drop cache_implementation= / past_key_values= "
            "(the eager loop crops the cache on rejection), or construct SpecKVGenerator(compile=True), which keeps "
            "static caches of its own."
        )
    # transformers' QuantizedCache layers cannot be cropped; transformers itself raises only after the prefill.
    if cache_implementation == "quantized" or (past is not None and "Quantized" in type(past).__name__):
        raise ValueError(
            "SpecKVGenerator cannot use a quantized KV cache: assisted generation crops the target's cache when "
            "it rejects drafted tokens, and transformers' quantized caches cannot be cropped. Either drop "
            "cache_implementation='quantized' / cache_config= / past_key_values= (the default dynamic cache; to "
            "save memory quantize the weights instead, e.g. --compression quanto-int4), or keep the quantized "
            "cache and generate without candidate_generator= and assistant_model=."
        )
    num_beams = kwargs.get("num_beams", getattr(config, "num_beams", None)) or 1
    if num_beams > 1:
        raise ValueError(f"SpecKVGenerator works with num_beams=1 (greedy or sampling), got num_beams={num_beams}.")
    mask = kwargs.get("attention_mask")
    if (
        isinstance(inputs, torch.Tensor)
        and isinstance(mask, torch.Tensor)
        and inputs.dim() == 2
        and inputs.shape[0] > 1
    ):
        if mask.shape != inputs.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(mask.shape)} but input_ids {tuple(inputs.shape)}: pass the mask the "
                "tokenizer returned with the ids."
            )
        if bool((mask[:, -1] == 0).any()):
            raise ValueError(
                "the batch is right-padded (some rows end in padding): decoder-only generation needs left padding. "
                "Create the tokenizer with padding_side='left' (or set tokenizer.padding_side = 'left') and "
                "tokenize again."
            )
    return inputs if isinstance(inputs, torch.Tensor) else None


def validate_batched_call(arguments: dict[str, Any]) -> None:
    """The checks of a call that runs in the library's own loop (`loop="speckv"`, the default: batches and single
    prompts), beyond [`validate_call`][]'s.

    Raises:
        ValueError: naming the fix, for outputs or caches the loop does not produce or accept.
    """
    kwargs = arguments.get("kwargs", {})
    config = arguments.get("generation_config")
    if kwargs.get("past_key_values", kwargs.get("cache")) is not None:
        raise ValueError(
            "SpecKVGenerator's own loop (loop='speckv', the default) builds its own KV caches: drop "
            "past_key_values= and pass the whole prompt as input_ids."
        )
    for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
        if kwargs.get(name, getattr(config, name, False)):
            # transformers' assisted loop fills these in (from the target's logits) but takes one prompt only.
            raise ValueError(
                f"{name}=True is not supported by SpecKVGenerator's own loop (loop='speckv', the default): drop it "
                "(return_dict_in_generate=True still gives .sequences); for a single prompt, pass "
                "candidate_generator=SpecKVGenerator(loop='transformers'), whose loop (transformers' assisted "
                "generation) returns it; for a batch, generate without candidate_generator= and assistant_model=."
            )


def validate_prepared(generation_config: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """The checks of a call in the library's loop on what transformers prepared (the generation config merged with
    the model's defaults, the mask a pipeline or tokenizer made), before any forward.

    Args:
        generation_config: the call's prepared generation config.
        input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): the prompts.
        attention_mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*): 0 on padding.

    Raises:
        ValueError: naming the fix, for beams, per-step outputs, or a mask that is not left padding.
    """
    num_beams = getattr(generation_config, "num_beams", 1) or 1
    if num_beams > 1:
        raise ValueError(
            f"SpecKVGenerator works with num_beams=1 (greedy or sampling), got num_beams={num_beams} (from the "
            "model's generation config if the call did not set it): pass num_beams=1."
        )
    validate_batched_call({"generation_config": generation_config, "kwargs": {}})
    if attention_mask is None:
        return
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}: pass "
            "the mask the tokenizer returned with the ids."
        )
    mask = attention_mask.long()
    if bool(((mask != 0) & (mask != 1)).any()) or bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError(
            "every row of attention_mask must be zeros then ones (left padding), as a tokenizer with "
            "padding_side='left' gives it: set tokenizer.padding_side = 'left' and tokenize again, or drop "
            "attention_mask= for unpadded prompts."
        )
    if bool((mask[:, -1] == 0).any()):
        raise ValueError(
            "some rows of attention_mask are all padding (or right-padded): every row needs at least one token, "
            "left-padded (tokenizer.padding_side = 'left')."
        )
