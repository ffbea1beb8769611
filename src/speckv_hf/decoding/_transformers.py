"""What speckv-hf relies on in transformers, and how it differs between the supported releases.

transformers moves its generation internals between minor releases. Everything here says which releases it was
checked against, so the next release that changes one of them breaks one check (with the version in the message),
not every test of a loop:

- the supported range ([`check_transformers_version`][]);
- the name under which a model's forward takes its KV cache ([`cache_kwarg`][]: `cache` from the 5.x releases that
  deprecate `past_key_values`);
- the contract of transformers' assisted loop: what `GenerationMixin._assisted_decoding` reads on the candidate
  generator it drives ([`assisted_contract`][], [`missing_from_contract`][]). transformers 5.25 added
  `num_drafting_tokens`, read before the first step to size the target cache's rollback record;
- every private name of transformers the library reads or writes, each behind one small function here
  ([`prepared_special_tokens`][], [`supports_dynamic_cache`][], [`bind_prefix_function_to_row`][],
  [`edit_cache_layers`][], [`assisted_decoding`][]), so tests/test_layout.py can check that no other module
  reaches them;
- where a static cache writes ([`static_write_kwargs`][]): at `cache_position` on 4.57, at each layer's
  `cumulative_length` counter on the 5.x releases that dropped `cache_position` from the forward.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import torch
import transformers
from packaging.version import Version

__all__ = [
    "MAX_TRANSFORMERS",
    "MIN_TRANSFORMERS",
    "NEWEST_TESTED",
    "OPTIONAL_CONTRACT",
    "assisted_contract",
    "assisted_decoding",
    "bind_prefix_function_to_row",
    "cache_kwarg",
    "check_transformers_version",
    "compile_everywhere_config",
    "edit_cache_layers",
    "missing_from_contract",
    "new_static_cache",
    "prepared_special_tokens",
    "static_cache_tensors",
    "static_write_kwargs",
    "supports_dynamic_cache",
]

MIN_TRANSFORMERS = Version("4.57.0")
MAX_TRANSFORMERS = Version("6.0.0")  # exclusive
#: The newest release CI ran the whole suite on; newer 5.x releases are allowed and tested by CI as they appear.
NEWEST_TESTED = Version("5.25.0")

#: Names `_assisted_decoding` reads only on transformers' own candidate generators (behind an `isinstance` check)
#: or only when `requires_model_outputs` is True, which ours is not (checked on 4.57.6 and 5.25.0).
OPTIONAL_CONTRACT = frozenset({"assistant_model", "num_assistant_tokens", "model_kwargs_overrides"})


def check_transformers_version(version: str | None = None) -> Version:
    """Checks that the installed transformers is supported.

    Args:
        version: the version to check (the installed one by default).

    Returns:
        The parsed version.

    Raises:
        ImportError: naming the supported range, for an unsupported version.
    """
    from transformers.generation.utils import GenerationMixin

    parsed = Version(version or transformers.__version__)
    if not MIN_TRANSFORMERS <= Version(parsed.base_version) < MAX_TRANSFORMERS:
        raise ImportError(
            f"speckv-hf supports transformers >={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS}, found {parsed}: "
            f"pip install 'transformers>={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS}'."
        )
    for name in ("generate", "_get_candidate_generator", "_assisted_decoding"):
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


@functools.cache
def assisted_contract() -> frozenset[str]:
    """The attributes transformers' assisted loop reads on the candidate generator it drives.

    Read from the source of the installed `GenerationMixin._assisted_decoding` (every `candidate_generator.NAME`),
    so a release that starts reading a new attribute shows up here before any call fails on it.

    Returns:
        The attribute names, [`OPTIONAL_CONTRACT`][] included.
    """
    from transformers.generation.utils import GenerationMixin

    source = textwrap.dedent(inspect.getsource(GenerationMixin._assisted_decoding))
    return frozenset(
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "candidate_generator"
    )


def missing_from_contract(candidate_generator_type: type) -> list[str]:
    """What the installed transformers' assisted loop reads that a candidate generator class lacks.

    Args:
        candidate_generator_type: the class to check (attributes set in `__init__` count only when the class
            declares them, as a class attribute or a property).

    Returns:
        The missing names, sorted; empty when the class meets the contract.
    """
    required = assisted_contract() - OPTIONAL_CONTRACT
    return sorted(name for name in required if not hasattr(candidate_generator_type, name))


def prepared_special_tokens(generation_config: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The EOS and pad token tensors transformers prepared for a call (`_eos_token_tensor`, `_pad_token_tensor`,
    set by `generate` before it runs a decoding loop; 4.57 and 5.x alike).

    Args:
        generation_config: the call's prepared `GenerationConfig`.

    Returns:
        `(eos, pad)`, each a tensor or None where transformers has not prepared it.
    """
    return getattr(generation_config, "_eos_token_tensor", None), getattr(generation_config, "_pad_token_tensor", None)


def supports_dynamic_cache(model: torch.nn.Module) -> bool:
    """Whether a model can run with a `DynamicCache` (transformers' `_supports_default_dynamic_cache`, False for
    recurrent and other custom caches; True where the release has no such check)."""
    supports = getattr(type(model), "_supports_default_dynamic_cache", None)
    return not (callable(supports) and not supports())


def bind_prefix_function_to_row(processor: Any, row: int) -> None:
    """Makes a `PrefixConstrainedLogitsProcessor` (a copy the caller owns) call the user's function with `row` as
    the batch id, whatever batch id it is called with: transformers keeps that function in
    `_prefix_allowed_tokens_fn` (4.57 and 5.x alike).

    Args:
        processor: the processor to edit in place.
        row: the batch id the user's function sees.
    """
    allowed = processor._prefix_allowed_tokens_fn
    processor._prefix_allowed_tokens_fn = lambda _batch_id, ids, fn=allowed, row=row: fn(row, ids)


def edit_cache_layers(cache: Any, edit: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replaces the key and value tensors of every attention layer of a cache by `edit(tensor)`, in place
    (`cache.layers[i].keys` / `.values`, transformers >= 4.56; layers without a 4-d key tensor are left alone).

    Args:
        cache: a `DynamicCache`.
        edit: maps a `(batch, heads, columns, head_dim)` tensor to the tensor the layer keeps.
    """
    for layer in cache.layers:
        if isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.dim() == 4:
            layer.keys = edit(layer.keys)
            layer.values = edit(layer.values)


def assisted_decoding(model: Any, input_ids: torch.Tensor, **kwargs: Any) -> Any:
    """Runs transformers' assisted loop (`GenerationMixin._assisted_decoding`) on a target model.

    Args:
        model: the target model.
        input_ids: `(batch, prompt_length)` token ids.
        **kwargs: what `_assisted_decoding` takes (logits processors, stopping criteria, generation config, ...).

    Returns:
        What `_assisted_decoding` returns.
    """
    return model._assisted_decoding(input_ids, **kwargs)


def new_static_cache(model: torch.nn.Module, max_cache_len: int) -> Any:
    """A `StaticCache` of `max_cache_len` columns for `model` (its layers allocate on the first forward).

    Args:
        model: a transformers model.
        max_cache_len: columns every layer holds.

    Returns:
        A `transformers.StaticCache` (4.57 and 5.x take `config=` and `max_cache_len=` alike).
    """
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_cache_len)


def static_write_kwargs(model: torch.nn.Module, cache: Any, column: int, length: int, device: Any) -> dict[str, Any]:
    """Makes the next forward of `length` tokens write `cache` from `column` on, and see columns up to its own.

    transformers 4.57 writes a static layer at the forward's `cache_position`; the 5.x releases whose forward has no
    `cache_position` write at each layer's `cumulative_length` tensor (advanced in place by the forward, moved back
    by `crop`), and take the query's column for the causal mask from it. Moving that counter is a rollback too: the
    columns past it are overwritten by the next forward.

    Args:
        model: the model the forward runs (its signature tells the release's convention).
        cache: a `StaticCache` (layers may still be unallocated).
        column: the first column the forward writes.
        length: tokens the forward feeds.
        device: where `cache_position` lives.

    Returns:
        The keyword arguments to add to the forward (`{"cache_position": ...}` on 4.57, else empty).
    """
    # Both, whatever the release: a counter where layers keep one, `cache_position` where the forward takes it.
    for layer in cache.layers:
        counter = getattr(layer, "cumulative_length", None)
        if isinstance(counter, torch.Tensor):
            counter.fill_(column)
    if _forward_takes_cache_position(type(model)):
        return {"cache_position": torch.arange(column, column + length, device=device)}
    return {}


@functools.cache
def _forward_takes_cache_position(model_type: type) -> bool:
    return "cache_position" in inspect.signature(model_type.forward).parameters


def static_cache_tensors(cache: Any) -> list[torch.Tensor]:
    """The key and value tensors of every allocated layer of a static cache, `(batch, heads, columns, head_dim)`
    each, to edit in place (`cache.layers[i].keys` / `.values`, 4.57 and 5.x alike)."""
    tensors = []
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor) and tensor.dim() == 4:
                tensors.append(tensor)
    return tensors


def compile_everywhere_config(backend: str = "inductor", mode: str | None = None) -> Any:
    """A `CompileConfig` that makes `generate(cache_implementation="static")` compile the forward on any device:
    transformers compiles automatically on accelerators only, unless the config's `_compile_all_devices` is set
    (4.57 and 5.x alike).

    Args:
        backend: `torch.compile`'s backend.
        mode: `torch.compile`'s mode (None for the default; transformers' own default, `"reduce-overhead"`, means
            CUDA graphs).

    Returns:
        A `transformers.CompileConfig`.
    """
    from transformers import CompileConfig

    config = CompileConfig(backend=backend, mode=mode or "default")
    config._compile_all_devices = True
    return config
