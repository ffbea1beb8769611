"""The hindsight oracle: the measuring stick every policy is judged by.

From the target's own greedy output, the draft is run teacher-forced along it, which tells at every position how
many of the next tokens the draft would propose exactly as the target emits them. That run is what verification
accepts: where the draft agrees with the target on the next `r` tokens, drafting autoregressively from the same
prefix proposes the same `r` tokens. [`OraclePolicy`][] drafts exactly that run at every step, and nothing where the
first drafted token would be rejected. Run through our own loop like any policy, its tokens per second is the
measured ceiling of the loop on a pair; [`ForwardCosts.oracle_seconds`][] gives the ceiling from bare forward times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..core.context_source import ContextProposal
from .base import NO_CONTEXT, ContextPlan, DraftPolicy, DraftState

__all__ = ["ContextOraclePolicy", "ForwardCosts", "OraclePolicy", "acceptance_runs", "oracle_steps"]


@torch.no_grad()
def acceptance_runs(draft: torch.nn.Module, prompt_ids: torch.Tensor, continuation: Sequence[int]) -> list[int]:
    """How many tokens the draft would get accepted at every position of a greedy continuation.

    Args:
        draft: the draft model.
        prompt_ids (`torch.LongTensor` of shape `(1, prompt_length)`): the prompt, unpadded.
        continuation: the target's greedy tokens after the prompt (length `n`).

    Returns:
        `n` integers: entry `j` is the number of consecutive tokens from position `j` on where the draft's greedy
        choice, teacher-forced along `prompt + continuation`, equals the continuation.

    Raises:
        ValueError: for a batched prompt.
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1:
        raise ValueError(f"acceptance_runs takes one prompt of shape (1, length), got {tuple(prompt_ids.shape)}.")
    n = len(continuation)
    if n == 0:
        return []
    device = next(draft.parameters()).device
    tokens = torch.tensor(list(continuation), dtype=torch.long, device=device)
    full = torch.cat((prompt_ids[0].to(device), tokens))[None]
    prompt_length = prompt_ids.shape[1]
    logits = draft(input_ids=full[:, :-1], use_cache=False).logits[0, prompt_length - 1 :]
    agree = (logits.argmax(-1) == tokens).tolist()
    runs = [0] * n
    following = 0
    for j in range(n - 1, -1, -1):
        following = following + 1 if agree[j] else 0
        runs[j] = following
    return runs


def oracle_steps(runs: Sequence[int], max_new_tokens: int | None = None) -> list[int]:
    """The γ of every step the oracle takes along a continuation (each step accepts all it drafts, then the target
    adds one token).

    Args:
        runs: the output of [`acceptance_runs`][].
        max_new_tokens: the length budget (the continuation's length by default); like the generator, the oracle
            leaves room for the target's own token.

    Returns:
        γ per step, in order.
    """
    total = len(runs) if max_new_tokens is None else min(max_new_tokens, len(runs))
    steps, position = [], 0
    while position < total:
        gamma = min(runs[position], total - position - 1)
        steps.append(gamma)
        position += gamma + 1
    return steps


class OraclePolicy(DraftPolicy):
    """Drafts, at every step, exactly the run the target will accept (known in hindsight).

    One oracle serves one prompt: it is built from that prompt's [`acceptance_runs`][]. Use it with
    `SpecKVGenerator(OraclePolicy(...), warm_start=False)` and greedy decoding.

    Args:
        runs: the output of [`acceptance_runs`][] for the prompt.
        prompt_length: length of the prompt the runs were computed for (the sequence length at the first step).

    Raises:
        ValueError: for a negative prompt length or negative runs.
    """

    name: ClassVar[str] = "oracle"

    def __init__(self, runs: Sequence[int], prompt_length: int) -> None:
        if prompt_length < 0 or any(r < 0 for r in runs):
            raise ValueError("OraclePolicy needs prompt_length >= 0 and non-negative runs (see acceptance_runs).")
        self.runs = list(runs)
        self.prompt_length = int(prompt_length)

    def should_draft(self, state: DraftState) -> bool:
        position = state.sequence_length - self.prompt_length
        allowed = self.runs[position] if 0 <= position < len(self.runs) else 0
        return len(state.tokens) < allowed

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "prompt_length": self.prompt_length, "positions": len(self.runs)}


class ContextOraclePolicy(OraclePolicy):
    """Both sources in hindsight: at every step, the context's proposed tokens that the target will emit, then the
    draft's run from there (known in hindsight, as [`OraclePolicy`][] knows it).

    A context token the target keeps costs a verification slot and no draft forward, and the draft's run after it
    is the one the draft has from that position: so the step takes every such token, then drafts exactly what will
    be accepted. It is the measuring stick of the context policies (`context+adaptive`, ...), as [`OraclePolicy`][]
    is of the draft's, though not a strict ceiling: it feeds the draft no guesses, and a greedy context policy's
    confirmed guesses save draft forwards it pays. Use it with `SpecKVGenerator(ContextOraclePolicy(...),
    warm_start=False)` and greedy decoding.

    Args:
        runs: the output of [`acceptance_runs`][] for the prompt.
        prompt_length: length of the prompt the runs were computed for.
        continuation: the target's greedy tokens after the prompt (what `runs` was computed along).

    Raises:
        ValueError: as [`OraclePolicy`][], and for a continuation of another length than `runs`.
    """

    name: ClassVar[str] = "context+oracle"
    uses_context: ClassVar[bool] = True

    def __init__(self, runs: Sequence[int], prompt_length: int, continuation: Sequence[int]) -> None:
        super().__init__(runs, prompt_length)
        if len(continuation) != len(self.runs):
            raise ValueError(
                f"continuation has {len(continuation)} tokens but runs {len(self.runs)}: pass the continuation the "
                "runs were computed along (acceptance_runs)."
            )
        self.continuation = [int(t) for t in continuation]

    def plan_context(self, proposal: ContextProposal, state: DraftState) -> ContextPlan:
        position = state.sequence_length - self.prompt_length
        count = 0
        for token in proposal.tokens[: state.max_tokens]:
            if not 0 <= position + count < len(self.continuation) or token != self.continuation[position + count]:
                break
            count += 1
        return ContextPlan(count, 1.0) if count else NO_CONTEXT

    def should_draft(self, state: DraftState) -> bool:
        position = state.sequence_length - self.prompt_length + state.prefix_tokens
        allowed = self.runs[position] if 0 <= position < len(self.runs) else 0
        return len(state.tokens) < allowed


@dataclass(frozen=True)
class ForwardCosts:
    """Bare forward times of a pair, measured outside any generation loop (seconds).

    Attributes:
        draft_forward: one single-token draft forward with a KV cache.
        target_prefill: the target's forward over a prompt.
        target_forward: `k -> ` the target's cached forward over `k + 1` new tokens (what verifying `k` drafted
            tokens costs); other `k` are interpolated linearly (extrapolated from the last two points).
    """

    draft_forward: float
    target_prefill: float
    target_forward: Mapping[int, float]

    def verify(self, k: int) -> float:
        """The target's forward time for `k` drafted tokens."""
        points = sorted(self.target_forward.items())
        if k in self.target_forward or len(points) == 1:
            return self.target_forward.get(k, points[0][1])
        lower = max((p for p in points if p[0] < k), default=points[0])
        upper = min((p for p in points if p[0] > k), default=None)
        if upper is None:  # beyond the last point: extend the last segment
            lower, upper = points[-2], points[-1]
        slope = (upper[1] - lower[1]) / (upper[0] - lower[0])
        return max(lower[1] + slope * (k - lower[0]), 0.0)

    def oracle_seconds(self, steps: Sequence[int]) -> float:
        """Modeled time of the oracle's steps: the first step's draft and verification, the prefill, then per step
        `γ` draft forwards and one verification of `γ` tokens. No loop overhead: the loop's ceiling."""
        if not steps:
            return 0.0
        first, rest = steps[0], steps[1:]
        seconds = self.target_prefill + first * self.draft_forward + self.verify(first) - self.verify(0)
        return seconds + sum(gamma * self.draft_forward + self.verify(gamma) for gamma in rest)

    def target_seconds(self, new_tokens: int) -> float:
        """Modeled time of target-alone decoding: the prefill emits the first token, one forward per other."""
        return self.target_prefill + max(new_tokens - 1, 0) * self.verify(0) if new_tokens else 0.0
