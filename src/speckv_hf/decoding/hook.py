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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers.generation.utils import GenerationMixin

from ..core.cost import Clock
from ..core.validation import validate_batched_call, validate_call, validate_prepared
from ._transformers import check_transformers_version, prepared_special_tokens, supports_dynamic_cache
from .assisted import AssistedCall, model_device
from .loop import run_loop
from .loop_call import LoopSettings
from .static_loop import run_static_loop
from .verification import Processing

if TYPE_CHECKING:  # annotations only: the generator imports the hook (constructing one installs it), not back
    from .generator import SpecKVGenerator

__all__ = ["check_call", "install", "is_installed", "own_loop_decoding", "run_assisted", "uninstall"]

# What the hook calls on a `candidate_generator`: a `SpecKVGenerator` has them all.
_ROUTED_METHODS = (
    "bind",
    "clear_last_stats",
    "finish",
    "finish_loop",
    "finish_plain",
    "start_loop",
    "uses_own_loop",
    "wants_plain_decoding",
)


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
        input_ids = check_call(self, candidate_generator, arguments)
        draft = arguments.get("assistant_model")
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
        return run_assisted(candidate_generator, self, lambda: original_generate(self, *args, **kwargs))

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
        if model is not None and not supports_dynamic_cache(model):
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
    settings = LoopSettings(
        max_new_tokens=max(int(generation_config.max_length) - int(input_ids.shape[1]), 0),
        eos_token_ids=eos_ids,
        pad_token_id=pad_id,
        verification=generator.verification_for(bool(generation_config.do_sample)),
        processing=Processing(logits_processor, batch_size=int(input_ids.shape[0])),
        stop_checks=[c for c in stopping_criteria or [] if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))],
        streamer=streamer,
        quorum=generator.batch_quorum,
    )
    attention_mask = model_kwargs.get("attention_mask")
    validate_prepared(generation_config, input_ids, attention_mask)
    # The loop runs where the target's inputs live; the output goes back where the caller's ids were.
    device = model_device(model)
    ids = input_ids.to(device)
    mask = attention_mask.to(device) if attention_mask is not None else None
    call = generator.start_loop(model, draft, ids, mask, settings.verification)
    run = run_static_loop if call.compiled is not None else run_loop
    sequences = run(call, settings, model, draft, ids, mask).to(input_ids.device)
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


def check_call(model: torch.nn.Module, generator: Any, arguments: dict[str, Any]) -> torch.Tensor | None:
    """Checks a `generate(candidate_generator=...)` call before transformers does any work, and clears the
    generator's `last_stats` for the calling thread.

    Args:
        model: the target.
        generator: the `candidate_generator` argument.
        arguments: the call's arguments by name, as `inspect.Signature.bind_partial` gives them (`kwargs` included).

    Returns:
        The prompt's ids when given as a tensor, else None.

    Raises:
        TypeError: when `generator` is not a `SpecKVGenerator`.
        ValueError: for a call speculative decoding cannot run (see `speckv_hf.core.validation.validate_call`), or a
            model without a `DynamicCache`.
    """
    if not all(callable(getattr(generator, name, None)) for name in _ROUTED_METHODS):
        raise TypeError(
            f"candidate_generator must be a speckv_hf.SpecKVGenerator, got {type(generator).__name__}: "
            "pass candidate_generator=SpecKVGenerator()."
        )
    generator.clear_last_stats()  # a call that fails from here on leaves no stale stats behind
    input_ids = validate_call(
        model,
        arguments,
        draft_optional=bool(getattr(generator, "runs_without_draft", False)),
        compiled=getattr(generator, "compile_options", None) is not None,
    )
    _check_dynamic_cache(model, arguments.get("assistant_model"))
    return input_ids


def run_assisted(generator: SpecKVGenerator, target: torch.nn.Module, decode: Callable[[], Any]) -> Any:
    """Runs `decode` (transformers' assisted decoding) with `generator` as the call's candidate generator.

    The call is marked in a context variable, so threads and nested calls never see each other's generator; a call
    that finishes hands what it learned back to the generator (`finish`).

    Args:
        generator: the call's `SpecKVGenerator`.
        target: the target model whose `_get_candidate_generator` the call goes through.
        decode: runs the decoding, without arguments.

    Returns:
        What `decode` returns.
    """
    call = _ActiveCall(generator=generator, target=target)
    token = _ACTIVE.set(call)
    try:
        output = decode()
    finally:
        _ACTIVE.reset(token)
    if call.bound is not None:  # only a call that finished hands on what it learned
        generator.finish(call.bound)
    return output
