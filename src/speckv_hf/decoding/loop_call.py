"""One call of the library's own loop, as the generator starts it: what the hook prepared from the call's arguments
([`LoopSettings`][]) and the call's own state ([`LoopCall`][]: warm-started costs, one bound policy per row, the
call's statistics), which [`start_call`][] builds.

The loops (`speckv_hf.decoding.loop`, `speckv_hf.decoding.static_loop`) read both; the generator
(`speckv_hf.decoding.generator`) collects the `LoopCall` when the call ends.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..compression.detection import CompressionInfo
from ..core.context_memory import ContextMemory
from ..core.cost import Clock, CostModel
from ..core.stats import GenerationStats
from ..policies.base import DraftPolicy, PolicyContext
from .coupling import SAMPLING_SCHEMES
from .verification import Processing

if TYPE_CHECKING:
    from .compiled import CompiledModels

__all__ = ["VERIFICATIONS", "LoopCall", "LoopSettings", "start_call"]

#: How a call verifies: greedy matching, or one of the sampling schemes (speculative, coupled).
VERIFICATIONS = ("greedy", *SAMPLING_SCHEMES)


@dataclass
class LoopSettings:
    """What one call of the loop needs beyond the models and the prompt (prepared by the hook).

    Attributes:
        max_new_tokens: tokens each row may add.
        eos_token_ids: ids that end a row.
        pad_token_id: id written after a row's end.
        verification: how the call verifies candidates, the one place this choice lives: `"greedy"` (matching the
            target's argmax), `"speculative"` (speculative sampling, `min(1, p/q)`) or `"coupled"` (coupled sampling,
            `speckv_hf.decoding.coupling`: Gumbel noise per position, greedy matching on the perturbed logits);
            `do_sample`, `coupled` and `speculative` read it.
        processing: the call's logits processors.
        stop_checks: stopping criteria beyond length and EOS (stop strings, time), checked per row per token.
        streamer: transformers streamer, or None.
        quorum: share of the open rows that must want another token for the batch to draft it (in (0, 1]).
    """

    max_new_tokens: int
    eos_token_ids: frozenset[int]
    pad_token_id: int
    verification: str
    processing: Processing
    stop_checks: list[Any] = field(default_factory=list)
    streamer: Any = None
    quorum: float = 0.5

    def __post_init__(self) -> None:
        if self.verification not in VERIFICATIONS:
            names = ", ".join(map(repr, VERIFICATIONS))
            raise ValueError(f"verification must be one of {names}, got {self.verification!r}.")

    @property
    def do_sample(self) -> bool:
        """The call samples (speculative or coupled sampling)."""
        return self.verification != "greedy"

    @property
    def coupled(self) -> bool:
        """The call samples with coupled sampling."""
        return self.verification == "coupled"

    @property
    def speculative(self) -> bool:
        """The call samples with speculative sampling: drafted tokens are sampled, and verified by `min(1, p/q)`."""
        return self.verification == "speculative"


@dataclass
class LoopCall:
    """The per-call state the generator hands to the loop: costs, one policy per row, statistics.

    Attributes:
        cost: the call's cost model (batch step times), shared by the rows' policies.
        policies: one bound policy per row.
        stats: the call's statistics; `stats.rows` holds one per row.
        clock: the call's clock.
        record_steps: keep per-step records.
        key: what the generator files the call's learned state under (target, draft, batch size).
        compiled: the generator's compiled forwards and static caches, for a call of the compiled loop
            (`speckv_hf.decoding.static_loop`); None for the eager loop.
        memory: earlier calls' sequences the rows' context sources also propose from (read only), or None.
        sequences: set by the loop when the call ends, where `memory` is given: each row's prompt (unpadded) and
            new tokens, for the generator to remember.
    """

    cost: CostModel
    policies: list[DraftPolicy]
    stats: GenerationStats
    clock: Clock
    record_steps: bool = True
    key: tuple[int, ...] = ()
    compiled: CompiledModels | None = None
    memory: ContextMemory | None = None
    sequences: list[list[int]] = field(default_factory=list)


def start_call(
    cost: CostModel,
    template: DraftPolicy,
    *,
    compression: CompressionInfo,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    verification: str,
    has_draft: bool,
    clock: Clock,
    key: tuple[int, ...] = (),
    record_steps: bool = True,
    compiled: CompiledModels | None = None,
    memory: ContextMemory | None = None,
) -> LoopCall:
    """A call's state: one policy per row (`template` and copies of it, every one bound to the call's one cost model)
    and the call's statistics (with one per row for a batch).

    Args:
        cost: the call's cost model (warm-started or fresh).
        template: the call's policy (a copy the call may change: the generator's own is never handed out).
        compression: the target's compression.
        input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): the prompts.
        attention_mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*): 0 on padding.
        verification: `"greedy"`, `"speculative"` or `"coupled"`; the policies are told that acceptance is random
            (`PolicyContext.do_sample`) under speculative sampling only.
        has_draft: whether the call has a draft model.
        clock: the call's clock.
        key: what the generator files the call's learned state under.
        record_steps: keep per-step records.
        compiled: the compiled forwards, for a call of the compiled loop.
        memory: earlier calls' sequences for the rows' context sources.
    """
    batch_size = int(input_ids.shape[0])
    context = PolicyContext(
        cost=cost, compression=compression, do_sample=verification == "speculative", has_draft=has_draft
    )
    # One policy per row (policies keep per-step state), all reading the call's one cost model.
    policies = [template] + [copy.deepcopy(template) for _ in range(batch_size - 1)]
    for policy in policies:
        policy.bind(context)
    lengths = attention_mask.sum(-1).tolist() if attention_mask is not None else [int(input_ids.shape[1])] * batch_size
    config = policies[0].config()

    def stats(prompt_tokens: int, rows: int = 1) -> GenerationStats:
        return GenerationStats(
            policy=config,
            compression=compression,
            prompt_tokens=prompt_tokens,
            batch_size=rows,
            loop="speckv",
            verification=verification,
        )

    call_stats = stats(int(sum(lengths)), batch_size)
    if batch_size > 1:
        call_stats.rows = [stats(int(n)) for n in lengths]
    return LoopCall(
        cost=cost,
        policies=policies,
        stats=call_stats,
        clock=clock,
        record_steps=record_steps,
        key=key,
        compiled=compiled,
        memory=memory,
    )
