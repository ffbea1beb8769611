"""Benchmark harness: SpecKV policies against transformers' own assisted generation and the target alone.

Every configuration runs on the same prompts, interleaved per prompt (the order rotates from prompt to prompt) after
a warm-up, so slow drifts of the machine hit all configurations alike. Target and draft forwards are counted and
timed with forward hooks, the same way for every configuration.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .cost import Clock
from .generator import SpecKVGenerator
from .policies import DraftPolicy

__all__ = ["BenchConfig", "BenchResult", "ForwardCounter", "default_configs", "measure_draft_forward", "run_benchmark"]


class ForwardCounter:
    """Counts and times the forward calls of a model with forward hooks.

    Args:
        model: the model to watch.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._clock = Clock(*{p.device for p in model.parameters()})
        self.calls = 0
        self.seconds = 0.0
        self._start = 0.0
        self._handles = [
            model.register_forward_pre_hook(self._pre),
            model.register_forward_hook(self._post),
        ]

    def _pre(self, *_: Any) -> None:
        self._start = self._clock.now()

    def _post(self, *_: Any) -> None:
        self.calls += 1
        self.seconds += self._clock.now() - self._start

    def reset(self) -> None:
        """Sets the counters to zero."""
        self.calls, self.seconds = 0, 0.0

    def remove(self) -> None:
        """Removes the hooks."""
        for handle in self._handles:
            handle.remove()


@dataclass
class BenchConfig:
    """One configuration to benchmark.

    Attributes:
        name: label in the report.
        kind: `"target"` (target alone), `"hf"` (transformers' assisted generation) or `"speckv"`.
        hf_settings: for `"hf"`, the assistant's generation-config settings (`num_assistant_tokens`, ...).
        policy: for `"speckv"`, the policy passed to `SpecKVGenerator` (a name such as `"fixed:4"` or a
            `DraftPolicy`).
    """

    name: str
    kind: str
    hf_settings: dict[str, Any] = field(default_factory=dict)
    policy: str | DraftPolicy = "adaptive"


@dataclass
class BenchResult:
    """Aggregated measurements of one configuration over all prompts.

    Attributes:
        config: the configuration.
        seconds: wall-clock seconds of all `generate()` calls.
        tokens: new tokens generated.
        target_forwards: target forward calls.
        draft_forwards: draft forward calls.
        target_seconds: time inside target forwards.
        draft_seconds: time inside draft forwards.
        drafted: tokens drafted (SpecKV only; transformers' is estimated as draft forwards).
        accepted: drafted tokens accepted (SpecKV only).
        time_split: SpecKV's draft / verify / loop / policy seconds.
        outputs: generated token ids per prompt.
    """

    config: BenchConfig
    seconds: float = 0.0
    tokens: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    target_seconds: float = 0.0
    draft_seconds: float = 0.0
    drafted: int = 0
    accepted: int = 0
    time_split: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("draft", "verify", "loop", "policy"), 0.0)
    )
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        return self.tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Accepted drafted tokens per target forward (tokens per forward minus the target's own token)."""
        return self.tokens_per_target_forward - 1 if self.target_forwards else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted over drafted tokens. For transformers' runs, drafted tokens are counted as draft forwards (its
        assistant runs one forward per drafted token) and accepted ones as tokens beyond one per target forward."""
        if self.config.kind == "speckv":
            return self.accepted / self.drafted if self.drafted else None
        if self.config.kind == "hf" and self.draft_forwards:
            return (self.tokens - self.target_forwards) / self.draft_forwards
        return None

    @property
    def draft_loop_seconds_per_token(self) -> float | None:
        """Time outside target forwards per drafted token (draft forwards + loop + policy); None if none drafted."""
        drafted = self.drafted or (self.draft_forwards if self.config.kind == "hf" else 0)
        if not drafted:
            return None
        return (self.seconds - self.target_seconds) / drafted


def default_configs() -> list[BenchConfig]:
    """The configurations of the issue's benchmark: target alone, transformers' assisted generation (defaults,
    heuristic, constant γ 1, 2, 4, 6, 8) and every SpecKV policy."""
    configs = [BenchConfig("target alone", "target"), BenchConfig("hf default", "hf", {})]
    configs.append(
        BenchConfig(
            "hf heuristic",
            "hf",
            {
                "num_assistant_tokens": 20,
                "num_assistant_tokens_schedule": "heuristic_transient",
                "assistant_confidence_threshold": 0.0,
            },
        )
    )
    for gamma in (1, 2, 4, 6, 8):
        configs.append(
            BenchConfig(
                f"hf constant γ={gamma}",
                "hf",
                {
                    "num_assistant_tokens": gamma,
                    "num_assistant_tokens_schedule": "constant",
                    "assistant_confidence_threshold": 0.0,
                },
            )
        )
    for policy in ("adaptive", "fixed:4", "heuristic", "confidence"):
        configs.append(BenchConfig(f"speckv {policy}", "speckv", policy=policy))
    return configs


_HF_DEFAULTS = {
    "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant",
    "assistant_confidence_threshold": 0.4,
}


def _run_once(
    config: BenchConfig,
    target: torch.nn.Module,
    draft: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    generators: dict[str, SpecKVGenerator],
    result: BenchResult | None,
    counters: tuple[ForwardCounter, ForwardCounter],
) -> None:
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "attention_mask": attention_mask}
    if config.kind == "hf":
        for key, value in {**_HF_DEFAULTS, **config.hf_settings}.items():
            setattr(draft.generation_config, key, value)
        kwargs["assistant_model"] = draft
    elif config.kind == "speckv":
        kwargs["assistant_model"] = draft
        kwargs["candidate_generator"] = generators[config.name]
    for counter in counters:
        counter.reset()
    clock = counters[0]._clock
    start = clock.now()
    out = target.generate(input_ids, **kwargs)
    seconds = clock.now() - start
    if result is None:  # warm-up
        return
    target_counter, draft_counter = counters
    result.seconds += seconds
    result.tokens += out.shape[1] - input_ids.shape[1]
    result.target_forwards += target_counter.calls
    result.target_seconds += target_counter.seconds
    result.draft_forwards += draft_counter.calls
    result.draft_seconds += draft_counter.seconds
    result.outputs.append(out[0, input_ids.shape[1] :].tolist())
    if config.kind == "speckv":
        stats = generators[config.name].last_stats
        result.drafted += stats.drafted_tokens
        result.accepted += stats.accepted_tokens
        result.time_split["draft"] += stats.draft_seconds - stats.policy_seconds
        result.time_split["policy"] += stats.policy_seconds
        result.time_split["verify"] += stats.verify_seconds
        result.time_split["loop"] += stats.overhead_seconds


def run_benchmark(
    target: torch.nn.Module,
    draft: torch.nn.Module,
    prompts: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    configs: Sequence[BenchConfig] | None = None,
    max_new_tokens: int = 64,
    warmup_prompts: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[BenchResult]:
    """Runs every configuration on every prompt, interleaved, and aggregates.

    Args:
        target: the target model.
        draft: the draft model.
        prompts: `(input_ids, attention_mask)` pairs, each of shape `(1, length)`.
        configs: configurations to run (`default_configs()` by default).
        max_new_tokens: tokens to generate per prompt.
        warmup_prompts: prompts run once through every configuration before measuring.
        progress: called with `(done, total)` after each prompt.

    Returns:
        One `BenchResult` per configuration, in the order of `configs`.
    """
    configs = list(configs or default_configs())
    prompts = list(prompts)
    generators = {c.name: SpecKVGenerator(c.policy) for c in configs if c.kind == "speckv"}
    results = [BenchResult(config) for config in configs]
    counters = (ForwardCounter(target), ForwardCounter(draft))
    saved = {key: getattr(draft.generation_config, key, None) for key in _HF_DEFAULTS}
    try:
        for input_ids, mask in prompts[:warmup_prompts]:
            for config in configs:
                _run_once(config, target, draft, input_ids, mask, max_new_tokens, generators, None, counters)
        for index, (input_ids, mask) in enumerate(prompts):
            order = list(range(len(configs)))
            shift = index % len(order)
            for i in order[shift:] + order[:shift]:
                _run_once(configs[i], target, draft, input_ids, mask, max_new_tokens, generators, results[i], counters)
            if progress is not None:
                progress(index + 1, len(prompts))
    finally:
        for counter in counters:
            counter.remove()
        for key, value in saved.items():
            setattr(draft.generation_config, key, value)
    return results


def measure_draft_forward(draft: torch.nn.Module, input_ids: torch.Tensor, repeats: int = 30) -> float:
    """Median time of one bare single-token draft forward with a KV cache (seconds).

    Args:
        draft: the draft model.
        input_ids (`torch.LongTensor` of shape `(1, length)`): a prompt to fill the cache with.
        repeats: timed forwards.

    Returns:
        The median time in seconds.
    """
    clock = Clock(*{p.device for p in draft.parameters()})
    times = []
    with torch.no_grad():
        out = draft(input_ids=input_ids, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(repeats):
            start = clock.now()
            out = draft(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            times.append(clock.now() - start)
            cache.crop(-1)  # keep the length constant
    return statistics.median(times)
