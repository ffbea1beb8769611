"""Prompt sets for `speckv bench` (and later `speckv profile`): a JSON Lines file, or the embedded suite.

A prompts file has one JSON object per line, `{"task": str, "prompt": str}`, plus an optional `"id"`; blank lines
are skipped. `task` groups prompts in reports (the embedded suite's tasks are its categories).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PromptItem", "PromptsFileError", "demo_prompts", "first_per_task", "read_prompts_jsonl"]


class PromptsFileError(ValueError):
    """A prompts file that cannot be read; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a benchmark or profiling run.

    Attributes:
        id: unique id within the set (`"<task>-<index>"` when the file gives none).
        task: the task the prompt belongs to.
        text: the prompt text.
    """

    id: str
    task: str
    text: str


def read_prompts_jsonl(path: str | Path) -> list[PromptItem]:
    """Reads a JSON Lines prompts file.

    Args:
        path: the file; each non-blank line is `{"task": str, "prompt": str}` with an optional `"id": str`.

    Returns:
        The prompts, in file order.

    Raises:
        PromptsFileError: for a missing file, a line that is not a JSON object with non-empty string `task` and
            `prompt`, a duplicate id, or a file with no prompt; the message names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptsFileError(f"prompts file {path} not found: pass --prompts a JSON Lines file.")
    items: list[PromptItem] = []
    seen: set[str] = set()
    counts: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptsFileError(f"{where}: not valid JSON ({error.msg}); expected {_EXPECTED}.") from None
        if not isinstance(record, dict):
            raise PromptsFileError(f"{where}: expected a JSON object {_EXPECTED}, got {type(record).__name__}.")
        for key in ("task", "prompt"):
            value = record.get(key)
            if not isinstance(value, str) or not value.strip():
                raise PromptsFileError(f"{where}: {key!r} must be a non-empty string; expected {_EXPECTED}.")
        task = record["task"]
        prompt_id = record.get("id", f"{task}-{counts.get(task, 0):03d}")
        if not isinstance(prompt_id, str) or prompt_id in seen:
            raise PromptsFileError(f"{where}: id {prompt_id!r} is not a unique string; give each prompt its own id.")
        counts[task] = counts.get(task, 0) + 1
        seen.add(prompt_id)
        items.append(PromptItem(id=prompt_id, task=task, text=record["prompt"]))
    if not items:
        raise PromptsFileError(f"{path} holds no prompt: write one JSON object {_EXPECTED} per line.")
    return items


_EXPECTED = '{"task": "...", "prompt": "..."}'


def first_per_task(items: Sequence[PromptItem], per_task: int) -> list[PromptItem]:
    """The first `per_task` prompts of each task, in their order (what `--prompts-per-task` takes from a file).

    Every prompt has a task (a prompts file requires one), so the limit is per task; a file whose prompts share
    one task keeps its first `per_task`.

    Args:
        items: the prompts, e.g. from [`read_prompts_jsonl`][].
        per_task: prompts kept per task.

    Returns:
        The kept prompts, in the order of `items`.

    Raises:
        ValueError: when `per_task < 1`.
    """
    if per_task < 1:
        raise ValueError(f"prompts per task must be at least 1, got {per_task}.")
    kept: dict[str, int] = {}
    chosen = []
    for item in items:
        if kept.get(item.task, 0) < per_task:
            kept[item.task] = kept.get(item.task, 0) + 1
            chosen.append(item)
    return chosen


def demo_prompts(per_task: int, offset: int = 0) -> list[PromptItem]:
    """Held-out prompts of the embedded suite, `per_task` of each category, interleaved by category.

    Args:
        per_task: prompts per category (1 to 24).
        offset: index of the first prompt taken in each category (to hold out other prompts, e.g. for training).

    Returns:
        The prompts, as `PromptItem`s whose task is the category.

    Raises:
        ValueError: when the suite has fewer than `offset + per_task` prompts per category.
    """
    from ..demo import CATEGORIES, load_prompts

    by_category = {category: load_prompts(category) for category in CATEGORIES}
    available = min(len(prompts) for prompts in by_category.values())
    if per_task < 1 or offset < 0 or offset + per_task > available:
        raise ValueError(
            f"the embedded suite has {available} prompts per category: need 1 <= per_task and "
            f"offset + per_task <= {available}, got per_task={per_task}, offset={offset}."
        )
    return [
        PromptItem(id=prompt.id, task=prompt.category, text=prompt.text)
        for index in range(offset, offset + per_task)
        for prompt in (by_category[category][index] for category in CATEGORIES)
    ]
