"""The examples run as documented, offline, and say that their output is the target's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
#: Arguments beyond `--max-new-tokens` (the compiled example captures graphs without generating code: quick).
EXTRA = {"compiled.py": ["--backend", "eager"]}


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"quickstart.py", "batch.py", "context_candidates.py", "compiled.py"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_and_is_lossless(example):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(example), "--max-new-tokens", "16", *EXTRA.get(example.name, [])],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    verdicts = [line for line in result.stdout.splitlines() if "same as the target alone:" in line]
    assert verdicts and all(line.rstrip().endswith("True") or "True;" in line for line in verdicts), result.stdout
