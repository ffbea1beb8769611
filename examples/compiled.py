"""The compiled loop: static KV caches written in place, both models' forwards compiled with `torch.compile`,
warmed up before the first call.

    python examples/compiled.py [--max-new-tokens 64] [--backend inductor|eager]

`--backend eager` captures the graphs without generating code (quick, to check the loop); `inductor`, the default,
compiles for speed: the first warm-up takes a minute or two on a CPU, and inductor's on-disk cache makes the next
process faster.
"""

from __future__ import annotations

import argparse
import time

import torch

from speckv_hf import CompileOptions, SpecKVGenerator
from speckv_hf.demo import load_pair, load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    args = parser.parse_args()
    target, draft, tokenizer = load_pair()
    inputs = tokenizer(load_prompts("code")[0].text, return_tensors="pt")
    generator = SpecKVGenerator(compile=CompileOptions(backend=args.backend))
    seconds = generator.warmup(
        target, draft, prompt_length=inputs.input_ids.shape[1], max_new_tokens=args.max_new_tokens
    )
    print(f"warm-up: {seconds:.1f} s")
    for _ in range(2):
        start = time.perf_counter()
        out = target.generate(
            **inputs, assistant_model=draft, candidate_generator=generator, max_new_tokens=args.max_new_tokens
        )
        print(f"{out.shape[1] - inputs.input_ids.shape[1]} tokens in {time.perf_counter() - start:.2f} s")
    print(generator.last_stats)
    alone = target.generate(**inputs, max_new_tokens=args.max_new_tokens)
    print("same as the target alone:", torch.equal(out, alone))


if __name__ == "__main__":
    main()
