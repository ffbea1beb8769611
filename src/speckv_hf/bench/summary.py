"""What `speckv bench` reports per method and per compression: summaries led by paired figures, and the oracle's
ceilings.

Summaries lead with paired figures (see [`paired_ratios`][speckv_hf.bench.paired.paired_ratios]): each call's tokens
per second over the reference method's (target-only) on the same prompt in the same repeat, run next to it, then
the median and interquartile range of those ratios. [`summarize`][] also attaches what
[`measurement_warnings`][speckv_hf.bench.checks.measurement_warnings] finds.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..policies.oracle import ForwardCosts, oracle_steps
from .checks import measurement_warnings
from .harness import CallRecord
from .measure import Divergence
from .paired import paired_ratios, quartiles
from .repeats import repeat_rates_by_task

__all__ = ["CompressionSummary", "MethodSummary", "is_constant", "summarize"]


@dataclass
class MethodSummary:
    """One method at one compression, aggregated over prompts and repeats (the `results` entries of the JSON).

    Attributes:
        compression: the compression name.
        method: the method name.
        kind: `target`, `hf`, `speckv` or `oracle`.
        calls: measured `generate()` calls.
        tokens: tokens generated.
        seconds: wall-clock seconds of those calls.
        tokens_per_s: `tokens / seconds`.
        median_tokens_per_s: median over calls of each call's tokens per second.
        iqr_tokens_per_s: 25th and 75th percentiles over calls.
        repeat_speedups: the paired speedup (as `median_speedup`) within each repeat: its spread across repeats says
            how far to trust the figure.
        speedup: `tokens_per_s` over target-only's: a ratio of totals, which one stalled call can move several-fold.
        median_speedup: the paired speedup, the figure summaries lead with: median over calls of each call's tokens
            per second over target-only's on the same prompt in the same repeat (run next to it). Robust to a call
            slowed by the machine.
        iqr_speedup: 25th and 75th percentiles of those paired ratios.
        of_oracle: `tokens_per_s` over the measured oracle's (None without the oracle).
        tokens_per_target_forward: tokens over target forwards.
        draft_forwards_per_token: draft forwards over tokens.
        acceptance_rate: accepted over drafted tokens (transformers' methods: estimated as tokens beyond one per
            target forward over draft forwards; None for target-only).
        gamma_histogram: γ per step -> steps (SpecKV and oracle only).
        accepted_histogram: accepted tokens per step -> steps (SpecKV and oracle only).
        time_split: shares of the time in target forwards, draft forwards and everything else (None when forwards
            are not timed).
        mismatches: prompts whose greedy output differs from target-only (None when sampling).
        near_tie_mismatches: of those, the ones whose first difference is a near-tie.
        paired_calls: calls that had a target-only call on the same prompt and repeat (the paired ratios' count).
        paired_of_oracle: median over calls of each call's tokens per second over the oracle's on the same prompt
            and repeat (None without the oracle).
    """

    compression: str
    method: str
    kind: str
    calls: int
    tokens: int
    seconds: float
    tokens_per_s: float
    median_tokens_per_s: float
    iqr_tokens_per_s: tuple[float, float]
    repeat_speedups: list[float]
    speedup: float
    median_speedup: float
    iqr_speedup: tuple[float, float]
    of_oracle: float | None
    tokens_per_target_forward: float
    draft_forwards_per_token: float
    acceptance_rate: float | None
    gamma_histogram: dict[int, int] | None
    accepted_histogram: dict[int, int] | None
    time_split: dict[str, float] | None
    mismatches: int | None
    near_tie_mismatches: int | None
    paired_calls: int = 0
    paired_of_oracle: float | None = None


@dataclass
class CompressionSummary:
    """What one compression's run says as a whole (the `compressions` entries of the JSON).

    Attributes:
        compression: the name asked for.
        detected: what `detect_compression` reads from the loaded target.
        best_fixed: the `fixed:K` of our own loop with the highest paired speedup over target-only (None when none
            ran; a `fixed:K[...]` with settings is compared with it, not a candidate).
        best_fixed_tokens_per_s: its tokens per second (total).
        vs_best_fixed: for each other SpecKV method and the oracle, the median over prompts and repeats of its call's
            tokens per second over the best constant's call on the same prompt (`paired`, the figure to read), their
            25th and 75th percentiles (`paired_iqr`), how many pairs (`pairs`), and the ratio of total tokens per
            second (`total`).
        measured_oracle_tokens_per_s: the oracle through our loop (None without the oracle).
        modeled_oracle_tokens_per_s: the oracle's steps priced with bare forward times (no loop overhead).
        modeled_target_tokens_per_s: target-alone decoding priced the same way.
        loop_efficiency: measured over modeled oracle tokens per second: what the loop's own cost leaves.
        forward_ms: the bare forward times used (`draft`, `target_prefill`, `target` by drafted tokens).
        failures: greedy outputs that differ from target-only away from a near-tie (method, prompt, position, gap).
        warnings: measurements not to trust as they stand (see
            [`measurement_warnings`][speckv_hf.bench.checks.measurement_warnings]): each with `kind` (`stall` or
            `oracle_below`), `method`, `message` (the likely cause and what to rerun), and the figures.
        repeat_rates: how much of the target alone's output repeats earlier text, per task and over all (see
            [`repeat_rates_by_task`][speckv_hf.bench.repeats.repeat_rates_by_task]): tells a gain on text grounded
            in the prompt from one on a model looping on itself. None when the prompts' tokens were not given.
    """

    compression: str
    detected: str
    best_fixed: str | None = None
    best_fixed_tokens_per_s: float | None = None
    vs_best_fixed: dict[str, dict[str, Any]] = field(default_factory=dict)
    measured_oracle_tokens_per_s: float | None = None
    modeled_oracle_tokens_per_s: float | None = None
    modeled_target_tokens_per_s: float | None = None
    loop_efficiency: float | None = None
    forward_ms: dict[str, Any] | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    repeat_rates: dict[str, Any] | None = None


def is_constant(method: str) -> bool:
    """Whether `method` is a constant γ of our own loop, a candidate for the best constant: `fixed:K` as such, not
    compiled and without settings (a `fixed:K[...]` or `compiled:fixed:K` is compared with the best one instead)."""
    head, _, k = method.partition(":")
    return head == "fixed" and k.isdigit()


def _merge(histograms: Sequence[dict[int, int] | None]) -> dict[int, int] | None:
    present = [h for h in histograms if h is not None]
    if not present:
        return None
    total: Counter[int] = Counter()
    for histogram in present:
        total.update(histogram)
    return dict(sorted(total.items()))


def _total_rate(calls: Sequence[CallRecord]) -> float:
    seconds = sum(c.seconds for c in calls)
    return sum(c.new_tokens for c in calls) / seconds if seconds else 0.0


def summarize(
    compression: str,
    detected: str,
    records: Sequence[CallRecord],
    divergences: Mapping[tuple[str, str], Divergence],
    do_sample: bool,
    oracle_runs: Mapping[str, Sequence[int]] | None = None,
    forward_costs: ForwardCosts | None = None,
    max_new_tokens: int | None = None,
    prompt_tokens: Mapping[str, Sequence[int]] | None = None,
) -> tuple[list[MethodSummary], CompressionSummary]:
    """Aggregates one compression's calls.

    Args:
        compression: the compression name.
        detected: the detected compression, as text.
        records: the measured calls (every method, every prompt, every repeat).
        divergences: `(method, prompt_id) -> Divergence` for greedy outputs that differ from the reference.
        do_sample: whether the calls sampled (then `mismatches` are None).
        oracle_runs: `prompt_id -> acceptance runs`, for the modeled ceiling.
        forward_costs: bare forward times, for the modeled ceiling.
        max_new_tokens: the length budget of the calls.
        prompt_tokens: `prompt_id -> the prompt's token ids`, for the repeat rates of target-only's output.

    Returns:
        One `MethodSummary` per method (in first-seen order) and the `CompressionSummary`, whose `warnings` hold
        what [`measurement_warnings`][speckv_hf.bench.checks.measurement_warnings] finds.
    """
    methods = list(dict.fromkeys(r.method for r in records))
    by_method = {m: [r for r in records if r.method == m] for m in methods}
    repeats = sorted({r.repeat for r in records})
    base = by_method.get("target-only", [])
    base_rate = _total_rate(base)
    oracle_calls = by_method.get("oracle", [])
    oracle_rate = _total_rate(oracle_calls) if oracle_calls else None
    summaries = [
        _method_summary(
            compression, method, calls, base, base_rate, oracle_calls, oracle_rate, repeats, divergences, do_sample
        )
        for method, calls in by_method.items()
    ]
    overall = CompressionSummary(compression=compression, detected=detected, measured_oracle_tokens_per_s=oracle_rate)
    fixed = [s for s in summaries if is_constant(s.method)]
    if fixed:
        # Chosen by the paired figure, so that one stalled call cannot make another constant look best.
        best = max(fixed, key=lambda s: (s.median_speedup, s.median_tokens_per_s))
        overall.best_fixed, overall.best_fixed_tokens_per_s = best.method, best.tokens_per_s
        for summary in summaries:
            if summary.kind in {"speckv", "oracle"} and not is_constant(summary.method):
                ratios = paired_ratios(by_method[summary.method], by_method[best.method])
                q1, median, q3 = quartiles(ratios) if ratios else (0.0, 0.0, 0.0)
                overall.vs_best_fixed[summary.method] = {
                    "paired": median,
                    "paired_iqr": [q1, q3],
                    "pairs": len(ratios),
                    "total": summary.tokens_per_s / best.tokens_per_s if best.tokens_per_s else 0.0,
                }
    if oracle_runs and forward_costs is not None:
        _model_oracle(overall, oracle_runs, forward_costs, max_new_tokens)
    for (method, prompt_id), divergence in sorted(divergences.items()):
        if not divergence.near_tie:
            overall.failures.append({"method": method, "prompt_id": prompt_id, **asdict(divergence)})
    overall.warnings = measurement_warnings(summaries, records)
    if prompt_tokens is not None and base:
        overall.repeat_rates = repeat_rates_by_task(
            [(c.task, prompt_tokens[c.prompt_id], c.output) for c in base if c.prompt_id in prompt_tokens]
        )
    return summaries, overall


def _method_summary(
    compression: str,
    method: str,
    calls: Sequence[CallRecord],
    base: Sequence[CallRecord],
    base_rate: float,
    oracle_calls: Sequence[CallRecord],
    oracle_rate: float | None,
    repeats: Sequence[int],
    divergences: Mapping[tuple[str, str], Divergence],
    do_sample: bool,
) -> MethodSummary:
    kind = _kind(method)
    tokens = sum(c.new_tokens for c in calls)
    seconds = sum(c.seconds for c in calls)
    forwards = sum(c.target_forwards for c in calls)
    drafts = sum(c.draft_forwards for c in calls)
    q1, median, q3 = quartiles([c.tokens_per_second for c in calls])
    paired = paired_ratios(calls, base)
    s1, median_speedup, s3 = quartiles(paired) if paired else (0.0, 0.0, 0.0)
    repeat_speedups = []
    for repeat in repeats:
        within = paired_ratios([c for c in calls if c.repeat == repeat], [c for c in base if c.repeat == repeat])
        if within:
            repeat_speedups.append(statistics.median(within))
    of_oracle_paired = paired_ratios(calls, oracle_calls)
    drafted = [c.drafted for c in calls if c.drafted is not None]
    if drafted:
        accepted = sum(c.accepted or 0 for c in calls)
        acceptance = accepted / sum(drafted) if sum(drafted) else None
    elif kind == "hf" and drafts:
        acceptance = (tokens - forwards) / drafts
    else:
        acceptance = None
    timed = [c for c in calls if c.target_seconds is not None]
    time_split = None
    if timed and seconds:
        target_share = sum(c.target_seconds or 0.0 for c in timed) / seconds
        draft_share = sum(c.draft_seconds or 0.0 for c in timed) / seconds
        time_split = {
            "target_forward": target_share,
            "draft_forward": draft_share,
            "other": max(1.0 - target_share - draft_share, 0.0),
        }
    prompts = {c.prompt_id for c in calls}
    diverged = [divergences[(method, p)] for p in prompts if (method, p) in divergences]
    rate = _total_rate(calls)
    return MethodSummary(
        compression=compression,
        method=method,
        kind=kind,
        calls=len(calls),
        tokens=tokens,
        seconds=seconds,
        tokens_per_s=rate,
        median_tokens_per_s=median,
        iqr_tokens_per_s=(q1, q3),
        repeat_speedups=repeat_speedups,
        speedup=rate / base_rate if base_rate else 0.0,
        median_speedup=median_speedup,
        iqr_speedup=(s1, s3),
        of_oracle=rate / oracle_rate if oracle_rate else None,
        tokens_per_target_forward=tokens / forwards if forwards else 0.0,
        draft_forwards_per_token=drafts / tokens if tokens else 0.0,
        acceptance_rate=acceptance,
        gamma_histogram=_merge([c.gamma_histogram for c in calls]),
        accepted_histogram=_merge([c.accepted_histogram for c in calls]),
        time_split=time_split,
        mismatches=None if do_sample else len(diverged),
        near_tie_mismatches=None if do_sample else sum(d.near_tie for d in diverged),
        paired_calls=len(paired),
        paired_of_oracle=statistics.median(of_oracle_paired) if of_oracle_paired else None,
    )


def _model_oracle(
    overall: CompressionSummary,
    oracle_runs: Mapping[str, Sequence[int]],
    forward_costs: ForwardCosts,
    max_new_tokens: int | None,
) -> None:
    steps = {p: oracle_steps(runs, max_new_tokens) for p, runs in oracle_runs.items()}
    tokens = sum(sum(s) + len(s) for s in steps.values())
    oracle_seconds = sum(forward_costs.oracle_seconds(s) for s in steps.values())
    target_seconds = sum(forward_costs.target_seconds(sum(s) + len(s)) for s in steps.values())
    overall.modeled_oracle_tokens_per_s = tokens / oracle_seconds if oracle_seconds else None
    overall.modeled_target_tokens_per_s = tokens / target_seconds if target_seconds else None
    if overall.measured_oracle_tokens_per_s and overall.modeled_oracle_tokens_per_s:
        overall.loop_efficiency = overall.measured_oracle_tokens_per_s / overall.modeled_oracle_tokens_per_s
    overall.forward_ms = {
        "draft": forward_costs.draft_forward * 1e3,
        "target_prefill": forward_costs.target_prefill * 1e3,
        "target": {str(k): v * 1e3 for k, v in sorted(forward_costs.target_forward.items())},
    }


def _kind(method: str) -> str:
    """The method's kind (as `Method.kind`) from its name: the two oracles in either loop are oracles, the target
    alone eager or compiled is the target."""
    if method in ("target-only", "target-compiled"):
        return "target"
    if method.removeprefix("compiled:") in ("oracle", "context+oracle"):
        return "oracle"
    return "hf" if method.startswith("hf-") else "speckv"
