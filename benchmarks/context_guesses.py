"""What the context's guesses for the draft buy: `context+adaptive` with and without them, interleaved, greedy.

    python benchmarks/context_guesses.py [--compression fp32] [--rounds 3] [--prompts-per-task 3]
        [--max-new-tokens 64] [--threads 1]

Each round runs every prompt of the embedded suite once per method, in an order shuffled per prompt, with one
generator per method reused across calls (as `speckv bench` does): `context+adaptive` as shipped, the same with
`max_guesses=0` (no guesses), the same feeding guesses on every draft forward (`guess_floor=0`), `adaptive` and
`fixed:4` to `fixed:6`. Every output is checked against the target alone's. It prints each method's median per-call
speed ratio over the no-guess variant (the pairs ran seconds apart on the same prompt), its interquartile range,
per task, and the share of drafted tokens that confirmed guesses gave, with draft forwards per new token.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compression", default="fp32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts-per-task", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from speckv_hf import SpecKVGenerator
    from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
    from speckv_hf.bench.prompts import demo_prompts

    torch.set_num_threads(args.threads)
    pair = load_pair_for(args.compression, None, None, "cpu")
    target, draft, tokenizer = pair.target, pair.draft, pair.tokenizer
    reference = "no guesses"
    settings = {
        reference: ("context+adaptive", {"max_guesses": 0}),
        "context+adaptive": ("context+adaptive", {}),
        "every forward": ("context+adaptive", {"guess_floor": 0.0}),
        "adaptive": ("adaptive", {}),
        **{f"fixed:{k}": (f"fixed:{k}", {}) for k in (4, 5, 6)},
    }
    generators = {name: SpecKVGenerator(spec, **kwargs) for name, (spec, kwargs) in settings.items()}
    prompts = [(item.task, tokenizer(item.text, return_tensors="pt")) for item in demo_prompts(args.prompts_per_task)]
    seconds: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # tokens, drafted, guessed, draft forwards
    tasks: dict[tuple[int, int], str] = {}
    mismatches = 0
    for round_ in range(args.rounds):
        for index, (task, inputs) in enumerate(prompts):
            with torch.no_grad(), quiet_transformers():
                expected = target.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
            order = list(generators)
            random.Random(round_ * 1000 + index).shuffle(order)
            for name in order:
                start = time.perf_counter()
                with torch.no_grad(), quiet_transformers():
                    out = target.generate(
                        **inputs,
                        assistant_model=draft,
                        candidate_generator=generators[name],
                        max_new_tokens=args.max_new_tokens,
                        do_sample=False,
                    )
                seconds[name][round_, index] = time.perf_counter() - start
                mismatches += not torch.equal(out, expected)
                stats = generators[name].last_stats
                total = counts[name]
                total[0] += stats.tokens_emitted
                total[1] += stats.drafted_tokens
                total[2] += stats.guessed_tokens
                total[3] += stats.draft_forwards
            tasks[round_, index] = task
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    keys = list(tasks)
    names = sorted({tasks[k] for k in keys})
    print(
        f"\n{args.compression}, greedy: {len(prompts)} prompts x {args.rounds} rounds, {args.max_new_tokens} new "
        f"tokens; outputs != target alone: {mismatches}\n"
    )
    print("| method | × no guesses (IQR) | " + " | ".join(names) + " | guessed / drafted | draft forwards / token |")
    print("|---|---:|" + "---:|" * len(names) + "---:|---:|")
    for name in generators:
        ratios = [seconds[reference][k] / seconds[name][k] for k in keys]
        low, _, high = statistics.quantiles(ratios, n=4)
        per_task = [
            statistics.median(seconds[reference][k] / seconds[name][k] for k in keys if tasks[k] == task)
            for task in names
        ]
        tokens, drafted, guessed, forwards = counts[name]
        print(
            f"| {name} | {statistics.median(ratios):.3f}× ({low:.2f}–{high:.2f}) | "
            + " | ".join(f"{value:.2f}×" for value in per_task)
            + f" | {guessed / max(drafted, 1):.0%} | {forwards / max(tokens, 1):.2f} |"
        )


if __name__ == "__main__":
    main()
