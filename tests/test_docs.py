"""The docs quote one set of figures, generated from committed data, and read as pages for users."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = DOCS / "_generated"
ISSUE_NUMBER = re.compile(r"\b[Ii]ssues? \d+|#\d+\b")
# The pages that quote benchmark figures, and the snippet each must take them from.
QUOTING_PAGES = {
    "index.md": "_generated/bench-embedded-headline.md",
    "quickstart.md": "_generated/bench-embedded-headline.md",
    "benchmarks.md": "_generated/bench-embedded-table.md",
}


@pytest.fixture(scope="module")
def docs_figures():
    spec = importlib.util.spec_from_file_location("docs_figures", ROOT / "benchmarks" / "docs_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_snippets_are_what_the_data_renders(docs_figures, tmp_path):
    written = docs_figures.render(DOCS / "data", tmp_path)
    assert written, "no docs/data/*.json to render"
    # context-*.md, compiled-*.md and memory-*.md come from their own scripts (checked below).
    own = ("context-", "compiled-", "memory-")
    committed = sorted(p.name for p in GENERATED.glob("*.md") if not p.name.startswith(own))
    assert committed == sorted(p.name for p in written), "run: python benchmarks/docs_figures.py render"
    for path in written:
        assert (GENERATED / path.name).read_text() == path.read_text(), (
            f"docs/_generated/{path.name} is stale: run python benchmarks/docs_figures.py render"
        )


def test_snippets_render_from_summaries_alone(docs_figures, tmp_path):
    """A bench document without per-call records (plain `speckv bench --json`) still renders, paired figures from
    its summaries."""
    document = json.loads((DOCS / "data" / "bench-embedded.json").read_text())
    document.pop("calls", None)
    document.pop("provenance", None)
    data = tmp_path / "data"
    data.mkdir()
    (data / "plain.json").write_text(json.dumps(document))
    written = docs_figures.render(data, tmp_path / "out")
    table = next(p for p in written if p.name == "plain-table.md").read_text()
    assert "| target alone | **1.00×**" in table


@pytest.mark.parametrize(
    ("script", "data"),
    [("context_candidates", "context"), ("compiled_loop", "compiled"), ("context_memory", "memory")],
)
def test_benchmark_snippets_are_what_their_data_renders(tmp_path, script, data):
    spec = importlib.util.spec_from_file_location(script, ROOT / "benchmarks" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.render(DOCS / "data" / data, tmp_path)
    assert written, f"no docs/data/{data}/*.json to render"
    for path in written:
        assert (GENERATED / path.name).read_text() == path.read_text(), (
            f"docs/_generated/{path.name} is stale: run python benchmarks/{script}.py render"
        )
        assert f'--8<-- "_generated/{path.name}"' in (DOCS / "benchmarks.md").read_text()


@pytest.mark.parametrize("page, snippet", sorted(QUOTING_PAGES.items()))
def test_pages_quote_figures_through_snippets(page, snippet):
    assert f'--8<-- "{snippet}"' in (DOCS / page).read_text()


def test_no_page_names_an_issue_number():
    pages = [*DOCS.rglob("*.md"), ROOT / "README.md"]
    found = [
        f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
        for page in pages
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if ISSUE_NUMBER.search(line)
    ]
    assert not found, "issue numbers in the docs:\n" + "\n".join(found)
