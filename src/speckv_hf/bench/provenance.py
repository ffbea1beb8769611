"""Where a benchmark run came from: the checkout's commit, whether its `src/` had uncommitted changes, and the
command, kept next to the figures so that a page generated from them says which code it measured."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["git_output", "provenance_line", "run_provenance"]


def git_output(root: str | Path, *args: str) -> str:
    """A read-only git command's output in `root` ("" where git or the repository is missing).

    Args:
        root: a folder inside the checkout.
        *args: git's arguments, e.g. `"rev-parse", "HEAD"`.
    """
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run_provenance(root: str | Path, command: str) -> dict[str, Any]:
    """`{"commit", "src_changed", "command"}` of a run from the checkout at `root`.

    Args:
        root: the checkout's top folder (its `src/` is what the run measured).
        command: the command line that ran, as a user would type it.
    """
    return {
        "commit": git_output(root, "rev-parse", "HEAD"),
        "src_changed": bool(git_output(root, "status", "--porcelain", "src")),
        "command": command,
    }


def provenance_line(provenance: Mapping[str, Any]) -> str:
    """The line under a generated table: "Run at commit `abc1234`: `COMMAND`" (what [`run_provenance`][] gave),
    saying so where `src/` had uncommitted changes."""
    dirty = " (with uncommitted changes in `src/`)" if provenance.get("src_changed") else ""
    commit = str(provenance.get("commit", ""))[:7] or "not recorded"
    return f"Run at commit `{commit}`{dirty}: `{provenance.get('command', '')}`"
