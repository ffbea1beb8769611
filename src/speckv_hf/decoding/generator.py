"""`SpecKVGenerator`: what the user constructs to choose the speculation length per step, and keeps across calls.

It holds settings, the policy template and what finished calls learned (costs, policy state, `last_stats` per
thread). Each `generate()` call gets objects of its own: a [`LoopCall`][] for the library's own loop
(`speckv_hf.decoding.loop`, the default) or an [`AssistedCall`][] for transformers' assisted loop
(`loop="transformers"`).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..compression.detection import CompressionInfo, detect_compression
from ..core.context_memory import ContextMemory
from ..core.cost import Clock, CostModel, CostSettings
from ..core.stats import GenerationStats
from ..core.validation import validate_pair
from ..policies.base import DraftPolicy
from ..policies.registry import get_policy
from .assisted import AssistedCall, model_device
from .compiled import CompiledModels, CompileOptions
from .handoff import Handoff
from .hook import install
from .loop_call import VERIFICATIONS, LoopCall, start_call
from .settings import check_settings
from .static_loop import warm_up

if TYPE_CHECKING:
    from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel

__all__ = ["SpecKVGenerator"]


#: A call that drafted this many tokens and had none accepted warns (once per generator).
ZERO_ACCEPTANCE_WARNING_TOKENS = 32


class SpecKVGenerator:
    """Speculative decoding for `model.generate(assistant_model=...)` that picks γ per step (per row) with a policy.

    Construct it without models and pass it to `generate()` (after `import speckv_hf`), for one prompt or a
    left-padded batch::

        out = target.generate(**inputs, assistant_model=draft, candidate_generator=SpecKVGenerator())

    Each call runs in the library's own speculative loop (`speckv_hf.decoding.loop`) with objects of its own: the KV
    caches, one fresh copy of the policy per row and the call's statistics, so one instance serves many calls and
    concurrent calls in different threads share no state. After the call, [`SpecKVGenerator.last_stats`][] says what
    it did (per thread; per row too for a batch).

    The draft applies the same logits processors and warpers as the target, samples from the processed draft
    distribution when `do_sample=True`, and verification is greedy matching, or coupled sampling per row (the
    default for sampled calls: a seeded call repeats) or speculative sampling (`sampling="speculative"`), so each
    row's output is the target's (greedy) or distributed as the target's (sampling).

    Args:
        policy: a policy name (`"adaptive"`, `"speckv"`, `"confidence"`, `"fixed"`, `"heuristic"`, `"fixed:K"`, or
            a name registered with `register_policy`) or a [`DraftPolicy`][] instance. Defaults to the cost-aware
            `"adaptive"` policy.
        cost_ratio: draft/target forward-time ratio to assume instead of measuring it.
        verify_slope: relative growth of the target's verification time per candidate token, instead of fitting it.
        record_steps: keep per-step records in the stats (needed for profiling).
        warm_start: start each call with the costs and policy state learned by the previous call on the same
            target/draft pair.
        plain_fallback: when the policy's evidence, gathered over many steps of this and earlier calls on the same
            pair, says that speculation does not pay (`DraftPolicy.speculation_pays()` is False), run the next calls
            as plain decoding without the draft, which avoids the speculative loop's extra per-step work; every
            `probe_every`-th call speculates again to re-check. Only for policies that can decide to draft nothing
            (`adaptive`, `speckv`).
        probe_every: see `plain_fallback`.
        loop: which speculative loop runs the calls. `"speckv"` (the default): the library's own loop
            (`speckv_hf.decoding.loop`), for one prompt or a batch (including `num_return_sequences > 1`);
            `"transformers"`: transformers' assisted loop, driving the generator as a
            `CandidateGenerator` (one prompt only).
        sampling: how sampled calls (`do_sample=True`) verify drafts. `"auto"` (the default): `"coupled"` in the
            library's own loop, so that a seeded call repeats; `"speculative"` with `loop="transformers"`.
            `"coupled"`: coupled sampling (`speckv_hf.decoding.coupling`): the randomness is drawn per position first
            (Gumbel noise from torch's global RNG), the target's token is its perturbed argmax and a drafted token is
            accepted when it is that token. The output is the same for every policy, γ and draft given the seed (for
            one batch layout and device; bitsandbytes targets up to near-ties), so `torch.manual_seed(0)` before a
            call gives the same text every time, whatever the timings the policy reacts to. Its acceptance is lower
            than speculative sampling's (the quickstart says what that costs), and sampled calls never fall
            back to plain decoding (which would sample without the noise). `"speculative"`: speculative sampling,
            accepting a drafted token with probability `min(1, p/q)`: each row keeps the target's distribution, but
            the text depends on every γ the policy chose, and adaptive policies choose from measured timings, so a
            seeded call does not repeat (with `fixed:K` it does). Greedy calls ignore the setting.
        batch_quorum: in a batch, the share of the rows still drafting whose policies must want another token for
            the batch to draft it (one draft forward serves every row, and every row's tokens are verified); in
            (0, 1], where a tiny value means "any row".
        compile: run calls in the compiled loop (`speckv_hf.decoding.static_loop`): static KV caches written in
            place, both models' forwards compiled with `torch.compile` for a few feed lengths, kept across calls.
            `True` for the defaults, or a [`CompileOptions`][] (backend, mode, lengths). The first calls compile
            (see [`SpecKVGenerator.warmup`][]); `last_stats.compiled_graphs` and `.compile_seconds` say how much.
            Own loop only (not `loop="transformers"`); calls never fall back to plain decoding, which would run
            uncompiled; a step verifies at most `lengths[-1] - 1` candidates.
        context_memory: with a context policy (`"context+adaptive"`, ...), keep up to this many tokens of earlier
            calls' prompts and outputs (`speckv_hf.core.context_memory`), one memory per target model (token ids
            mean nothing across tokenizers), and propose from them too where they match a longer tail than the row's
            own sequence does; 0 (the default) keeps none. Once full, the oldest calls are dropped, down to three
            quarters of it;
            [`SpecKVGenerator.context_memory_of`][] gives a target's memory, and
            [`SpecKVGenerator.clear_context_memory`][] forgets them all.
        **policy_kwargs: settings for the named policy, e.g. `SpecKVGenerator("fixed", num_tokens=4)`.

    Raises:
        ValueError: for an unknown policy or invalid settings.
        ImportError: for an unsupported transformers version (constructing one installs the hook, which checks it).
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
        loop: str = "speckv",
        sampling: str = "auto",
        batch_quorum: float = 0.5,
        compile: bool | CompileOptions = False,
        context_memory: int = 0,
        **policy_kwargs: Any,
    ) -> None:
        install()  # generate(candidate_generator=self) needs the hook; idempotent, cheap after once
        self.policy = get_policy(policy, **policy_kwargs)
        self.cost_settings = CostSettings(cost_ratio=cost_ratio, verify_slope=verify_slope)
        self.compile_options = check_settings(
            self.policy,
            probe_every=probe_every,
            loop=loop,
            sampling=sampling,
            context_memory=context_memory,
            batch_quorum=batch_quorum,
            compile=compile,
        )
        self.record_steps = record_steps
        self.warm_start = warm_start
        self.plain_fallback = plain_fallback and self.compile_options is None  # plain decoding would run uncompiled
        self.probe_every = probe_every
        self.loop = loop
        self.sampling = sampling
        self.context_memory = context_memory
        self.batch_quorum = batch_quorum
        self._compiled = CompiledModels.shared(self.compile_options) if self.compile_options else None
        self._lock = threading.Lock()  # the zero-acceptance warning's flag
        self._local = threading.local()
        self._handoff = Handoff()  # what finished calls hand to the next ones (warm state, context memories)
        self._warned_zero_acceptance = False

    def __repr__(self) -> str:
        return f"SpecKVGenerator(policy={self.policy!r})"

    def warmup(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | None = None,
        *,
        batch_size: int = 1,
        prompt_length: int = 128,
        max_new_tokens: int = 256,
    ) -> float:
        """Compiles what calls of this size will run, before the first call (`compile=True` only).

        Every feed length of `CompileOptions.lengths` is compiled for the target and the draft, on static caches
        sized for `prompt_length + max_new_tokens` tokens (rounded up to `CompileOptions.cache_step`): calls whose
        prompt and new tokens fit in that many columns, with `batch_size` rows, compile nothing more. With the
        `inductor` backend the generated code also lands in inductor's on-disk cache (`TORCHINDUCTOR_CACHE_DIR`,
        by default under the system's temporary directory), so a second process compiles much faster.

        Args:
            target: the target model.
            draft: the draft model (None for a context policy without one).
            batch_size: rows per call.
            prompt_length: the longest prompt, left padding included.
            max_new_tokens: new tokens per call.

        Returns:
            Seconds the warm-up took: compiling, and one uncompiled prefill per model (a warm-up whose graphs exist
            takes well under a second).

        Raises:
            ValueError: for a generator constructed without `compile=`, or sizes below 1.
        """
        if self._compiled is None:
            raise ValueError("warmup() compiles the compiled loop: construct SpecKVGenerator(compile=True).")
        if min(batch_size, prompt_length, max_new_tokens) < 1:
            raise ValueError(
                f"batch_size, prompt_length and max_new_tokens must be >= 1, got {batch_size}, {prompt_length}, "
                f"{max_new_tokens}."
            )
        start = time.perf_counter()
        warm_up(
            self._compiled,
            [target] + ([draft] if draft is not None else []),
            batch_size=batch_size,
            prompt_length=prompt_length,
            max_new_tokens=max_new_tokens,
        )
        return time.perf_counter() - start

    @property
    def runs_without_draft(self) -> bool:
        """Whether calls may omit the draft model: the policy proposes context candidates, which are then the only
        ones (`SpecKVGenerator("context")`, or any `"context+..."` policy without `assistant_model=`)."""
        return bool(self.policy.uses_context)

    @property
    def sampling_scheme(self) -> str:
        """How this generator's sampled calls verify: `sampling` with `"auto"` resolved for its `loop`."""
        if self.sampling != "auto":
            return self.sampling
        return "coupled" if self.loop == "speckv" else "speculative"

    def verification_for(self, do_sample: bool) -> str:
        """How a call of this generator verifies candidates: `"greedy"`, or its `sampling_scheme` for a sampled call
        (`do_sample=True`)."""
        return self.sampling_scheme if do_sample else "greedy"

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
            FileNotFoundError: for a local path that does not exist (absolute, `./`, `../`, `~`, ...).
            PredictorLoadError: for a checkpoint that cannot be loaded (named in the message).
            PredictorSchemaError: for a predictor that reads other features.
        """
        from ..policies.registry import policy_from_pretrained

        return cls(policy_from_pretrained(predictor, revision=revision, **(policy_kwargs or {})), **kwargs)

    # -- results --------------------------------------------------------------------------------------------------
    @property
    def last_stats(self) -> GenerationStats | None:
        """Statistics of the last call that finished in the current thread (None before any)."""
        return getattr(self._local, "stats", None)

    @property
    def stats(self) -> GenerationStats | None:
        """Alias of [`SpecKVGenerator.last_stats`][]."""
        return self.last_stats

    def clear_last_stats(self) -> None:
        """Forgets the current thread's `last_stats` (the hook calls it when a call starts)."""
        self._local.stats = None

    def context_memory_of(self, target: PreTrainedModel) -> ContextMemory | None:
        """The earlier calls' tokens kept for context candidates on `target` (`context_memory=`), or None before
        any call on it or without `context_memory`."""
        return self._handoff.memory_of(target)

    def clear_context_memory(self) -> None:
        """Forgets the earlier calls' tokens kept for context candidates, on every target (`reset()` keeps them)."""
        self._handoff.clear_memories()

    def reset(self) -> None:
        """Forgets the costs and policy state learned by earlier calls (not the context memory: see
        [`SpecKVGenerator.clear_context_memory`][])."""
        self._handoff.reset()

    # -- binding (called by the hook) -------------------------------------------------------------------------------
    def bind(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel,
        input_ids: torch.LongTensor,
        generation_config: GenerationConfig,
        logits_processor: LogitsProcessorList | None,
        model_kwargs: dict[str, Any],
        eos_token_ids: frozenset[int] | None = None,
    ) -> AssistedCall:
        """The object one `generate()` call in transformers' assisted loop (`loop="transformers"`) drives.

        Args:
            target: the model being generated from.
            draft: the assistant model.
            input_ids (`torch.LongTensor` of shape `(1, prompt_length)`): the prompt.
            generation_config: the call's generation config.
            logits_processor: the call's logits processors (warpers included), applied to the draft's logits too.
            model_kwargs: the call's model kwargs (the attention mask is read from it).
            eos_token_ids: the EOS ids transformers' stopping criteria use (the hook passes the prepared ones);
                `generation_config.eos_token_id` when None.

        Returns:
            The call's [`AssistedCall`][], a transformers `CandidateGenerator`; hand it to
            [`SpecKVGenerator.finish`][] after the call.
        """
        validate_pair(target, draft, input_ids)
        cost, policy, compression, key = self._call_state(target, draft, 1)
        return AssistedCall(
            target=target,
            draft=draft,
            input_ids=input_ids,
            generation_config=generation_config,
            logits_processor=logits_processor,
            model_kwargs=model_kwargs,
            eos_token_ids=eos_token_ids,
            policy=policy,
            cost=cost,
            compression=compression,
            record_steps=self.record_steps,
            key=key,
        )

    def _call_state(
        self, target: PreTrainedModel, draft: PreTrainedModel | None, batch_size: int
    ) -> tuple[CostModel, DraftPolicy, CompressionInfo, tuple[int, int, int]]:
        """What a new call starts from: the warm-started (or fresh) costs and policy, the compression, the key."""
        key = (id(target), id(draft), batch_size)
        cost, policy = self._handoff.start(key, self.policy, self.cost_settings, self.warm_start)
        return cost, policy, detect_compression(target), key

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs: Any) -> Any:
        """Not for direct use: `generate()` calls the per-call object. Raises a RuntimeError that says so."""
        raise RuntimeError(
            "SpecKVGenerator must be passed to generate() as candidate_generator=..., together with "
            "assistant_model=...; it is bound to the models when generate() starts."
        )

    def finish(self, bound: AssistedCall) -> GenerationStats:
        """Collects a call in transformers' loop: stats for `last_stats`, learned state for the next call.

        Args:
            bound: what [`SpecKVGenerator.bind`][] returned.

        Returns:
            The call's statistics.
        """
        return self._collect(bound.stats_, bound._cost, bound.policy, bound._key)

    def _collect(
        self, stats: GenerationStats, cost: CostModel, policy: DraftPolicy, key: tuple[int, int, int]
    ) -> GenerationStats:
        stats.cost_ratio = cost.cost_ratio
        if stats.cost_ratio is not None:
            stats.draft_token_seconds, stats.target_seconds = cost.draft_time, cost.verify_coefficients()[0]
        self._local.stats = stats
        self._warn_if_nothing_accepted(stats)
        if self.warm_start:
            self._handoff.keep(key, cost, policy)
        return stats

    def _warn_if_nothing_accepted(self, stats: GenerationStats) -> None:
        """Warns once per generator when a call drafted many tokens and the target accepted none: a draft that
        never agrees is almost always one that reads other token ids than the target."""
        drafted = stats.drafted_tokens - stats.context_tokens  # the draft's own tokens: context ones are no evidence
        if drafted < ZERO_ACCEPTANCE_WARNING_TOKENS or stats.accepted_tokens - stats.context_accepted > 0:
            return
        with self._lock:
            if self._warned_zero_acceptance:
                return
            self._warned_zero_acceptance = True
        warnings.warn(
            f"the target accepted none of the {drafted} tokens the draft proposed in this call: the "
            "likely cause is a draft with another tokenizer (same vocabulary size, other token ids). Check that "
            "draft and target share a tokenizer, or generate without candidate_generator=.",
            UserWarning,
            stacklevel=4,
        )

    def wants_plain_decoding(
        self, target: torch.nn.Module, draft: torch.nn.Module, batch_size: int = 1, do_sample: bool = False
    ) -> bool:
        """Whether the next call on this pair should skip speculation (see `plain_fallback`). Counts the call.

        Args:
            target: the model generating.
            draft: the assistant model.
            batch_size: rows of the call.
            do_sample: whether the call samples.

        Returns:
            True to run the call as plain decoding, without the draft.
        """
        if self.verification_for(do_sample) == "coupled":
            return False  # transformers' own sampling would not follow the noise: the text would change
        if not (self.plain_fallback and self.warm_start and getattr(self.policy, "can_skip_drafting", False)):
            return False
        return self._handoff.plain_call((id(target), id(draft), batch_size), self.probe_every)

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
            verification="none",
        )

    # -- the library's own loop ------------------------------------------------------------------------------------
    def uses_own_loop(self, batch_size: int) -> bool:
        """Whether a call of `batch_size` rows runs in the library's own loop (`speckv_hf.decoding.loop`).

        Raises:
            ValueError: for a batch with `loop="transformers"`, whose loop refuses batches.
        """
        if self.loop == "transformers":
            if batch_size > 1:
                raise ValueError(
                    f"transformers' assisted loop refuses batches (batch size {batch_size}): use "
                    "SpecKVGenerator(loop='speckv') (the default) to run batches in speckv-hf's own loop."
                )
            return False
        return True

    def start_loop(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | None,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        verification: str = "greedy",
    ) -> LoopCall:
        """The state one call of the library's own loop holds: warm-started costs, one policy per row, stats.

        The hook has validated the call (`speckv_hf.core.validation`) before it gets here.

        Args:
            target: the model generating.
            draft: the draft model.
            input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): the prompts.
            attention_mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*): 0 on padding.
            verification: how the call verifies drafts: `"greedy"`, `"speculative"` (speculative sampling) or
                `"coupled"` (coupled sampling). The policies are told whether acceptance is random
                (`PolicyContext.do_sample`): only under speculative sampling; greedy and coupled acceptance is a
                match.

        Returns:
            The call's [`LoopCall`][]; hand it to [`SpecKVGenerator.finish_loop`][] after the call.

        Raises:
            ValueError: for an unknown `verification`.
        """
        if verification not in VERIFICATIONS:
            names = ", ".join(map(repr, VERIFICATIONS))
            raise ValueError(f"verification must be one of {names}, got {verification!r}.")
        cost, template, compression, key = self._call_state(target, draft, int(input_ids.shape[0]))
        return start_call(
            cost,
            template,
            compression=compression,
            input_ids=input_ids,
            attention_mask=attention_mask,
            verification=verification,
            has_draft=draft is not None,
            clock=Clock(*([model_device(draft)] if draft is not None else []), model_device(target)),
            key=key,
            record_steps=self.record_steps,
            compiled=self._compiled,
            memory=self._handoff.memory_for(target, self.context_memory),
        )

    def finish_loop(self, call: LoopCall) -> GenerationStats:
        """Collects a finished loop call: stats for `last_stats`, learned costs and policy state for the next call.

        Args:
            call: what [`SpecKVGenerator.start_loop`][] returned.

        Returns:
            The call's statistics.
        """
        if call.memory is not None and call.sequences:
            self._handoff.remember(call.memory, call.sequences)
        return self._collect(call.stats, call.cost, call.policies[0], call.key)
