"""`SpecKVGenerator`: a transformers `CandidateGenerator` that chooses the speculation length per step."""

from __future__ import annotations

import copy
import inspect
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache
from transformers.generation.candidate_generator import CandidateGenerator

from .compression import detect_compression
from .context import NgramIndex
from .cost import Clock, CostModel, CostSettings
from .kv_cache import cache_kwarg
from .loop import LoopCall
from .policies import DraftPolicy, DraftState, PolicyContext, StepOutcome
from .registry import get_policy
from .signals import StepSignals, TokenSignals, token_signals
from .stats import GenerationStats, StepRecord
from .validation import validate_pair

if TYPE_CHECKING:
    from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel

__all__ = ["SpecKVGenerator"]


def _model_device(model: torch.nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


@dataclass
class _Warm:
    """What a finished call hands to the next call on the same pair: learned costs and policy state."""

    key: tuple[int, int, int]  # target, draft, batch size: a batch's step costs are not a single row's
    cost: CostModel
    policy: DraftPolicy
    speculation_paid: bool = True
    plain_calls: int = 0


_LOOPS = ("auto", "speckv", "transformers")


class SpecKVGenerator(CandidateGenerator):
    """Candidate generator for `model.generate(assistant_model=...)` that picks γ per step with a policy.

    Construct it without models and pass it to `generate()` (after `import speckv_hf`)::

        out = target.generate(**inputs, assistant_model=draft, candidate_generator=SpecKVGenerator())

    When `generate()` starts, the generator is bound to the call: a private copy holds the draft's KV cache, a
    fresh copy of the policy and the call's statistics, so one instance serves many calls and concurrent calls in
    different threads share no state. After the call, [`SpecKVGenerator.last_stats`] says what it did (per thread).

    The draft loop calls the draft model's forward directly with its own KV cache (cropped on rejection, caught up
    lazily), applies the same logits processors and warpers transformers applies to the target, samples from the
    processed draft distribution when `do_sample=True` and returns those logits, so transformers' speculative
    sampling keeps the target's distribution.

    Args:
        policy: a policy name (`"adaptive"`, `"speckv"`, `"confidence"`, `"fixed"`, `"heuristic"`, `"fixed:K"`, or
            a name registered with `register_policy`) or a [`DraftPolicy`] instance. Defaults to the cost-aware
            `"adaptive"` policy.
        cost_ratio: draft/target forward-time ratio to assume instead of measuring it.
        verify_slope: relative growth of the target's verification time per candidate token, instead of fitting it.
        record_steps: keep per-step records in the stats (needed for profiling).
        warm_start: start each call with the costs and policy state learned by the previous call on the same
            target/draft pair.
        plain_fallback: when the policy's evidence, gathered over many steps of this and earlier calls on the same
            pair, says that speculation does not pay (`DraftPolicy.speculation_pays()` is False), run the next calls
            as plain decoding without the draft, which avoids the assisted loop's extra per-step work; every
            `probe_every`-th call speculates again to re-check. Only for policies that can decide to draft nothing
            (`adaptive`, `speckv`).
        probe_every: see `plain_fallback`.
        loop: which speculative loop runs the call. `"auto"` (the default): the library's own loop for batches
            (batch size > 1, including `num_return_sequences > 1`), transformers' assisted loop for one prompt;
            `"speckv"`: always the library's own loop; `"transformers"`: always transformers' loop, which refuses
            batches.
        **policy_kwargs: settings for the named policy, e.g. `SpecKVGenerator("fixed", num_tokens=4)`.

    Raises:
        ValueError: for an unknown policy or invalid settings.
    """

    def __init__(
        self,
        policy: str | DraftPolicy = "adaptive",
        *,
        cost_ratio: float | None = None,
        verify_slope: float | None = None,
        record_steps: bool = True,
        warm_start: bool = True,
        plain_fallback: bool = True,
        probe_every: int = 8,
        loop: str = "auto",
        **policy_kwargs: Any,
    ) -> None:
        self.policy = get_policy(policy, **policy_kwargs)
        self.cost_settings = CostSettings(cost_ratio=cost_ratio, verify_slope=verify_slope)
        self.record_steps = record_steps
        self.warm_start = warm_start
        if probe_every < 1:
            raise ValueError(f"probe_every must be >= 1, got {probe_every}.")
        self.plain_fallback = plain_fallback
        self.probe_every = probe_every
        if loop not in _LOOPS:
            raise ValueError(f"loop must be one of {', '.join(map(repr, _LOOPS))}, got {loop!r}.")
        self.loop = loop
        self._lock = threading.Lock()
        self._local = threading.local()
        self._warm: _Warm | None = None
        self._bound = False

    def __repr__(self) -> str:
        return f"SpecKVGenerator(policy={self.policy!r})"

    @classmethod
    def from_pretrained(
        cls,
        predictor: str | Path,
        *,
        revision: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SpecKVGenerator:
        """A generator whose policy runs a trained predictor from a local folder or the Hub: the `speckv` policy, or
        `speckv-paper` for a checkpoint of kind `paper` (`GammaPredictor.from_paper_npz`).

        Args:
            predictor: a folder written by `speckv train` / `GammaPredictor.save_pretrained`, or a Hub repo id.
            revision: the Hub revision (branch, tag or commit).
            policy_kwargs: settings of the policy (e.g. `max_tokens`).
            **kwargs: the generator's settings (`warm_start`, `plain_fallback`, ...).

        Returns:
            The generator.

        Raises:
            PredictorLoadError: for a checkpoint that cannot be loaded (named in the message).
            PredictorSchemaError: for a predictor that reads other features.
        """
        from .paper_policy import policy_from_pretrained

        return cls(policy_from_pretrained(predictor, revision=revision, **(policy_kwargs or {})), **kwargs)

    # -- results --------------------------------------------------------------------------------------------------
    @property
    def last_stats(self) -> GenerationStats | None:
        """Statistics of the last call that finished in the current thread (None before any)."""
        return getattr(self._local, "stats", None)

    @property
    def stats(self) -> GenerationStats | None:
        """Alias of [`SpecKVGenerator.last_stats`]."""
        return self.last_stats

    def clear_last_stats(self) -> None:
        """Forgets the current thread's `last_stats` (the hook calls it when a call starts)."""
        self._local.stats = None

    def reset(self) -> None:
        """Forgets the costs and policy state learned by earlier calls."""
        with self._lock:
            self._warm = None

    # -- binding (called by the hook) -------------------------------------------------------------------------------
    def bind(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel,
        input_ids: torch.LongTensor,
        generation_config: GenerationConfig,
        logits_processor: LogitsProcessorList | None,
        model_kwargs: dict[str, Any],
    ) -> SpecKVGenerator:
        """Returns a copy of this generator bound to one `generate()` call.

        Args:
            target: the model being generated from.
            draft: the assistant model.
            input_ids (`torch.LongTensor` of shape `(1, prompt_length)`): the prompt.
            generation_config: the call's generation config.
            logits_processor: the call's logits processors (warpers included), applied to the draft's logits too.
            model_kwargs: the call's model kwargs (the attention mask is read from it).

        Returns:
            The bound generator that transformers' assisted loop drives.
        """
        validate_pair(target, draft, input_ids)
        with self._lock:
            warm = self._warm
        key = (id(target), id(draft), 1)
        use_warm = self.warm_start and warm is not None and warm.key == key

        bound = copy.copy(self)
        bound._bound = True
        bound._key = key
        bound._target = target
        bound._draft = draft
        bound._draft_device = _model_device(draft)
        bound._do_sample = bool(generation_config.do_sample)
        bound._max_length = int(generation_config.max_length)
        # The EOS ids transformers' stopping criteria use (the prepared tensor), so the draft stops where they do.
        eos = getattr(generation_config, "_eos_token_tensor", None)
        eos = eos.flatten().tolist() if isinstance(eos, torch.Tensor) else generation_config.eos_token_id
        bound._eos = set([eos] if isinstance(eos, int) else list(eos or []))
        bound._logits_processor = logits_processor if logits_processor is not None and len(logits_processor) else None
        bound._keep_logits = "logits_to_keep" in inspect.signature(draft.forward).parameters
        bound._cache_kwarg = cache_kwarg(draft)
        bound._clock = Clock(bound._draft_device, _model_device(target))
        bound._cost = warm.cost.copy() if use_warm else CostModel()
        bound._cost.settings = copy.copy(self.cost_settings)  # the user's current settings win over the warm ones
        bound.policy = copy.deepcopy(warm.policy if use_warm else self.policy)
        compression = detect_compression(target)
        bound.policy.bind(PolicyContext(cost=bound._cost, compression=compression, do_sample=bound._do_sample))
        bound.stats_ = GenerationStats(
            policy=bound.policy.config(), compression=compression, prompt_tokens=int(input_ids.shape[1])
        )
        bound._init_draft_state(model_kwargs)
        bound._init_step_state()
        bound._context = NgramIndex(input_ids[0].tolist())
        return bound

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
        # Decayed sums of tokens and seconds over steps after the prefill, for the achieved throughput.
        self._recent_tokens = 0.0
        self._recent_seconds = 0.0

    def finish(self, bound: SpecKVGenerator) -> GenerationStats:
        """Collects a bound copy's results after its call: stats for `last_stats`, learned state for the next call.

        Args:
            bound: the copy returned by [`SpecKVGenerator.bind`].

        Returns:
            The call's statistics.
        """
        stats = bound.stats_
        cost = bound._cost
        stats.cost_ratio = cost.cost_ratio
        if stats.cost_ratio is not None:
            stats.draft_token_seconds, stats.target_seconds = cost.draft_time, cost.verify_coefficients()[0]
        self._local.stats = stats
        if self.warm_start:
            # Plain decoding only on the policy's evidence-based verdict (many steps, over calls), never on one call.
            paid = bound.policy.speculation_pays() is not False
            with self._lock:
                self._warm = _Warm(key=bound._key, cost=bound._cost, policy=bound.policy, speculation_paid=paid)
        return stats

    def wants_plain_decoding(self, target: torch.nn.Module, draft: torch.nn.Module, batch_size: int = 1) -> bool:
        """Whether the next call on this pair should skip speculation (see `plain_fallback`). Counts the call.

        Args:
            target: the model generating.
            draft: the assistant model.
            batch_size: rows of the call.

        Returns:
            True to run the call as plain decoding, without the draft.
        """
        if not (self.plain_fallback and self.warm_start and getattr(self.policy, "can_skip_drafting", False)):
            return False
        with self._lock:
            warm = self._warm
            if warm is None or warm.key != (id(target), id(draft), batch_size) or warm.speculation_paid:
                return False
            warm.plain_calls += 1
            return warm.plain_calls % self.probe_every != 0

    def finish_plain(self, target: torch.nn.Module, prompt_tokens: int, new_tokens: int, seconds: float) -> None:
        """Records the stats of a call that ran as plain decoding.

        Args:
            target: the model that generated.
            prompt_tokens: length of the prompt.
            new_tokens: tokens generated.
            seconds: wall-clock time of the call.
        """
        self._local.stats = GenerationStats(
            policy=self.policy.config(),
            compression=detect_compression(target),
            prompt_tokens=prompt_tokens,
            tokens_emitted=new_tokens,
            target_forwards=new_tokens,
            gamma_histogram=Counter({0: new_tokens}),
            accepted_histogram=Counter({0: new_tokens}),
            verify_seconds=seconds,
            plain_decoding=True,
        )

    # -- the library's own loop ------------------------------------------------------------------------------------
    def uses_own_loop(self, batch_size: int) -> bool:
        """Whether a call of `batch_size` rows runs in the library's own loop (`speckv_hf.loop`).

        Raises:
            ValueError: for a batch with `loop="transformers"`, whose loop refuses batches.
        """
        if self.loop == "transformers":
            if batch_size > 1:
                raise ValueError(
                    f"transformers' assisted loop refuses batches (batch size {batch_size}): use "
                    "SpecKVGenerator(loop='auto') (the default) to run batches in speckv-hf's own loop."
                )
            return False
        return self.loop == "speckv" or batch_size > 1

    def start_loop(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        do_sample: bool,
    ) -> LoopCall:
        """The state one call of the library's own loop holds: warm-started costs, one policy per row, stats.

        Args:
            target: the model generating.
            draft: the draft model.
            input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): the prompts.
            attention_mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*): 0 on padding.
            do_sample: whether the call samples.

        Returns:
            The call's [`LoopCall`]; hand it to [`SpecKVGenerator.finish_loop`] after the call.
        """
        validate_pair(target, draft, input_ids)
        batch_size = int(input_ids.shape[0])
        key = (id(target), id(draft), batch_size)
        with self._lock:
            warm = self._warm
        use_warm = self.warm_start and warm is not None and warm.key == key
        cost = warm.cost.copy() if use_warm else CostModel()
        cost.settings = copy.copy(self.cost_settings)
        template = warm.policy if use_warm else self.policy
        compression = detect_compression(target)
        context = PolicyContext(cost=cost, compression=compression, do_sample=do_sample)
        policies = []
        for _ in range(batch_size):
            policy = copy.deepcopy(template)
            policy.bind(context)
            policies.append(policy)
        lengths = (
            attention_mask.sum(-1).tolist() if attention_mask is not None else [int(input_ids.shape[1])] * batch_size
        )
        config = policies[0].config()
        stats = GenerationStats(
            policy=config,
            compression=compression,
            prompt_tokens=int(sum(lengths)),
            batch_size=batch_size,
            loop="speckv",
        )
        if batch_size > 1:
            stats.rows = [
                GenerationStats(policy=config, compression=compression, prompt_tokens=int(n), loop="speckv")
                for n in lengths
            ]
        return LoopCall(
            cost=cost,
            policies=policies,
            stats=stats,
            clock=Clock(_model_device(draft), _model_device(target)),
            record_steps=self.record_steps,
            key=key,
        )

    def finish_loop(self, call: LoopCall) -> GenerationStats:
        """Collects a finished loop call: stats for `last_stats`, learned costs and policy state for the next call.

        Args:
            call: what [`SpecKVGenerator.start_loop`] returned.

        Returns:
            The call's statistics.
        """
        stats, cost = call.stats, call.cost
        stats.cost_ratio = cost.cost_ratio
        if stats.cost_ratio is not None:
            stats.draft_token_seconds, stats.target_seconds = cost.draft_time, cost.verify_coefficients()[0]
        self._local.stats = stats
        if self.warm_start:
            policy = call.policies[0]
            paid = policy.speculation_pays() is not False
            with self._lock:
                self._warm = _Warm(key=call.key, cost=cost, policy=policy, speculation_paid=paid)
        return stats

    # -- CandidateGenerator API -----------------------------------------------------------------------------------
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
        if not self._bound:
            raise RuntimeError(
                "SpecKVGenerator must be passed to generate() as candidate_generator=..., together with "
                "assistant_model=...; it is bound to the models when generate() starts."
            )
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

        cost = self._cost
        if self._step > 0:  # step 0 carries both prefills: not representative of a step's cost
            cost.observe_verify(gamma, verify_seconds)
            if gamma:
                # The first token of a step pays the catch-up forward; each further token only its own forward:
                # the policy's marginal cost of one more token is the second kind.
                cost.observe_first_draft(self._first_token_at - self._step_started_at)
                if gamma > 1:
                    cost.observe_draft((self._returned_at - self._first_token_at) / (gamma - 1))
            if self._step > 1:
                cost.observe_overhead(self._overhead_seconds)
            step_seconds = self._draft_seconds + verify_seconds + self._overhead_seconds
            self._recent_tokens = 0.95 * self._recent_tokens + len(appended)
            self._recent_seconds = 0.95 * self._recent_seconds + step_seconds
            cost.observe_step(len(appended), step_seconds)
        self._context.extend(appended)
        self.policy.observe(StepOutcome(step=self._step, tokens=tokens, num_accepted=accepted))

        stats = self.stats_
        stats.target_forwards += 1
        stats.tokens_emitted += len(appended)
        stats.drafted_tokens += gamma
        stats.accepted_tokens += accepted
        stats.gamma_histogram[gamma] += 1
        stats.accepted_histogram[accepted] += 1
        stats.draft_seconds += self._draft_seconds
        stats.verify_seconds += verify_seconds
        stats.overhead_seconds += self._overhead_seconds
        if self.record_steps:
            stats.steps.append(
                StepRecord(
                    step=self._step,
                    gamma=gamma,
                    accepted=accepted,
                    tokens_produced=len(appended),
                    signals=StepSignals.from_tokens(self._signals),
                    tokens=tuple(self._signals),
                    draft_seconds=self._draft_seconds,
                    verify_seconds=verify_seconds,
                    overhead_seconds=self._overhead_seconds,
                )
            )
        self._step += 1
        self._verified_at = self._clock.now()

    # -- the draft loop -------------------------------------------------------------------------------------------
    def _throughput(self) -> float | None:
        """Tokens per second achieved on this pair: over the last few hundred steps of this and the warm-started
        earlier calls once there are enough, else this call's recent steps, else the target-alone rate.

        The long-run rate is the bar a drafted token must beat. The call's own recent rate would be a perverse
        one: high in an easy passage, where drafting long pays most, it would cut drafts short there."""
        long_run = self._cost.throughput
        if long_run is not None:
            return long_run
        if self._recent_seconds > 0 and self._step >= 3:
            return self._recent_tokens / self._recent_seconds
        if self._cost.ready:
            return 1.0 / max(self._cost.step_time(0), 1e-9)
        return None

    def _ask_policy(self, max_tokens: int) -> bool:
        state = DraftState(
            step=self._step,
            tokens=self._signals,
            max_tokens=max_tokens,
            throughput=self._throughput(),
            sequence_length=self._step_start_len,
        )
        start = self._clock.now()
        decision = self.policy.should_draft(state)
        self.stats_.policy_seconds += self._clock.now() - start
        return decision

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
            self._cache.crop(-(cached - keep))  # negative: remove that many (works on transformers 4.x and 5.x)
        self._synced_len, self._pending = seq_len, []
        return self._draft_forward(draft_ids[:, keep:], start=keep)

    def _draft_forward(self, new_ids: torch.LongTensor, start: int) -> torch.Tensor:
        """Runs the draft on `new_ids` (positions `start...`) with its cache; returns the last position's logits."""
        if self._cache is None:
            # Full-attention layers, as transformers builds for its own assistant: sliding-window layers cannot be
            # cropped back once the window is reached on transformers 4.57.
            self._cache = DynamicCache()
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
