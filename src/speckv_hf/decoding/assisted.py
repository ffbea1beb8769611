"""One `generate()` call of `SpecKVGenerator` inside transformers' assisted loop (`loop="transformers"`).

[`AssistedCall`][] is the `CandidateGenerator` transformers' `_assisted_decoding` drives: it drafts the candidates of
each step with the draft's own KV cache (cropped on rejection, caught up lazily), asks the call's policy after each
drafted token whether to draft another, and learns from each verification. [`SpecKVGenerator.bind`][] builds it for
one call; the user's `SpecKVGenerator` is never mutated by a call.

The draft loop applies the same logits processors and warpers transformers applies to the target, samples from the
processed draft distribution when `do_sample=True` and returns those logits, so transformers' speculative sampling
keeps the target's distribution.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch
from transformers.generation.candidate_generator import CandidateGenerator

from ..compression.detection import CompressionInfo
from ..core.cost import Clock, CostModel
from ..core.ngram import NgramIndex
from ..core.signals import TokenSignals, token_signals
from ..core.stats import GenerationStats
from ..policies.base import DraftPolicy, DraftState, PolicyContext, StepOutcome
from . import kv_cache
from ._transformers import cache_kwarg
from .step import RecentRate, StepTimes, ask_policy, observe_step, step_record, throughput_bar

if TYPE_CHECKING:
    from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel

__all__ = ["AssistedCall", "model_device"]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (its `device` attribute where it has one)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


class AssistedCall(CandidateGenerator):
    """The candidate generator of one call in transformers' assisted loop.

    Args:
        target: the model being generated from.
        draft: the assistant model.
        input_ids (`torch.LongTensor` of shape `(1, prompt_length)`): the prompt.
        generation_config: the call's generation config.
        logits_processor: the call's logits processors (warpers included), applied to the draft's logits too.
        model_kwargs: the call's model kwargs (the attention mask is read from it).
        eos_token_ids: the EOS ids the call's stopping criteria use (`generation_config.eos_token_id` when None).
        policy: the call's own policy (a copy; bound here).
        cost: the call's cost model.
        compression: the target's compression.
        record_steps: keep per-step records in the stats.
        key: what the generator files the call's learned state under.
    """

    def __init__(
        self,
        *,
        target: PreTrainedModel,
        draft: PreTrainedModel,
        input_ids: torch.LongTensor,
        generation_config: GenerationConfig,
        logits_processor: LogitsProcessorList | None,
        model_kwargs: dict[str, Any],
        eos_token_ids: frozenset[int] | None,
        policy: DraftPolicy,
        cost: CostModel,
        compression: CompressionInfo,
        record_steps: bool,
        key: tuple[int, int, int],
    ) -> None:
        self._key = key
        self._target = target
        self._draft = draft
        self._draft_device = model_device(draft)
        self._do_sample = bool(generation_config.do_sample)
        self._max_length = int(generation_config.max_length)
        if eos_token_ids is None:
            eos = generation_config.eos_token_id
            eos_token_ids = frozenset([eos] if isinstance(eos, int) else list(eos or []))
        self._eos = eos_token_ids  # so the draft stops where the stopping criteria do
        self._logits_processor = logits_processor if logits_processor is not None and len(logits_processor) else None
        self._keep_logits = "logits_to_keep" in inspect.signature(draft.forward).parameters
        self._cache_kwarg = cache_kwarg(draft)
        self._clock = Clock(self._draft_device, model_device(target))
        self._cost = cost
        self.record_steps = record_steps
        self.policy = policy
        self.policy.bind(PolicyContext(cost=cost, compression=compression, do_sample=self._do_sample))
        self.stats_ = GenerationStats(
            policy=policy.config(),
            compression=compression,
            prompt_tokens=int(input_ids.shape[1]),
            verification="speculative" if self._do_sample else "greedy",
        )
        self._init_draft_state(model_kwargs)
        self._init_step_state()
        self._context = NgramIndex(input_ids[0].tolist())

    def _init_draft_state(self, model_kwargs: dict[str, Any]) -> None:
        self._cache = None
        self._synced_len = 0  # prefix of the sequence the draft cache is known to hold
        self._pending: list[int] = []  # drafted tokens fed to the draft cache beyond that prefix
        mask = model_kwargs.get("attention_mask")
        if mask is not None and bool((mask == 0).any()):
            self._prompt_mask = mask.to(self._draft_device)
        else:
            self._prompt_mask = None

    def _init_step_state(self) -> None:
        self._step = 0
        self._step_start_len = 0
        self._drafted: list[int] = []
        self._signals: list[TokenSignals] = []
        self._draft_seconds = 0.0
        self._step_started_at = 0.0
        self._first_token_at = 0.0
        self._returned_at: float | None = None
        self._verified_at: float | None = None
        self._overhead_seconds = 0.0
        self._recent = RecentRate()

    # -- CandidateGenerator API -----------------------------------------------------------------------------------
    @property
    def num_drafting_tokens(self) -> int:
        """The most tokens one step may draft (transformers >= 5.25 reads it before the first step, to size what the
        target's cache records for rolling back recurrent layers; the hook refuses such models, so for ours it is an
        upper bound and nothing more)."""
        max_tokens = getattr(self.policy, "max_tokens", None)
        return int(max_tokens) if isinstance(max_tokens, int) and max_tokens > 0 else self._max_length

    def get_candidates(
        self, input_ids: torch.LongTensor, **kwargs: Any
    ) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """Drafts the candidates of one step.

        Args:
            input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the sequence so far.

        Returns:
            `torch.LongTensor` of shape `(1, sequence_length + γ)` with the candidates appended and, when sampling,
            `torch.FloatTensor` of shape `(1, γ, vocab_size)` with the processed draft logits (None when greedy or
            when γ = 0).
        """
        start = self._step_started_at = self._clock.now()
        if self._verified_at is not None:
            self._overhead_seconds = start - self._verified_at
        seq_len = int(input_ids.shape[1])
        self._step_start_len = seq_len
        # Same cap as transformers: leave room for the target's own token within max_length.
        budget = max(self._max_length - seq_len - 1, 0)
        candidates, candidate_logits = self._draft_step(input_ids, budget)
        self._returned_at = self._clock.now()
        self._draft_seconds = self._returned_at - start
        return candidates, candidate_logits

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> None:
        """Records the verification of the step and lets the policy learn from it.

        Args:
            input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the sequence after verification.
            scores (`torch.FloatTensor` of shape `(1, γ + 1, vocab_size)`): the target's processed logits.
            num_matches: accepted candidates as transformers counts them.
        """
        now = self._clock.now()
        verify_seconds = now - (self._returned_at if self._returned_at is not None else now)
        appended = input_ids[0, self._step_start_len :].tolist()
        observed = min(len(appended), len(self._drafted))
        accepted = 0
        while accepted < observed and appended[accepted] == self._drafted[accepted]:
            accepted += 1
        gamma = len(self._drafted)
        tokens = self._signals  # every drafted token: those after the first rejection too

        times = StepTimes(
            overhead=self._overhead_seconds,
            draft=self._draft_seconds,
            verify=verify_seconds,
            first_draft=self._first_token_at - self._step_started_at if gamma else 0.0,
            later_draft=self._returned_at - self._first_token_at if gamma > 1 else 0.0,
            later_tokens=max(gamma - 1, 0),
        )
        observe_step(
            self._cost,
            self._recent,
            self._step,
            candidates=gamma,
            drafted=gamma > 0,
            times=times,
            tokens_per_row=len(appended),
        )
        self._context.extend(appended)
        self.policy.observe(StepOutcome(step=self._step, tokens=tokens, num_accepted=accepted))
        record = None
        if self.record_steps:
            record = step_record(
                self._step,
                candidates=gamma,
                accepted=accepted,
                produced=len(appended),
                signals=self._signals,
                times=times,
                candidate_ids=self._drafted,
            )
        self.stats_.record_step(
            gamma=gamma,
            accepted=accepted,
            tokens=len(appended),
            draft_seconds=self._draft_seconds,
            verify_seconds=verify_seconds,
            overhead_seconds=self._overhead_seconds,
            record=record,
        )
        self._step += 1
        self._verified_at = self._clock.now()

    # -- the draft loop -------------------------------------------------------------------------------------------
    def _ask_policy(self, max_tokens: int) -> bool:
        state = DraftState(
            step=self._step,
            tokens=self._signals,
            max_tokens=max_tokens,
            throughput=throughput_bar(self._cost, self._recent),
            sequence_length=self._step_start_len,
        )
        return ask_policy(self.policy, state, self.stats_, self._clock)

    def _draft_step(self, input_ids: torch.LongTensor, budget: int) -> tuple[torch.LongTensor, torch.Tensor | None]:
        self._drafted, self._signals = [], []
        if budget == 0 or not self._ask_policy(budget):
            return input_ids, None
        logits = self._catch_up(input_ids.to(self._draft_device))
        # Logits processors and sampling run where transformers runs them for the target (the device of
        # `input_ids`): processors may hold tensors there. Only the draft's forward runs on the draft's device.
        sequence = input_ids
        processed_logits: list[torch.Tensor] = []
        context = self._context
        second_last, last = context.tail
        while True:
            logits = logits.to(sequence.device)
            if self._logits_processor is not None:
                logits = self._logits_processor(sequence, logits[None].float())[0]
            probs = torch.softmax(logits.float(), dim=-1)
            token = torch.multinomial(probs, 1)[0] if self._do_sample else torch.argmax(probs)
            prediction = context.lookup(second_last, last)
            signals = token_signals(probs, token, position=len(self._drafted), ngram_prediction=prediction)
            token_id = int(token)
            second_last, last = last, token_id
            self._drafted.append(token_id)
            self._signals.append(signals)
            if self._do_sample:
                processed_logits.append(logits.float())  # the q that speculative sampling uses = the one sampled
            sequence = torch.cat((sequence, token.view(1, 1)), dim=1)
            if len(self._drafted) == 1:
                self._first_token_at = self._clock.now()
            if token_id in self._eos or len(self._drafted) >= budget or not self._ask_policy(budget):
                break
            logits = self._draft_forward(sequence[:, -1:].to(self._draft_device), start=sequence.shape[1] - 1)
            self._pending.append(token_id)
        candidate_logits = torch.stack(processed_logits)[None] if self._do_sample else None
        return sequence, candidate_logits

    def _catch_up(self, draft_ids: torch.LongTensor) -> torch.Tensor:
        """Brings the draft's cache to `draft_ids[:, :-1]` and returns the draft's logits for the next token.

        The cache holds a verified prefix (`_synced_len` tokens) plus drafted tokens (`_pending`); the drafted
        tokens that the target kept stay, the rest are cropped, and the tokens the cache lacks are fed in one
        forward.
        """
        seq_len = int(draft_ids.shape[1])
        new_tokens = draft_ids[0, self._synced_len : seq_len].tolist()
        common = 0
        for fed, actual in zip(self._pending, new_tokens, strict=False):
            if fed != actual:
                break
            common += 1
        keep = min(self._synced_len + common, seq_len - 1)  # feed at least one token to get next-token logits
        cached = self._synced_len + len(self._pending)
        if self._cache is not None and cached > keep:
            kv_cache.drop_last(self._cache, cached - keep)
        self._synced_len, self._pending = seq_len, []
        return self._draft_forward(draft_ids[:, keep:], start=keep)

    def _draft_forward(self, new_ids: torch.LongTensor, start: int) -> torch.Tensor:
        """Runs the draft on `new_ids` (positions `start...`) with its cache; returns the last position's logits."""
        if self._cache is None:
            # Full-attention layers, as transformers builds for its own assistant: sliding-window layers cannot be
            # cropped back once the window is reached on transformers 4.57.
            self._cache = kv_cache.new_cache()
        kwargs: dict[str, Any] = {"input_ids": new_ids, self._cache_kwarg: self._cache, "use_cache": True}
        if self._keep_logits and new_ids.shape[1] > 1:
            # Only for multi-token feeds: for one token, slicing the hidden states makes the LM head slower
            # (measured on CPU: 1.40 ms vs 0.79 ms per draft forward of the demo pair).
            kwargs["logits_to_keep"] = 1
        if self._prompt_mask is not None:
            end = start + new_ids.shape[1]
            extra = end - self._prompt_mask.shape[1]
            mask = self._prompt_mask
            if extra > 0:
                mask = torch.cat((mask, mask.new_ones((1, extra))), dim=1)
            mask = mask[:, :end]
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_min(0)[:, start:end]
        outputs = self._draft(**kwargs)
        self.stats_.draft_forwards += 1
        return outputs.logits[0, -1]
