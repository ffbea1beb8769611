"""`speckv bench` end to end: a pair from local folders, a prompts file, JSON that validates, plots, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from typer.testing import CliRunner

import speckv_hf
from speckv_hf.bench import harness as bench_module
from speckv_hf.bench.document import SCHEMA_VERSION, bench_schema, summaries_from_document
from speckv_hf.bench.markdown import markdown_tables
from speckv_hf.cli import app
from speckv_hf.demo import pair_path

from .conftest import llama_config, noisy_copy


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    """A small Llama pair (not the embedded one) saved as users' folders, with the embedded tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(pair_path("target"), local_files_only=True)
    torch.manual_seed(11)
    config = llama_config(layers=2, vocab=len(tokenizer), hidden_size=64, intermediate_size=128)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 0
    target = LlamaForCausalLM(config).eval()
    root = tmp_path_factory.mktemp("pair")
    for name, model in (("target", target), ("draft", noisy_copy(target, 0.01))):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    prompts = root / "prompts.jsonl"
    lines = [
        {"task": "code", "prompt": "def add(a, b):\n    return"},
        {"task": "prose", "prompt": "The quick brown fox"},
        {"task": "prose", "prompt": "Once upon a time", "id": "story"},
    ]
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    return root


def _invoke(args, columns=80):
    return CliRunner().invoke(app, args, env={"COLUMNS": str(columns), "HF_HUB_OFFLINE": "1"})


def test_bench_own_pair_writes_valid_json_markdown_and_plots(pair_dirs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = ["bench", "--target", str(pair_dirs / "target"), "--draft", str(pair_dirs / "draft")]
    args += ["--prompts", str(pair_dirs / "prompts.jsonl"), "--methods", "hf-default,adaptive,fixed:1-2,oracle"]
    args += ["--max-new-tokens", "8", "--repeats", "2", "--json", str(out / "r.json")]
    args += ["--markdown", str(out / "r.md"), "--plots", str(out / "plots")]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.output.splitlines()), result.output  # fits 80 columns
    assert "best constant γ of our loop" in result.output and "oracle:" in result.output
    assert "x the best constant γ of our loop (paired, IQR" in result.stdout  # the paired figure leads
    assert "range" in result.stdout  # the paired speedup's range across repeats

    document = json.loads((out / "r.json").read_text())
    jsonschema.validate(document, bench_schema())
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["settings"]["num_prompts"] == 3 and document["settings"]["target"].endswith("target")
    methods = [r["method"] for r in document["results"]]
    assert methods == ["target-only", "hf-default", "adaptive", "fixed:1", "fixed:2", "oracle"]
    for row in document["results"]:
        assert row["calls"] == 6 and row["tokens"] == 48  # 3 prompts x 2 repeats x 8 tokens
        assert row["mismatches"] == 0 and len(row["repeat_speedups"]) == 2
        assert row["of_oracle"] > 0 and row["paired_of_oracle"] > 0 and row["paired_calls"] == 6
    oracle = next(r for r in document["results"] if r["method"] == "oracle")
    assert oracle["of_oracle"] == pytest.approx(1.0) and oracle["acceptance_rate"] in (None, 1.0)
    summary = document["compressions"][0]
    assert summary["best_fixed"] in {"fixed:1", "fixed:2"} and summary["modeled_oracle_tokens_per_s"] > 0
    assert summary["failures"] == [] and set(summary["vs_best_fixed"]) == {"adaptive", "oracle"}
    assert all(entry["pairs"] == 6 and len(entry["paired_iqr"]) == 2 for entry in summary["vs_best_fixed"].values())
    assert isinstance(summary["warnings"], list)  # what is in it depends on the machine's load
    repeats = summary["repeat_rates"]  # from target-only's 6 calls: 3 prompts x 2 repeats
    assert list(repeats["tasks"]) == ["code", "prose"] and repeats["ngram"] == 4
    assert repeats["all"]["calls"] == 6 and repeats["all"]["tokens"] == 48 and repeats["tasks"]["prose"]["calls"] == 4
    assert "repeats in target-only's output" in result.stdout and "in prompt" in result.stdout
    assert "| oracle |" in (out / "r.md").read_text() and "| task | calls |" in (out / "r.md").read_text()
    results, compressions = summaries_from_document(document)  # a run read back renders the same tables
    assert markdown_tables(results, compressions) == (out / "r.md").read_text()
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "accepted_runs.png",
        "gamma_distribution.png",
        "paired_speedup.png",
        "tokens_per_s.png",
    ]


def test_bench_prints_a_methods_settings_as_written(pair_dirs):
    # Brackets are rich markup to the console: the settings must come out literally, in the table and the verdicts,
    # and a constant with settings is compared with the best plain constant, not a candidate for it.
    args = ["bench", "--target", str(pair_dirs / "target"), "--draft", str(pair_dirs / "draft")]
    args += ["--prompts", str(pair_dirs / "prompts.jsonl"), "--max-new-tokens", "6", "--repeats", "1"]
    args += ["--methods", "fixed:2,fixed:2[warm_start=False],context+fixed:2[max_guesses=0]"]
    result = _invoke(args, columns=120)
    assert result.exit_code == 0, result.output
    assert "best constant γ of our loop: fixed:2 (highest paired speedup)" in result.stdout
    lines = result.stdout.splitlines()
    for name in ("fixed:2[warm_start=False]", "context+fixed:2[max_guesses=0]"):
        assert any(line.startswith(f"{name} ") for line in lines), result.stdout  # its table row
        assert any(line.startswith(f"{name}: ") and "x the best constant" in line for line in lines)  # its verdict


def test_bench_embedded_pair_default(tmp_path):
    result = _invoke(["bench", "--prompts-per-task", "1", "--max-new-tokens", "8", "--methods", "fixed:2,oracle"])
    assert result.exit_code == 0, result.output
    assert "fp32 target" in result.output and "fixed:2" in result.output


@pytest.mark.quant
def test_bench_quantized_target_reports_mismatches(pair_dirs, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is the 'quant' extra")
    args = ["bench", "--target", str(pair_dirs / "target"), "--draft", str(pair_dirs / "draft")]
    args += ["--prompts", str(pair_dirs / "prompts.jsonl"), "--methods", "fixed:3", "--compression", "int8"]
    args += ["--max-new-tokens", "8", "--json", str(tmp_path / "q.json")]
    result = _invoke(args)
    document = json.loads((tmp_path / "q.json").read_text())
    assert document["compressions"][0]["detected"].startswith("int8")
    row = document["results"][1]
    # Near-ties may differ; anything else fails the command.
    assert result.exit_code == (1 if document["compressions"][0]["failures"] else 0), result.output
    assert row["mismatches"] >= row["near_tie_mismatches"] >= 0


def test_bench_fails_loudly_on_a_real_mismatch(pair_dirs, tmp_path, monkeypatch):
    real = bench_module.run_benchmark

    def corrupted(*args, **kwargs):
        records, reference = real(*args, **kwargs)
        victim = next(r for r in records if r.method == "fixed:2")
        victim.output = [(t + 7) % 4096 for t in victim.output]
        return records, reference

    monkeypatch.setattr(bench_module, "run_benchmark", corrupted)
    args = ["bench", "--target", str(pair_dirs / "target"), "--draft", str(pair_dirs / "draft")]
    args += ["--prompts", str(pair_dirs / "prompts.jsonl"), "--methods", "fixed:2", "--max-new-tokens", "6"]
    args += ["--json", str(tmp_path / "m.json")]
    result = _invoke(args, columns=200)
    assert result.exit_code == 1
    assert "not lossless" in result.output
    failures = json.loads((tmp_path / "m.json").read_text())["compressions"][0]["failures"]
    assert len(failures) == 1 and failures[0]["method"] == "fixed:2" and not failures[0]["near_tie"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--compression", "int3"], "unknown compression 'int3'"),
        (["--methods", "fastest"], "unknown method 'fastest'"),
        (["--target", "somewhere"], "pass both --target and --draft"),
        (["--do-sample", "--methods", "oracle"], "drop 'oracle'"),
        (["--do-sample", "--sampling-scheme", "gumbel"], "--sampling-scheme must be auto, speculative or coupled"),
        (["--sampling-scheme", "coupled"], "add --do-sample"),
        (["--json", "/nonexistent/dir/r.json"], "does not exist"),
    ],
)
def test_bench_bad_input_fails_before_work(extra, message, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded despite bad input")

    monkeypatch.setattr("speckv_hf.bench.pairs.load_pair_for", refuse)
    result = _invoke(["bench", *extra], columns=200)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_bench_bad_prompts_file_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "a", "prompt": "fine"}\n{"task": "a", "text": "wrong key"}\n', encoding="utf-8")
    result = _invoke(["bench", "--prompts", str(bad)], columns=200)
    assert result.exit_code == 2
    assert "line 2" in result.output and "'prompt' must be a non-empty string" in result.output


def test_cli_default_methods_are_the_library_defaults():
    from speckv_hf.bench.methods import DEFAULT_METHODS
    from speckv_hf.cli import bench as bench_command
    from speckv_hf.decoding.coupling import SAMPLING_SETTINGS

    assert ",".join(DEFAULT_METHODS) == bench_command.DEFAULT_METHODS
    assert SAMPLING_SETTINGS == bench_command.SAMPLING_SETTINGS


def test_version_and_module_entry_point():
    result = _invoke(["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"speckv-hf {speckv_hf.__version__}"
    completed = subprocess.run(
        [sys.executable, "-m", "speckv_hf", "bench", "--help"], capture_output=True, text=True, check=True
    )
    assert "--compression" in completed.stdout and "oracle" in completed.stdout
    for command in ("bench", "demo"):
        assert _invoke([command, "--help"]).exit_code == 0


@pytest.mark.parametrize("command", ["bench", "demo", "paper", "profile", "train"])
def test_help_keeps_brackets(command):
    """Help texts go through rich markup: a bracket the text means (`context+adaptive[max_guesses=0]`, a
    `[default: ...]`) must be escaped, or it is silently dropped from `--help`."""
    import re

    import typer.main

    click_command = typer.main.get_command(app).commands[command]
    bracketed = [
        segment.replace("\\[", "[")
        for param in click_command.params
        for segment in re.findall(r"\S*\\?\[[^\]]*\]", getattr(param, "help", None) or "")
    ]
    output = CliRunner().invoke(app, [command, "--help"], terminal_width=2000, env={"COLUMNS": "2000"}).output
    for segment in bracketed:
        assert segment in output, f"{segment!r} is missing from `speckv {command} --help`"
