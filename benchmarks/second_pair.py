"""Build a second pair, not the embedded one: the embedded Llama target with a GPT-NeoX draft distilled from it.

    python benchmarks/second_pair.py --out runs/neox-pair [--steps 600] [--threads 2]

The draft is another architecture (GPT-NeoX: parallel attention/MLP, rotary on a quarter of each head, untied
embeddings, LayerNorm) with two layers, distilled for a fixed number of steps from the target on the embedded
recipe's training corpus (0.8 KL + 0.2 CE, as the embedded draft), so the result is deterministic for a given seed
and thread count. The folder gets `target/` (a copy of the embedded target) and `draft/`, both loadable with
`from_pretrained`, for `speckv bench --target runs/neox-pair/target --draft runs/neox-pair/draft`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaForCausalLM

from speckv_hf.demo import pair_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # the demo pair's recipe, outside the wheel
import build_demo_pair as recipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(pair_path("target"), local_files_only=True)
    target = LlamaForCausalLM.from_pretrained(pair_path("target"), dtype=torch.float32, local_files_only=True).eval()
    target.requires_grad_(False)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 32,
        intermediate_size=4 * args.hidden,
        rotary_pct=0.25,
        max_position_embeddings=1024,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    draft = GPTNeoXForCausalLM(config)
    train_docs, heldout_docs = recipe.build_corpus(heldout=False), recipe.build_corpus(heldout=True)
    # The pair's training categories (the prompt suite's `grounded` category has no training text).
    streams = {c: recipe.encode_category(tokenizer, train_docs[c]) for c in recipe.CATEGORIES}
    heldout = {c: recipe.encode_category(tokenizer, heldout_docs[c]) for c in recipe.CATEGORIES}
    training = argparse.Namespace(
        steps=args.steps, batch_size=16, bf16=False, temperature=1.0, kd_weight=0.8, log_every=50, eval_every_s=1e9
    )
    eval_set = recipe.eval_batches(heldout, 256, tokenizer.bos_token_id)
    batcher = recipe.Batcher(streams, 256, tokenizer.bos_token_id, seed=args.seed)
    report = recipe.train_loop(draft, batcher, eval_set, training, 0.0, 3e-3, "neox-draft", teacher=target)

    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(pair_path("target"), args.out / "target", dirs_exist_ok=True)
    recipe.save_model(draft, tokenizer, args.out / "draft", torch.float16)
    report.update(params=sum(p.numel() for p in draft.parameters()), argv=sys.argv[1:])
    report["wall_s"] = round(time.perf_counter() - start, 1)
    (args.out / "draft" / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
