"""Measures the embedded demo pair: draft/target agreement and γ-speculation acceptance per prompt category, the
draft/target KV-cached decode-step time ratio, and greedy target samples.

Usage:

    python benchmarks/pair_report.py [--new-tokens 64] [--gamma 4] [--timing-steps 300] [--json out.json]

For every held-out prompt the target generates `--new-tokens` tokens greedily. On that sequence, the draft's greedy
next-token prediction at each generated position is compared with the target's token (agreement). Fixed-γ greedy
speculation is then simulated on the same sequence: at each step the draft proposes γ tokens from the verified prefix
and the number accepted is the length of the run of agreeing positions (at most γ); the target then adds one token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from speckv_hf.demo import CATEGORIES, PAIR_DIR, load_pair, load_prompts


def greedy_continuation(model, tokenizer, text: str, new_tokens: int) -> torch.Tensor:
    """Generates `new_tokens` tokens greedily after `text`.

    Args:
        model (`LlamaForCausalLM`): Model to generate with.
        tokenizer (`PreTrainedTokenizerFast`): Tokenizer of the pair.
        text (`str`): Prompt text.
        new_tokens (`int`): Number of tokens to generate (generation may stop earlier at `</s>`).

    Returns:
        `torch.Tensor`: The full sequence (prompt and continuation) as a 1-D tensor of ids.
    """
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0]


def draft_agreement(draft, sequence: torch.Tensor, prompt_len: int) -> list[bool]:
    """For each generated position, whether the draft's greedy next token equals the target's token there.

    Args:
        draft (`LlamaForCausalLM`): Draft model.
        sequence (`torch.Tensor`): Prompt plus target greedy continuation, 1-D.
        prompt_len (`int`): Number of prompt tokens (including `<s>`).

    Returns:
        `list[bool]`: One entry per generated token.
    """
    with torch.no_grad():
        logits = draft(input_ids=sequence[None]).logits[0]
    predicted = logits[prompt_len - 1 : -1].argmax(-1)
    return (predicted == sequence[prompt_len:]).tolist()


def simulate_fixed_gamma(agree: list[bool], gamma: int) -> list[int]:
    """Accepted draft tokens per verification step of greedy fixed-γ speculation along the target's sequence.

    With greedy drafting and verification, a proposal is accepted while the draft agrees with the target, and as long
    as it does, the draft's prefix equals the verified prefix, so its proposals are its one-step predictions.

    Args:
        agree (`list[bool]`): Per-position agreement from `draft_agreement`.
        gamma (`int`): Tokens proposed per step.

    Returns:
        `list[int]`: Accepted length (0..γ) of every step; each step also yields one target token.
    """
    accepted, pos = [], 0
    while pos < len(agree):
        run = 0
        while run < gamma and pos + run < len(agree) and agree[pos + run]:
            run += 1
        accepted.append(run)
        pos += run + 1
    return accepted


def decode_step_ms(model, prefix: torch.Tensor, steps: int) -> float:
    """Median wall time of a single-token KV-cached forward (ms), after prefilling `prefix`.

    Args:
        model (`LlamaForCausalLM`): Model to time.
        prefix (`torch.Tensor`): Prompt ids of shape `(1, n)`.
        steps (`int`): Number of timed decode steps.

    Returns:
        `float`: Median milliseconds per decode step.
    """
    times = []
    with torch.no_grad():
        out = model(input_ids=prefix, use_cache=True)
        for index in range(steps + 10):
            token = out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            if index >= 10:  # warm-up
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def category_table(results: dict, gamma: int) -> str:
    """Markdown table of agreement and acceptance per category."""
    lines = [
        f"| category | prompts | positions | draft agreement | mean accepted / step (γ={gamma}) "
        "| tokens / target forward | full-accept steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for category, res in results.items():
        steps = res["accepted"]
        full = sum(a == gamma for a in steps) / len(steps)
        lines.append(
            f"| {category} | {res['prompts']} | {len(res['agree'])} | {statistics.fmean(res['agree']):.1%} "
            f"| {statistics.fmean(steps):.2f} | {statistics.fmean(steps) + 1:.2f} | {full:.1%} |"
        )
    return "\n".join(lines)


def histogram_table(results: dict, gamma: int) -> str:
    """Markdown table: share of verification steps by accepted run length, per category."""
    header = "| category | " + " | ".join(f"accepted={k}" for k in range(gamma + 1)) + " |"
    lines = [header, "|---|" + "---|" * (gamma + 1)]
    for category, res in results.items():
        counts = Counter(res["accepted"])
        total = len(res["accepted"])
        cells = " | ".join(f"{counts[k] / total:.1%} ({counts[k]})" for k in range(gamma + 1))
        lines.append(f"| {category} | {cells} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """Parses command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--timing-steps", type=int, default=300)
    parser.add_argument("--sample-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    return parser.parse_args()


def main() -> None:
    """Runs all measurements and prints markdown tables."""
    args = parse_args()
    target, draft, tokenizer = load_pair()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    report_file = PAIR_DIR / "training_report.json"
    if report_file.is_file():
        report = json.loads(report_file.read_text())
        print(f"params: target {report['target_params']:,}, draft {report['draft_params']:,}")
        for which in ("target", "draft"):
            print(f"{which} held-out loss: {report[which]['heldout_loss']}")

    results: dict = {}
    for category in CATEGORIES:
        prompts = load_prompts(category)
        agree_all: list[bool] = []
        accepted_all: list[int] = []
        for prompt in prompts:
            prompt_len = len(tokenizer(prompt.text).input_ids)
            sequence = greedy_continuation(target, tokenizer, prompt.text, args.new_tokens)
            agree = draft_agreement(draft, sequence, prompt_len)
            agree_all.extend(agree)
            accepted_all.extend(simulate_fixed_gamma(agree, args.gamma))
        results[category] = {"prompts": len(prompts), "agree": agree_all, "accepted": accepted_all}
    overall = [a for res in results.values() for a in res["agree"]]
    print(f"\n## Greedy acceptance (γ={args.gamma}, {args.new_tokens} target tokens per prompt)\n")
    print(category_table(results, args.gamma))
    print(f"\noverall draft agreement: {statistics.fmean(overall):.1%} of {len(overall)} positions")
    print(f"\n## Accepted run length per verification step (γ={args.gamma})\n")
    print(histogram_table(results, args.gamma))

    prefix = tokenizer(load_prompts("code")[0].text, return_tensors="pt").input_ids
    target_ms = decode_step_ms(target, prefix, args.timing_steps)
    draft_ms = decode_step_ms(draft, prefix, args.timing_steps)
    ratio = draft_ms / target_ms
    print("\n## KV-cached single-token decode step (median)\n")
    print(f"| model | ms / step |\n|---|---|\n| target | {target_ms:.3f} |\n| draft | {draft_ms:.3f} |")
    print(f"\ndraft/target forward-time ratio c = {ratio:.3f}")
    for category, res in results.items():
        tokens = statistics.fmean(res["accepted"]) + 1
        speedup = tokens / (1 + args.gamma * ratio)
        print(f"  {category}: idealised fixed-γ speedup (E[tokens]/(1+γc)) ≈ {speedup:.2f}x")

    print("\n## Target-alone greedy samples\n")
    for category in CATEGORIES:
        prompt = load_prompts(category)[0]
        sequence = greedy_continuation(target, tokenizer, prompt.text, args.sample_tokens)
        prompt_len = len(tokenizer(prompt.text).input_ids)
        continuation = tokenizer.decode(sequence[prompt_len:], skip_special_tokens=True)
        print(f"### {category} ({prompt.id})\n\n```text\n{prompt.text}⟪{continuation}⟫\n```\n")

    if args.json is not None:
        raw = {"ratio": ratio, "target_ms": target_ms, "draft_ms": draft_ms, "gamma": args.gamma}
        raw["categories"] = {
            c: {"agreement": statistics.fmean(r["agree"]), "accepted": r["accepted"]} for c, r in results.items()
        }
        args.json.write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
