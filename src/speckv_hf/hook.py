"""The one place that touches transformers' internals.

transformers' `generate()` has no argument for a user-made candidate generator. `install()` (run by
`import speckv_hf`) wraps two methods of `GenerationMixin`, on the class, once:

- `generate` accepts `candidate_generator=` (a [`SpecKVGenerator`]); it validates the call before any work and
  marks the call as ours in a context variable (so threads and nested calls never see each other's generator);
- `_get_candidate_generator` returns our generator, bound to the call, when the call is marked; otherwise it
  is transformers' own.

Calls without `candidate_generator` go straight to transformers. `uninstall()` restores both methods. The
supported transformers versions are checked here and only here.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import transformers
from packaging.version import Version
from transformers.generation.utils import GenerationMixin

from .cost import Clock

if TYPE_CHECKING:
    from .generator import SpecKVGenerator

__all__ = [
    "MAX_TRANSFORMERS",
    "MIN_TRANSFORMERS",
    "cache_kwarg",
    "check_transformers_version",
    "install",
    "is_installed",
    "speckv_generate",
    "uninstall",
    "validate_pair",
]

MIN_TRANSFORMERS = Version("4.57.0")
MAX_TRANSFORMERS = Version("6.0.0")  # exclusive


@dataclass
class _ActiveCall:
    generator: SpecKVGenerator
    target: torch.nn.Module
    bound: SpecKVGenerator | None = None


_ACTIVE: contextvars.ContextVar[_ActiveCall | None] = contextvars.ContextVar("speckv_active_call", default=None)
_ORIGINALS: dict[str, Any] = {}


def check_transformers_version(version: str | None = None) -> Version:
    """Checks that the installed transformers is supported.

    Args:
        version: the version to check (the installed one by default).

    Returns:
        The parsed version.

    Raises:
        ImportError: naming the supported range, for an unsupported version.
    """
    parsed = Version(version or transformers.__version__)
    if not MIN_TRANSFORMERS <= Version(parsed.base_version) < MAX_TRANSFORMERS:
        raise ImportError(
            f"speckv-hf supports transformers >={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS}, found {parsed}: "
            f"pip install 'transformers>={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS}'."
        )
    for name in ("generate", "_get_candidate_generator"):
        if not callable(getattr(GenerationMixin, name, None)):
            raise ImportError(f"transformers {parsed} has no GenerationMixin.{name}; speckv-hf cannot hook into it.")
    return parsed


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name under which `model.forward` takes a KV cache: `cache` where transformers renamed it (5.x releases
    that deprecate `past_key_values`), `past_key_values` before.

    Args:
        model: a transformers model.

    Returns:
        The keyword argument name.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def is_installed() -> bool:
    """Whether the hook is installed."""
    return bool(_ORIGINALS)


def install() -> None:
    """Installs the hook on `GenerationMixin` (idempotent). Run by `import speckv_hf`.

    Raises:
        ImportError: for an unsupported transformers version.
    """
    if is_installed():
        return
    check_transformers_version()
    original_generate = GenerationMixin.generate
    original_get = GenerationMixin._get_candidate_generator
    generate_signature = inspect.signature(original_generate)

    @functools.wraps(original_generate)
    def generate(self, *args: Any, candidate_generator: SpecKVGenerator | None = None, **kwargs: Any) -> Any:
        if candidate_generator is None:
            return original_generate(self, *args, **kwargs)
        arguments = generate_signature.bind_partial(self, *args, **kwargs).arguments
        _validate_call(self, candidate_generator, arguments)
        if "assistant_model" in kwargs and candidate_generator.wants_plain_decoding(self, kwargs["assistant_model"]):
            return _plain_decoding(original_generate, self, candidate_generator, arguments, args, kwargs)
        call = _ActiveCall(generator=candidate_generator, target=self)
        token = _ACTIVE.set(call)
        try:
            return original_generate(self, *args, **kwargs)
        finally:
            _ACTIVE.reset(token)
            if call.bound is not None:
                candidate_generator.finish(call.bound)

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
        )
        return call.bound

    _ORIGINALS["generate"] = original_generate
    _ORIGINALS["_get_candidate_generator"] = original_get
    GenerationMixin.generate = generate
    GenerationMixin._get_candidate_generator = _get_candidate_generator


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
    for name, original in _ORIGINALS.items():
        setattr(GenerationMixin, name, original)
    _ORIGINALS.clear()


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
        ValueError: for a vocabulary mismatch, an encoder-decoder or non-generative model, or batch size > 1.
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
    if input_ids is not None and input_ids.dim() == 2 and input_ids.shape[0] > 1:
        raise ValueError(
            f"batched generation (batch size {input_ids.shape[0]}) is not supported yet by SpecKVGenerator: "
            "call generate() once per prompt."
        )


def _validate_call(model: torch.nn.Module, generator: Any, arguments: dict[str, Any]) -> None:
    """Checks a `generate(candidate_generator=...)` call before transformers does any work, and clears the
    generator's `last_stats` for the calling thread."""
    from .generator import SpecKVGenerator

    kwargs = arguments.get("kwargs", {})
    if not isinstance(generator, SpecKVGenerator):
        raise TypeError(
            f"candidate_generator must be a speckv_hf.SpecKVGenerator, got {type(generator).__name__}: "
            "pass candidate_generator=SpecKVGenerator()."
        )
    generator.clear_last_stats()  # a call that fails from here on leaves no stale stats behind
    draft = arguments.get("assistant_model")
    if draft is None:
        raise ValueError(
            "candidate_generator=SpecKVGenerator() needs a draft model: pass assistant_model=draft_model too."
        )
    if kwargs.get("assistant_tokenizer") is not None:
        raise ValueError(
            "SpecKVGenerator needs a draft sharing the target's tokenizer; drop assistant_tokenizer=, or drop "
            "candidate_generator= to use transformers' universal assisted generation."
        )
    inputs = arguments.get("inputs")
    if inputs is None:
        inputs = kwargs.get("input_ids")
    validate_pair(model, draft, inputs if isinstance(inputs, torch.Tensor) else None)

    if kwargs.get("inputs_embeds") is not None:
        raise ValueError("SpecKVGenerator needs input_ids: pass the prompt as token ids, not inputs_embeds=.")
    # Only what the call asks for: a model's default `cache_implementation` (e.g. Gemma's "hybrid") is replaced by
    # transformers itself for assisted generation.
    config = arguments.get("generation_config")
    cache_implementation = kwargs.get("cache_implementation", getattr(config, "cache_implementation", None))
    past = kwargs.get("past_key_values")
    if cache_implementation in {"static", "hybrid", "sliding_window", "offloaded_static"} or (
        past is not None and "Static" in type(past).__name__
    ):
        raise ValueError(
            f"SpecKVGenerator needs a dynamic KV cache, got {cache_implementation or type(past).__name__}: drop "
            "cache_implementation= / past_key_values= (assisted generation crops the cache on rejection)."
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
        input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the prompt.
        logits_processor: the call's logits processors.
        stopping_criteria: the call's stopping criteria.
        generation_config: the call's generation config.
        synced_gpus: transformers' multi-GPU flag.
        streamer: an optional streamer.
        draft_model: the draft model.
        speckv_generator: the generator to use (a fresh default one if None); its `last_stats` is set after.
        **model_kwargs: the prepared model kwargs (cache included).

    Returns:
        What transformers' assisted decoding returns.

    Raises:
        ValueError: when `draft_model` is missing, and for the same bad inputs as `generate(candidate_generator=)`.
    """
    from .generator import SpecKVGenerator

    if draft_model is None:
        raise ValueError("custom_generate=speckv_generate needs the draft: pass draft_model=your_draft.")
    generator = speckv_generator if speckv_generator is not None else SpecKVGenerator()
    _validate_call(
        model,
        generator,
        {"assistant_model": draft_model, "inputs": input_ids, "generation_config": generation_config, "kwargs": {}},
    )
    install()
    call = _ActiveCall(generator=generator, target=model)
    token = _ACTIVE.set(call)
    try:
        return model._assisted_decoding(
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
        if call.bound is not None:
            generator.finish(call.bound)
