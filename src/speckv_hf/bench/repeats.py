"""How much of a workload's output repeats earlier text, and whether the prompt or the output itself is the source.

Speculation gains where text repeats: a draft, or a lookup in the context, guesses a repeated span well. A gain on a
model looping on its own output is not a gain on text grounded in the input (a file being edited, a table being
continued, a document being quoted), so `speckv bench` prints both per task, from the target alone's output:

- the **repeat rate**: the share of new tokens whose 4-gram (the token and its 3 predecessors) occurred earlier, in
  the prompt or in earlier output;
- split into **in the prompt** (that 4-gram occurs within the prompt) and **only in earlier output** (it first
  occurred after the prompt began to be continued, a span the model wrote itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["REPEAT_NGRAM", "RepeatCounts", "repeat_counts", "repeat_rates_by_task"]

#: The n-gram length of [`repeat_counts`][]: a token counts as repeated when it and its 3 predecessors occurred
#: together before (long enough that common pairs of tokens do not count).
REPEAT_NGRAM = 4


@dataclass(frozen=True)
class RepeatCounts:
    """Counts behind a repeat rate; they add up over calls, the rates do not.

    Attributes:
        tokens: new (generated) tokens.
        repeated: of those, the tokens whose n-gram occurred earlier (in the prompt or in earlier output).
        in_prompt: of `repeated`, the tokens whose n-gram occurs within the prompt.
    """

    tokens: int = 0
    repeated: int = 0
    in_prompt: int = 0

    def __add__(self, other: RepeatCounts) -> RepeatCounts:
        return RepeatCounts(
            self.tokens + other.tokens, self.repeated + other.repeated, self.in_prompt + other.in_prompt
        )

    @property
    def rate(self) -> float:
        """`repeated / tokens` (0 without tokens)."""
        return self.repeated / self.tokens if self.tokens else 0.0

    @property
    def prompt_rate(self) -> float:
        """`in_prompt / tokens`: the share grounded in the prompt."""
        return self.in_prompt / self.tokens if self.tokens else 0.0

    @property
    def output_rate(self) -> float:
        """`(repeated - in_prompt) / tokens`: the share repeating only earlier output."""
        return (self.repeated - self.in_prompt) / self.tokens if self.tokens else 0.0


def repeat_counts(prompt: Sequence[int], output: Sequence[int], n: int = REPEAT_NGRAM) -> RepeatCounts:
    """Counts the new tokens whose n-gram occurred earlier, in the prompt or in earlier output.

    The n-gram of the new token at position `i` of `prompt + output` is the tokens at positions `i - n + 1` to `i`; it
    occurred earlier when the same tokens stand at positions `j - n + 1` to `j` for some `j < i`, and in the prompt
    when some such `j` lies in the prompt. A new token with fewer than `n - 1` tokens before it has no n-gram and
    counts as not repeated. One pass, O(len(prompt) + len(output)) set operations.

    Args:
        prompt: the prompt's token ids (special tokens included, as the model saw them).
        output: the generated token ids.
        n: the n-gram length (4 by default).

    Returns:
        The counts; e.g. `repeat_counts([1, 2, 3, 4], [1, 2, 3, 4], n=2)` has 4 tokens, 3 repeated, all in the
        prompt (the first new token's 2-gram `(4, 1)` is new).

    Raises:
        ValueError: for `n < 1`.
    """
    if n < 1:
        raise ValueError(f"the n-gram length must be at least 1, got {n}.")
    sequence = [*prompt, *output]
    in_prompt = {tuple(sequence[end - n + 1 : end + 1]) for end in range(n - 1, len(prompt))}
    seen = set(in_prompt)
    repeated = grounded = 0
    for end in range(len(prompt), len(sequence)):
        if end < n - 1:
            continue
        gram = tuple(sequence[end - n + 1 : end + 1])
        if gram in seen:
            repeated += 1
            grounded += gram in in_prompt
        seen.add(gram)
    return RepeatCounts(len(output), repeated, grounded)


def repeat_rates_by_task(
    calls: Sequence[tuple[str, Sequence[int], Sequence[int]]], n: int = REPEAT_NGRAM
) -> dict[str, Any]:
    """Repeat rates per task and over all calls, pooled over calls (the counts add up, then divide).

    Args:
        calls: `(task, prompt token ids, output token ids)` per call (`speckv bench` passes the target alone's).
        n: the n-gram length.

    Returns:
        `{"ngram": n, "tasks": {task: rates}, "all": rates}`, tasks in first-seen order, where rates are
        `{"calls", "tokens", "repeated", "in_prompt", "rate", "prompt_rate", "output_rate"}` ([`RepeatCounts`][]'s
        counts and rates).
    """
    pooled: dict[str, tuple[int, RepeatCounts]] = {}
    for task, prompt, output in calls:
        count, counts = pooled.get(task, (0, RepeatCounts()))
        pooled[task] = (count + 1, counts + repeat_counts(prompt, output, n))
    overall = (len(calls), sum((counts for _, counts in pooled.values()), RepeatCounts()))
    return {
        "ngram": n,
        "tasks": {task: _rates(*entry) for task, entry in pooled.items()},
        "all": _rates(*overall),
    }


def _rates(calls: int, counts: RepeatCounts) -> dict[str, Any]:
    return {
        "calls": calls,
        "tokens": counts.tokens,
        "repeated": counts.repeated,
        "in_prompt": counts.in_prompt,
        "rate": counts.rate,
        "prompt_rate": counts.prompt_rate,
        "output_rate": counts.output_rate,
    }
