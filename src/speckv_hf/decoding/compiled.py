"""Compiled forwards over static caches: what `SpecKVGenerator(compile=True)` keeps across calls.

Each model class's forward is compiled once (`torch.compile(type(model).forward, dynamic=False)`, called with the
model first) and called with a small, bounded set of input shapes: a verification feeds the last token and the
candidates padded up to the next of `CompileOptions.lengths`, a draft forward feeds what the draft has not seen
padded the same way, and the static caches are pooled per model and batch size, their columns rounded up to
`CompileOptions.cache_step`, so the next call that fits reuses every graph. Prefill runs eagerly (one graph per
prompt length would be a recompilation storm).

[`CompiledModels`][] counts the graphs (one per model, shape and mode) and the seconds their first calls took,
which `GenerationStats.compiled_graphs` and `.compile_seconds` report per call.
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
            `k + 1` tokens padded to the next length here (a padded slot costs what it costs; no real token attends
            to it), so the largest bounds the candidates per step at `lengths[-1] - 1`.
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
    """Compiled forwards and pooled static caches, kept across calls: one per `CompileOptions` in a process
    ([`CompiledModels.shared`][]), so generators with equal options share graphs. Calls in several threads are
    safe (each gets caches of its own); the counts (`graphs`, `compile_seconds`) are the process's for these options.

    Nothing here keeps a model alive: the compiled function is the model class's `forward` (the model is its first
    argument), and the caches are pooled per model in weak dictionaries, one per batch size (the larger is kept).

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
        self._forwards: dict[type, Callable[..., Any]] = {}
        self._caches: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[int, bool], tuple[int, Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._shapes: weakref.WeakKeyDictionary[torch.nn.Module, set[tuple[Any, ...]]] = weakref.WeakKeyDictionary()
        self.compile_seconds = 0.0
        self._warned: set[str] = set()
        mode = options.mode
        # CUDA graphs ("reduce-overhead", and "max-autotune" on inductor) overwrite a graph's outputs on its next
        # replay: each call is marked as a new step and its logits copied out.
        self.cuda_graphs = bool(mode) and (
            "reduce-overhead" in mode or bool(_inductor_mode_options(mode).get("triton.cudagraphs"))
        )

    def warn_once(self, key: str, message: str) -> None:
        """Warns with `message` the first time `key` comes up for these options."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        warnings.warn(message, stacklevel=4)

    def forward(self, model: torch.nn.Module) -> Callable[..., Any]:
        """The model class's `forward` compiled with the options; call it with the model first."""
        with self._lock:
            compiled = self._forwards.get(type(model))
            if compiled is None:
                compiled = torch.compile(
                    type(model).forward, backend=self.options.backend, mode=self.options.mode, dynamic=False
                )
                self._forwards[type(model)] = compiled
            return compiled

    def run(self, model: torch.nn.Module, shape: tuple[int, ...], **kwargs: Any) -> torch.Tensor:
        """Calls the compiled forward; the first call of a shape is timed as compiling.

        Args:
            model: the model.
            shape: what the graph is specialised on (batch, feed length, cache columns, masking); grad and
                inference mode are added here (dynamo compiles a graph per mode too).
            **kwargs: the forward's arguments.

        Returns:
            The forward's logits, `(batch, feed length, vocab)` (a copy under CUDA graphs, whose outputs the next
            replay overwrites).
        """
        compiled = self.forward(model)
        shape = (*shape, torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        with self._lock:
            shapes = self._shapes.setdefault(model, set())
            known = shape in shapes
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if known:
            logits = compiled(model, **kwargs).logits
        else:
            start = time.perf_counter()
            with _recompile_room():
                logits = compiled(model, **kwargs).logits
            elapsed = time.perf_counter() - start
            with self._lock:
                shapes.add(shape)
                self.compile_seconds += elapsed
        return logits.clone() if self.cuda_graphs else logits

    def cache(self, model: torch.nn.Module, batch_size: int, columns: int, *, exact: bool = False) -> Any:
        """A static cache of at least `columns` columns (rounded up to `cache_step`), reused across calls.

        Args:
            model: the model the cache is for.
            batch_size: its rows.
            columns: the columns it needs at least.
            exact: exactly `columns` columns (the draft's cache matches the target's).

        Returns:
            `(cache, columns)`: the cache and its column count. A cache is handed to one call at a time: calls
            that overlap in threads get one each. Caches allocated under `torch.inference_mode()` hold inference
            tensors, which cannot be written outside it: they are pooled apart.
        """
        key = (batch_size, torch.is_inference_mode_enabled())
        with self._lock:
            pooled = self._caches.get(model, {}).get(key)
            if pooled is not None and (pooled[0] == columns if exact else pooled[0] >= columns):
                del self._caches[model][key]
                return pooled[1], pooled[0]
        if not exact:
            step = self.options.cache_step
            columns = -(-columns // step) * step
        return new_static_cache(model, columns), columns

    def release(self, model: torch.nn.Module, batch_size: int, columns: int, cache: Any) -> None:
        """Hands a cache back to the pool after a call (the larger of two for one batch size is kept: it serves
        every call the smaller one would)."""
        key = (batch_size, torch.is_inference_mode_enabled())
        with self._lock:
            pool = self._caches.setdefault(model, {})
            if key not in pool or pool[key][0] < columns:
                pool[key] = (columns, cache)

    @property
    def graphs(self) -> int:
        """Graphs compiled so far for these options, over every model, shape and mode."""
        with self._lock:
            return sum(len(shapes) for shapes in self._shapes.values())

    def clear(self) -> None:
        """Drops the compiled functions, the pooled caches and the counts (dynamo's own caches stay)."""
        with self._lock:
            self._forwards.clear()
            self._caches.clear()
            self._shapes.clear()
            self.compile_seconds = 0.0


def _inductor_mode_options(mode: str) -> dict[str, Any]:
    try:
        from torch._inductor import list_mode_options
    except ImportError:  # pragma: no cover - every torch this package supports has it
        return {}
    try:
        return dict(list_mode_options(mode))
    except (KeyError, RuntimeError, ValueError):
        return {}


_ROOM_LOCK = threading.Lock()
_room_depth = 0
_room_saved: dict[str, Any] = {}


class _recompile_room:
    """Lets one code object hold every bounded shape while this library compiles: dynamo's default limit (8 graphs
    per code object) counts the draft's and the target's graphs together when both share a class, and
    transformers' decorated forwards share one wrapper's code. The limits are raised by the first thread to enter and
    restored, every one read before any is set (some names are aliases), by the last to leave."""

    _LIMIT = 256
    _NAMES = ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit")

    def __enter__(self) -> None:
        global _room_depth
        import torch._dynamo.config as config

        with _ROOM_LOCK:
            if _room_depth == 0:
                _room_saved.clear()
                _room_saved.update({name: getattr(config, name) for name in self._NAMES if hasattr(config, name)})
                for name, value in _room_saved.items():
                    setattr(config, name, max(value, self._LIMIT))
            _room_depth += 1

    def __exit__(self, *exc: Any) -> None:
        global _room_depth
        import torch._dynamo.config as config

        with _ROOM_LOCK:
            _room_depth -= 1
            if _room_depth == 0:
                for name, value in _room_saved.items():
                    setattr(config, name, value)
