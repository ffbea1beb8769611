"""Batched speculative decoding against target-alone batched greedy, interleaved in one run.

    python benchmarks/batch_bench.py --compression fp32,nf4 --batch-sizes 1,2,4,8 --prompts 8 \
        --max-new-tokens 64 --repeats 3 --out runs/batch/batch.json

For each compression and batch size, the same held-out prompts of the embedded suite are cut into batches of B
(left-padded, as a tokenizer with `padding_side="left"` gives them) and generated greedily by:

- `target`: target-alone batched `generate()`;
- `speckv`: `SpecKVGenerator()` (the default policy) in the library's own loop (`loop="speckv"`, also at B = 1);
- with `--policies fixed:2,fixed:4,...`: those policies in the own loop too;
- at B = 1 only: `speckv-tf-loop`, the same generator inside transformers' assisted loop (what batch 1 ran
  before the own loop existed), and `hf-assisted`, transformers' own assisted generation (its defaults).

Methods alternate call by call (the order rotates), one generator instance per method is reused across calls as
users do, and every speculative output is checked token for token against the target's (the last column counts
the rows that differ; bitsandbytes targets differ at numerical near-ties, see docs/quantized.md). Both models'
`forward` are wrapped with a timer, so each method's time splits into draft forwards, target forwards and
everything else (the loop), reported per step (per target forward). Ratios are per repeat, against `target` in
the same repeat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

import speckv_hf
from speckv_hf import SpecKVGenerator
from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
from speckv_hf.bench.prompts import demo_prompts
from speckv_hf.core.cost import Clock


class ForwardTimer:
    """Wraps a model's `forward` (on the instance) and sums its seconds and calls."""

    def __init__(self, model: torch.nn.Module, clock: Clock) -> None:
        self.seconds, self.calls = 0.0, 0
        original = model.forward

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock.now()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += clock.now() - start
                self.calls += 1

        model.forward = timed

    def read(self) -> tuple[float, int]:
        return self.seconds, self.calls


def _new_tokens(sequences: torch.Tensor, prompt_width: int, eos: int | None) -> int:
    total = 0
    for row in sequences[:, prompt_width:].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        total += len(row)
    return total


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"command": " ".join(sys.argv), "runs": []}
    items = demo_prompts(max(1, -(-args.prompts // 4)), offset=args.offset)[: args.prompts]
    for compression in args.compression.split(","):
        pair = load_pair_for(compression, device="cpu")
        target, draft, tokenizer = pair.target, pair.draft, pair.tokenizer
        tokenizer.padding_side = "left"
        clock = Clock("cpu")
        timers = {"target": ForwardTimer(target, clock), "draft": ForwardTimer(draft, clock)}
        eos = tokenizer.eos_token_id
        generators = {"speckv": SpecKVGenerator(loop="speckv"), "speckv-tf-loop": SpecKVGenerator(loop="transformers")}
        extra = [spec for spec in args.policies.split(",") if spec]
        generators.update({spec: SpecKVGenerator(spec, loop="speckv") for spec in extra})
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        # (batch size, method) -> per repeat: tokens, seconds, steps, target forward s, draft forward s
        totals: dict[tuple[int, str], list[list[float]]] = defaultdict(
            lambda: [[0.0] * 5 for _ in range(args.repeats)]
        )
        mismatches: dict[tuple[int, str], int] = defaultdict(int)
        for repeat in range(args.repeats):
            for size in sizes:
                methods = ["target", "speckv", *extra] + (["speckv-tf-loop", "hf-assisted"] if size == 1 else [])
                for start in range(0, len(items), size):
                    group = items[start : start + size]
                    batch = tokenizer([item.text for item in group], return_tensors="pt", padding=True)
                    width = batch["input_ids"].shape[1]
                    rotation = (repeat + start // size) % len(methods)
                    reference = None
                    outputs = {}
                    for method in methods[rotation:] + methods[:rotation]:
                        kwargs: dict[str, Any] = dict(
                            do_sample=False, max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id
                        )
                        if method in generators:
                            kwargs.update(assistant_model=draft, candidate_generator=generators[method])
                        elif method == "hf-assisted":
                            draft.generation_config.num_assistant_tokens = 20
                            draft.generation_config.num_assistant_tokens_schedule = "constant"
                            kwargs.update(assistant_model=draft)
                        before = {name: timer.read() for name, timer in timers.items()}
                        began = clock.now()
                        with quiet_transformers():
                            out = target.generate(**batch, **kwargs)
                        seconds = clock.now() - began
                        after = {name: timer.read() for name, timer in timers.items()}
                        row = totals[(size, method)][repeat]
                        row[0] += _new_tokens(out, width, eos)
                        row[1] += seconds
                        row[2] += after["target"][1] - before["target"][1]
                        row[3] += after["target"][0] - before["target"][0]
                        row[4] += after["draft"][0] - before["draft"][0]
                        outputs[method] = out
                    reference = outputs["target"]
                    for method, out in outputs.items():
                        if out.shape != reference.shape:
                            mismatches[(size, method)] += len(group)
                        else:
                            mismatches[(size, method)] += int((out != reference).any(-1).sum())
        for size in sizes:
            base = [r[0] / r[1] for r in totals[(size, "target")]]
            for (method_size, method), rows in sorted(totals.items()):
                if method_size != size:
                    continue
                rates = [r[0] / r[1] for r in rows]
                ratios = [rate / b for rate, b in zip(rates, base, strict=True)]
                steps = sum(r[2] for r in rows)
                seconds = sum(r[1] for r in rows)
                target_s, draft_s = sum(r[3] for r in rows), sum(r[4] for r in rows)
                results["runs"].append(
                    {
                        "compression": compression,
                        "batch_size": size,
                        "method": method,
                        "tokens_per_second": rates,
                        "ratio_vs_target": ratios,
                        "steps": steps,
                        "ms_per_step": {
                            "total": 1e3 * seconds / steps,
                            "target_forwards": 1e3 * target_s / steps,
                            "draft_forwards": 1e3 * draft_s / steps,
                            "other": 1e3 * (seconds - target_s - draft_s) / steps,
                        },
                        "tokens_per_step": sum(r[0] for r in rows) / steps,
                        "mismatched_rows": mismatches[(size, method)],
                        "rows": len(items) * args.repeats,
                    }
                )
        del pair, target, draft
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        f"command: {results['command']}",
        "",
        "| compression | B | method | tok/s (median) | × target (median, min-max) | tok/step | ms/step: total | "
        "target fwd | draft fwd | other | rows ≠ target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run_ in results["runs"]:
        ratios = run_["ratio_vs_target"]
        ms = run_["ms_per_step"]
        lines.append(
            f"| {run_['compression']} | {run_['batch_size']} | {run_['method']} | "
            f"{statistics.median(run_['tokens_per_second']):.0f} | {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {run_['tokens_per_step']:.2f} | {ms['total']:.2f} | "
            f"{ms['target_forwards']:.2f} | {ms['draft_forwards']:.2f} | {ms['other']:.2f} | "
            f"{run_['mismatched_rows']}/{run_['rows']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compression", default="fp32,nf4")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--offset", type=int, default=16, help="first prompt of each category (held out)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--policies", default="", help="more policies in the own loop, e.g. fixed:2,fixed:4")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    assert speckv_hf.is_installed()
    results = run(args)
    text = report(results)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
