"""transformers' `custom_generate=` route: [`speckv_generate`][], a decoding method that runs a `SpecKVGenerator`.

The route needs no hook on `generate` for batches (the library's own loop); single prompts go through transformers'
assisted decoding, with the hook (`speckv_hf.decoding.hook`) routing the call to the generator.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.validation import validate_batched_call
from ._transformers import assisted_decoding
from .generator import SpecKVGenerator
from .hook import check_call, install, own_loop_decoding, run_assisted

__all__ = ["speckv_generate"]


def speckv_generate(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: Any,
    synced_gpus: bool = False,
    streamer: Any = None,
    draft_model: Any = None,
    speckv_generator: SpecKVGenerator | None = None,
    **model_kwargs: Any,
) -> Any:
    """A decoding method for transformers' `custom_generate=` route (a callable, as transformers >= 4.57 accepts).

    Usage::

        out = target.generate(**inputs, custom_generate=speckv_generate, draft_model=draft,
                              speckv_generator=SpecKVGenerator(), max_new_tokens=64)

    transformers passes `custom_generate` callables only the keyword arguments they declare beyond its own
    decoding methods, so the draft travels as `draft_model=` rather than `assistant_model=`.

    Args:
        model: the target (transformers passes it).
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): the prompts.
        logits_processor: the call's logits processors.
        stopping_criteria: the call's stopping criteria.
        generation_config: the call's generation config.
        synced_gpus: transformers' multi-GPU flag.
        streamer: an optional streamer.
        draft_model: the draft model (None with a context policy, which drafts from the context alone).
        speckv_generator: the generator to use (a fresh default one if None); its `last_stats` is set after.
        **model_kwargs: the prepared model kwargs (cache included).

    Returns:
        What transformers' assisted decoding (one prompt) or the library's own loop (a batch) returns.

    Raises:
        ValueError: when `draft_model` is missing for a policy that drafts, and for the same bad inputs as
            `generate(candidate_generator=)`.
    """
    generator = speckv_generator if speckv_generator is not None else SpecKVGenerator()
    if draft_model is None and not generator.runs_without_draft:
        raise ValueError(
            "custom_generate=speckv_generate needs the draft: pass draft_model=your_draft, or "
            "speckv_generator=SpecKVGenerator('context') to draft from the context alone."
        )
    arguments = {
        "assistant_model": draft_model,
        "inputs": input_ids,
        "generation_config": generation_config,
        "kwargs": {"attention_mask": model_kwargs.get("attention_mask")},
    }
    check_call(model, generator, arguments)
    if generator.uses_own_loop(int(input_ids.shape[0])):
        validate_batched_call({"generation_config": generation_config, "kwargs": {}})
        return own_loop_decoding(
            model,
            input_ids,
            logits_processor,
            stopping_criteria,
            generation_config,
            synced_gpus=synced_gpus,
            streamer=streamer,
            speckv_request=(generator, draft_model, streamer),
            **model_kwargs,
        )
    install()
    return run_assisted(
        generator,
        model,
        lambda: assisted_decoding(
            model,
            input_ids,
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
            generation_config=generation_config,
            synced_gpus=synced_gpus,
            streamer=streamer,
            assistant_model=draft_model,
            **model_kwargs,
        ),
    )
