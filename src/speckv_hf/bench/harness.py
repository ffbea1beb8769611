"""The benchmark harness behind `speckv bench`: every method on the same prompts, interleaved, with the oracle.

Calls are batch 1, one prompt each: transformers' assisted generation and prompt lookup (the `hf-*` methods)
accept no larger batch.

Every method runs on the same prompts, interleaved per prompt with the order rotating from prompt to prompt, after
a warm-up prompt, so slow drifts of the machine hit all methods alike. Target and draft forwards are counted (and,
on CPU, timed) with forward hooks, the same way for every method. One `SpecKVGenerator` per method serves every
prompt, as users reuse one. [`run_benchmark`][] returns one [`CallRecord`][] per measured `generate()` call;
`speckv_hf.bench.summary` aggregates them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..decoding._transformers import compile_everywhere_config
from ..decoding.coupling import SAMPLING_SETTINGS
from ..decoding.generator import SpecKVGenerator
from ..policies.oracle import ContextOraclePolicy, OraclePolicy, acceptance_runs
from .measure import ForwardCounter
from .methods import DEFAULT_METHODS, HF_DEFAULTS, Method, check_methods, parse_methods, speckv_generator
from .prompts import PromptItem

__all__ = ["CallRecord", "EncodedPrompt", "PromptDone", "encode_prompts", "run_benchmark"]


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt with its token ids.

    Attributes:
        item: the prompt.
        input_ids (`torch.LongTensor` of shape `(1, length)`): its tokens, on the target's device.
        attention_mask (`torch.LongTensor` of shape `(1, length)`): all ones.
    """

    item: PromptItem
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def encode_prompts(tokenizer: Any, items: Sequence[PromptItem], device: str | torch.device = "cpu") -> list:
    """Tokenizes prompts one by one (no padding).

    Args:
        tokenizer: the target's tokenizer.
        items: the prompts.
        device: where the ids go (the target's device).

    Returns:
        A list of [`EncodedPrompt`][].

    Raises:
        ValueError: for a prompt that tokenizes to no token.
    """
    encoded = []
    for item in items:
        batch = tokenizer(item.text, return_tensors="pt")
        if batch.input_ids.shape[1] == 0:
            raise ValueError(f"prompt {item.id!r} tokenizes to no token: give it some text.")
        encoded.append(EncodedPrompt(item, batch.input_ids.to(device), torch.ones_like(batch.input_ids).to(device)))
    return encoded


@dataclass
class CallRecord:
    """One measured `generate()` call.

    Attributes:
        method: the method's name.
        prompt_id: the prompt's id.
        task: the prompt's task.
        repeat: 0-based index of the pass over the prompts.
        seconds: wall-clock time of the call.
        new_tokens: tokens generated.
        target_forwards: target forward calls (the prefill included).
        draft_forwards: draft forward calls.
        target_seconds: time inside target forwards (None where forwards are not timed, on CUDA).
        draft_seconds: time inside draft forwards (None where not timed).
        drafted: tokens drafted (SpecKV and oracle; None for transformers' methods, whose count is not exposed).
        accepted: drafted tokens accepted (as `drafted`).
        guessed: drafted tokens that confirmed context guesses gave, without a draft forward of their own (as
            `drafted`; 0 for a policy without context candidates).
        gamma_histogram: γ per step -> steps (as `drafted`).
        accepted_histogram: accepted tokens per step -> steps (as `drafted`).
        output: the generated token ids.
    """

    method: str
    prompt_id: str
    task: str
    repeat: int
    seconds: float
    new_tokens: int
    target_forwards: int
    draft_forwards: int
    target_seconds: float | None = None
    draft_seconds: float | None = None
    drafted: int | None = None
    accepted: int | None = None
    guessed: int | None = None
    gamma_histogram: dict[int, int] | None = None
    accepted_histogram: dict[int, int] | None = None
    output: list[int] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class PromptDone:
    """Every method has run on one prompt (what `run_benchmark` reports to `on_prompt`, e.g. for a progress line).

    Attributes:
        prompt_id: the prompt's id.
        index: 0-based position of the prompt in its pass.
        prompts: prompts in the pass (the warm-up prompts in the warm-up pass).
        repeat: 0-based index of the pass, -1 for the warm-up.
        repeats: measured passes.
        calls: the calls on this prompt, one per method (empty in the warm-up, which is not measured).
    """

    prompt_id: str
    index: int
    prompts: int
    repeat: int
    repeats: int
    calls: tuple[CallRecord, ...] = ()

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of the measured calls on the prompt (0 in the warm-up)."""
        return sum(c.seconds for c in self.calls)


@dataclass
class _Harness:
    target: torch.nn.Module
    draft: torch.nn.Module
    max_new_tokens: int
    do_sample: bool
    seed: int
    sampling: str
    counters: tuple[ForwardCounter, ForwardCounter]
    max_prompt_length: int = 1
    longest: EncodedPrompt | None = None  # the longest prompt: what the compiled methods warm up on
    warmed: set[str] = field(default_factory=set)
    generators: dict[str, SpecKVGenerator] = field(default_factory=dict)
    oracles: dict[str, list[int]] = field(default_factory=dict)
    continuations: dict[str, list[int]] = field(default_factory=dict)

    def call(self, method: Method, prompt: EncodedPrompt, index: int, repeat: int) -> CallRecord:
        kwargs: dict[str, Any] = {
            "attention_mask": prompt.attention_mask,
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
        }
        generator = None
        if method.kind == "target" and method.compiled:
            kwargs["cache_implementation"] = "static"
            kwargs["compile_config"] = compile_everywhere_config()
            if method.name not in self.warmed and self.longest is not None:
                # transformers compiles on a static cache's second call, and again for a larger cache: twice on
                # the longest prompt, so that no measured call compiles.
                self.warmed.add(method.name)
                for _ in range(2):
                    self.target.generate(
                        self.longest.input_ids, **{**kwargs, "attention_mask": self.longest.attention_mask}
                    )
        elif method.kind == "hf" and method.prompt_lookup_num_tokens is not None:
            kwargs["prompt_lookup_num_tokens"] = method.prompt_lookup_num_tokens  # no draft model at all
        elif method.kind == "hf":
            for key, value in {**HF_DEFAULTS, **method.hf_settings}.items():
                setattr(self.draft.generation_config, key, value)
            kwargs["assistant_model"] = self.draft
        elif method.kind == "speckv":
            generator = self.generators.get(method.name)
            if generator is None:
                generator = speckv_generator(method, self.sampling)
                self.generators[method.name] = generator
                if method.compiled:  # every feed length now, so that no measured call compiles
                    generator.warmup(
                        self.target,
                        self.draft if generator.policy.uses_draft else None,
                        prompt_length=self.max_prompt_length,
                        max_new_tokens=self.max_new_tokens,
                    )
        elif method.kind == "oracle":
            runs, length = self.oracles[prompt.item.id], prompt.input_ids.shape[1]
            if method.name.removeprefix("compiled:") == "context+oracle":
                policy = ContextOraclePolicy(runs, length, self.continuations[prompt.item.id])
            else:
                policy = OraclePolicy(runs, length)
            generator = SpecKVGenerator(policy, warm_start=False, compile=method.compiled)
            if method.compiled:  # the graphs are shared by every oracle call: the first one compiles them
                generator.warmup(
                    self.target, self.draft, prompt_length=self.max_prompt_length, max_new_tokens=self.max_new_tokens
                )
        if generator is not None:
            kwargs["candidate_generator"] = generator
            if generator.policy.uses_draft:  # `context` runs on context candidates alone, without the draft
                kwargs["assistant_model"] = self.draft
        if self.do_sample:
            torch.manual_seed(self.seed + 1000 * repeat + index)
        target_counter, draft_counter = self.counters
        target_counter.reset()
        draft_counter.reset()
        clock = target_counter.clock
        start = clock.now()
        out = self.target.generate(prompt.input_ids, **kwargs)
        seconds = clock.now() - start
        length = prompt.input_ids.shape[1]
        record = CallRecord(
            method=method.name,
            prompt_id=prompt.item.id,
            task=prompt.item.task,
            repeat=repeat,
            seconds=seconds,
            new_tokens=int(out.shape[1] - length),
            target_forwards=target_counter.calls,
            draft_forwards=draft_counter.calls,
            target_seconds=target_counter.seconds if target_counter.timed else None,
            draft_seconds=draft_counter.seconds if draft_counter.timed else None,
            output=out[0, length:].tolist(),
        )
        if generator is not None:
            stats = generator.last_stats
            record.drafted, record.accepted = stats.drafted_tokens, stats.accepted_tokens
            record.guessed = stats.guessed_tokens
            if stats.compiled:  # compiled forwards run no module hooks: the loop counted them
                record.target_forwards, record.draft_forwards = stats.target_forwards, stats.draft_forwards
                record.target_seconds = record.draft_seconds = None
            record.gamma_histogram = dict(stats.gamma_histogram)
            record.accepted_histogram = dict(stats.accepted_histogram)
        return record


def run_benchmark(
    target: torch.nn.Module,
    draft: torch.nn.Module,
    prompts: Sequence[EncodedPrompt],
    methods: Sequence[Method] | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    repeats: int = 1,
    warmup_prompts: int = 1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    sampling: str = "auto",
    on_prompt: Callable[[PromptDone], None] | None = None,
) -> tuple[list[CallRecord], dict[str, list[int]]]:
    """Runs every method on every prompt, interleaved, `repeats` times.

    Before measuring, target-alone greedy output is computed for every prompt (the reference for `mismatches`
    and for the oracle, whose acceptance runs come from the draft teacher-forced along it), and the first
    `warmup_prompts` prompts run once through every method.

    Args:
        target: the target model.
        draft: the draft model.
        prompts: the prompts (see [`encode_prompts`][]).
        methods: the methods (`parse_methods(DEFAULT_METHODS)` by default); the oracle needs greedy decoding.
        max_new_tokens: tokens to generate per call.
        do_sample: sample instead of greedy decoding (each call seeded from `seed`, the prompt and the repeat).
        repeats: passes over the prompts.
        warmup_prompts: prompts run once through every method before measuring.
        seed: base seed for sampling.
        progress: called with a method name after each measured or warm-up call (for a progress bar).
        sampling: how the SpecKV methods sample with `do_sample` (`SpecKVGenerator(sampling=...)`), unless a
            method names its own.
        on_prompt: called with a [`PromptDone`][] once every method has run on a prompt, warm-up included (for a
            progress line per prompt where no progress bar can be drawn).

    Returns:
        The measured calls, and the reference (target-alone greedy) output per prompt id.

    Raises:
        ValueError: for the oracle with `do_sample=True`, a SpecKV method whose settings the run's sampling refuses
            (`check_methods`), for `repeats < 1` or no prompts, duplicate prompt ids, or
            an unknown sampling scheme.
    """
    methods = list(methods) if methods is not None else parse_methods(DEFAULT_METHODS)
    if do_sample and any(m.kind == "oracle" for m in methods):
        raise ValueError("the oracle is defined on greedy output: drop 'oracle' from the methods with --do-sample.")
    if sampling not in SAMPLING_SETTINGS or any(m.sampling not in (None, *SAMPLING_SETTINGS) for m in methods):
        given = sorted({sampling, *(m.sampling for m in methods if m.sampling is not None)} - set(SAMPLING_SETTINGS))
        raise ValueError(f"sampling must be one of {', '.join(map(repr, SAMPLING_SETTINGS))}, got {given[0]!r}.")
    check_methods(methods, sampling)  # every generator setting, before any forward
    if repeats < 1 or not prompts:
        raise ValueError("run_benchmark needs at least one prompt and repeats >= 1.")
    if len({p.item.id for p in prompts}) != len(prompts):
        raise ValueError("prompt ids must be unique.")
    timed = all(p.device.type != "cuda" for model in (target, draft) for p in model.parameters())
    counters = (ForwardCounter(target, timed), ForwardCounter(draft, timed))
    harness = _Harness(target, draft, max_new_tokens, do_sample, seed, sampling, counters)
    harness.longest = max(prompts, key=lambda p: int(p.input_ids.shape[1]))
    harness.max_prompt_length = int(harness.longest.input_ids.shape[1])
    saved = {key: getattr(draft.generation_config, key, None) for key in HF_DEFAULTS}
    reference: dict[str, list[int]] = {}
    records: list[CallRecord] = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                out = target.generate(
                    prompt.input_ids,
                    attention_mask=prompt.attention_mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                )
                reference[prompt.item.id] = out[0, prompt.input_ids.shape[1] :].tolist()
                harness.continuations[prompt.item.id] = reference[prompt.item.id]
                if any(m.kind == "oracle" for m in methods):
                    harness.oracles[prompt.item.id] = acceptance_runs(
                        draft, prompt.input_ids, reference[prompt.item.id]
                    )
        warmup = prompts[:warmup_prompts]
        for index, prompt in enumerate(warmup):
            for method in methods:
                harness.call(method, prompt, index, repeat=-1)
                if progress is not None:
                    progress(method.name)
            if on_prompt is not None:
                on_prompt(PromptDone(prompt.item.id, index, len(warmup), -1, repeats))
        for repeat in range(repeats):
            for index, prompt in enumerate(prompts):
                shift = (index + repeat) % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    records.append(harness.call(method, prompt, index, repeat))
                    if progress is not None:
                        progress(method.name)
                if on_prompt is not None:
                    calls = tuple(records[-len(methods) :])
                    on_prompt(PromptDone(prompt.item.id, index, len(prompts), repeat, repeats, calls))
    finally:
        for counter in harness.counters:
            counter.remove()
        for key, value in saved.items():
            setattr(draft.generation_config, key, value)
    return records, reference
