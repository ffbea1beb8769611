"""Coupled against speculative sampling in our own loop, interleaved in one run on the embedded pair.

Every SpecKV method runs twice, once per scheme (`SpecKVGenerator(sampling="speculative")` and
`sampling="coupled"`), all in one `run_benchmark` call (so interleaved, one generator per method, each call seeded
from the prompt and the repeat). Prints, per compression and scheme, tokens/s over target alone, tokens per target
forward and acceptance, and the ratios that matter: each scheme's policies over that scheme's best constant γ, and
the coupled best over the speculative best. It also checks that every coupled method produced the same text for
each prompt and repeat (coupled output depends on the seed alone), and counts the calls with no draft forward.

    python benchmarks/coupled_sampling.py [--compression fp32,int8,nf4] [--repeats 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from speckv_hf.bench.harness import encode_prompts, run_benchmark
from speckv_hf.bench.methods import Method
from speckv_hf.bench.paired import paired_ratios
from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
from speckv_hf.bench.prompts import demo_prompts

SCHEMES = ("speculative", "coupled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compression", default="fp32")
    parser.add_argument(
        "--policies", default="adaptive,speckv,fixed:1,fixed:2,fixed:3,fixed:4,fixed:5,fixed:6,fixed:8"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--prompts-per-task", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    policies = args.policies.split(",")
    methods = [Method("target-only", "target")] + [
        Method(f"{policy} {scheme}", "speckv", policy=policy, sampling=scheme)
        for policy in policies
        for scheme in SCHEMES
    ]
    for compression in args.compression.split(","):
        pair = load_pair_for(compression, None, None, args.device)
        prompts = encode_prompts(pair.tokenizer, demo_prompts(args.prompts_per_task), args.device)
        with quiet_transformers():
            records, _ = run_benchmark(
                pair.target,
                pair.draft,
                prompts,
                methods,
                max_new_tokens=args.max_new_tokens,
                do_sample=True,
                repeats=args.repeats,
                seed=args.seed,
            )
        tokens, seconds, forwards, drafted, accepted = (defaultdict(float) for _ in range(5))
        texts: dict[tuple[str, int], set[tuple[int, ...]]] = defaultdict(set)
        plain = 0  # SpecKV calls with no draft forward, as a call that fell back to plain decoding
        for r in records:
            tokens[r.method] += r.new_tokens
            seconds[r.method] += r.seconds
            forwards[r.method] += r.target_forwards
            drafted[r.method] += r.drafted or 0
            accepted[r.method] += r.accepted or 0
            if r.method.endswith(" coupled"):
                texts[r.prompt_id, r.repeat].add(tuple(r.output))
            plain += r.method != "target-only" and r.draft_forwards == 0
        rate = {m: tokens[m] / seconds[m] for m in tokens}
        base = rate["target-only"]
        print(f"\n## {compression}: {len(prompts)} prompts x {args.repeats} repeats, seed {args.seed}")
        print(f"{'method':24} {'speedup':>8} {'tok/fwd':>8} {'accept':>7} {'tokens':>7}")
        for m in rate:
            accept = f"{accepted[m] / drafted[m]:.0%}" if drafted[m] else "-"
            print(f"{m:24} {rate[m] / base:7.2f}x {tokens[m] / forwards[m]:8.2f} {accept:>7} {int(tokens[m]):7d}")
        best = {}
        for scheme in SCHEMES:
            constants = {m: rate[m] for m in rate if m.startswith("fixed:") and m.endswith(f" {scheme}")}
            best[scheme] = max(constants, key=constants.get)
            for policy in ("adaptive", "speckv"):
                name = f"{policy} {scheme}"
                if name in rate:
                    ratio = rate[name] / rate[best[scheme]]
                    print(f"{name}: {ratio:.3f}x the best constant of its scheme ({best[scheme]})")
        coupled_over = rate[best["coupled"]] / rate[best["speculative"]]
        print(f"best coupled constant over best speculative constant (totals): {coupled_over:.3f}x")
        # Paired: each call over its partner on the same prompt and repeat (robust to a stalled call).
        calls = defaultdict(list)
        for r in records:
            calls[r.method].append(r)
        paired = {m: statistics.median(paired_ratios(calls[m], calls["target-only"])) for m in calls}
        print("paired speedups over target-only (median of per-call ratios):")
        for m in paired:
            print(f"  {m:24} {paired[m]:.3f}x")
        best_paired = {
            scheme: max((m for m in paired if m.startswith("fixed:") and m.endswith(f" {scheme}")), key=paired.get)
            for scheme in SCHEMES
        }
        for scheme in SCHEMES:
            name = f"adaptive {scheme}"
            if name in paired:
                print(f"paired: {name} over {best_paired[scheme]}: {paired[name] / paired[best_paired[scheme]]:.3f}x")
        ratio = paired[best_paired["coupled"]] / paired[best_paired["speculative"]]
        print(f"paired: best coupled constant over best speculative constant: {ratio:.3f}x")
        for policy in ("adaptive", "speckv"):
            if f"{policy} coupled" in calls:
                head_to_head = paired_ratios(calls[f"{policy} coupled"], calls[f"{policy} speculative"])
                q1, median, q3 = statistics.quantiles(head_to_head, n=4, method="inclusive")
                print(f"paired: {policy} coupled over {policy} speculative: {median:.3f}x (IQR {q1:.3f}-{q3:.3f})")
        same = sum(len(outputs) == 1 for outputs in texts.values())
        print(f"coupled methods gave one text per prompt and repeat in {same} of {len(texts)} cases")
        print(f"SpecKV calls with no draft forward (as plain decoding runs): {plain}")


if __name__ == "__main__":
    main()
