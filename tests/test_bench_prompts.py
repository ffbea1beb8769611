"""`--prompts-per-task` on a prompts file: the first N prompts of each task (`speckv bench`, `speckv profile`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from speckv_hf.bench.pairs import LoadedPair
from speckv_hf.bench.prompts import PromptItem, first_per_task
from speckv_hf.cli import app
from speckv_hf.demo import CATEGORIES


def test_first_per_task_keeps_order():
    items = [PromptItem(f"{task}-{i}", task, "x") for i, task in enumerate(["a", "b", "a", "a", "c", "b"])]
    assert [p.id for p in first_per_task(items, 1)] == ["a-0", "b-1", "c-4"]
    assert [p.id for p in first_per_task(items, 2)] == ["a-0", "b-1", "a-2", "c-4", "b-5"]
    with pytest.raises(ValueError, match="at least 1"):
        first_per_task(items, 0)


def _prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [{"task": task, "prompt": f"{task} prompt {i}"} for i, task in enumerate(["a", "b", "a", "a", "b"])]
    path.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    return path


def test_profile_prompts_per_task_applies_to_a_file(tmp_path, monkeypatch):
    plans = []

    def run_profile(plan, device=None):
        plans.append(plan)
        return SimpleNamespace(line=lambda: "done")

    monkeypatch.setattr("speckv_hf.training.profile.run_profile", run_profile)
    path = _prompts_file(tmp_path)
    for extra, ids in ((["--prompts-per-task", "2"], ["a-000", "b-000", "a-001", "b-001"]), ([], None)):
        args = ["profile", "--out", str(tmp_path / f"out{len(extra)}"), "--prompts", str(path), *extra]
        result = CliRunner().invoke(app, args, env={"HF_HUB_OFFLINE": "1"})
        assert result.exit_code == 0, result.output
        assert [p.id for p in plans[-1].prompts] == (ids or [p.id for p in plans[-1].prompts])
    assert len(plans[-1].prompts) == 5  # without the option, every prompt of the file
    assert plans[0].prompts_source.endswith("first 2 per task")
    result = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "embedded")], env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0 and len(plans[-1].prompts) == 6 * len(CATEGORIES)  # embedded suite: 6 per category


class _Tokenizer:
    def __call__(self, text, return_tensors="pt"):
        return SimpleNamespace(input_ids=torch.tensor([[3 + ord(c) % 90 for c in text[:12]]], dtype=torch.long))


def test_bench_prompts_per_task_applies_to_a_file(llama_pairs, tmp_path, monkeypatch):
    target, draft = llama_pairs["llama-noisy"]
    pair = LoadedPair(target, draft, _Tokenizer(), "tiny", "tiny", "fp32")
    monkeypatch.setattr("speckv_hf.bench.pairs.load_pair_for", lambda *_: pair)
    args = ["bench", "--target", "t", "--draft", "d", "--prompts", str(_prompts_file(tmp_path))]
    args += ["--prompts-per-task", "1", "--methods", "fixed:2", "--max-new-tokens", "4", "--threads", "1"]
    args += ["--json", str(tmp_path / "r.json")]
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, args, env={"COLUMNS": "80", "HF_HUB_OFFLINE": "1"})
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert settings["num_prompts"] == 2 and settings["prompts"].endswith("first 1 per task")
    assert "fp32: prompt 2/2 (b-000)" in result.stderr and "prompt 2/2" not in result.stdout
