"""The compiled loop against the eager loop and the compiled target alone, interleaved on the embedded pair.

`run` measures, in one `run_benchmark` call per run (interleaved, one generator per method, `--runs` runs):
target-only, `target-compiled` (transformers' static cache with its forward compiled: the honest baseline of the
compiled path), and each policy of `--policies` in the eager loop (`POLICY`) and in the compiled loop
(`compiled:POLICY`, warmed up before the first measured call). It also times the warm-up in two fresh processes
that share a new inductor cache directory (the first compiles, the second reads the cache). It prints, and with
`--json` keeps, paired per-call ratios: each method over target-only, each compiled policy over the same policy in
the eager loop and over `target-compiled`.

    python benchmarks/compiled_loop.py run [--compression fp32] [--runs 3] [--json docs/data/compiled/fp32.json]
    python benchmarks/compiled_loop.py render   # docs/data/compiled/*.json -> docs/_generated/compiled-*.md
    python benchmarks/compiled_loop.py warmup   # one warm-up, printed as JSON (what `run` starts twice)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "data" / "compiled"
GENERATED = ROOT / "docs" / "_generated"
DEFAULT_POLICIES = "adaptive,fixed:4,context+adaptive,oracle"
_FIELDS = ("method", "prompt_id", "task", "repeat", "seconds", "new_tokens", "target_forwards", "draft_forwards")


class _Call:
    """One measured call, as kept in the JSON (what `paired_ratios` reads)."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.__dict__.update(row)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def warmup(args: argparse.Namespace) -> dict[str, Any]:
    """Loads the pair and warms a compiled generator up for the benchmark's sizes; prints what it took."""
    import torch

    from speckv_hf import SpecKVGenerator
    from speckv_hf.bench.pairs import load_pair_for, quiet_transformers

    torch.set_num_threads(args.threads)
    pair = load_pair_for(args.compression, None, None, args.device)
    generator = SpecKVGenerator(compile=True)
    with quiet_transformers():
        seconds = generator.warmup(
            pair.target, pair.draft, prompt_length=args.prompt_length, max_new_tokens=args.max_new_tokens
        )
    result = {"seconds": seconds, "graphs": generator._compiled.graphs}
    print(json.dumps(result))
    return result


def forward_times(target: Any, draft: Any, lengths: tuple[int, ...] = (1, 5), repeats: int = 100) -> dict[str, Any]:
    """Median milliseconds of one forward of `n` tokens after a 64-token prompt, per model: eager over a
    `DynamicCache` (what the eager loop runs) and compiled over a static cache (what the compiled loop runs),
    alternating."""
    import torch
    from transformers import DynamicCache

    from speckv_hf import CompileOptions
    from speckv_hf.decoding._transformers import cache_kwarg
    from speckv_hf.decoding.compiled import CompiledModels
    from speckv_hf.decoding.static_cache import StaticLayout
    from speckv_hf.decoding.static_loop import static_forward

    compiled = CompiledModels.shared(CompileOptions())
    times: dict[str, Any] = {}
    for role, model in (("draft", draft), ("target", target)):
        device = next(model.parameters()).device
        prompt = torch.randint(3, 1000, (1, 64), device=device)
        for n in lengths:
            with torch.no_grad():
                cache = DynamicCache()
                model(input_ids=prompt, **{cache_kwarg(model): cache}, use_cache=True)
                feed = torch.randint(3, 1000, (1, n), device=device)
                static, columns = compiled.cache(model, 1, 64 + max(lengths) + 1)
                layout = StaticLayout(torch.cat((prompt, feed), 1), torch.ones((1, 64 + n), device=device), columns, 0)
                static_forward(compiled, model, static, cache_kwarg(model), layout, 0, 64, eager=True)
                static_forward(compiled, model, static, cache_kwarg(model), layout, 64, n)  # compiles
                eager, fast = [], []
                for _ in range(repeats):  # interleaved, so that both see the same machine
                    start = time.perf_counter()
                    model(input_ids=feed, **{cache_kwarg(model): cache}, use_cache=True)
                    _sync(device)
                    eager.append(time.perf_counter() - start)
                    cache.crop(-n)
                    start = time.perf_counter()
                    static_forward(compiled, model, static, cache_kwarg(model), layout, 64, n)
                    _sync(device)
                    fast.append(time.perf_counter() - start)
                compiled.release(model, 1, columns, static)
            times[f"{role}/{n}"] = {
                "eager_ms": 1e3 * statistics.median(eager),
                "compiled_ms": 1e3 * statistics.median(fast),
            }
    return times


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def _warmups(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Two fresh processes warming up with one new inductor cache directory: cold, then reading the cache."""
    results = []
    with tempfile.TemporaryDirectory() as cache_dir:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
        for _ in range(2):
            start = time.perf_counter()
            done = subprocess.run(
                [
                    *(sys.executable, __file__, "warmup", "--compression", args.compression),
                    *("--threads", str(args.threads), "--prompt-length", str(args.prompt_length)),
                    *("--max-new-tokens", str(args.max_new_tokens)),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["process_seconds"] = time.perf_counter() - start
            results.append(result)
    return results


def run(args: argparse.Namespace) -> None:
    import torch

    from speckv_hf.bench.harness import encode_prompts, run_benchmark
    from speckv_hf.bench.methods import parse_methods
    from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
    from speckv_hf.bench.prompts import demo_prompts
    from speckv_hf.bench.provenance import run_provenance

    torch.set_num_threads(args.threads)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    methods = parse_methods(["target-compiled", *policies, *(f"compiled:{p}" for p in policies)])
    document: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "func")},
        "provenance": {
            **run_provenance(ROOT, "python benchmarks/compiled_loop.py " + " ".join(sys.argv[1:])),
            "torch": torch.__version__,
        },
        "compressions": [],
    }
    for compression in args.compression.split(","):
        args.compression = compression
        try:
            warmups = _warmups(args) if args.time_warmup else []
        except subprocess.CalledProcessError as error:  # kept in the JSON: what does not compile is a finding
            warmups = [{"error": (error.stderr or "")[-2000:]}]
        pair = load_pair_for(compression, None, None, args.device)
        prompts = encode_prompts(pair.tokenizer, demo_prompts(args.prompts_per_task), args.device)
        calls: list[dict[str, Any]] = []
        for index in range(args.runs):
            with quiet_transformers():
                records, _ = run_benchmark(
                    pair.target,
                    pair.draft,
                    prompts,
                    methods,
                    max_new_tokens=args.max_new_tokens,
                    seed=args.seed + 100 * index,
                )
            calls += [{**{f: getattr(r, f) for f in _FIELDS}, "repeat": index} for r in records]
        with torch.no_grad(), quiet_transformers():
            forwards = forward_times(pair.target, pair.draft)
        entry = {
            "compression": compression,
            "prompts": len(prompts),
            "calls": calls,
            "warmups": warmups,
            "forwards": forwards,
        }
        document["compressions"].append(entry)
        print(report(entry, document["settings"]), flush=True)
        if args.json:  # after each compression, atomically: a later failure keeps what ran
            from speckv_hf.core.atomic import atomic_write_text

            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(args.json), json.dumps(document, indent=1) + "\n")


def report(entry: dict[str, Any], settings: dict[str, Any]) -> str:
    """The Markdown tables of one compression of a run."""
    from speckv_hf.bench.paired import paired_ratios, quartiles

    by_method: dict[str, list[_Call]] = defaultdict(list)
    for row in entry["calls"]:
        by_method[row["method"]].append(_Call(row))

    def cell(method: str, against: str) -> str:
        q1, median, q3 = quartiles(paired_ratios(by_method[method], by_method[against]))
        return f"{median:.2f}× ({q1:.2f}–{q3:.2f})"

    runs = len({c.repeat for c in by_method["target-only"]})
    lines = [
        f"**{entry['compression']}, greedy**: {entry['prompts']} prompts × {runs} runs, "
        f"{settings['max_new_tokens']} new tokens, {settings['threads']} CPU thread(s). Paired per call, median "
        "(IQR); tokens/s is the median call's:",
        "",
        "| method | tokens/s | over target-only | over target-compiled |",
        "|---|---:|---:|---:|",
    ]
    for method in by_method:
        speed = statistics.median(c.tokens_per_second for c in by_method[method])
        over_target = cell(method, "target-only") if method != "target-only" else "1.00×"
        over_compiled = cell(method, "target-compiled") if method != "target-compiled" else "1.00×"
        lines.append(f"| {method} | {speed:.1f} | {over_target} | {over_compiled} |")
    compiled = [m for m in by_method if m.startswith("compiled:")]
    lines += [
        "",
        "Each policy in the compiled loop over the same policy in the eager loop, paired per call:",
        "",
        "| policy | compiled over eager |",
        "|---|---:|",
    ]
    for method in compiled:
        lines.append(f"| {method.removeprefix('compiled:')} | {cell(method, method.removeprefix('compiled:'))} |")
    if entry.get("forwards"):
        lines += [
            "",
            "Bare forwards after a 64-token prompt, median ms (eager over a DynamicCache; compiled over a static "
            "cache, as each loop runs them):",
            "",
            "| forward | eager | compiled | compiled / eager |",
            "|---|---:|---:|---:|",
        ]
        for name, times in entry["forwards"].items():
            model, n = name.split("/")
            lines.append(
                f"| {model}, {n} token{'s' if n != '1' else ''} | {times['eager_ms']:.2f} | "
                f"{times['compiled_ms']:.2f} | {times['compiled_ms'] / times['eager_ms']:.2f} |"
            )
    labels = ("first process", "second process (inductor's cache)")
    for label, warm in zip(labels, entry.get("warmups", []), strict=False):
        if "error" in warm:
            last = warm["error"].strip().splitlines()[-1:] or ["(no message)"]
            lines += ["", f"The warm-up failed in a fresh process: `{last[0]}`"]
            break
        if label == "first process":
            lines += ["", "Warm-up of `SpecKVGenerator(compile=True)` (both models, every feed length):", ""]
        lines.append(
            f"- {label}: {warm['seconds']:.1f} s compiling {warm['graphs']} graphs "
            f"({warm['process_seconds']:.1f} s with loading)"
        )
    lines.append("")
    return "\n".join(lines)


def render(data: Path = DATA, out: Path = GENERATED) -> list[Path]:
    """Writes `out/compiled-<name>.md` for every `data/<name>.json`; returns the paths written."""
    from speckv_hf.bench.provenance import provenance_line

    written = []
    for path in sorted(data.glob("*.json")):
        document = json.loads(path.read_text())
        provenance = document["provenance"]
        parts = [report(entry, document["settings"]) for entry in document["compressions"]]
        parts.append(provenance_line(provenance) + "\n")
        target = out / f"compiled-{path.stem}.md"
        out.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(parts))
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True)
    for name, func in (("run", run), ("warmup", warmup)):
        sub = commands.add_parser(name, help=f"{name} the benchmark")
        sub.add_argument("--compression", default="fp32")
        sub.add_argument("--max-new-tokens", type=int, default=96)
        sub.add_argument("--prompt-length", type=int, default=128, help="warm-up: the longest prompt")
        sub.add_argument("--device", default="cpu", help="cpu or cuda")
        sub.add_argument("--threads", type=int, default=1, help="torch CPU threads")
        sub.set_defaults(func=func)
        if name == "run":
            sub.add_argument("--policies", default=DEFAULT_POLICIES)
            sub.add_argument("--runs", type=int, default=3)
            sub.add_argument("--prompts-per-task", type=int, default=3)
            sub.add_argument("--seed", type=int, default=1)
            sub.add_argument("--no-time-warmup", dest="time_warmup", action="store_false")
            sub.add_argument("--json", help="write the run, every call included, to this file")
    render_parser = commands.add_parser("render", help="docs/data/compiled/*.json -> docs/_generated/compiled-*.md")
    render_parser.set_defaults(func=lambda _: print("\n".join(str(p) for p in render())))
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
