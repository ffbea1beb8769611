"""The compiled speculative loop: the library's loop over static KV caches and compiled forwards.

It is the loop of `speckv_hf.decoding.loop` (the same drafting, policies, verification, processors, stopping
criteria, streamers and statistics) with another memory and another forward:

- **Static caches** (`speckv_hf.decoding.static_cache`): both models write in place by column, one layout for the
  batch; rollback moves a column back. Rows that finish stay in the batch (their columns are masked), so shapes
  never change within a call.
- **Bounded shapes** (`speckv_hf.decoding.compiled`): every forward after the prefill feeds a length from
  `CompileOptions.lengths`, padded where needed (a padded slot is past every real query, so causal attention never
  lets a token see it, it takes the last real position, and the next forward overwrites it); a step verifies at most
  `lengths[-1] - 1` candidates, and the cost model learns what the padded width costs.
- **Eager prefill**: the prompt runs once, uncompiled (a graph per prompt length would be a recompilation storm).

One step syncs with the host once to learn what the rows accepted, plus once per drafted token where a policy
reads the draft's signals before it asks for another token (the same decisions as the eager loop's).
"""

from __future__ import annotations

from typing import Any

import torch

from ._transformers import cache_kwarg, static_write_kwargs
from .compiled import CompiledModels, bucket
from .loop import _Loop
from .loop_call import LoopCall, LoopSettings
from .static_cache import StaticLayout
from .step import StepCandidates

__all__ = ["check_static_models", "run_static_loop", "static_forward", "warm_up"]


def run_static_loop(
    call: LoopCall,
    settings: LoopSettings,
    target: Any,
    draft: Any,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
) -> torch.LongTensor:
    """Generates for a left-padded batch with speculative decoding over static caches and compiled forwards.

    Args:
        call: costs, policies and statistics of the call; `call.compiled` holds the compiled forwards.
        settings: as for `speckv_hf.decoding.loop.run_loop`.
        target: the model generating.
        draft: the draft model, or None for a policy that takes context candidates alone.
        input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): the prompts, left-padded.
        attention_mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*): 0 on padding.

    Returns:
        `torch.LongTensor` of shape `(batch_size, prompt_length + new_tokens)`, as `run_loop` returns.
    """
    if call.compiled is None:
        raise ValueError("run_static_loop needs call.compiled: construct SpecKVGenerator(compile=True).")
    check_static_models(target, draft)
    return _StaticLoop(call, settings, target, draft, call.compiled).run(input_ids, attention_mask)


def check_static_models(*models: Any) -> None:
    """Refuses models the compiled loop's layout cannot serve, before any forward.

    Raises:
        ValueError: for sliding-window attention (applied by cache column, which the layout's holes would shift),
            naming the fix.
    """
    for model in models:
        if model is None:
            continue
        config = model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        window = getattr(config, "sliding_window", None)
        if window is not None and getattr(config, "use_sliding_window", True):
            raise ValueError(
                f"{type(model).__name__} uses sliding-window attention (window {window}), which the compiled loop "
                "cannot serve (it applies windows by cache column): use SpecKVGenerator() without compile=."
            )


def static_forward(
    compiled: CompiledModels,
    model: Any,
    cache: Any,
    kwarg: str,
    batch: StaticLayout,
    column: int,
    n: int,
    *,
    eager: bool = False,
) -> torch.Tensor:
    """Logits of a forward over columns `column .. column + n - 1` of `batch` (`(batch_size, n, vocab)`), written
    into `cache` there: compiled (one graph per batch size, `n`, cache columns and masking), or `eager`."""
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {
        # Fresh tensors: a slice's storage offset and strides change per column, and compiled graphs guard them.
        "input_ids": batch.tokens[:, column : column + n].clone(memory_format=torch.contiguous_format).to(device),
        "position_ids": batch.positions(column, n).to(device),
        kwarg: cache,
        "use_cache": True,
    }
    mask = batch.mask()
    if mask is not None:
        kwargs["attention_mask"] = mask.to(device)
    kwargs.update(static_write_kwargs(model, cache, column, n, device))
    if eager:
        return model(**kwargs).logits
    shape = (int(batch.tokens.shape[0]), n, batch.columns, mask is not None)
    return compiled.run(model, shape, **kwargs)


def warm_up(
    compiled: CompiledModels,
    models: list[Any],
    *,
    batch_size: int,
    prompt_length: int,
    max_new_tokens: int,
) -> None:
    """Compiles every feed length for `models`, for calls of up to `prompt_length + max_new_tokens` tokens in
    batches of `batch_size` (the graphs a call of that size uses; later calls of that size compile nothing).

    Args:
        compiled: the generator's compiled forwards.
        models: the target and the draft (or the target alone).
        batch_size: rows per call.
        prompt_length: the longest prompt (left padding included).
        max_new_tokens: new tokens per call.
    """
    check_static_models(*models)
    lengths = compiled.options.lengths
    columns = prompt_length + max_new_tokens + 2 * lengths[-1] + 2
    for index, model in enumerate(models):
        device = next(model.parameters()).device
        ids = torch.zeros((batch_size, prompt_length), dtype=torch.long, device=device)
        cache, columns = compiled.cache(model, batch_size, columns, exact=index > 0)  # the draft's as the target's
        try:
            batch = StaticLayout(ids, torch.ones_like(ids), columns, 0)
            with torch.no_grad():
                # An eager forward first, as a call's prefill: some quantized layers (bitsandbytes' 4-bit on CPU)
                # repack their weights on their first forward, and a graph traced before that would not match.
                static_forward(compiled, model, cache, cache_kwarg(model), batch, 0, prompt_length, eager=True)
                for n in lengths:
                    # Under CUDA graphs a shape's second call records its graph: that is warm-up too.
                    for _ in range(2 if compiled.cuda_graphs else 1):
                        static_forward(compiled, model, cache, cache_kwarg(model), batch, prompt_length, n)
        finally:
            compiled.release(model, batch_size, columns, cache)


class _StaticLoop(_Loop):
    def __init__(self, call: LoopCall, settings: LoopSettings, target: Any, draft: Any, compiled: CompiledModels):
        super().__init__(call, settings, target, draft)
        self.compiled = compiled
        self.lengths = compiled.options.lengths
        self.max_candidates = compiled.options.max_candidates
        self.max_guesses, self.guides = 0, False  # guesses would need feeds of any length: not compiled
        self.graphs = compiled.graphs  # graphs compiled before the current step

    def run(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None) -> torch.LongTensor:
        settings, compiled = self.settings, self.compiled
        size, prompt_length = input_ids.shape
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        # Room for the prompt, every new token, and one step's feed padded past its end twice over.
        needed = prompt_length + settings.max_new_tokens + 2 * self.lengths[-1] + 2
        graphs, seconds = compiled.graphs, compiled.compile_seconds
        compression = self.call.stats.compression
        if compression is not None and compression.method == "bnb-int8":
            compiled.warn_once(
                "bnb-int8",
                "bitsandbytes INT8 layers do not compile well: dynamo recompiles their matmul for each layer shape "
                "until its recompile limit, then runs them eagerly, so the compiled loop is slower than the eager "
                "one here: use SpecKVGenerator() without compile= for this target.",
            )
        target_cache, columns = compiled.cache(self.target, size, needed)
        caches = [target_cache]
        if self.uses_draft:
            caches.append(compiled.cache(self.draft, size, columns, exact=True)[0])
        try:
            self._start(input_ids, mask)
            batch = StaticLayout(input_ids, mask, columns, settings.pad_token_id)
            self.caches = caches
            self._prefill(batch)
            self._steps(batch)
        finally:
            compiled.release(self.target, size, columns, target_cache)
            if self.uses_draft:
                compiled.release(self.draft, size, columns, caches[1])
        stats = self.call.stats
        stats.compiled = True
        stats.compiled_graphs = compiled.graphs
        stats.compile_seconds = compiled.compile_seconds - seconds if compiled.graphs > graphs else 0.0
        if settings.streamer is not None:
            settings.streamer.end()
        return self._output(input_ids)

    def _steps(self, batch: StaticLayout) -> None:
        step = 0
        last_verified: float | None = None
        while batch.size:
            if not batch.room(2 * self.lengths[-1] + 1):
                batch.compact(self.caches)
            batch.write(batch.end, batch.tokens[:, batch.end : batch.end + 1])  # every open row's last token
            self.graphs = self.compiled.graphs
            num_accepted, next_tokens, _, finished, last_verified = self._step(batch, step, last_verified)
            batch.settle(num_accepted.tolist(), finished, next_tokens.tolist(), batch.draft_end)
            step += 1

    def _verified(self, batch: StaticLayout, step: int) -> None:
        # Static caches need no layout check; a step that compiled a graph is no measure of its costs.
        self.step_timed = self.compiled.graphs == self.graphs

    def _verified_width(self, candidates: int) -> int:
        # A verification costs its padded feed: the cost model learns the cost of the width it pays for.
        return bucket(candidates + 1, self.lengths) - 1

    # -- forwards -------------------------------------------------------------------------------------------------
    def _forward(self, model: Any, cache: Any, kwarg: str, batch: StaticLayout, column: int, n: int, *, eager=False):
        return static_forward(self.compiled, model, cache, kwarg, batch, column, n, eager=eager)

    def _prefill(self, batch: StaticLayout) -> None:
        """Runs both models over the prompts but their last tokens, uncompiled."""
        if batch.end == 0:
            return
        with torch.no_grad():
            self._forward(self.target, self.caches[0], self.target_kwarg, batch, 0, batch.end, eager=True)
            self.call.stats.target_forwards += 1
            if self.uses_draft:
                self._forward(self.draft, self.caches[1], self.draft_kwarg, batch, 0, batch.end, eager=True)
                self.call.stats.draft_forwards += 1
        batch.draft_end = batch.end if self.uses_draft else 0

    def _feed(self, batch: StaticLayout, columns: list[list[int]], valid: list[list[bool]], fed: int, guesses=None):
        """Writes this step's columns from `fed` on after each row's last token and runs the draft over every
        column it has not seen, in feeds of the compiled lengths; returns its logits for the next column of each
        open row (`(rows, 1, vocab)`)."""
        first = batch.end + 1  # the step's first candidate column
        if fed < len(columns):
            batch.write(first + fed, *self._full(batch, columns[fed:], valid[fed:]))
        stop = first + len(columns)  # the draft's next query is at column `stop - 1`
        start = batch.draft_end
        logits: torch.Tensor | None = None
        while start < stop:
            real = min(stop - start, self.lengths[-1])
            n = bucket(real, self.lengths)
            logits = self._forward(self.draft, self.caches[1], self.draft_kwarg, batch, start, n)[:, real - 1]
            self.call.stats.draft_forwards += 1
            start += real
        batch.draft_end = stop
        if logits is None:  # cannot happen: the draft has at least each row's last token to see
            raise RuntimeError("the compiled loop ran no draft forward for a column that drafts.")
        return (logits if batch.full else logits[batch.rows])[:, None].to(batch.tokens.device)

    def _full(self, batch: StaticLayout, columns: list[list[int]], valid: list[list[bool]]):
        """Columns given for the open rows as `(batch_size, n)` tokens and validity (pad, invalid elsewhere)."""
        device = batch.tokens.device
        size, n = int(batch.tokens.shape[0]), len(columns)
        tokens = torch.full((size, n), batch.pad_token_id, dtype=batch.tokens.dtype, device=device)
        flags = torch.zeros((size, n), dtype=torch.bool, device=device)
        tokens[batch.rows] = torch.tensor(columns, dtype=tokens.dtype, device=device).T
        flags[batch.rows] = torch.tensor(valid, dtype=torch.bool, device=device).T
        return tokens, flags

    def _verify(self, batch: StaticLayout, drafts: StepCandidates) -> tuple[torch.Tensor, torch.Tensor]:
        k = drafts.tokens.shape[1]
        if k:
            device = batch.tokens.device
            size = int(batch.tokens.shape[0])
            tokens = torch.full((size, k), batch.pad_token_id, dtype=batch.tokens.dtype, device=device)
            flags = torch.zeros((size, k), dtype=torch.bool, device=device)
            tokens[batch.rows], flags[batch.rows] = drafts.tokens, drafts.valid
            batch.write(batch.end + 1, tokens, flags)
        n = bucket(k + 1, self.lengths)
        logits = self._forward(self.target, self.caches[0], self.target_kwarg, batch, batch.end, n)
        logits = (logits[:, : k + 1] if batch.full else logits[batch.rows, : k + 1]).to(batch.tokens.device)
        return self._accept(batch, drafts, logits)
