"""`speckv demo` runs offline on the embedded pair; SpecKV is lossless on it."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from speckv_hf import SpecKVGenerator
from speckv_hf.cli import app


@pytest.fixture(scope="module")
def demo_pair():
    from speckv_hf.demo import load_pair

    return load_pair()


def test_demo_command_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(app, ["demo", "--prompts-per-category", "1", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    for expected in ("target alone", "transformers", "SpecKVGenerator()", "structured", "math", "all"):
        assert expected in result.output
    assert "identical to target alone" in result.output and "DIFFERS" not in result.output
    table = result.output[result.output.index("category") :]
    assert all(len(line) <= 80 for line in table.splitlines()), table  # the table fits 80 columns
    assert "Loading weights" not in result.output  # model loading is quiet


def test_cli_help():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output


@pytest.mark.parametrize("policy", ["adaptive", "fixed:6", "speckv"])
def test_demo_pair_lossless(demo_pair, policy):
    from speckv_hf.demo import load_prompts

    target, draft, tokenizer = demo_pair
    generator = SpecKVGenerator(policy)
    for item in (load_prompts("structured")[0], load_prompts("code")[0]):
        inputs = tokenizer(item.text, return_tensors="pt")
        expected = target.generate(**inputs, max_new_tokens=32, do_sample=False)
        out = target.generate(
            **inputs, assistant_model=draft, candidate_generator=generator, max_new_tokens=32, do_sample=False
        )
        assert torch.equal(out, expected)
        assert generator.last_stats.accepted_tokens > 0  # a trained draft agrees with its target
