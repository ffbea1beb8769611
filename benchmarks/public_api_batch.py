"""`SpecKVGenerator()` over target-alone batched greedy at batch 1 and 8, through the public API only.

It imports nothing beyond `speckv_hf.SpecKVGenerator` and `speckv_hf.demo`, so the same script measures any
checkout of the library (point `PYTHONPATH` at its `src/`): run it alternately against two checkouts to compare
them on the same prompts (`code`, `prose`, `math`, `structured`, from `--offset` on, held out from training).

    PYTHONPATH=/path/to/checkout/src python benchmarks/public_api_batch.py [--batch-sizes 1,8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

CATEGORIES = ("code", "prose", "math", "structured")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompts", type=int, default=8, help="prompts in all, spread over the categories")
    parser.add_argument("--offset", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import speckv_hf
    from speckv_hf import SpecKVGenerator
    from speckv_hf.demo import load_pair, load_prompts

    target, draft, tokenizer = load_pair()
    tokenizer.padding_side = "left"
    per = -(-args.prompts // len(CATEGORIES))
    texts = [p.text for c in CATEGORIES for p in load_prompts(c)[args.offset : args.offset + per]][: args.prompts]
    generator = SpecKVGenerator()
    for size in (int(b) for b in args.batch_sizes.split(",")):
        batches = [
            tokenizer(texts[i : i + size], return_tensors="pt", padding=True) for i in range(0, len(texts), size)
        ]
        ratios = []
        for _ in range(args.repeats):
            for batch in batches:
                seconds = {}
                for method in ("target", "speckv"):
                    kwargs = {"assistant_model": draft, "candidate_generator": generator} if method == "speckv" else {}
                    start = time.perf_counter()
                    target.generate(**batch, **kwargs, max_new_tokens=args.max_new_tokens, do_sample=False)
                    seconds[method] = time.perf_counter() - start
                ratios.append(seconds["target"] / seconds["speckv"])
        q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
        print(
            f"{args.label or speckv_hf.__file__} batch {size}: SpecKVGenerator() {q[1]:.2f}x target alone "
            f"(paired per batch, IQR {q[0]:.2f}-{q[2]:.2f}, {len(ratios)} pairs)",
            flush=True,
        )


if __name__ == "__main__":
    main()
