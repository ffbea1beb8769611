"""The checks `SpecKVGenerator`'s settings pass when it is constructed, before any call: each bad value, and each
pair of settings that cannot go together, raises an error that names the fix."""

from __future__ import annotations

from ..policies.base import DraftPolicy
from .compiled import CompileOptions
from .coupling import SAMPLING_SETTINGS

__all__ = ["LOOPS", "check_settings"]

#: The speculative loops a generator can run its calls in: the library's own, or transformers' assisted loop.
LOOPS = ("speckv", "transformers")


def check_settings(
    policy: DraftPolicy,
    *,
    probe_every: int,
    loop: str,
    sampling: str,
    context_memory: int,
    batch_quorum: float,
    compile: bool | CompileOptions,
) -> CompileOptions | None:
    """Checks a generator's settings against each other and against its policy (see `SpecKVGenerator`'s arguments).

    Returns:
        The compile options the generator runs with (`CompileOptions()` for `compile=True`), or None.

    Raises:
        ValueError: for a bad value or settings that cannot go together.
        TypeError: for a `compile` that is neither a bool nor a `CompileOptions`.
    """
    if probe_every < 1:
        raise ValueError(f"probe_every must be >= 1, got {probe_every}.")
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(map(repr, LOOPS))}, got {loop!r}.")
    if sampling not in SAMPLING_SETTINGS:
        raise ValueError(f"sampling must be one of {', '.join(map(repr, SAMPLING_SETTINGS))}, got {sampling!r}.")
    if sampling == "coupled" and loop == "transformers":
        raise ValueError(
            "sampling='coupled' runs in speckv-hf's own loop only: drop loop='transformers', or use "
            "sampling='speculative'."
        )
    if loop == "transformers" and policy.uses_context:
        raise ValueError(
            f"policy {policy.config()['name']!r} proposes context candidates, which run in speckv-hf's own "
            "loop only: drop loop='transformers', or use a policy without 'context'."
        )
    if not isinstance(context_memory, int) or isinstance(context_memory, bool) or context_memory < 0:
        raise ValueError(f"context_memory must be an integer >= 0 (tokens kept), got {context_memory!r}.")
    if context_memory and not policy.uses_context:
        raise ValueError(
            f"context_memory keeps earlier calls' tokens for context candidates, which policy "
            f"{policy.config()['name']!r} does not take: use a context policy, e.g. "
            "SpecKVGenerator('context+adaptive', context_memory=...)."
        )
    if not 0 < batch_quorum <= 1:
        raise ValueError(f"batch_quorum must be in (0, 1], got {batch_quorum!r}.")
    if compile is True:
        compile = CompileOptions()
    if compile is not False and not isinstance(compile, CompileOptions):
        raise TypeError(f"compile must be True, False or a CompileOptions, got {compile!r}.")
    if compile and loop == "transformers":
        raise ValueError(
            "compile=True runs speckv-hf's own loop (transformers' assisted loop refuses static caches): "
            "drop loop='transformers'."
        )
    return compile or None
