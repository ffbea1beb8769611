"""The figures the docs quote: one benchmark run, kept as JSON, rendered into Markdown snippets the pages include.

Two steps, so that no page can quote a figure that is not in the committed data:

    python benchmarks/docs_figures.py bench -- --compression fp32,nf4 --json docs/data/bench-embedded.json ...
    python benchmarks/docs_figures.py render

`bench` runs `speckv bench` with the arguments after `--`, in this process, and adds to its JSON document what the
pages need beyond the summaries: every measured call (`calls`: method, prompt, repeat, seconds, tokens, ...) and
where the run came from (`provenance`: the commit, whether `src/` had uncommitted changes, the command). When the
harness writes per-call records itself (`calls`), they are kept as they are.

`render` reads every `docs/data/*.json` and writes `docs/_generated/<name>-*.md`, the snippets the pages include
with `--8<--`. `tests/test_docs.py` renders into a temporary folder and fails when the committed snippets differ.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "data"
GENERATED = ROOT / "docs" / "_generated"
REFERENCE = "target-only"
STALL = 2.0  # one pass this many times slower than another of the same method and prompt: a stall


# --- bench: run `speckv bench`, keep every call ------------------------------------------------------------------


def _call_row(record: Any, compression: str, reference: Mapping[str, list[int]]) -> dict[str, Any]:
    fields = (
        "method", "prompt_id", "task", "repeat", "seconds", "new_tokens", "target_forwards", "draft_forwards",
        "target_seconds", "draft_seconds", "drafted", "accepted",
    )  # fmt: skip
    row = {"compression": compression, **{name: getattr(record, name, None) for name in fields}}
    output = getattr(record, "output", None)
    row["same_as_reference"] = None if output is None else output == reference.get(record.prompt_id)
    return row


class _LoadSampler:
    """Samples the machine's 1-minute load average while the run goes, so the pages can say how busy it was."""

    def __init__(self, every: float = 5.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(every)

    def __enter__(self) -> _LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench(arguments: Sequence[str]) -> int:
    """Runs `speckv bench ARGUMENTS` and adds `calls` and `provenance` to the JSON it writes (`--json` needed)."""
    import speckv_hf.bench.harness as harness
    from speckv_hf.bench.provenance import git_output
    from speckv_hf.cli import app

    if "--json" not in arguments:
        raise SystemExit("bench: pass --json PATH after --, the file the pages are rendered from.")
    json_path = Path(arguments[list(arguments).index("--json") + 1])
    before = json_path.stat().st_mtime_ns if json_path.exists() else None
    batches: list[list[dict[str, Any]]] = []  # one per compression, in the order they run
    original = harness.run_benchmark

    def recording(*args: Any, **kwargs: Any) -> Any:
        records, reference = original(*args, **kwargs)
        batches.append([_call_row(r, "", reference) for r in records])
        return records, reference

    harness.run_benchmark = recording
    sys.argv = ["speckv", "bench", *arguments]  # what the harness records as the command
    status = 0
    try:
        with _LoadSampler() as load:
            app(prog_name="speckv", args=["bench", *arguments])
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        harness.run_benchmark = original
    if not json_path.exists() or json_path.stat().st_mtime_ns == before:
        return status or 1
    document = json.loads(json_path.read_text())
    if not document.get("calls"):
        calls = []
        for compression, batch in zip(document["settings"]["compressions"], batches, strict=False):
            calls += [{**row, "compression": compression} for row in batch]
        document["calls"] = calls
    document["provenance"] = {
        "commit": git_output(ROOT, "log", "-1", "--format=%H", "--", "src"),  # the code measured, not later docs
        "src_dirty": bool(git_output(ROOT, "status", "--porcelain", "--", "src")),
        "command": "python benchmarks/docs_figures.py bench -- " + " ".join(arguments),
        "load_average": {
            "min": min(load.samples, default=None),
            "median": statistics.median(load.samples) if load.samples else None,
            "max": max(load.samples, default=None),
        },
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    return status


# --- render: JSON -> Markdown snippets ---------------------------------------------------------------------------


def _quartiles(values: Sequence[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


class Run:
    """One bench document, read defensively: per-call records when present, the summaries otherwise."""

    def __init__(self, name: str, document: Mapping[str, Any]) -> None:
        self.name = name
        self.document = document
        self.settings = document.get("settings", {})
        self.compressions = list(
            self.settings.get("compressions") or [c["compression"] for c in document["compressions"]]
        )
        self.calls = [c for c in document.get("calls") or [] if c.get("seconds") and c.get("new_tokens") is not None]
        self.results = {(r["compression"], r["method"]): r for r in document.get("results", [])}
        self.overall = {c["compression"]: c for c in document.get("compressions", [])}

    def methods(self, compression: str) -> list[str]:
        listed = self.settings.get("methods") or []
        seen = [m for (c, m) in self.results if c == compression]
        return [m for m in listed if m in seen] + [m for m in seen if m not in listed]

    def _rates(self, compression: str, method: str) -> dict[tuple[str, int], float]:
        return {
            (c["prompt_id"], c["repeat"]): c["new_tokens"] / c["seconds"]
            for c in self.calls
            if c.get("compression") == compression and c["method"] == method
        }

    def paired(self, compression: str, method: str, reference: str) -> tuple[float, float, float] | None:
        """Quartiles (q1, median, q3) of the method's tokens/s over the reference's, call by call on the same
        prompt and repeat; from the summaries when the document has no per-call records and the reference is
        target-only (no spread against another reference then)."""
        if self.calls:
            mine, theirs = self._rates(compression, method), self._rates(compression, reference)
            return _quartiles([rate / theirs[key] for key, rate in mine.items() if theirs.get(key)])
        row = self.results.get((compression, method))
        if row is None:
            return None
        if reference == REFERENCE and row.get("median_speedup"):
            low, high = row.get("iqr_speedup") or (None, None)
            return low, row["median_speedup"], high
        paired = self.overall.get(compression, {}).get("vs_best_fixed", {}).get(method, {}).get("paired")
        if reference == self.overall.get(compression, {}).get("best_fixed") and paired:
            return None, paired, None
        return None

    def best_constant(self, compression: str) -> str | None:
        """The best `fixed:K` as `speckv bench` picks it: the highest paired median over target-only, from the
        per-call records; without them, the document's `best_fixed` (older harnesses picked it by totals)."""
        if not self.calls and self.overall.get(compression, {}).get("best_fixed"):
            return self.overall[compression]["best_fixed"]
        from speckv_hf.bench.summary import is_constant

        fixed = [m for m in self.methods(compression) if is_constant(m)]
        scored = [(self.paired(compression, m, REFERENCE), m) for m in fixed]
        scored = [(q[1], m) for q, m in scored if q is not None]
        if not scored:
            return self.overall.get(compression, {}).get("best_fixed")
        return max(scored)[1]

    def largest_pass_gap(self, compression: str) -> tuple[float, dict[str, Any]] | None:
        """The largest ratio between two passes of one method on one prompt, in time per token, and the slower
        call, among the methods whose greedy passes do the same work (the target alone, the constants, the oracle;
        the adaptive policies learn across calls): such a gap is the machine, a stall."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for call in self.calls:
            deterministic = call["method"] in (REFERENCE, "oracle") or call["method"].startswith("fixed:")
            if call.get("compression") == compression and call["new_tokens"] and deterministic:
                groups.setdefault((call["method"], call["prompt_id"]), []).append(call)
        worst = None
        for calls in groups.values():
            if len(calls) < 2:
                continue
            per_token = sorted((c["seconds"] / c["new_tokens"], index) for index, c in enumerate(calls))
            (fastest, _), (slowest, index) = per_token[0], per_token[-1]
            if fastest and (worst is None or slowest / fastest > worst[0]):
                worst = (slowest / fastest, calls[index])
        return worst


def _count(number: int | None, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _spread(quartiles: tuple[float | None, float | None, float | None] | None) -> str:
    if quartiles is None or quartiles[1] is None:
        return "–"
    low, median, high = quartiles
    if low is None or high is None:
        return f"**{median:.2f}×**"
    return f"**{median:.2f}×** ({low:.2f}–{high:.2f})"


def _mismatches(row: Mapping[str, Any]) -> str:
    count = row.get("mismatches")
    if count is None:
        return "–"
    ties = row.get("near_tie_mismatches") or 0
    return f"{count} (near-ties)" if count and ties == count else str(count)


LABELS = {
    "target-only": "target alone",
    "hf-default": "transformers' assisted generation, its defaults",
    "hf-heuristic": "transformers' assisted generation, heuristic schedule",
    "adaptive": "`adaptive`: `SpecKVGenerator()`",
    "speckv": '`speckv`: `SpecKVGenerator("speckv")`',
    "oracle": "oracle (hindsight: the ceiling)",
}


def _label(method: str) -> str:
    return LABELS.get(method, f"`{method}`")


def machine_words(run: Run) -> str:
    """The machine as the pages describe it: cores, threads, GPU, how busy it was while the run went."""
    machine = run.document.get("machine", {})
    cores = machine.get("cpu_count")
    words = f"{cores} CPU cores ({machine.get('cpu')}), {_count(machine.get('torch_threads'), 'torch thread')}, "
    words += f"GPU {machine['gpu']}" if machine.get("gpu") else "no GPU"
    load = run.document.get("provenance", {}).get("load_average") or {}
    if load.get("median") is not None:
        busy = cores and load["median"] > 0.5 * cores
        words += f"; load average {load['min']:.1f}–{load['max']:.1f} (median {load['median']:.1f}) while it ran" + (
            ": shared with other jobs, so noisy" if busy else ""
        )
    return words


def source_snippet(run: Run) -> str:
    machine = run.document.get("machine", {})
    versions = {k: v for k, v in (machine.get("versions") or {}).items() if v and k != "speckv-hf"}
    provenance = run.document.get("provenance", {})
    commit = provenance.get("commit", "")[:7] or "not recorded"
    if provenance.get("src_dirty"):
        commit += " (with uncommitted changes in `src/`)"
    command = provenance.get("command") or run.settings.get("command", "speckv bench")
    settings = run.settings
    mode = "sampled" if settings.get("do_sample") else "greedy"
    lines = [
        "```bash",
        command,
        "```",
        "",
        f"Embedded pair, {settings.get('num_prompts')} held-out prompts ({settings.get('prompts')}), "
        f"{settings.get('max_new_tokens')} new tokens, {mode}, {settings.get('repeats')} passes over the prompts "
        f"with the methods interleaved per prompt; `src/` as of commit `{commit}`. Machine: {machine_words(run)}. "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f", Python {machine.get('python')}.",
    ]
    return "\n".join(lines) + "\n"


def table_snippet(run: Run) -> str:
    out = []
    for compression in run.compressions:
        overall = run.overall.get(compression, {})
        best = run.best_constant(compression)
        out += [
            f"**{compression} target** (detected: {overall.get('detected', compression)}); best constant γ in "
            f"hindsight, as `speckv bench` picks it: `{best}`.",
            "",
            "| method | × target alone, paired | × best constant, paired | tok/s, all calls | × target alone, "
            "totals | tokens per target forward | drafted tokens accepted | outputs ≠ target alone |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for method in run.methods(compression):
            row = run.results[(compression, method)]
            vs_best = run.paired(compression, method, best) if best and method != best else None
            accept = row.get("acceptance_rate")
            out.append(
                f"| {_label(method)} | {_spread(run.paired(compression, method, REFERENCE))} | "
                f"{'1.00× (the bar)' if method == best else _spread(vs_best)} | {row['tokens_per_s']:.1f} | "
                f"{_x(row.get('speedup'))} | {row['tokens_per_target_forward']:.2f} | "
                f"{'–' if accept is None else f'{accept:.0%}'} | {_mismatches(row)} |"
            )
        notes = []
        if overall.get("measured_oracle_tokens_per_s") and overall.get("modeled_oracle_tokens_per_s"):
            notes.append(
                f"The oracle ran at {overall['measured_oracle_tokens_per_s']:.1f} tok/s through the loop, against "
                f"{overall['modeled_oracle_tokens_per_s']:.1f} tok/s for its steps priced with bare forward times."
            )
        worst = run.largest_pass_gap(compression)
        if worst is not None:
            ratio, call = worst
            notes.append(
                "Largest gap between two passes of one method on one prompt, among those that do the same work "
                f"in every pass (the target alone, the constants, the oracle): {ratio:.1f}× "
                f"in time per token (`{call['method']}`, prompt `{call['prompt_id']}`, pass {call['repeat'] + 1} the "
                "slower)"
                + (
                    ": a stall, which distorts this table's totals; read the paired columns."
                    if ratio >= STALL
                    else "."
                )
            )
        out += ["", *notes, ""] if notes else [""]
    return "\n".join(out).rstrip() + "\n"


def headline_snippet(run: Run) -> str:
    """The few figures the home page and the quickstart quote."""
    methods = ["adaptive", "speckv", "hf-default"]
    speedups = [
        '| target | `SpecKVGenerator()` | `SpecKVGenerator("speckv")` | transformers\' assisted generation | '
        "best constant γ, chosen in hindsight |",
        "|---|---:|---:|---:|---:|",
    ]
    against_best = [
        '| target | best constant γ | `SpecKVGenerator()` against it | `SpecKVGenerator("speckv")` against it |',
        "|---|---|---:|---:|",
    ]
    for compression in run.compressions:
        best = run.best_constant(compression)
        available = set(run.methods(compression))
        cells = [_spread(run.paired(compression, m, REFERENCE)) if m in available else "–" for m in methods]
        best_cell = f"`{best}`: {_spread(run.paired(compression, best, REFERENCE))}" if best else "–"
        speedups.append(f"| {compression} | {' | '.join(cells)} | {best_cell} |")
        if best:
            cells = [_spread(run.paired(compression, m, best)) if m in available else "–" for m in methods[:2]]
            against_best.append(f"| {compression} | `{best}` | {' | '.join(cells)} |")
    settings = run.settings
    out = [
        *speedups,
        "",
        *against_best,
        "",
        "Each call's tokens per second over the target alone's (first table) or the best constant's (second) on the "
        "same prompt in the same pass; the median over the calls in bold, the middle half of them in parentheses. "
        f"The embedded pair, {'sampled' if settings.get('do_sample') else 'greedy'}, "
        f"{settings.get('max_new_tokens')} new tokens, {settings.get('num_prompts')} prompts × "
        f"{settings.get('repeats')} passes. Machine: {machine_words(run)}. The command, the commit and every method "
        "are in [Benchmarks](benchmarks.md).",
    ]
    return "\n".join(out) + "\n"


SNIPPETS = {"source": source_snippet, "table": table_snippet, "headline": headline_snippet}


def render(data: Path = DATA, out: Path = GENERATED) -> list[Path]:
    """Writes `<name>-<snippet>.md` into `out` for every `data/<name>.json`; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(data.glob("*.json")):
        run = Run(path.stem, json.loads(path.read_text()))
        for kind, make in SNIPPETS.items():
            target = out / f"{path.stem}-{kind}.md"
            header = f"<!-- generated by benchmarks/docs_figures.py from docs/data/{path.name}: do not edit -->\n"
            target.write_text(header + make(run))
            written.append(target)
    return written


def main(argv: Iterable[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("bench", help="run `speckv bench` with the arguments after --, keeping every call")
    rendering = commands.add_parser("render", help="write the snippets from the JSON")
    rendering.add_argument("--data", type=Path, default=DATA)
    rendering.add_argument("--out", type=Path, default=GENERATED)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench(extra)
    for path in render(args.data, args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
