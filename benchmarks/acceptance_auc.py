"""How well each draft signal predicts acceptance under greedy matching, speculative and coupled sampling.

Runs `fixed:8` (long drafts, so rejections are seen) in our own loop over the bench's held-out prompts of the
embedded fp32 pair, once per verification scheme, and scores each drafted token up to its step's first rejection
(accepted: 1, the first rejected: 0; the tokens after it are never judged). Prints the acceptance rate of those
tokens and the AUC of the draft's confidence, max probability, top-1/top-2 margin and negative entropy. Under
coupled sampling the signals are those of the draft's perturbed distribution (`speckv_hf.decoding.coupling`).

    python benchmarks/acceptance_auc.py [--prompts-per-task 3] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from speckv_hf import SpecKVGenerator
from speckv_hf.bench.harness import encode_prompts
from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
from speckv_hf.bench.prompts import demo_prompts
from speckv_hf.training.metrics import auc

SIGNALS = ("confidence", "max_prob", "margin", "-entropy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts-per-task", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    pair = load_pair_for("fp32", device="cpu")
    prompts = encode_prompts(pair.tokenizer, demo_prompts(args.prompts_per_task))
    print(f"{'scheme':12} {'tokens':>6} {'accepted':>8}  " + "  ".join(f"{s:>10}" for s in SIGNALS))
    for scheme in ("greedy", "speculative", "coupled"):
        generator = SpecKVGenerator("fixed:8", sampling="coupled" if scheme == "coupled" else "speculative")
        values, labels = [], []
        for index, prompt in enumerate(prompts):
            torch.manual_seed(100 + index)
            with quiet_transformers():
                pair.target.generate(
                    prompt.input_ids,
                    attention_mask=prompt.attention_mask,
                    max_new_tokens=args.max_new_tokens,
                    do_sample=scheme != "greedy",
                    assistant_model=pair.draft,
                    candidate_generator=generator,
                )
            for step in generator.last_stats.steps:
                for token in step.tokens[: step.accepted + 1]:
                    values.append((token.confidence, token.max_prob, token.margin, -token.entropy))
                    labels.append(token.position < step.accepted)
        x, y = np.array(values), np.array(labels, dtype=float)
        aucs = "  ".join(f"{auc(x[:, i], y):10.3f}" for i in range(len(SIGNALS)))
        print(f"{scheme:12} {len(y):6d} {y.mean():8.3f}  {aucs}")


if __name__ == "__main__":
    main()
