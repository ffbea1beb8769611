"""A call the machine stalls: the paired figures hold, the stall and an oracle below another method are flagged.

The arithmetic runs on synthetic per-call timings (the same calls with and without one slowed call), so that its
assertions are deterministic; one small end-to-end run sleeps inside a real `generate()` call and checks the flag
reaches the printed summary, the Markdown and the JSON. No assertion is on elapsed time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from types import SimpleNamespace

import jsonschema
import pytest
import torch
from typer.testing import CliRunner

from speckv_hf.bench import harness as bench_module
from speckv_hf.bench.checks import STALL_MIN_SPREAD, measurement_warnings
from speckv_hf.bench.document import bench_schema
from speckv_hf.bench.harness import CallRecord
from speckv_hf.bench.paired import paired_ratios
from speckv_hf.bench.pairs import LoadedPair
from speckv_hf.bench.summary import summarize
from speckv_hf.cli import app

#: Each method's speed over target-only's, before a small per-prompt wobble (the oracle on top, as it should be).
_RATIOS = {"target-only": 1.0, "fixed:2": 1.5, "fixed:4": 1.7, "adaptive": 1.8, "oracle": 2.2}
_PROMPTS = 8
_TOKENS = 64


def _calls(stall: tuple[str, int, float] | None = None) -> list[CallRecord]:
    """Every method on 8 prompts, target-only's speed varying from prompt to prompt by a third; `stall` is (method,
    prompt index, factor): that call takes `factor` times longer."""
    records = []
    for index in range(_PROMPTS):
        base = 100.0 * (0.85 + 0.1 * (index % 4))  # 85-115 tok/s: prompts run at their own speeds
        for method, ratio in _RATIOS.items():
            wobble = 1.0 if method == "target-only" else 1.0 + 0.02 * math.sin(3 * index + len(method))
            seconds = _TOKENS / (base * ratio * wobble)
            if stall is not None and stall[:2] == (method, index):
                seconds *= stall[2]
            records.append(CallRecord(method, f"p{index}", "task", 0, seconds, _TOKENS, 10, 10))
    return records


def _summary(records):
    rows, overall = summarize("fp32", "fp32", records, {}, do_sample=False)
    return {r.method: r for r in rows}, overall


def test_a_stalled_reference_call_is_flagged_and_the_paired_figures_hold():
    clean_rows, clean = _summary(_calls())
    stalled_rows, stalled = _summary(_calls(stall=("target-only", 3, 8.0)))
    assert clean.warnings == []
    assert [(w["kind"], w["method"]) for w in stalled.warnings] == [("stall", "target-only")]
    message = stalled.warnings[0]["message"]
    assert "stalled call" in message and "machine was busy" in message and "--repeats 3" in message
    # The totals move far: the lead figure must not be theirs.
    assert stalled_rows["adaptive"].speedup > 1.3 * clean_rows["adaptive"].speedup
    for method in _RATIOS:
        assert stalled_rows[method].median_speedup == pytest.approx(clean_rows[method].median_speedup, rel=0.05)
    assert stalled.best_fixed == clean.best_fixed == "fixed:4"
    for method in ("adaptive", "oracle"):
        assert stalled.vs_best_fixed[method]["paired"] == pytest.approx(
            clean.vs_best_fixed[method]["paired"], rel=0.05
        )


def test_a_stalled_oracle_call_puts_the_ceiling_below_by_totals_and_is_flagged():
    _, clean = _summary(_calls())
    rows, overall = _summary(_calls(stall=("oracle", 5, 12.0)))
    assert rows["oracle"].tokens_per_s < rows["adaptive"].tokens_per_s  # what a user would read as a broken ceiling
    kinds = {(w["kind"], w["method"], w.get("other")) for w in overall.warnings}
    assert ("stall", "oracle", None) in kinds and ("oracle_below", "oracle", "adaptive") in kinds
    below = next(w for w in overall.warnings if w["kind"] == "oracle_below" and w["other"] == "adaptive")
    assert below["paired"] > 1 > below["total"]  # on the paired figure the oracle is still on top
    assert "by totals" in below["message"] and "stalled call" in below["message"] and "--repeats" in below["message"]
    assert overall.vs_best_fixed["oracle"]["paired"] == pytest.approx(
        clean.vs_best_fixed["oracle"]["paired"], rel=0.05
    )


def test_an_oracle_below_on_the_paired_figure_is_flagged():
    records = [
        dataclasses.replace(r, seconds=r.seconds * 2) if r.method == "oracle" else r for r in _calls()
    ]  # the oracle at 1.1x target-only on every prompt: below every constant
    _, overall = _summary(records)
    below = {w["other"]: w for w in overall.warnings if w["kind"] == "oracle_below"}
    assert set(below) == {"fixed:2", "fixed:4", "adaptive"}
    assert all(w["paired"] < 1 and "paired median" in w["message"] for w in below.values())
    assert all(w["kind"] != "stall" for w in overall.warnings)  # each call slower alike: no stall


def test_each_oracle_is_checked_against_the_methods_it_knows_about():
    # The context's oracle and a context method with settings, both fast: the draft's oracle is not expected to beat
    # a context method (whatever its settings or loop), the context's oracle is expected to beat the constants.
    renamed = {"adaptive": "context+adaptive[max_guesses=0]"}
    records = [dataclasses.replace(r, method=renamed.get(r.method, r.method)) for r in _calls()]
    slow = [r for r in _calls() if r.method == "oracle"]
    records += [dataclasses.replace(r, method="context+oracle", seconds=r.seconds * 2) for r in slow]  # 1.1x
    records += [
        dataclasses.replace(r, method="compiled:context+adaptive", seconds=r.seconds / 4)
        for r in _calls()
        if r.method == "adaptive"
    ]  # far above the draft's oracle, as context methods may be
    rows, overall = _summary(records)
    assert rows["context+oracle"].kind == "oracle" and rows["target-only"].kind == "target"
    below = {(w["method"], w["other"]) for w in overall.warnings if w["kind"] == "oracle_below"}
    assert below == {("context+oracle", "fixed:2"), ("context+oracle", "fixed:4")}


def test_the_spread_of_legitimately_different_prompts_is_not_a_stall():
    # Prompts at 50-200 tok/s: the total (a harmonic mean) sits well below the median, within the calls' spread.
    records = [CallRecord("fixed:2", f"p{i}", "task", 0, _TOKENS / rate, _TOKENS, 10, 10) for i, rate in
               enumerate([50.0, 80.0, 110.0, 140.0, 170.0, 200.0])]  # fmt: skip
    rows, overall = _summary(records)
    summary = rows["fixed:2"]
    assert summary.tokens_per_s < 0.85 * summary.median_tokens_per_s
    assert overall.warnings == []
    one_call, _ = _summary(records[:1])
    assert measurement_warnings([one_call["fixed:2"]], records[:1]) == []  # one call: total and median agree
    # Same calls, all but one identical: the spread falls to the floor and the slow call is flagged.
    flat = [dataclasses.replace(r, seconds=_TOKENS / 100.0) for r in records]
    flat[2] = dataclasses.replace(flat[2], seconds=flat[2].seconds * (1 + 10 * STALL_MIN_SPREAD))
    _, overall = _summary(flat)
    assert [w["kind"] for w in overall.warnings] == ["stall"]
    # A fast call pulls the total above the median instead: the prompts' mix, never a stall.
    fast = [dataclasses.replace(r, seconds=_TOKENS / 100.0) for r in records]
    fast[2] = dataclasses.replace(fast[2], seconds=fast[2].seconds / 4)
    rows, overall = _summary(fast)
    assert rows["fixed:2"].tokens_per_s > 1.1 * rows["fixed:2"].median_tokens_per_s
    assert overall.warnings == []


def test_paired_ratios_pair_prompt_and_repeat():
    def call(method, prompt_id, repeat, seconds):
        return CallRecord(method, prompt_id, "task", repeat, seconds, 10, 1, 0)

    reference = [call("target-only", "a", 0, 1.0), call("target-only", "a", 1, 2.0), call("target-only", "b", 0, 0)]
    mine = [call("fixed:2", "a", 1, 0.5), call("fixed:2", "a", 0, 0.5), call("fixed:2", "b", 0, 1.0)]
    assert paired_ratios(mine, reference) == [4.0, 2.0]  # prompt b's reference ran at 0 tok/s: no pair


class _Tokenizer:
    """Maps each character to one token id of the tiny test models."""

    def __call__(self, text, return_tensors="pt"):
        return SimpleNamespace(input_ids=torch.tensor([[3 + ord(c) % 90 for c in text]], dtype=torch.long))


def test_a_real_stall_inside_generate_is_flagged_end_to_end(llama_pairs, tmp_path, monkeypatch):
    """`speckv bench` on a tiny pair where one `generate()` call of target-only sleeps: the summary, the Markdown and
    the JSON say so. The sleep is long against a call of the tiny pair however busy the machine, so the flag does
    not hang on timing."""
    target, draft = llama_pairs["llama-noisy"]
    pair = LoadedPair(target, draft, _Tokenizer(), "tiny", "tiny", "fp32")
    monkeypatch.setattr("speckv_hf.bench.pairs.load_pair_for", lambda *_: pair)
    real_call = bench_module._Harness.call
    slowest, slept = [0.0], []

    def call(self, method, prompt, index, repeat):
        if method.name != "target-only" or (index, repeat) != (1, 0):
            start = time.perf_counter()
            record = real_call(self, method, prompt, index, repeat)
            slowest[0] = max(slowest[0], time.perf_counter() - start)
            return record

        def stall(*_):
            if not slept:
                slept.append(True)
                time.sleep(max(1.0, 30 * slowest[0]))  # long against any call so far, however busy the machine

        handle = self.target.register_forward_pre_hook(stall)  # inside generate(), where the harness times it
        try:
            return real_call(self, method, prompt, index, repeat)
        finally:
            handle.remove()

    monkeypatch.setattr(bench_module._Harness, "call", call)
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"task": "t", "prompt": text} for text in ("abcdef", "ghijkl", "mnopqr", "stuvwx", "yzabcd")]
    prompts.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    args = ["bench", "--target", "tiny", "--draft", "tiny", "--prompts", str(prompts), "--prompts-per-task", "4"]
    args += ["--methods", "fixed:2", "--max-new-tokens", "8", "--repeats", "2", "--threads", "1"]
    args += ["--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]
    threads = torch.get_num_threads()
    try:  # one thread: calls of a tiny model on a shared machine vary far less than with several
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert slept == [True]
    assert "warning:" in result.stdout and "target-only:" in result.stdout and "stalled call" in result.stdout
    document = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(document, bench_schema())
    assert document["settings"]["num_prompts"] == 4  # --prompts-per-task applies to a file
    warnings = document["compressions"][0]["warnings"]
    assert any(w["kind"] == "stall" and w["method"] == "target-only" for w in warnings)
    assert "**warning** (stall): target-only" in (tmp_path / "r.md").read_text()
    # Progress went to stderr, a line per prompt (no terminal here), and none of it to stdout.
    assert "repeat 2/2, prompt 4/4" in result.stderr and "prompt 4/4" not in result.stdout


def test_methods_with_context_candidates_may_beat_the_oracle_unflagged():
    """The oracle knows the draft's runs only: a context method above it is no measurement fault."""
    records = _calls()
    faster = [
        dataclasses.replace(r, method=name, seconds=r.seconds / 1.5)
        for r in records
        if r.method == "oracle"
        for name in ("context+adaptive", "context", "hf-prompt-lookup")
    ]
    _, overall = _summary(records + faster)
    assert [w for w in overall.warnings if w["kind"] == "oracle_below"] == []
    slower_oracle = [dataclasses.replace(r, seconds=r.seconds * 2) if r.method == "oracle" else r for r in records]
    _, overall = _summary(slower_oracle + faster)
    flagged = {w["other"] for w in overall.warnings if w["kind"] == "oracle_below"}
    assert flagged == {"fixed:2", "fixed:4", "adaptive"}  # the draft-only methods still are
