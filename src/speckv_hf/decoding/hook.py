"""How `generate(candidate_generator=...)` reaches speckv-hf.

transformers' `generate()` has no argument for a user-made candidate generator. `install()` (run when the
generation API is first loaded, `from speckv_hf import SpecKVGenerator`, and by every `SpecKVGenerator()`) wraps
two methods of `GenerationMixin`, on the class, once:

- `generate` accepts `candidate_generator=` (a [`SpecKVGenerator`][]); it validates the call before any work and
  marks the call as ours in a context variable (so threads and nested calls never see each other's generator);
- `_get_candidate_generator` returns our generator, bound to the call, when the call is marked; otherwise it
  is transformers' own.

Batches (and, with `SpecKVGenerator(loop="speckv")`, single prompts) run in the library's own loop
(`speckv_hf.decoding.loop`) instead: `generate` passes transformers the public `custom_generate=` callable route, which
prepares the logits processors, stopping criteria and generation config as for any decoding method and hands them
to [`own_loop_decoding`][]; the private special-token tensors of the generation config are read there.

Calls without `candidate_generator` go straight to transformers. `uninstall()` restores both methods. The
supported transformers versions, and what differs between them, live in `speckv_hf.decoding._transformers`.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from dataclasses import dataclass
from typing import Any

import torch
from transformers.generation.utils import GenerationMixin

from ..core.cost import Clock
from ..core.validation import validate_batched_call, validate_call, validate_pair, validate_prepared
from ._transformers import (
    MAX_TRANSFORMERS,
    MIN_TRANSFORMERS,
    assisted_decoding,
    cache_kwarg,
    check_transformers_version,
    prepared_special_tokens,
    supports_dynamic_cache,
)
from .assisted import AssistedCall, model_device
from .generator import SpecKVGenerator
from .loop import LoopSettings, run_loop
from .verification import Processing

__all__ = [
    "MAX_TRANSFORMERS",
    "MIN_TRANSFORMERS",
    "cache_kwarg",
    "check_transformers_version",
    "install",
    "is_installed",
    "own_loop_decoding",
    "speckv_generate",
    "uninstall",
    "validate_pair",
]


@dataclass
class _ActiveCall:
    generator: SpecKVGenerator
    target: torch.nn.Module
    bound: AssistedCall | None = None


_ACTIVE: contextvars.ContextVar[_ActiveCall | None] = contextvars.ContextVar("speckv_active_call", default=None)
_ORIGINALS: dict[str, Any] = {}
_INSTALL_LOCK = threading.Lock()  # two threads building their first generator must not wrap generate twice


def is_installed() -> bool:
    """Whether the hook is installed."""
    return bool(_ORIGINALS)


def install() -> None:
    """Installs the hook on `GenerationMixin` (idempotent, thread-safe). Run when the generation API is first
    loaded (`from speckv_hf import SpecKVGenerator`) and by every `SpecKVGenerator()`.

    Raises:
        ImportError: for an unsupported transformers version.
    """
    with _INSTALL_LOCK:
        if not is_installed():
            _install()


def _install() -> None:
    check_transformers_version()
    original_generate = GenerationMixin.generate
    original_get = GenerationMixin._get_candidate_generator
    generate_signature = inspect.signature(original_generate)

    @functools.wraps(original_generate)
    def generate(self, *args: Any, candidate_generator: SpecKVGenerator | None = None, **kwargs: Any) -> Any:
        if candidate_generator is None:
            return original_generate(self, *args, **kwargs)
        arguments = generate_signature.bind_partial(self, *args, **kwargs).arguments
        input_ids = _validate_call(self, candidate_generator, arguments)
        draft = arguments["assistant_model"]
        _check_dynamic_cache(self, draft)
        batch_size = _batch_size(arguments, input_ids)
        own_loop = candidate_generator.uses_own_loop(batch_size)
        if own_loop:
            validate_batched_call(arguments)
        if candidate_generator.wants_plain_decoding(self, draft, batch_size, _requests_sampling(self, arguments)):
            return _plain_decoding(original_generate, self, candidate_generator, arguments, args, kwargs)
        if own_loop:
            given = {k: v for k, v in arguments.items() if k not in ("self", "kwargs", "assistant_model")}
            return original_generate(
                self,
                **given,
                **arguments.get("kwargs", {}),
                custom_generate=own_loop_decoding,
                # transformers hands a custom_generate callable only the keyword arguments it declares beyond its
                # own decoding methods': not the streamer, which travels here.
                speckv_request=(candidate_generator, draft, arguments.get("streamer")),
            )
        call = _ActiveCall(generator=candidate_generator, target=self)
        token = _ACTIVE.set(call)
        try:
            output = original_generate(self, *args, **kwargs)
        finally:
            _ACTIVE.reset(token)
        if call.bound is not None:  # only a call that finished hands on what it learned
            candidate_generator.finish(call.bound)
        return output

    @functools.wraps(original_get)
    def _get_candidate_generator(
        self,
        generation_config,
        input_ids,
        inputs_tensor,
        logits_processor,
        model_kwargs,
        assistant_model=None,
        *args: Any,
        **kwargs: Any,
    ):
        call = _ACTIVE.get()
        if call is None or call.target is not self or call.bound is not None or assistant_model is None:
            return original_get(
                self,
                generation_config,
                input_ids,
                inputs_tensor,
                logits_processor,
                model_kwargs,
                assistant_model,
                *args,
                **kwargs,
            )
        call.bound = call.generator.bind(
            target=self,
            draft=assistant_model,
            input_ids=input_ids,
            generation_config=generation_config,
            logits_processor=logits_processor,
            model_kwargs=model_kwargs,
            eos_token_ids=_special_ids(generation_config)[0],
        )
        return call.bound

    _ORIGINALS["generate"] = original_generate
    _ORIGINALS["_get_candidate_generator"] = original_get
    GenerationMixin.generate = generate
    GenerationMixin._get_candidate_generator = _get_candidate_generator


def _check_dynamic_cache(*models: torch.nn.Module) -> None:
    """Refuses models that cannot run with a `DynamicCache` (transformers' own list: recurrent and other custom
    caches), before any work."""
    for model in models:
        if not supports_dynamic_cache(model):
            raise ValueError(
                f"{type(model).__name__} keeps a cache of its own kind, which speculative decoding cannot roll back; "
                "SpecKVGenerator needs attention models with a DynamicCache: generate without candidate_generator=."
            )


def _batch_size(arguments: dict[str, Any], input_ids: torch.Tensor | None) -> int:
    """Rows the call generates: the prompts times `num_return_sequences`."""
    kwargs = arguments.get("kwargs", {})
    config = arguments.get("generation_config")
    copies = kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", None)) or 1
    rows = int(input_ids.shape[0]) if input_ids is not None and input_ids.dim() == 2 else 1
    return rows * int(copies)


def _requests_sampling(model: torch.nn.Module, arguments: dict[str, Any]) -> bool:
    """Whether a call samples, read as transformers will: a `do_sample=` keyword over the call's generation config,
    else the model's."""
    kwargs = arguments.get("kwargs", {})
    if kwargs.get("do_sample") is not None:
        return bool(kwargs["do_sample"])
    config = arguments.get("generation_config") or getattr(model, "generation_config", None)
    return bool(getattr(config, "do_sample", False))


def _special_ids(generation_config: Any) -> tuple[frozenset[int], int]:
    """The EOS ids and the pad id transformers prepared for the call (`prepared_special_tokens`: transformers sets
    the pad id to the EOS id when the model has none)."""
    eos, pad = prepared_special_tokens(generation_config)
    eos = eos.flatten().tolist() if isinstance(eos, torch.Tensor) else generation_config.eos_token_id
    eos_ids = frozenset([eos] if isinstance(eos, int) else list(eos or []))
    pad = int(pad.flatten()[0]) if isinstance(pad, torch.Tensor) else generation_config.pad_token_id
    if pad is None:
        pad = min(eos_ids) if eos_ids else 0
    return eos_ids, int(pad)


def own_loop_decoding(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: Any,
    synced_gpus: bool = False,
    streamer: Any = None,
    speckv_request: tuple[SpecKVGenerator, Any, Any] | None = None,
    **model_kwargs: Any,
) -> Any:
    """The decoding method the hook hands transformers (`custom_generate=`) for calls in the library's own loop.

    Args:
        model: the target.
        input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): the prompts, left-padded.
        logits_processor: the call's prepared logits processors.
        stopping_criteria: the call's prepared stopping criteria.
        generation_config: the call's generation config.
        synced_gpus: transformers' multi-GPU flag (unused: each process runs its own batch).
        streamer: an optional streamer.
        speckv_request: the generator, the draft and the call's streamer (or None).
        **model_kwargs: the prepared model kwargs; the attention mask is read, the prepared cache is not used.

    Returns:
        The sequences, as a tensor or (with `return_dict_in_generate=True`) a `GenerateDecoderOnlyOutput`.
    """
    from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

    if speckv_request is None:
        raise ValueError("own_loop_decoding is run by generate(candidate_generator=...); call that instead.")
    generator, draft, request_streamer = speckv_request
    streamer = streamer if streamer is not None else request_streamer
    eos_ids, pad_id = _special_ids(generation_config)
    do_sample = bool(generation_config.do_sample)
    settings = LoopSettings(
        max_new_tokens=max(int(generation_config.max_length) - int(input_ids.shape[1]), 0),
        eos_token_ids=eos_ids,
        pad_token_id=pad_id,
        do_sample=do_sample,
        processing=Processing(logits_processor, batch_size=int(input_ids.shape[0])),
        stop_checks=[c for c in stopping_criteria or [] if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))],
        streamer=streamer,
        quorum=generator.batch_quorum,
        coupled=do_sample and generator.sampling_scheme == "coupled",
    )
    attention_mask = model_kwargs.get("attention_mask")
    validate_prepared(generation_config, input_ids, attention_mask)
    # The loop runs where the target's inputs live; the output goes back where the caller's ids were.
    device = model_device(model)
    ids = input_ids.to(device)
    mask = attention_mask.to(device) if attention_mask is not None else None
    verification = "coupled" if settings.coupled else "speculative" if do_sample else "greedy"
    call = generator.start_loop(model, draft, ids, mask, verification)
    sequences = run_loop(call, settings, model, draft, ids, mask).to(input_ids.device)
    generator.finish_loop(call)  # only a call that finished hands on what it learned
    if generation_config.return_dict_in_generate:
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences


def _plain_decoding(original_generate, model, generator, arguments, args, kwargs) -> Any:
    """Runs a call without the draft (the generator found that speculation does not pay) and records its stats."""
    kwargs = {k: v for k, v in kwargs.items() if k != "assistant_model"}
    inputs = arguments.get("inputs")
    inputs = kwargs.get("input_ids") if inputs is None else inputs
    clock = Clock(getattr(model, "device", "cpu"))
    start = clock.now()
    output = original_generate(model, *args, **kwargs)
    seconds = clock.now() - start
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    prompt_tokens = int(inputs.shape[-1]) if isinstance(inputs, torch.Tensor) else 0
    generator.finish_plain(model, prompt_tokens, int(sequences.shape[-1]) - prompt_tokens, seconds)
    return output


def uninstall() -> None:
    """Removes the hook, restoring transformers' own methods (idempotent)."""
    with _INSTALL_LOCK:
        for name, original in _ORIGINALS.items():
            setattr(GenerationMixin, name, original)
        _ORIGINALS.clear()


def _validate_call(model: torch.nn.Module, generator: Any, arguments: dict[str, Any]) -> torch.Tensor | None:
    """Checks a `generate(candidate_generator=...)` call before transformers does any work, and clears the
    generator's `last_stats` for the calling thread. Returns the prompt's ids when given as a tensor."""
    if not isinstance(generator, SpecKVGenerator):
        raise TypeError(
            f"candidate_generator must be a speckv_hf.SpecKVGenerator, got {type(generator).__name__}: "
            "pass candidate_generator=SpecKVGenerator()."
        )
    generator.clear_last_stats()  # a call that fails from here on leaves no stale stats behind
    return validate_call(model, arguments)


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
        draft_model: the draft model.
        speckv_generator: the generator to use (a fresh default one if None); its `last_stats` is set after.
        **model_kwargs: the prepared model kwargs (cache included).

    Returns:
        What transformers' assisted decoding (one prompt) or the library's own loop (a batch) returns.

    Raises:
        ValueError: when `draft_model` is missing, and for the same bad inputs as `generate(candidate_generator=)`.
    """
    if draft_model is None:
        raise ValueError("custom_generate=speckv_generate needs the draft: pass draft_model=your_draft.")
    generator = speckv_generator if speckv_generator is not None else SpecKVGenerator()
    arguments = {
        "assistant_model": draft_model,
        "inputs": input_ids,
        "generation_config": generation_config,
        "kwargs": {"attention_mask": model_kwargs.get("attention_mask")},
    }
    _validate_call(model, generator, arguments)
    _check_dynamic_cache(model, draft_model)
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
    call = _ActiveCall(generator=generator, target=model)
    token = _ACTIVE.set(call)
    try:
        output = assisted_decoding(
            model,
            input_ids,
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
            generation_config=generation_config,
            synced_gpus=synced_gpus,
            streamer=streamer,
            assistant_model=draft_model,
            **model_kwargs,
        )
    finally:
        _ACTIVE.reset(token)
    if call.bound is not None:  # only a call that finished hands on what it learned
        generator.finish(call.bound)
    return output
