"""Where a benchmark run came from: the commit, uncommitted changes in `src/`, the command."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from speckv_hf.bench.provenance import git_output, provenance_line, run_provenance


def test_outside_a_repository_nothing_is_recorded_and_nothing_raises(tmp_path):
    assert git_output(tmp_path, "rev-parse", "HEAD") == ""
    provenance = run_provenance(tmp_path, "python benchmarks/x.py run")
    assert provenance == {"commit": "", "src_changed": False, "command": "python benchmarks/x.py run"}
    assert provenance_line(provenance) == "Run at commit `not recorded`: `python benchmarks/x.py run`"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_checkout_gives_its_commit_and_whether_src_changed(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = run_provenance(tmp_path, "cmd")
    assert len(clean["commit"]) == 40 and not clean["src_changed"]
    assert provenance_line(clean) == f"Run at commit `{clean['commit'][:7]}`: `cmd`"
    (tmp_path / "docs.md").write_text("outside src\n")  # only src/ counts
    assert not run_provenance(tmp_path, "cmd")["src_changed"]
    (tmp_path / "src" / "a.py").write_text("x = 2\n")
    dirty = run_provenance(tmp_path, "cmd")
    assert dirty["src_changed"] and dirty["commit"] == clean["commit"]
    assert provenance_line(dirty).endswith("(with uncommitted changes in `src/`): `cmd`")
