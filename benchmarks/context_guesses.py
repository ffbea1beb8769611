"""What the context's guesses for the draft buy: `context+adaptive` with and without them, interleaved, greedy.

    python benchmarks/context_guesses.py [--compression fp32] [--rounds 3] [--prompts-per-task 3]
        [--max-new-tokens 64] [--threads 1]

Runs `speckv bench`'s harness (`speckv_hf.bench.harness.run_benchmark`) over the embedded suite, `--rounds` passes
after a warm-up prompt, the order rotating from prompt to prompt, one generator per method for every call:
`context+adaptive` without guesses (`context+adaptive[max_guesses=0]`), as shipped, feeding guesses on every draft
forward (`context+adaptive[guess_floor=0.0]`), `adaptive` and `fixed:4` to `fixed:6`. Every output is checked
against the target alone's. It prints each method's median per-call speed ratio over the no-guess variant (the pairs
ran seconds apart on the same prompt), its interquartile range, per task, and the share of drafted tokens that
confirmed guesses gave, with draft forwards per new token. The same methods run through the command line too:
`speckv bench --methods "context+adaptive[max_guesses=0],context+adaptive,..."`.
"""

from __future__ import annotations

import argparse
import statistics

REFERENCE = "context+adaptive[max_guesses=0]"
METHODS = (REFERENCE, "context+adaptive", "context+adaptive[guess_floor=0.0]", "adaptive", "fixed:4-6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compression", default="fp32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts-per-task", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from speckv_hf.bench.harness import encode_prompts, run_benchmark
    from speckv_hf.bench.methods import parse_methods
    from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
    from speckv_hf.bench.prompts import demo_prompts

    torch.set_num_threads(args.threads)
    pair = load_pair_for(args.compression, None, None, "cpu")
    prompts = encode_prompts(pair.tokenizer, demo_prompts(args.prompts_per_task))
    methods = parse_methods(list(METHODS))[1:]  # target-only runs too; the table leaves it out
    with quiet_transformers():
        records, reference = run_benchmark(
            pair.target, pair.draft, prompts, methods, max_new_tokens=args.max_new_tokens, repeats=args.rounds
        )
    seconds = {(r.method, r.repeat, r.prompt_id): r.seconds for r in records}
    tasks = sorted({r.task for r in records})
    mismatches = sum(r.output != reference[r.prompt_id] for r in records)
    print(
        f"\n{args.compression}, greedy: {len(prompts)} prompts x {args.rounds} rounds, {args.max_new_tokens} new "
        f"tokens; outputs != target alone: {mismatches}\n"
    )
    print("| method | × no guesses (IQR) | " + " | ".join(tasks) + " | guessed / drafted | draft forwards / token |")
    print("|---|---:|" + "---:|" * len(tasks) + "---:|---:|")
    for method in methods:
        calls = [r for r in records if r.method == method.name]
        ratio = {id(r): seconds[REFERENCE, r.repeat, r.prompt_id] / r.seconds for r in calls}
        low, _, high = statistics.quantiles(ratio.values(), n=4)
        per_task = [statistics.median(ratio[id(r)] for r in calls if r.task == task) for task in tasks]
        drafted, guessed = sum(r.drafted or 0 for r in calls), sum(r.guessed or 0 for r in calls)
        forwards = sum(r.draft_forwards for r in calls) / max(sum(r.new_tokens for r in calls), 1)
        print(
            f"| {method.name} | {statistics.median(ratio.values()):.3f}× ({low:.2f}–{high:.2f}) | "
            + " | ".join(f"{value:.2f}×" for value in per_task)
            + f" | {guessed / max(drafted, 1):.0%} | {forwards:.2f} |"
        )


if __name__ == "__main__":
    main()
