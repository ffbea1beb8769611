"""Repeat rates: the share of new tokens whose 4-gram occurred before, in the prompt or only in earlier output."""

from __future__ import annotations

import pytest

from speckv_hf.bench.harness import CallRecord
from speckv_hf.bench.repeats import RepeatCounts, repeat_counts, repeat_rates_by_task
from speckv_hf.bench.summary import summarize

# Prompt 4-grams: (1, 2, 3, 4) and (2, 3, 4, 5). Each new token, with the 4-gram it closes:
#   1 (3, 4, 5, 1) new    2 (4, 5, 1, 2) new    3 (5, 1, 2, 3) new    4 (1, 2, 3, 4) in the prompt
#   9 (2, 3, 4, 9) new    2 (3, 4, 9, 2) new    3 (4, 9, 2, 3) new    4 (9, 2, 3, 4) new
#   9 (2, 3, 4, 9) earlier output    5 (3, 4, 9, 5) new    2 (4, 9, 5, 2) new    3 (9, 5, 2, 3) new
#   4 (5, 2, 3, 4) new    5 (2, 3, 4, 5) in the prompt
PROMPT = [1, 2, 3, 4, 5]
OUTPUT = [1, 2, 3, 4, 9, 2, 3, 4, 9, 5, 2, 3, 4, 5]


def test_repeat_counts_of_a_hand_made_sequence():
    counts = repeat_counts(PROMPT, OUTPUT)
    # 14 new tokens, 3 repeated: 2 closing a 4-gram of the prompt, 1 closing one of earlier output only.
    assert counts == RepeatCounts(tokens=14, repeated=3, in_prompt=2)
    assert counts.rate == pytest.approx(3 / 14)
    assert counts.prompt_rate == pytest.approx(2 / 14) and counts.output_rate == pytest.approx(1 / 14)


def test_repeat_counts_edges():
    assert repeat_counts([1, 2, 3, 4], [1, 2, 3, 4], n=2) == RepeatCounts(4, 3, 3)  # (4, 1) is new
    assert repeat_counts([7], [7, 7, 7, 7]) == RepeatCounts(4, 1, 0)  # 4-grams from the 4th token: (7, 7, 7, 7) twice
    assert repeat_counts([1, 2], []) == RepeatCounts(0, 0, 0) and RepeatCounts().rate == 0.0
    # A 4-gram that straddles the prompt's end is earlier output, not the prompt.
    assert repeat_counts([1, 2, 3], [4, 1, 2, 3, 4]) == RepeatCounts(5, 1, 0)
    with pytest.raises(ValueError, match="at least 1"):
        repeat_counts([1], [1], n=0)


def test_repeat_rates_pool_counts_per_task():
    rates = repeat_rates_by_task([("a", PROMPT, OUTPUT), ("b", [7], [7, 7, 7, 7]), ("a", [1, 2, 3, 4], [])])
    assert rates["ngram"] == 4 and list(rates["tasks"]) == ["a", "b"]
    assert rates["tasks"]["a"] == {
        "calls": 2,
        "tokens": 14,
        "repeated": 3,
        "in_prompt": 2,
        "rate": pytest.approx(3 / 14),
        "prompt_rate": pytest.approx(2 / 14),
        "output_rate": pytest.approx(1 / 14),
    }
    assert rates["all"]["calls"] == 3 and rates["all"]["tokens"] == 18
    assert rates["all"]["rate"] == pytest.approx(4 / 18)


def test_summarize_reads_repeat_rates_from_target_only():
    def record(method: str, output: list[int]) -> CallRecord:
        return CallRecord(method, "p", "t", 0, 1.0, len(output), 5, 0, output=output)

    records = [record("target-only", OUTPUT), record("fixed:2", [0] * len(OUTPUT))]
    _, overall = summarize("fp32", "fp32", records, {}, do_sample=False, prompt_tokens={"p": PROMPT})
    assert overall.repeat_rates["tasks"]["t"]["repeated"] == 3  # target-only's output, not fixed:2's
    _, without = summarize("fp32", "fp32", records, {}, do_sample=False)
    assert without.repeat_rates is None
