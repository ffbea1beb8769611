"""Compiled forwards over static caches: what `SpecKVGenerator(compile=True)` keeps across calls.

Each model's forward is compiled once (`torch.compile(model.forward, dynamic=False)`) and called with a small,
bounded set of input shapes: a verification feeds the last token and the candidates padded up to the next of
[`CompileOptions.lengths`][], a draft forward feeds what the draft has not seen padded the same way, and the static
caches are pooled per `(model, batch size, columns)`, their columns rounded up to [`CompileOptions.cache_step`][],
so the next call of a similar size reuses every graph. Prefill runs eagerly (one graph per prompt length would be a
recompilation storm).

[`CompiledModels`][] counts the graphs (one per model and shape) and the seconds their first calls took, which
`GenerationStats.compiled_graphs` and `.compile_seconds` report per call.
"""

from __future__ import annotations

import itertools
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ._transformers import new_static_cache

__all__ = ["CompileOptions", "CompiledModels", "bucket"]


@dataclass(frozen=True)
class CompileOptions:
    """How `SpecKVGenerator(compile=...)` compiles (pass `compile=True` for these defaults).

    Attributes:
        backend: `torch.compile`'s backend: `"inductor"` (fast code, seconds to minutes of compiling per shape
            the first time, then read from inductor's on-disk cache) or `"eager"`/`"aot_eager"` (no code
            generation: for tests, or to check the loop itself).
        mode: `torch.compile`'s mode (`None`, `"reduce-overhead"` for CUDA graphs on GPU, `"max-autotune"`).
        lengths: the feed lengths forwards are compiled for, ascending: a verification of `k` candidates feeds
            `k + 1` tokens padded to the next length here (a padded slot costs what it costs, it is never read), so
            the largest bounds the candidates per step at `lengths[-1] - 1`.
        cache_step: static caches get the columns a call needs rounded up to a multiple of this, so calls of
            similar lengths share caches and graphs.
    """

    backend: str = "inductor"
    mode: str | None = None
    lengths: tuple[int, ...] = (1, 2, 3, 5, 9)
    cache_step: int = 256

    def __post_init__(self) -> None:
        lengths = tuple(int(n) for n in self.lengths)
        if not lengths or lengths[0] != 1 or any(b <= a for a, b in itertools.pairwise(lengths)):
            raise ValueError(
                f"CompileOptions.lengths must be ascending and start at 1, got {self.lengths!r}: "
                "e.g. lengths=(1, 2, 3, 5, 9)."
            )
        if len(lengths) < 2:
            raise ValueError("CompileOptions.lengths needs a length of at least 2, to verify one candidate.")
        if self.cache_step < 1:
            raise ValueError(f"CompileOptions.cache_step must be >= 1, got {self.cache_step}.")
        object.__setattr__(self, "lengths", lengths)

    @property
    def max_candidates(self) -> int:
        """The most candidates one step verifies (the longest feed holds them and the last token)."""
        return self.lengths[-1] - 1


def bucket(length: int, lengths: tuple[int, ...]) -> int:
    """The smallest of `lengths` that holds `length` tokens.

    Raises:
        ValueError: when `length` exceeds the largest.
    """
    for size in lengths:
        if size >= length:
            return size
    raise ValueError(f"a feed of {length} tokens exceeds the longest compiled length {lengths[-1]}.")


class CompiledModels:
    """Compiled forwards and pooled static caches, kept across calls (thread-safe): one per `CompileOptions` in a
    process ([`CompiledModels.shared`][]), so generators with the same options share graphs.

    Args:
        options: how to compile.
    """

    _shared: ClassVar[dict[CompileOptions, CompiledModels]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def shared(cls, options: CompileOptions) -> CompiledModels:
        """The process's compiled forwards for `options` (created on first use)."""
        with cls._shared_lock:
            compiled = cls._shared.get(options)
            if compiled is None:
                compiled = cls._shared[options] = cls(options)
            return compiled

    def __init__(self, options: CompileOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._forwards: weakref.WeakKeyDictionary[torch.nn.Module, Callable[..., Any]] = weakref.WeakKeyDictionary()
        self._caches: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[int, int], Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._shapes: weakref.WeakKeyDictionary[torch.nn.Module, set[tuple[int, ...]]] = weakref.WeakKeyDictionary()
        self.compile_seconds = 0.0
        self._warned: set[str] = set()

    def warn_once(self, key: str, message: str) -> None:
        """Warns with `message` the first time `key` comes up for these options."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        warnings.warn(message, stacklevel=4)

    def forward(self, model: torch.nn.Module) -> Callable[..., Any]:
        """`model.forward` compiled with the options (one compiled function per model)."""
        with self._lock:
            compiled = self._forwards.get(model)
            if compiled is None:
                compiled = torch.compile(
                    model.forward, backend=self.options.backend, mode=self.options.mode, dynamic=False
                )
                self._forwards[model] = compiled
                self._shapes[model] = set()
            return compiled

    def run(self, model: torch.nn.Module, shape: tuple[int, ...], **kwargs: Any) -> torch.Tensor:
        """Calls the compiled forward; the first call of a shape is timed as compiling.

        Args:
            model: the model.
            shape: what the graph is specialised on (batch, feed length, cache columns, masking).
            **kwargs: the forward's arguments.

        Returns:
            The forward's logits, `(batch, feed length, vocab)` (a copy under CUDA graphs, whose outputs the next
            replay overwrites).
        """
        compiled = self.forward(model)
        shapes = self._shapes[model]
        graphs = self.options.mode is not None and "reduce-overhead" in self.options.mode
        if graphs:  # CUDA graphs: each call is a new step, and its outputs are overwritten by the next replay
            torch.compiler.cudagraph_mark_step_begin()
        if shape in shapes:
            logits = compiled(**kwargs).logits
            return logits.clone() if graphs else logits
        start = time.perf_counter()
        with _recompile_room():
            logits = compiled(**kwargs).logits
        elapsed = time.perf_counter() - start
        with self._lock:
            shapes.add(shape)
            self.compile_seconds += elapsed
        return logits.clone() if graphs else logits

    def cache(self, model: torch.nn.Module, batch_size: int, columns: int, *, exact: bool = False) -> Any:
        """A static cache of at least `columns` columns (rounded up to `cache_step`), reused across calls.

        Args:
            model: the model the cache is for.
            batch_size: its rows.
            columns: the columns it needs at least.
            exact: exactly `columns` columns (the draft's cache matches the target's).

        Returns:
            `(cache, columns)`: the cache and its column count. A cache is handed to one call at a time: calls
            that overlap in threads get one each.
        """
        step = self.options.cache_step
        with self._lock:
            pool = self._caches.setdefault(model, {})
            # The smallest pooled cache that fits: a warm-up for long calls serves shorter ones with its graphs.
            fits = sorted(size for rows, size in pool if rows == batch_size and size >= columns)
            if exact:
                fits = [columns] if columns in fits else []
            if fits:
                return pool.pop((batch_size, fits[0])), fits[0]
        if not exact:
            columns = -(-columns // step) * step
        return new_static_cache(model, columns), columns

    def release(self, model: torch.nn.Module, batch_size: int, columns: int, cache: Any) -> None:
        """Hands a cache back to the pool after a call."""
        with self._lock:
            self._caches.setdefault(model, {})[(batch_size, columns)] = cache

    @property
    def graphs(self) -> int:
        """Graphs compiled so far, over every model and shape."""
        with self._lock:
            return sum(len(shapes) for shapes in self._shapes.values())


class _recompile_room:
    """Lets one compiled function hold every bounded shape: dynamo's default limit (8 graphs per code object)
    counts the draft's and the target's graphs together when both share a class (`LlamaForCausalLM.forward`)."""

    _LIMIT = 256

    def __enter__(self) -> None:
        import torch._dynamo.config as config

        self._saved = {}
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
            if hasattr(config, name):
                self._saved[name] = getattr(config, name)
                setattr(config, name, max(getattr(config, name), self._LIMIT))

    def __exit__(self, *exc: Any) -> None:
        import torch._dynamo.config as config

        for name, value in self._saved.items():
            setattr(config, name, value)
