"""Wall-clock benchmark: SpecKV policies vs transformers' assisted generation vs the target alone.

Runs on the embedded demo pair (offline), with the target at fp32, bitsandbytes INT8 or NF4:

    python benchmarks/bench_assisted.py --compression fp32
    python benchmarks/bench_assisted.py --compression int8 --prompts-per-category 3 --json int8.json

Every configuration runs on the same prompts, interleaved per prompt after a warm-up; ratios come from one run.
This is a benchmark, not a test: it asserts nothing, it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from speckv_hf.bench import BenchConfig, BenchResult, default_configs, measure_draft_forward, run_benchmark
from speckv_hf.compression import quantization_config
from speckv_hf.demo import CATEGORIES, load_pair, load_prompts, pair_path


def load_models(compression: str):
    from transformers import LlamaForCausalLM

    target, draft, tokenizer = load_pair()
    qconfig = quantization_config(compression)
    if qconfig is not None:
        target = LlamaForCausalLM.from_pretrained(
            pair_path("target"), quantization_config=qconfig, device_map="cpu", local_files_only=True
        ).eval()
    elif compression != "fp32":
        target = target.to(getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[compression]))
    return target, draft, tokenizer


def report(results: list[BenchResult], bare_draft_seconds: float, compression: str) -> dict:
    base = next(r for r in results if r.config.kind == "target")
    reference = base.outputs
    rows = []
    header = (
        f"{'configuration':<22} {'tok/s':>7} {'speedup':>8} {'tok/fwd':>8} {'acc len':>8} "
        f"{'draft+loop ms/tok':>18} {'same output':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        per_token = r.draft_loop_seconds_per_token
        same = sum(a == b for a, b in zip(r.outputs, reference, strict=False))
        row = {
            "name": r.config.name,
            "tokens_per_second": r.tokens_per_second,
            "speedup_vs_target": r.tokens_per_second / base.tokens_per_second,
            "tokens_per_target_forward": r.tokens_per_target_forward,
            "mean_accepted_length": r.mean_accepted_length,
            "draft_loop_ms_per_drafted_token": None if per_token is None else per_token * 1e3,
            "same_output_as_target": f"{same}/{len(reference)}",
        }
        rows.append(row)
        cell = "-" if per_token is None else f"{per_token * 1e3:.2f}"
        print(
            f"{r.config.name:<22} {r.tokens_per_second:7.1f} {row['speedup_vs_target']:7.2f}x "
            f"{r.tokens_per_target_forward:8.2f} {r.mean_accepted_length:8.2f} {cell:>18} "
            f"{row['same_output_as_target']:>12}"
        )
    print(f"\nbare draft forward (KV cache, 1 token): {bare_draft_seconds * 1e3:.2f} ms")

    ours = next((r for r in results if r.config.name == "speckv adaptive"), None)
    hf_default = next((r for r in results if r.config.name == "hf default"), None)
    constants = [r for r in results if r.config.name.startswith("hf constant")]
    if ours is None or hf_default is None or not constants:
        return {"rows": rows, "bare_draft_forward_ms": bare_draft_seconds * 1e3}
    best_constant = max(constants, key=lambda r: r.tokens_per_second)
    summary = {
        "compression": compression,
        "speckv_vs_hf_default": ours.tokens_per_second / hf_default.tokens_per_second,
        "speckv_vs_best_hf_constant": ours.tokens_per_second / best_constant.tokens_per_second,
        "best_hf_constant": best_constant.config.name,
        "speckv_vs_target_alone": ours.tokens_per_second / base.tokens_per_second,
        "hf_default_vs_target_alone": hf_default.tokens_per_second / base.tokens_per_second,
    }
    print(f"\nSpecKVGenerator() vs transformers default assisted: {summary['speckv_vs_hf_default']:.2f}x")
    print(
        f"SpecKVGenerator() vs best constant ({best_constant.config.name}): "
        f"{summary['speckv_vs_best_hf_constant']:.2f}x"
    )
    print(f"SpecKVGenerator() vs target alone: {summary['speckv_vs_target_alone']:.2f}x")
    total = ours.seconds
    split = ours.time_split
    accounted = sum(split.values())
    print(
        "where SpecKVGenerator's time goes: "
        f"draft {split['draft'] / total:.0%}, verify (target forward + acceptance) {split['verify'] / total:.0%}, "
        f"transformers loop {split['loop'] / total:.0%}, policy {split['policy'] / total:.1%}, "
        f"outside the steps (generate() setup, prefill bookkeeping) {(total - accounted) / total:.0%}"
    )
    print(
        f"  target forwards alone: {ours.target_seconds / total:.0%} of the time; "
        f"draft forwards alone: {ours.draft_seconds / total:.0%}"
    )
    return {"rows": rows, "summary": summary, "bare_draft_forward_ms": bare_draft_seconds * 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compression", default="fp32", choices=["fp32", "bf16", "int8", "nf4"])
    parser.add_argument("--prompts-per-category", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--random-draft",
        action="store_true",
        help="replace the draft by a randomly initialized one of the same shape: speculation cannot pay",
    )
    parser.add_argument("--only", default="", help="comma-separated configuration names to run (default: all)")
    parser.add_argument("--extra-policies", default="", help="comma-separated extra SpecKV policies, e.g. fixed:3")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    target, draft, tokenizer = load_models(args.compression)
    prompts = []
    for category in CATEGORIES:
        for item in load_prompts(category)[: args.prompts_per_category]:
            encoded = tokenizer(item.text, return_tensors="pt")
            prompts.append((encoded.input_ids, encoded.attention_mask))
    print(
        f"target {args.compression} ({sum(p.numel() for p in target.parameters()) / 1e6:.1f}M params), "
        f"draft {sum(p.numel() for p in draft.parameters()) / 1e6:.2f}M, {len(prompts)} prompts, "
        f"{args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}\n"
    )
    if args.random_draft:
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        draft = LlamaForCausalLM(draft.config).eval()
    configs = default_configs()
    configs += [BenchConfig(f"speckv {p}", "speckv", policy=p) for p in args.extra_policies.split(",") if p]
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        configs = [c for c in configs if c.name in wanted or c.kind == "target"]
    results = run_benchmark(
        target,
        draft,
        prompts,
        configs=configs,
        max_new_tokens=args.max_new_tokens,
        progress=lambda done, total: print(f"  prompt {done}/{total}", file=sys.stderr),
    )
    data = report(results, measure_draft_forward(draft, prompts[0][0]), args.compression)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
