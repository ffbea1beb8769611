"""What in a `speckv bench` run's figures not to trust as they stand: stalled calls and an oracle below another
method (see [`measurement_warnings`][])."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .harness import CallRecord
from .paired import paired_ratios

if TYPE_CHECKING:
    from .summary import MethodSummary

__all__ = ["STALL_MIN_SPREAD", "measurement_warnings"]

#: The least spread [`measurement_warnings`][] grants a method: calls that all ran at the same speed have no spread,
#: and a total that differs from their median by rounding or by a few percent is no stall worth a warning.
STALL_MIN_SPREAD = 0.05


def measurement_warnings(summaries: Sequence[MethodSummary], records: Sequence[CallRecord]) -> list[dict[str, Any]]:
    """What in a run's figures not to trust as they stand: stalled calls and an oracle below another method.

    - `stall`: a method whose total-based speed (`tokens_per_s`, total tokens over total seconds) is below its
      median call's (`median_tokens_per_s`), relative to the median, by more than the spread of its own calls (a
      total above the median is the prompts' mix: a few fast prompts, never a stall). The spread
      is the interquartile range of its per-call tokens per second over their median, and never less than
      `STALL_MIN_SPREAD`. Prompts legitimately run at different speeds, but their mix moves the total away from
      the median by far less than their spread; one call many times slower than the rest (the machine was busy)
      pulls the total down far more, while the median and the paired figures barely move. The test is
      conservative: a stall small against the calls' spread goes unflagged (it still moves the totals, which is
      why summaries lead with paired figures), and with a single call the two agree by definition.
    - `oracle_below`: the oracle (the hindsight ceiling of the draft's runs) slower than another method that
      drafts with the draft model alone, on the median of the paired per-call ratios (`paired`) or on total
      tokens per second (`total`). A ceiling is not beaten in a sound measurement of our own loop; against
      transformers' loop or the target alone, the overhead of our loop can also explain a small gap. Methods with
      candidates from the context (`context...`, `hf-prompt-lookup...`) are not compared: the oracle does not
      know them. Each oracle (`oracle`, `context+oracle`) is compared with the methods without context
      candidates only: `context+oracle` feeds the draft no guesses, so a context policy may come out above it
      without a stall.

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
        # A stalled call pulls the total below the median call; a total above it comes from the prompts' mix.
        if -disagreement > spread:
            warnings.append(
                {
                    "kind": "stall",
                    "method": summary.method,
                    "tokens_per_s": summary.tokens_per_s,
                    "median_tokens_per_s": median,
                    "spread": spread,
                    "message": (
                        f"{summary.method}: {summary.tokens_per_s:.1f} tok/s in total but {median:.1f} tok/s in its "
                        f"median call, {-disagreement:.0%} below it where its calls spread {spread:.0%} "
                        "(interquartile range over median): likely a stalled call (the machine was busy). The "
                        f"paired figures resist it, totals do not; {rerun}."
                    ),
                }
            )
    for oracle in (s for s in summaries if s.kind == "oracle"):
        warnings += _oracle_below(oracle, summaries, records, rerun)
    return warnings


def _oracle_below(
    oracle: MethodSummary, summaries: Sequence[MethodSummary], records: Sequence[CallRecord], rerun: str
) -> list[dict[str, Any]]:
    """The methods an oracle came out below (paired or by totals)."""
    warnings: list[dict[str, Any]] = []
    oracle_calls = [r for r in records if r.method == oracle.method]
    for other in summaries:
        if other.kind == "oracle" or _uses_context(other.method):
            # The draft's oracle knows the draft's runs only, so context candidates and prompt lookup can beat it;
            # the context's oracle feeds the draft no guesses, which a greedy context policy's steps may confirm.
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


def _uses_context(method: str) -> bool:
    """Whether a method's candidates come from the context too (beyond what the oracle knows), whatever its loop
    (`compiled:`) or settings (`[...]`)."""
    name = method.removeprefix("compiled:").partition("[")[0]
    return name == "context" or name.startswith(("context+", "hf-prompt-lookup"))
