"""What a generator's finished calls hand to its next ones, shared by every thread that calls it.

- **Warm start**: the costs and policy state the last call learned, for the next call on the same pair and batch
  size ([`WarmState`][]), and with them the verdict that speculation does not pay (plain decoding, probed every
  `probe_every`-th call).
- **Context memory**: one [`ContextMemory`][speckv_hf.core.context_memory.ContextMemory] per target model, kept no
  longer than the target is (a memory holds that tokenizer's ids).

A call takes copies ([`Handoff.start`][]) and hands its own objects back when it ends ([`Handoff.keep`][]): the
generator the user constructed is never what a call mutates.
"""

from __future__ import annotations

import copy
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from ..core.context_memory import ContextMemory
from ..core.cost import CostModel, CostSettings
from ..policies.base import DraftPolicy

__all__ = ["Handoff", "WarmState"]


@dataclass
class WarmState:
    """What a finished call hands to the next call on the same pair: learned costs and policy state.

    Attributes:
        key: target, draft, batch size (ids): a batch's step costs are not a single row's.
        cost: the call's cost model.
        policy: the call's policy (row 0's for a batch), with what it learned.
        speculation_paid: False once the policy found, over many steps, that drafting does not pay.
        plain_calls: calls since then that asked whether to decode plainly.
    """

    key: tuple[int, ...]
    cost: CostModel
    policy: DraftPolicy
    speculation_paid: bool = True
    plain_calls: int = 0


class Handoff:
    """The warm state and the context memories of one generator, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._warm: WarmState | None = None
        self._memories: weakref.WeakKeyDictionary[Any, ContextMemory] = weakref.WeakKeyDictionary()

    @property
    def warm(self) -> WarmState | None:
        """The last finished call's state (None before any, after `reset`, or without warm start)."""
        with self._lock:
            return self._warm

    def start(
        self, key: tuple[int, ...], template: DraftPolicy, settings: CostSettings, warm_start: bool
    ) -> tuple[CostModel, DraftPolicy]:
        """A new call's cost model and policy: copies of the last call's where it ran on the same `key` (and
        `warm_start` is on), else a fresh cost model and a copy of `template`. `settings` (the user's current ones)
        win over the warm ones."""
        warm = self.warm
        use_warm = warm_start and warm is not None and warm.key == key
        cost = warm.cost.copy() if use_warm else CostModel()
        cost.settings = copy.copy(settings)
        policy = copy.deepcopy(warm.policy if use_warm else template)
        return cost, policy

    def keep(self, key: tuple[int, ...], cost: CostModel, policy: DraftPolicy) -> None:
        """Keeps a finished call's state for the next call; the plain-decoding verdict is the policy's
        evidence-based one (many steps, over calls), never one call's."""
        paid = policy.speculation_pays() is not False
        with self._lock:
            self._warm = WarmState(key=key, cost=cost, policy=policy, speculation_paid=paid)

    def plain_call(self, key: tuple[int, ...], probe_every: int) -> bool:
        """Whether the next call on `key` decodes plainly: where the last call on it found that speculation does not
        pay, every call but each `probe_every`-th (which speculates, to notice a change). Counts the call."""
        with self._lock:
            warm = self._warm
            if warm is None or warm.key != key or warm.speculation_paid:
                return False
            warm.plain_calls += 1
            return warm.plain_calls % probe_every != 0

    def reset(self) -> None:
        """Forgets the warm state (not the memories)."""
        with self._lock:
            self._warm = None

    def memory_for(self, target: Any, size: int) -> ContextMemory | None:
        """`target`'s context memory of `size` tokens, created on first use (None for `size == 0`)."""
        if not size:
            return None
        with self._lock:
            memory = self._memories.get(target)
            if memory is None:
                memory = self._memories[target] = ContextMemory(size)
            return memory

    def memory_of(self, target: Any) -> ContextMemory | None:
        """`target`'s context memory, None before any call on it."""
        with self._lock:
            return self._memories.get(target)

    def remember(self, memory: ContextMemory, sequences: list[list[int]]) -> None:
        """Adds a finished call's sequences (prompts and new tokens) to `memory`, under the lock."""
        with self._lock:
            memory.add(sequences)

    def clear_memories(self) -> None:
        """Forgets every target's context memory."""
        with self._lock:
            self._memories.clear()
