"""Context candidates against the draft model alone, per workload, interleaved on the embedded pair.

`run` runs target-only, our loop's constants `fixed:1..8` (draft tokens only), `adaptive`, the context policies
(`context`: no draft model; `context+adaptive`), transformers' prompt lookup and assisted generation, all in one
`run_benchmark` call per run (interleaved, one generator per method), `--runs` independent runs per compression.
It prints (and with `--json` keeps, every call included) per compression: the paired speedups over target-only per
task (median of per-call ratios, pooled over the runs), each method over the best constant chain (picked per
compression by paired median), pooled and per task, and each task's repeat rate (share of target-only's new tokens
whose 4-gram occurred before, and the part that occurs in the prompt).

    python benchmarks/context_candidates.py run [--compression fp32,int8,nf4] [--runs 3] [--prompts-per-task 3]
        [--do-sample --sampling speculative] [--json docs/data/context/greedy.json]
    python benchmarks/context_candidates.py render   # docs/data/context/*.json -> docs/_generated/context-*.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "data" / "context"
GENERATED = ROOT / "docs" / "_generated"
DEFAULT_METHODS = "fixed:1-8,adaptive,context,context+adaptive,hf-prompt-lookup,hf-default"
_FIELDS = ("method", "prompt_id", "task", "repeat", "seconds", "new_tokens", "target_forwards", "draft_forwards")


class _Call:
    """One measured call, as kept in the JSON (what `paired_ratios` reads)."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.__dict__.update(row)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(args: argparse.Namespace) -> None:
    import torch

    from speckv_hf.bench.harness import encode_prompts, run_benchmark
    from speckv_hf.bench.methods import parse_methods
    from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
    from speckv_hf.bench.prompts import demo_prompts
    from speckv_hf.bench.provenance import run_provenance
    from speckv_hf.bench.repeats import repeat_counts

    torch.set_num_threads(args.threads)
    methods = parse_methods(args.methods)
    document: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "func")},
        "provenance": run_provenance(ROOT, "python benchmarks/context_candidates.py " + " ".join(sys.argv[1:])),
        "compressions": [],
    }
    for compression in args.compression.split(","):
        pair = load_pair_for(compression, None, None, args.device)
        prompts = encode_prompts(pair.tokenizer, demo_prompts(args.prompts_per_task), args.device)
        prompt_ids = {p.item.id: p.input_ids[0].tolist() for p in prompts}
        calls: list[dict[str, Any]] = []
        repeats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for index in range(args.runs):
            with quiet_transformers():
                records, _ = run_benchmark(
                    pair.target,
                    pair.draft,
                    prompts,
                    methods,
                    max_new_tokens=args.max_new_tokens,
                    do_sample=args.do_sample,
                    seed=args.seed + 100 * index,
                    sampling=args.sampling,
                )
            for r in records:
                calls.append({**{f: getattr(r, f) for f in _FIELDS}, "repeat": index})
                if r.method == "target-only":
                    counts = repeat_counts(prompt_ids[r.prompt_id], r.output)
                    tally = repeats[r.task]
                    tally[0], tally[1], tally[2] = (
                        tally[0] + counts.tokens,
                        tally[1] + counts.repeated,
                        tally[2] + counts.in_prompt,
                    )
        entry = {"compression": compression, "prompts": len(prompts), "calls": calls, "repeats": dict(repeats)}
        document["compressions"].append(entry)
        print(report(entry, document["settings"]), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")


def report(entry: dict[str, Any], settings: dict[str, Any]) -> str:
    """The Markdown tables of one compression of a run."""
    from speckv_hf.bench.paired import paired_ratios, quartiles
    from speckv_hf.bench.summary import is_constant

    by_method: dict[str, list[_Call]] = defaultdict(list)
    for row in entry["calls"]:
        by_method[row["method"]].append(_Call(row))
    reference = by_method["target-only"]
    tasks = sorted({c.task for c in reference})
    names = [m for m in by_method if m != "target-only"]
    paired = {m: _median(paired_ratios(by_method[m], reference)) for m in names}
    constants = [m for m in names if is_constant(m)]
    best = max(constants, key=paired.get)
    mode = f"sampled ({settings['sampling']} sampling)" if settings["do_sample"] else "greedy"
    lines = [
        f"**{entry['compression']}, {mode}**: {entry['prompts']} prompts × {settings['runs']} runs, "
        f"{settings['max_new_tokens']} new tokens. Paired speedup over the target alone (median of per-call ratios):",
        "",
        "| method | all | " + " | ".join(tasks) + " |",
        "|---|---:|" + "---:|" * len(tasks),
    ]

    def by_task(method: str, against: str) -> list[str]:
        cells = []
        for task in tasks:
            ours = [c for c in by_method[method] if c.task == task]
            theirs = [c for c in by_method[against] if c.task == task]
            cells.append(f"{_median(paired_ratios(ours, theirs)):.2f}×")
        return cells

    for m in names:
        lines.append(f"| {m} | {paired[m]:.2f}× | " + " | ".join(by_task(m, "target-only")) + " |")
    runs = sorted({c.repeat for c in reference})
    held_out = len(runs) > 1  # each run against the constant best in the other runs
    last = "; last, over the constant best in the other runs (chosen without the run's own calls):"
    lines += [
        "",
        f"Over the best constant chain of our loop (`{best}`, by paired median), paired per call: median (IQR) "
        "pooled, then per task" + (last if held_out else ":"),
        "",
        "| method | all | " + " | ".join(tasks) + " |" + (" other runs' best |" if held_out else ""),
        "|---|---:|" + "---:|" * len(tasks) + ("---:|" if held_out else ""),
    ]

    def in_run(calls: list[_Call], run: int, inside: bool = True) -> list[_Call]:
        return [c for c in calls if (c.repeat == run) == inside]

    # Per run, the constant with the best paired median over the other runs' calls.
    chosen = {
        run: max(constants, key=lambda k, r=run: _median(paired_ratios(in_run(by_method[k], r, False), reference)))
        for run in runs
    }

    def other_runs_best(method: str) -> str:
        ratios = []
        for run in runs:
            ratios += paired_ratios(in_run(by_method[method], run), in_run(by_method[chosen[run]], run))
        return f" {_median(ratios):.2f}× |"

    for m in names:
        if is_constant(m):
            continue
        q1, median, q3 = quartiles(paired_ratios(by_method[m], by_method[best]))
        row = f"| {m} | {median:.2f}× ({q1:.2f}–{q3:.2f}) | " + " | ".join(by_task(m, best)) + " |"
        lines.append(row + (other_runs_best(m) if held_out else ""))
    rates = []
    for task in tasks:
        tokens, repeated, in_prompt = entry["repeats"][task]
        rates.append(f"{repeated / tokens:.0%} ({in_prompt / tokens:.0%})")
    lines += [
        "",
        "Repeat rate of the target alone's output (4-grams seen before; in the prompt):",
        "",
        "| " + " | ".join(tasks) + " |",
        "|" + "---:|" * len(tasks),
        "| " + " | ".join(rates) + " |",
        "",
    ]
    return "\n".join(lines)


def render(data: Path = DATA, out: Path = GENERATED) -> list[Path]:
    """Writes `out/context-<name>.md` for every `data/<name>.json`; returns the paths written."""
    from speckv_hf.bench.provenance import provenance_line

    written = []
    for path in sorted(data.glob("*.json")):
        document = json.loads(path.read_text())
        provenance = document["provenance"]
        parts = [report(entry, document["settings"]) for entry in document["compressions"]]
        parts.append(provenance_line(provenance) + "\n")
        target = out / f"context-{path.stem}.md"
        out.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(parts))
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True)
    run_parser = commands.add_parser("run", help="run the benchmark")
    run_parser.add_argument("--compression", default="fp32")
    run_parser.add_argument("--methods", default=DEFAULT_METHODS)
    run_parser.add_argument("--runs", type=int, default=3)
    run_parser.add_argument("--prompts-per-task", type=int, default=3)
    run_parser.add_argument("--max-new-tokens", type=int, default=64)
    run_parser.add_argument("--do-sample", action="store_true")
    run_parser.add_argument("--sampling", default="speculative", help="SpecKVGenerator(sampling=...) when sampling")
    run_parser.add_argument("--seed", type=int, default=1)
    run_parser.add_argument("--device", default="cpu", help="cpu or cuda")
    run_parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    run_parser.add_argument("--json", help="write the run, every call included, to this file")
    run_parser.set_defaults(func=run)
    render_parser = commands.add_parser("render", help="docs/data/context/*.json -> docs/_generated/context-*.md")
    render_parser.set_defaults(func=lambda _: print("\n".join(str(p) for p in render())))
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
