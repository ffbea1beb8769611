"""Speculative decoding with SpecKVGenerator on the embedded pair (offline): the target's own greedy output, faster.

python examples/quickstart.py [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse

import torch

from speckv_hf import SpecKVGenerator
from speckv_hf.demo import load_pair, load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    target, draft, tokenizer = load_pair()
    inputs = tokenizer(load_prompts("code")[0].text, return_tensors="pt")
    generator = SpecKVGenerator()  # the adaptive policy: γ per step from measured costs
    out = target.generate(
        **inputs, assistant_model=draft, candidate_generator=generator, max_new_tokens=args.max_new_tokens
    )
    alone = target.generate(**inputs, max_new_tokens=args.max_new_tokens)
    print(tokenizer.decode(out[0, inputs.input_ids.shape[1] :]))
    print(generator.last_stats)
    print("same as the target alone:", torch.equal(out, alone))


if __name__ == "__main__":
    main()
