"""What `speckv bench` reports: per-method summaries, the oracle ceilings, warnings, the JSON document and its schema.

Summaries lead with paired figures: each call's tokens per second over the reference method's (target-only) on the
same prompt in the same repeat, run next to it, then the median and interquartile range of those ratios. A call
slowed by the machine moves one ratio, not the figure, where a ratio of totals can move several-fold. Two checks
catch what the totals still show (see [`measurement_warnings`][]): a method whose total-based speed disagrees with its
median call, and an oracle that comes out below another method.

The JSON document is versioned (`schema_version`) and described by the JSON Schema in
`speckv_hf/schemas/bench.schema.json` (see [`bench_schema`][]); `docs/benchmarks.md` documents every field.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata, resources
from typing import Any

from ..policies.oracle import ForwardCosts, oracle_steps
from .harness import CallRecord
from .measure import Divergence

__all__ = [
    "SCHEMA_VERSION",
    "STALL_MIN_SPREAD",
    "CompressionSummary",
    "MethodSummary",
    "bench_schema",
    "build_document",
    "machine_info",
    "markdown_tables",
    "measurement_warnings",
    "paired_ratios",
    "summaries_from_document",
    "summarize",
    "vs_best_fixed_text",
]

SCHEMA_VERSION = 1

#: The least spread [`measurement_warnings`][] grants a method: calls that all ran at the same speed have no spread,
#: and a total that differs from their median by rounding or by a few percent is no stall worth a warning.
STALL_MIN_SPREAD = 0.05


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
            ran).
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
        warnings: measurements not to trust as they stand (see [`measurement_warnings`][]): each with `kind`
            (`stall` or `oracle_below`), `method`, `message` (the likely cause and what to rerun), and the figures.
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


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def _merge(histograms: Sequence[dict[int, int] | None]) -> dict[int, int] | None:
    present = [h for h in histograms if h is not None]
    if not present:
        return None
    total: Counter[int] = Counter()
    for histogram in present:
        total.update(histogram)
    return dict(sorted(total.items()))


def paired_ratios(calls: Sequence[CallRecord], reference: Sequence[CallRecord]) -> list[float]:
    """Each call's tokens per second over the reference call's on the same prompt in the same repeat.

    The harness runs every method on a prompt back to back, so a pair shares the machine's state: a slow spell hits
    both calls of a pair, or one pair out of many.

    Args:
        calls: one method's calls.
        reference: the reference method's calls (target-only for speedups).

    Returns:
        One ratio per call that has a reference call with a nonzero speed, in the order of `calls`.
    """
    by_key = {(c.prompt_id, c.repeat): c.tokens_per_second for c in reference}
    return [c.tokens_per_second / by_key[key] for c in calls if by_key.get(key := (c.prompt_id, c.repeat))]


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

    Returns:
        One `MethodSummary` per method (in first-seen order) and the `CompressionSummary`, whose `warnings` hold
        what [`measurement_warnings`][] finds.
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
    fixed = [s for s in summaries if s.method.startswith("fixed:")]
    if fixed:
        # Chosen by the paired figure, so that one stalled call cannot make another constant look best.
        best = max(fixed, key=lambda s: (s.median_speedup, s.median_tokens_per_s))
        overall.best_fixed, overall.best_fixed_tokens_per_s = best.method, best.tokens_per_s
        for summary in summaries:
            if summary.kind in {"speckv", "oracle"} and not summary.method.startswith("fixed:"):
                ratios = paired_ratios(by_method[summary.method], by_method[best.method])
                q1, median, q3 = _quartiles(ratios) if ratios else (0.0, 0.0, 0.0)
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
    q1, median, q3 = _quartiles([c.tokens_per_second for c in calls])
    paired = paired_ratios(calls, base)
    s1, median_speedup, s3 = _quartiles(paired) if paired else (0.0, 0.0, 0.0)
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


def measurement_warnings(summaries: Sequence[MethodSummary], records: Sequence[CallRecord]) -> list[dict[str, Any]]:
    """What in a run's figures not to trust as they stand: stalled calls and an oracle below another method.

    - `stall`: a method whose total-based speed (`tokens_per_s`, total tokens over total seconds) and median call
      (`median_tokens_per_s`) differ, relative to the median, by more than the spread of its own calls. The spread
      is the interquartile range of its per-call tokens per second over their median, and never less than
      `STALL_MIN_SPREAD`. Prompts legitimately run at different speeds, but their mix moves the total away from
      the median by far less than their spread; one call many times slower than the rest (the machine was busy)
      pulls the total down far more, while the median and the paired figures barely move. The test is
      conservative: a stall small against the calls' spread goes unflagged (it still moves the totals, which is
      why summaries lead with paired figures), and with a single call the two agree by definition.
    - `oracle_below`: the oracle (the hindsight ceiling) slower than another method, on the median of the paired
      per-call ratios (`paired`) or on total tokens per second (`total`). A ceiling is not beaten in a sound
      measurement of our own loop; against transformers' loop or the target alone, the overhead of our loop can
      also explain a small gap.

    Args:
        summaries: one compression's method summaries.
        records: the calls they summarize.

    Returns:
        One dictionary per warning: `kind`, `method`, `message` (the likely cause, and `--repeats N` to rerun with),
        and the figures compared.
    """
    repeats = len({r.repeat for r in records}) or 1
    rerun = f"rerun speckv bench with --repeats {max(3, repeats + 2)} to measure more"
    warnings: list[dict[str, Any]] = []
    for summary in summaries:
        median = summary.median_tokens_per_s
        if summary.calls < 2 or median <= 0:
            continue
        spread = max((summary.iqr_tokens_per_s[1] - summary.iqr_tokens_per_s[0]) / median, STALL_MIN_SPREAD)
        disagreement = summary.tokens_per_s / median - 1
        if abs(disagreement) > spread:
            warnings.append(
                {
                    "kind": "stall",
                    "method": summary.method,
                    "tokens_per_s": summary.tokens_per_s,
                    "median_tokens_per_s": median,
                    "spread": spread,
                    "message": (
                        f"{summary.method}: {summary.tokens_per_s:.1f} tok/s in total but {median:.1f} tok/s in its "
                        f"median call, {abs(disagreement):.0%} apart where its calls spread {spread:.0%} "
                        "(interquartile range over median): likely a stalled call (the machine was busy). The "
                        f"paired figures resist it, totals do not; {rerun}."
                    ),
                }
            )
    oracle = next((s for s in summaries if s.kind == "oracle"), None)
    if oracle is None:
        return warnings
    oracle_calls = [r for r in records if r.method == oracle.method]
    for other in summaries:
        if other is oracle:
            continue
        ratios = paired_ratios(oracle_calls, [r for r in records if r.method == other.method])
        paired = statistics.median(ratios) if ratios else None
        total = oracle.tokens_per_s / other.tokens_per_s if other.tokens_per_s else None
        below = [
            f"{name} {value:.2f}x its speed"
            for name, value in (("paired median", paired), ("by totals", total))
            if value is not None and value < 1
        ]
        if not below:
            continue
        cause = "likely a stalled call (the machine was busy)"
        if other.kind != "speckv":
            cause += ", or the overhead of our loop, which this method does not pay"
        warnings.append(
            {
                "kind": "oracle_below",
                "method": oracle.method,
                "other": other.method,
                "paired": paired,
                "total": total,
                "message": (
                    f"{oracle.method} (the hindsight ceiling) came out below {other.method} ({', '.join(below)}): "
                    f"{cause}; {rerun}."
                ),
            }
        )
    return warnings


def _kind(method: str) -> str:
    if method == "target-only":
        return "target"
    if method == "oracle":
        return "oracle"
    return "hf" if method.startswith("hf-") else "speckv"


def machine_info() -> dict[str, Any]:
    """The machine and library versions a run happened on (the `machine` object of the JSON)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for package in ("speckv-hf", "torch", "transformers", "accelerate", "huggingface-hub", "bitsandbytes"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def build_document(
    settings: dict[str, Any],
    results: Sequence[MethodSummary],
    compressions: Sequence[CompressionSummary],
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document of a `speckv bench` run (validates against [`bench_schema`][]).

    Args:
        settings: the run's settings (models, prompts, methods, lengths, ...).
        results: every method summary.
        compressions: every compression summary.
        machine: the machine (measured now by default).

    Returns:
        A JSON-serializable dictionary.
    """
    document = {
        "schema": "speckv-bench",
        "schema_version": SCHEMA_VERSION,
        "machine": machine if machine is not None else machine_info(),
        "settings": settings,
        "results": [asdict(r) for r in results],
        "compressions": [asdict(c) for c in compressions],
    }
    return json.loads(json.dumps(document))  # int keys of histograms become strings, tuples lists


def summaries_from_document(document: dict[str, Any]) -> tuple[list[MethodSummary], list[CompressionSummary]]:
    """Reads the summaries back from a JSON document (e.g. to plot an earlier run again).

    Args:
        document: what [`build_document`][] returned, as loaded from the `--json` file.

    Returns:
        The method summaries and the compression summaries.

    Raises:
        ValueError: for a document of another schema version.
    """
    if document.get("schema") != "speckv-bench" or document.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"not a speckv bench document of schema version {SCHEMA_VERSION}: rerun speckv bench with this version."
        )

    def histogram(value: dict[str, int] | None) -> dict[int, int] | None:
        return None if value is None else {int(k): v for k, v in value.items()}

    results = [
        MethodSummary(
            **{
                **row,
                "iqr_tokens_per_s": tuple(row["iqr_tokens_per_s"]),
                "iqr_speedup": tuple(row["iqr_speedup"]),
                "gamma_histogram": histogram(row["gamma_histogram"]),
                "accepted_histogram": histogram(row["accepted_histogram"]),
            }
        )
        for row in document["results"]
    ]
    return results, [CompressionSummary(**entry) for entry in document["compressions"]]


def bench_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the document [`build_document`][] writes."""
    text = resources.files("speckv_hf").joinpath("schemas/bench.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_tables(results: Sequence[MethodSummary], compressions: Sequence[CompressionSummary]) -> str:
    """Markdown tables of a run, one per compression, with the ceilings and the warnings under each.

    The paired speedup over target-only leads each row; tokens per second are the median call's, with the
    interquartile range over calls, next to the totals.

    Args:
        results: every method summary.
        compressions: every compression summary.

    Returns:
        The Markdown text.
    """
    lines: list[str] = []
    for overall in compressions:
        rows = [r for r in results if r.compression == overall.compression]
        lines += [
            f"### {overall.compression} (detected: {overall.detected})",
            "",
            "| method | paired speedup [IQR] | tok/s median call [IQR] | tok/s total | speedup of totals "
            "| paired per repeat | of oracle (paired) | tok/fwd | draft fwd/tok | acceptance | mismatches |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            spread = (
                f"{min(r.repeat_speedups):.2f}-{max(r.repeat_speedups):.2f}" if len(r.repeat_speedups) > 1 else "-"
            )
            mismatches = "-" if r.mismatches is None else f"{r.mismatches} ({r.near_tie_mismatches} near-tie)"
            lines.append(
                f"| {r.method} | {r.median_speedup:.2f}x [{r.iqr_speedup[0]:.2f}, {r.iqr_speedup[1]:.2f}] "
                f"| {r.median_tokens_per_s:.1f} [{r.iqr_tokens_per_s[0]:.1f}, {r.iqr_tokens_per_s[1]:.1f}] "
                f"| {r.tokens_per_s:.1f} | {r.speedup:.2f}x | {spread} | {_cell(r.paired_of_oracle, '.2f')} "
                f"| {r.tokens_per_target_forward:.2f} | {r.draft_forwards_per_token:.2f} "
                f"| {_cell(r.acceptance_rate, '.0%')} | {mismatches} |"
            )
        lines.append("")
        lines += _ceiling_lines(overall)
        lines += [f"- **warning** ({w['kind']}): {w['message']}" for w in overall.warnings]
        lines.append("")
    return "\n".join(lines)


def vs_best_fixed_text(method: str, ratio: Mapping[str, Any]) -> str:
    """How a method compares with the best constant γ, paired figure first (for tables and the console).

    Args:
        method: the method.
        ratio: its `CompressionSummary.vs_best_fixed` entry (`paired_iqr` and `pairs` may be missing in documents
            of earlier runs).

    Returns:
        E.g. `adaptive: 1.05x the best constant γ of our loop (paired, IQR 0.98-1.10 of 12 calls; totals 1.02x)`.
    """
    iqr = ratio.get("paired_iqr")
    detail = f"IQR {iqr[0]:.2f}-{iqr[1]:.2f}" if iqr else "median"
    if ratio.get("pairs"):
        detail += f" of {ratio['pairs']} calls"
    paired, total = ratio["paired"], ratio["total"]
    return f"{method}: {paired:.2f}x the best constant γ of our loop (paired, {detail}; totals {total:.2f}x)"


def _ceiling_lines(overall: CompressionSummary) -> list[str]:
    lines = []
    if overall.best_fixed is not None:
        best = f"`{overall.best_fixed}` ({overall.best_fixed_tokens_per_s:.1f} tok/s in total)"
        lines.append(f"- best constant γ of our loop (highest paired speedup): {best}")
        for method, ratio in overall.vs_best_fixed.items():
            lines.append(f"- {vs_best_fixed_text(f'`{method}`', ratio)}")
    if overall.measured_oracle_tokens_per_s is not None:
        lines.append(f"- oracle, measured through our loop: {overall.measured_oracle_tokens_per_s:.1f} tok/s")
    if overall.modeled_oracle_tokens_per_s is not None:
        lines.append(
            f"- oracle, modeled from bare forward times: {overall.modeled_oracle_tokens_per_s:.1f} tok/s "
            f"(target alone modeled: {_cell(overall.modeled_target_tokens_per_s, '.1f')} tok/s); "
            f"measured/modeled: {_cell(overall.loop_efficiency, '.2f')}"
        )
    for failure in overall.failures:
        lines.append(
            f"- **MISMATCH** `{failure['method']}` on `{failure['prompt_id']}` at token {failure['position']}: "
            f"top-2 gap {failure['gap']:.4f} is not a near-tie"
        )
    return lines
