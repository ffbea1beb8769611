"""Prompts files: JSON Lines read with errors that name the line; the embedded suite as prompt items."""

from __future__ import annotations

import json

import pytest

from speckv_hf.bench.prompts import PromptItem, PromptsFileError, demo_prompts, read_prompts_jsonl


def _write(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_tasks_ids_and_skips_blank_lines(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"task": "code", "prompt": "def f():"}),
            "",
            json.dumps({"task": "code", "prompt": "import os"}),
            json.dumps({"task": "chat", "prompt": "Hi", "id": "greeting"}),
        ],
    )
    assert read_prompts_jsonl(path) == [
        PromptItem("code-000", "code", "def f():"),
        PromptItem("code-001", "code", "import os"),
        PromptItem("greeting", "chat", "Hi"),
    ]


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"task": "a", "prompt": "x"}', "{not json"], "line 2: not valid JSON"),
        (['["task", "prompt"]'], "line 1: expected a JSON object"),
        (['{"task": "a"}'], "line 1: 'prompt' must be a non-empty string"),
        (['{"task": "", "prompt": "x"}'], "line 1: 'task' must be a non-empty string"),
        (['{"task": "a", "prompt": "x", "id": "p"}', '{"task": "a", "prompt": "y", "id": "p"}'], "line 2: id 'p'"),
        (["", "  "], "holds no prompt"),
    ],
)
def test_bad_files_name_the_line_and_the_fix(tmp_path, lines, match):
    with pytest.raises(PromptsFileError, match=match):
        read_prompts_jsonl(_write(tmp_path, lines))


def test_missing_file(tmp_path):
    with pytest.raises(PromptsFileError, match="not found"):
        read_prompts_jsonl(tmp_path / "nope.jsonl")


def test_demo_prompts_interleave_categories_and_hold_out_by_offset():
    items = demo_prompts(2)
    assert [i.task for i in items] == ["code", "prose", "math", "structured", "grounded"] * 2
    assert len({i.id for i in items}) == 10
    later = demo_prompts(2, offset=2)
    assert not {i.id for i in items} & {i.id for i in later}
    with pytest.raises(ValueError, match="prompts per category"):
        demo_prompts(30)
