"""Measurements outside the generation loop: forward counters, bare forward times, and where a greedy output
first differs from the target's own (a near-tie or not)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.cost import Clock
from ..decoding.kv_cache import cache_kwarg, drop_last
from ..policies.oracle import ForwardCosts

__all__ = [
    "NEAR_TIE",
    "Divergence",
    "ForwardCounter",
    "first_divergence",
    "measure_draft_forward",
    "measure_forward_costs",
    "measure_target_forwards",
]


class ForwardCounter:
    """Counts (and optionally times) the forward calls of a model with forward hooks.

    Args:
        model: the model to watch.
        timed: also time each forward. On CUDA a timed forward synchronizes the device, which perturbs what it
            measures, so `speckv bench` times forwards on CPU only.
    """

    def __init__(self, model: torch.nn.Module, timed: bool = True) -> None:
        self._clock = Clock(*{p.device for p in model.parameters()})
        self.timed = timed
        self.calls = 0
        self.seconds = 0.0
        self._start = 0.0
        # Hooks run outside compiled graphs (`target-compiled` compiles the module's call, hooks included).
        pre, post = torch.compiler.disable(self._pre), torch.compiler.disable(self._post)
        self._handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]

    def _pre(self, *_: Any) -> None:
        if self.timed:
            self._start = self._clock.now()

    def _post(self, *_: Any) -> None:
        self.calls += 1
        if self.timed:
            self.seconds += self._clock.now() - self._start

    @property
    def clock(self) -> Clock:
        """The clock that times the model's forwards (synchronizing its devices)."""
        return self._clock

    def reset(self) -> None:
        """Sets the counters to zero."""
        self.calls, self.seconds = 0, 0.0

    def remove(self) -> None:
        """Removes the hooks."""
        for handle in self._handles:
            handle.remove()


@dataclass(frozen=True)
class Divergence:
    """Where a greedy output first differs from target-alone greedy, and whether that is a near-tie.

    Attributes:
        position: index of the first differing new token.
        gap: the target's top-2 logit gap there, in its one-token forward.
        path_noise: the largest logit difference there between the one-token forward and a forward over the whole
            diverging output (the multi-token path verification takes).
        near_tie: whether `gap < max(0.03, 2 * path_noise)`: the numerical path decides, not the model.
    """

    position: int
    gap: float
    path_noise: float
    near_tie: bool


NEAR_TIE = 0.03


@torch.no_grad()
def first_divergence(
    target: torch.nn.Module, prompt_ids: torch.Tensor, reference: Sequence[int], output: Sequence[int]
) -> Divergence | None:
    """Compares a greedy output with the reference and classifies the first difference (see `docs/quantized.md`).

    Args:
        target: the target model.
        prompt_ids (`torch.LongTensor` of shape `(1, length)`): the prompt.
        reference: target-alone greedy tokens.
        output: the method's tokens.

    Returns:
        None when the outputs are identical, else the [`Divergence`][].
    """
    position = next((i for i, (a, b) in enumerate(zip(reference, output, strict=False)) if a != b), None)
    if position is None:
        if len(reference) == len(output):
            return None
        position = min(len(reference), len(output))
    device = prompt_ids.device
    length = prompt_ids.shape[1]
    prefix = torch.tensor(list(reference[:position]), dtype=torch.long, device=device)
    single = target(torch.cat((prompt_ids[0], prefix))[None]).logits[0, -1].float()
    diverging = torch.tensor(list(output), dtype=torch.long, device=device)
    multi_input = torch.cat((prompt_ids[0], diverging))[None]
    multi = target(multi_input).logits[0, length - 1 + position].float()
    top2 = single.topk(2).values
    gap = float(top2[0] - top2[1])
    noise = float((single - multi).abs().max())
    return Divergence(position=position, gap=gap, path_noise=noise, near_tie=gap < max(NEAR_TIE, 2 * noise))


@torch.no_grad()
def measure_draft_forward(draft: torch.nn.Module, input_ids: torch.Tensor, repeats: int = 30) -> float:
    """Median time of one bare single-token draft forward with a KV cache (seconds).

    Args:
        draft: the draft model.
        input_ids (`torch.LongTensor` of shape `(1, length)`): a prompt to fill the cache with.
        repeats: timed forwards.

    Returns:
        The median time in seconds.
    """
    return measure_target_forwards(draft, input_ids, (0,), repeats)[0]


@torch.no_grad()
def measure_target_forwards(
    model: torch.nn.Module, input_ids: torch.Tensor, candidates: Sequence[int], repeats: int = 15
) -> dict[int, float]:
    """Median time of a bare cached forward over `k + 1` new tokens, for each `k` in `candidates` (seconds).

    The forward a verification of `k` drafted tokens costs, without the generation loop around it.

    Args:
        model: the model (target or draft).
        input_ids (`torch.LongTensor` of shape `(1, length)`): a prompt to fill the cache with.
        candidates: the `k` values.
        repeats: timed forwards per `k`.

    Returns:
        `k -> seconds`.
    """
    device = input_ids.device
    clock = Clock(*{p.device for p in model.parameters()})
    out = model(input_ids=input_ids, use_cache=True)
    cache = out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    times: dict[int, float] = {}
    for k in candidates:
        new = token.repeat(1, k + 1).to(device)
        samples = []
        for _ in range(repeats):
            start = clock.now()
            model(input_ids=new, use_cache=True, **{cache_kwarg(model): cache})
            samples.append(clock.now() - start)
            drop_last(cache, k + 1)
        times[k] = statistics.median(samples)
    return times


@torch.no_grad()
def measure_forward_costs(
    target: torch.nn.Module, draft: torch.nn.Module, input_ids: torch.Tensor, max_candidates: int = 16
) -> ForwardCosts:
    """Bare forward times of a pair, for the modeled oracle ceiling.

    Args:
        target: the target model.
        draft: the draft model.
        input_ids (`torch.LongTensor` of shape `(1, length)`): a typical prompt, on the target's device.
        max_candidates: the largest number of drafted tokens to time a verification for (powers of two up to it,
            other counts are interpolated).

    Returns:
        The [`ForwardCosts`][].
    """
    clock = Clock(*{p.device for p in target.parameters()})
    prefill = []
    for _ in range(5):
        start = clock.now()
        target(input_ids=input_ids, use_cache=True)
        prefill.append(clock.now() - start)
    candidates = [0, *(2**i for i in range(max(max_candidates, 1).bit_length()) if 2**i <= max_candidates)]
    draft_ids = input_ids.to(next(draft.parameters()).device)
    return ForwardCosts(
        draft_forward=measure_draft_forward(draft, draft_ids),
        target_prefill=statistics.median(prefill),
        target_forward=measure_target_forwards(target, input_ids, candidates),
    )
