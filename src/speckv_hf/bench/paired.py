"""Paired figures: each call of a method against the reference method's call on the same prompt, run next to it.

The harness runs every method on a prompt back to back, so a pair shares the machine's state: a call slowed by the
machine moves one ratio, not the median of the ratios, where a ratio of totals can move several-fold.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .harness import CallRecord

__all__ = ["paired_ratios", "quartiles"]


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """The 25th percentile, the median and the 75th percentile (inclusive method; all three equal for one value).

    Args:
        values: at least one value.

    Returns:
        `(q1, median, q3)`.
    """
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


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
