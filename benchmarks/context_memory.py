"""What a memory of earlier calls buys: `context+adaptive` with and without `context_memory`, interleaved, greedy.

    python benchmarks/context_memory.py run [--compression fp32] [--rounds 3] [--prompts-per-task 3]
        [--max-new-tokens 64] [--memory 16384] [--threads 1] [--json docs/data/memory/greedy.json]
    python benchmarks/context_memory.py render   # docs/data/memory/*.json -> docs/_generated/memory-*.md

Each round runs every prompt of the embedded suite once per method through `speckv bench`'s harness
(`speckv_hf.bench.harness.run_benchmark`: the order rotates from prompt to prompt, one generator per method serves
every call, the target alone runs too), with no warm-up pass, which would fill the memory: `context+adaptive`
without memory, `context+adaptive[context_memory=--memory]`, and `adaptive`. The memory fills as the rounds go: in
round 1 it holds the prompts and outputs of the prompts before this one (other requests, which only resemble it);
from round 2 on, this prompt's own earlier call too (a request asked again). The two are reported apart. Every output
is checked against the target alone's. It prints (and with `--json` keeps, every call included) each method's median
per-call speed ratio over `context+adaptive` without memory (the pairs ran seconds apart on the same prompt), its
interquartile range, per task, and target forwards per new token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "data" / "memory"
GENERATED = ROOT / "docs" / "_generated"
REFERENCE = "no memory"
ORDER = (REFERENCE, "memory", "adaptive")


def run(args: argparse.Namespace) -> None:
    import torch

    from speckv_hf.bench.harness import PromptDone, encode_prompts, run_benchmark
    from speckv_hf.bench.methods import parse_methods
    from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
    from speckv_hf.bench.prompts import demo_prompts
    from speckv_hf.bench.provenance import run_provenance

    torch.set_num_threads(args.threads)
    pair = load_pair_for(args.compression, None, None, "cpu")
    names = {
        "context+adaptive": REFERENCE,
        f"context+adaptive[context_memory={args.memory}]": "memory",
        "adaptive": "adaptive",
    }
    prompts = encode_prompts(pair.tokenizer, demo_prompts(args.prompts_per_task))

    def done(prompt: PromptDone) -> None:
        if prompt.index == prompt.prompts - 1:
            print(f"round {prompt.repeat + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    with quiet_transformers():
        # No warm-up pass: it would put its prompt in the memory before round 1.
        records, reference = run_benchmark(
            pair.target,
            pair.draft,
            prompts,
            parse_methods(list(names)),
            max_new_tokens=args.max_new_tokens,
            repeats=args.rounds,
            warmup_prompts=0,
            on_prompt=done,
        )
    calls: list[dict[str, Any]] = [
        {
            "method": names[r.method],
            "round": r.repeat,
            "prompt_id": r.prompt_id,
            "task": r.task,
            "seconds": r.seconds,
            "new_tokens": r.new_tokens,
            "target_forwards": r.target_forwards,
            "matches_target": r.output == reference[r.prompt_id],
        }
        for r in records
        if r.method in names
    ]
    document = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "func")},
        "provenance": run_provenance(ROOT, "python benchmarks/context_memory.py " + " ".join(sys.argv[1:])),
        "calls": calls,
    }
    print(report(document))
    if args.json:
        from speckv_hf.core.atomic import atomic_write_text

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.json), json.dumps(document, indent=1) + "\n")


def report(document: dict[str, Any]) -> str:
    """The table: per method and kind of round, the median per-call ratio over the reference, IQR, per task."""
    settings, calls = document["settings"], document["calls"]
    seconds = {(c["method"], c["round"], c["prompt_id"]): c["seconds"] for c in calls}
    tasks = sorted({c["task"] for c in calls})
    found = list(dict.fromkeys(c["method"] for c in calls))
    methods = [m for m in ORDER if m in found] + [m for m in found if m not in ORDER]
    mismatches = sum(not c["matches_target"] for c in calls)
    lines = [
        f"{settings['compression']}, greedy: {len({c['prompt_id'] for c in calls})} prompts x {settings['rounds']} "
        f"rounds, {settings['max_new_tokens']} new tokens, memory of {settings['memory']} tokens; outputs that "
        f"differ from the target alone's: {mismatches} of {len(calls)}.",
        "",
        "| method | prompt seen before | × no memory (IQR) | " + " | ".join(tasks) + " | target forwards / token |",
        "|---|---|---:|" + "---:|" * len(tasks) + "---:|",
    ]
    for name in methods:
        for label, again in (("no (round 1)", False), ("yes (rounds 2+)", True)):
            chosen = [c for c in calls if c["method"] == name and (c["round"] > 0) == again]
            if not chosen:
                continue
            ratio = {id(c): seconds[REFERENCE, c["round"], c["prompt_id"]] / c["seconds"] for c in chosen}
            values = list(ratio.values())
            low, _, high = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
            per_task = [statistics.median(ratio[id(c)] for c in chosen if c["task"] == task) for task in tasks]
            forwards = sum(c["target_forwards"] for c in chosen) / max(sum(c["new_tokens"] for c in chosen), 1)
            lines.append(
                f"| {name} | {label} | {statistics.median(values):.2f}× ({low:.2f}–{high:.2f}) | "
                + " | ".join(f"{value:.2f}×" for value in per_task)
                + f" | {forwards:.2f} |"
            )
    return "\n".join(lines) + "\n"


def render(data: Path = DATA, out: Path = GENERATED) -> list[Path]:
    """Writes `out/memory-<name>.md` for every `data/<name>.json`; returns the paths written."""
    from speckv_hf.bench.provenance import provenance_line

    written = []
    for path in sorted(data.glob("*.json")):
        document = json.loads(path.read_text())
        text = report(document) + "\n" + provenance_line(document["provenance"]) + "\n"
        target = out / f"memory-{path.stem}.md"
        out.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True)
    run_parser = commands.add_parser("run", help="run the benchmark")
    run_parser.add_argument("--compression", default="fp32")
    run_parser.add_argument("--rounds", type=int, default=3)
    run_parser.add_argument("--prompts-per-task", type=int, default=3)
    run_parser.add_argument("--max-new-tokens", type=int, default=64)
    run_parser.add_argument("--memory", type=int, default=16384, help="tokens the memory keeps")
    run_parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    run_parser.add_argument("--json", help="write the run, every call included, to this file")
    run_parser.set_defaults(func=run)
    render_parser = commands.add_parser("render", help="docs/data/memory/*.json -> docs/_generated/memory-*.md")
    render_parser.set_defaults(func=lambda _: print("\n".join(str(p) for p in render())))
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
