"""Does the draft know when the context is right? Context candidates split by whether the draft agrees, greedy.

    python benchmarks/context_agreement.py [--compression fp32] [--prompts-per-task 6] [--max-new-tokens 64]
        [--threads 2]

Teacher-forced along the target alone's greedy output on the embedded suite, with no loop and no policy: at every
position the sequence's context source ([`ContextSource`], as the loop builds it) proposes up to 8 tokens; each
proposed token, as long as the ones before it in the proposal were right, is one candidate. For each, the draft's
greedy token at that position (its prediction given the target's own text, which the proposal's earlier tokens
equal) either agrees with the context's or not. The table gives, per task, agreement and effective match length
(the matched tail plus the proposal's tokens before it, capped at 4), how often the context's token is the target's
and how often the draft's is. One row per candidate, not per step a policy would take: a description of the
signal, not of a policy.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

MAX_PROPOSAL = 8
MAX_MATCH = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compression", default="fp32")
    parser.add_argument("--prompts-per-task", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
    from speckv_hf.bench.prompts import demo_prompts
    from speckv_hf.core.context_source import ContextSource

    torch.set_num_threads(args.threads)
    pair = load_pair_for(args.compression, None, None, "cpu")
    target, draft, tokenizer = pair.target, pair.draft, pair.tokenizer
    # (task, agrees, effective match) -> [candidates, context right, draft right]
    counts: dict[tuple[str, bool, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    for item in demo_prompts(args.prompts_per_task):
        inputs = tokenizer(item.text, return_tensors="pt")
        with torch.no_grad(), quiet_transformers():
            out = target.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
            draft_tokens = draft(out).logits[0].argmax(-1).tolist()  # draft_tokens[i]: its token for position i + 1
        sequence, start = out[0].tolist(), int(inputs["input_ids"].shape[1])
        source = ContextSource(sequence[:start])
        for position in range(start, len(sequence)):
            proposal = source.propose(MAX_PROPOSAL)
            for offset, token in enumerate(proposal.tokens):
                at = position + offset
                if at >= len(sequence):
                    break
                drafted = draft_tokens[at - 1]
                key = (item.task, drafted == token, min(proposal.match_length + offset, MAX_MATCH))
                tally = counts[key]
                tally[0] += 1
                tally[1] += token == sequence[at]
                tally[2] += drafted == sequence[at]
                if token != sequence[at]:
                    break
            source.extend([sequence[position]])
    print(
        f"\n{args.compression}, greedy, teacher-forced: context candidates by the draft's agreement and effective "
        f"match length ({args.prompts_per_task} prompts per task, {args.max_new_tokens} new tokens)\n"
    )
    print("| task | draft | match | candidates | context's token right | draft's token right |")
    print("|---|---|---:|---:|---:|---:|")
    totals: dict[bool, list[int]] = defaultdict(lambda: [0, 0, 0])
    for (task, agrees, match), (n, context_right, draft_right) in sorted(counts.items()):
        label = f"{match}+" if match == MAX_MATCH else str(match)
        print(
            f"| {task} | {'agrees' if agrees else 'differs'} | {label} | {n} | {context_right / n:.2f} | "
            f"{draft_right / n:.2f} |"
        )
        total = totals[agrees]
        for i, value in enumerate((n, context_right, draft_right)):
            total[i] += value
    for agrees, (n, context_right, draft_right) in sorted(totals.items(), reverse=True):
        print(
            f"| all | {'agrees' if agrees else 'differs'} | all | {n} | {context_right / n:.2f} | "
            f"{draft_right / n:.2f} |"
        )


if __name__ == "__main__":
    main()
