"""Progress off a terminal (a line per prompt on stderr, none with --quiet), and documents of earlier runs read
back."""

from __future__ import annotations

import io
from types import SimpleNamespace

import torch
from rich.console import Console
from typer.testing import CliRunner

from speckv_hf.bench.document import build_document, summaries_from_document
from speckv_hf.bench.harness import CallRecord, PromptDone
from speckv_hf.bench.markdown import markdown_tables
from speckv_hf.bench.pairs import LoadedPair
from speckv_hf.bench.summary import summarize
from speckv_hf.cli import app
from speckv_hf.cli._progress import ProgressReport


def _done(repeat=0, repeats=2):
    calls = (CallRecord("target-only", "code-1", "code", repeat, 0.5, 8, 8, 0), CallRecord("fixed:2", "code-1",
             "code", repeat, 0.25, 8, 4, 8))  # fmt: skip
    return PromptDone("code-1", 2, 12, repeat, repeats, calls if repeat >= 0 else ())


def test_progress_off_a_terminal_is_a_line_per_prompt():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with ProgressReport(console, "fp32", total=10) as progress:
        progress.phase("reference outputs of 12 prompts")
        progress.call_done("fixed:2")  # a call alone prints nothing: lines are per prompt
        progress.prompt_done(_done(repeat=-1, repeats=1))
        progress.prompt_done(_done())
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("fp32: ") for line in lines)
    assert "reference outputs of 12 prompts" in lines[0]
    assert "warm-up prompt 3/12 (code-1) done" in lines[1]
    assert "repeat 1/2, prompt 3/12 (code-1): 2 calls, 0.8 s" in lines[2]


def test_progress_quiet_and_on_a_terminal_prints_no_line():
    out = io.StringIO()
    with ProgressReport(Console(file=out, force_terminal=False), "fp32", total=10, quiet=True) as progress:
        progress.phase("checking outputs")
        progress.prompt_done(_done())
    assert out.getvalue() == ""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with ProgressReport(console, "fp32", total=2) as progress:  # a live bar, transient
        progress.prompt_done(_done())
    assert "prompt 3/12" not in out.getvalue()


class _Tokenizer:
    def __call__(self, text, return_tensors="pt"):
        return SimpleNamespace(input_ids=torch.tensor([[3 + ord(c) % 90 for c in text[:12]]], dtype=torch.long))


def test_demo_progress_goes_to_stderr(llama_pairs, monkeypatch):
    target, draft = llama_pairs["llama-noisy"]
    pair = LoadedPair(target, draft, _Tokenizer(), "tiny", "tiny", "fp32")
    monkeypatch.setattr("speckv_hf.bench.pairs.load_pair_for", lambda *_, **__: pair)
    args = ["demo", "--prompts-per-category", "1", "--max-new-tokens", "4", "--no-show-text"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80", "HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0, result.output
    assert "demo: prompt 5/5" in result.stderr and "demo: prompt" not in result.stdout
    assert "SpecKVGenerator()" in result.stdout and "speedup" in result.stdout
    quiet = CliRunner().invoke(app, [*args, "--quiet"], env={"COLUMNS": "80", "HF_HUB_OFFLINE": "1"})
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_a_document_of_an_earlier_run_reads_back():
    records = [CallRecord(m, "p", "task", 0, s, 10, 5, 4) for m, s in (("target-only", 1.0), ("fixed:2", 0.5))]
    rows, overall = summarize("fp32", "fp32", records, {}, do_sample=False)
    document = build_document({}, rows, [overall], machine={})
    for row in document["results"]:  # written before paired_calls and paired_of_oracle existed
        del row["paired_calls"], row["paired_of_oracle"]
    del document["compressions"][0]["warnings"]
    results, compressions = summaries_from_document(document)
    assert results[1].paired_calls == 0 and compressions[0].warnings == []
    assert "| fixed:2 | 2.00x [2.00, 2.00]" in markdown_tables(results, compressions)
