"""One-command GPU check of the embedded demo pair: lossless output, sampling, the compiled loop's warm-up, the bench.

Run it on a CUDA machine (CI never does, and nothing in it needs a GPU to import):

    python benchmarks/gpu_check.py --out gpu-check.json

For each compression of `--compression` (default `fp32,int8,nf4`) it loads the embedded pair on `--device` and:

1. warm-up: times `SpecKVGenerator(compile=...).warmup(target, draft, ...)` for the benchmark's sizes, before any
   other compiled call of that pair (synchronised on CUDA), and records the seconds and the graphs compiled;
2. greedy: for `--check-prompts` prompts, `target.generate(do_sample=False)` alone must equal the output with
   `candidate_generator=SpecKVGenerator(POLICY)` token for token, for `adaptive`, `fixed:4` and
   `context+adaptive`, in the eager loop and in the compiled loop (`compile=CompileOptions(mode=--compile-mode)`);
   then the same on a left-padded batch of 4 prompts against target-alone batched greedy. For bitsandbytes targets
   a first difference at a near-tie (the target's top-2 logit gap on the common prefix below 1e-2 of the top
   logit's magnitude) is `PASS-near-tie`; the gap is reported for every difference;
3. sampling: coupled sampling (`SpecKVGenerator("fixed:3")`, the default `sampling="auto"`) gives the same tokens
   in the eager and the compiled loop after `torch.manual_seed(s)`; and speculative sampling
   (`SpecKVGenerator("fixed:2", sampling="speculative")`, compiled and eager) keeps the target's distribution: one
   call of `--rows` rows of one short prompt, `top_k=0`, whose first-token histogram is compared with the target's
   softmax by a chi-square test (cells expected below 5 lumped; PASS when p > 1e-3). The call generates 3 tokens,
   so that the first step drafts 2 and the first token goes through acceptance or the residual (with 1 new token
   nothing is drafted); its compiled caches round to 16 columns, not 256, to keep `--rows` caches small;
4. bench (unless `--skip-bench`): `run_benchmark` on the embedded suite's held-out prompts, `--repeats` runs of
   the method matrix, printed as a Markdown table of paired per-call ratios (median and IQR) over target-only and
   over `target-compiled`; every call is kept in the JSON. Its `compiled:POLICY` methods run with `compile=True`
   (`run_benchmark` builds them), whatever `--compile-mode` says; timings come from the harness's clock, which
   synchronises CUDA.

The warm-up compiles from scratch only with an empty inductor cache (`TORCHINDUCTOR_CACHE_DIR`, recorded in the
JSON): set it to a new folder to time a cold compile. A compiled-loop call that raises (a quantized backend that
torch.compile cannot handle) is `UNSUPPORTED`, printed with its error, and the script goes on; it is not a
failure. Any `FAIL` makes the exit status 1. The JSON (`--out`, rewritten atomically after each part, so a crash
keeps what ran) holds the environment, every check with its data, the warm-ups and every bench call.

    python benchmarks/gpu_check.py [--device cuda] [--compression fp32,int8,nf4] [--compile-mode reduce-overhead]
        [--prompts-per-task 2] [--max-new-tokens 64] [--repeats 3] [--rows 2000] [--skip-bench] [--out FILE]
    python benchmarks/gpu_check.py --quick --device cpu --compression fp32   # a dry run with tiny settings
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("adaptive", "fixed:4", "context+adaptive")
DEFAULT_METHODS = (
    "target-compiled,hf-default,hf-prompt-lookup,adaptive,context+adaptive,fixed:1-8,"
    "compiled:adaptive,compiled:context+adaptive"
)
QUICK_METHODS = "target-compiled,fixed:4,compiled:fixed:4"
#: Full settings, and what `--quick` uses instead, for options not given on the command line.
FULL = {"prompts_per_task": 2, "max_new_tokens": 64, "repeats": 3, "rows": 2000, "methods": DEFAULT_METHODS}
QUICK = {"prompts_per_task": 1, "max_new_tokens": 16, "repeats": 1, "rows": 200, "methods": QUICK_METHODS}
BNB_NAMES = {"int8", "nf4", "fp4", "bnb-int8", "bnb-nf4", "bnb-fp4"}
NEAR_TIE_RELATIVE = 1e-2  # top-2 logit gap over the top logit's magnitude under which bnb targets may differ
P_VALUE_MIN = 1e-3
SAMPLING_PROMPT_TOKENS = 16  # the distribution check's prompt: the first tokens of the first prompt
SAMPLING_NEW_TOKENS = 3  # fixed:2 drafts min(2, max_new_tokens - 1) tokens: 1 new token would draft none
SAMPLING_CACHE_STEP = 16  # static-cache rounding for the R-row call (256 columns x 2000 rows would be GBs)
ERROR_CHARS = 4000

PASS, NEAR_TIE, FAIL, UNSUPPORTED = "PASS", "PASS-near-tie", "FAIL", "UNSUPPORTED"


# -- reporting --------------------------------------------------------------------------------------------------
class Report:
    """Every check's result, printed as it comes and kept in one JSON document written atomically.

    Args:
        path: the JSON file.
        document: the document's start (environment, settings).
    """

    def __init__(self, path: Path, document: dict[str, Any]) -> None:
        self.path = path
        self.document = {**document, "checks": [], "warmups": [], "bench": [], "finished": False}

    def add(self, compression: str, check: str, cell: str, status: str, detail: str = "", **data: Any) -> None:
        """Records one check and prints its line (`STATUS compression check cell: detail`).

        Args:
            compression: the compression name.
            check: the check (`greedy`, `batch`, `coupled`, ...).
            cell: which case of the check (loop and policy).
            status: `PASS`, `PASS-near-tie`, `FAIL` or `UNSUPPORTED`.
            detail: one line for the console.
            **data: what the JSON keeps besides (errors, positions, gaps, p-values).
        """
        self.document["checks"].append(
            {"compression": compression, "check": check, "cell": cell, "status": status, "detail": detail, **data}
        )
        line = f"{status:<13} {compression:<6} {check:<13} {cell}"
        print(f"{line}: {detail}" if detail else line, flush=True)
        self.write()

    def count(self, status: str) -> int:
        return sum(c["status"] == status for c in self.document["checks"])

    def write(self) -> None:
        """Writes the document: a temporary file in the same folder, renamed over `path`."""
        from speckv_hf.core.atomic import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.document, indent=1, default=str) + "\n")


def _error(exc: BaseException) -> dict[str, str]:
    """The error's one-line text and its traceback, both cut to `ERROR_CHARS`."""
    return {
        "error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS],
        "traceback": traceback.format_exc()[-ERROR_CHARS:],
    }


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict[str, Any]:
    """Versions, the device, the command line and the commit (without importing any quantization backend).

    Args:
        device: the device the checks run on.

    Returns:
        What the JSON keeps under `environment`.
    """
    import torch

    from speckv_hf.bench.provenance import git_output

    cuda = torch.cuda.is_available()
    index = torch.device(device).index if str(device).startswith("cuda") else None
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        inductor_cache = cache_dir()
    except Exception:  # a private helper: its place may move between torch versions
        inductor_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": _version("transformers"),
        "bitsandbytes": _version("bitsandbytes"),
        "speckv_hf": _version("speckv-hf"),
        "device": device,
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(index) if cuda else None,
        "cuda_capability": ".".join(map(str, torch.cuda.get_device_capability(index))) if cuda else None,
        "inductor_cache_dir": inductor_cache,
        "torch_threads": torch.get_num_threads(),
        "command": " ".join([sys.executable, *sys.argv]),
        "commit": git_output(ROOT, "rev-parse", "HEAD"),
        "uncommitted_changes": bool(git_output(ROOT, "status", "--porcelain", "--untracked-files=no")),
    }


def _synchronize(device: str) -> None:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


# -- comparing outputs -------------------------------------------------------------------------------------------
def first_difference(expected: Sequence[int], got: Sequence[int]) -> int | None:
    """The first position where two token lists differ (a length difference counts at the shorter's end).

    Args:
        expected: the reference tokens.
        got: the tokens to check.

    Returns:
        The 0-based position, or None when the lists are equal.
    """
    for index, (a, b) in enumerate(zip(expected, got, strict=False)):
        if a != b:
            return index
    return None if len(expected) == len(got) else min(len(expected), len(got))


def top2_gap(target: Any, input_ids: Any, attention_mask: Any, prefix: Sequence[int]) -> dict[str, float]:
    """The target's top-2 logit gap after the prompt and the common prefix (one full forward, no cache).

    Args:
        target: the target model.
        input_ids (`torch.LongTensor` of shape `(length,)`): one row's prompt (left padding included).
        attention_mask (`torch.LongTensor` of shape `(length,)`): its mask.
        prefix: the new tokens both outputs share.

    Returns:
        `gap` (top-1 minus top-2 logit), `relative_gap` (gap over the top logit's magnitude), `top1`, `top2`
        (their token ids).
    """
    import torch

    extra = torch.tensor(list(prefix), dtype=input_ids.dtype, device=input_ids.device)
    ids = torch.cat((input_ids, extra))[None]
    mask = torch.cat((attention_mask, torch.ones_like(extra)))[None]
    with torch.no_grad():
        logits = target(input_ids=ids, attention_mask=mask).logits[0, -1].float()
    values, indices = logits.topk(2)
    gap = float(values[0] - values[1])
    return {
        "gap": gap,
        "relative_gap": gap / max(abs(float(values[0])), 1e-6),
        "top1": int(indices[0]),
        "top2": int(indices[1]),
    }


def compare_rows(
    target: Any,
    compression: str,
    input_ids: Any,
    attention_mask: Any,
    expected: Any,
    got: Any,
) -> tuple[str, list[dict[str, Any]]]:
    """Compares generated rows with the reference rows, a near-tie analysis for each difference.

    Args:
        target: the target model.
        compression: its compression name (bitsandbytes ones may differ at near-ties).
        input_ids (`torch.LongTensor` of shape `(batch, length)`): the prompts.
        attention_mask (`torch.LongTensor` of shape `(batch, length)`): their mask.
        expected (`torch.LongTensor` of shape `(batch, length + new)`): target-alone output.
        got (`torch.LongTensor`): the output to check.

    Returns:
        The status (`PASS`, `PASS-near-tie` or `FAIL`) and one entry per differing row (row, position, gap).
    """
    length = input_ids.shape[1]
    differences = []
    for row in range(input_ids.shape[0]):
        reference, tokens = expected[row, length:].tolist(), got[row, length:].tolist()
        position = first_difference(reference, tokens)
        if position is None:
            continue
        entry: dict[str, Any] = {"row": row, "position": position, "expected": reference, "got": tokens}
        if position < min(len(reference), len(tokens)):
            entry.update(top2_gap(target, input_ids[row], attention_mask[row], reference[:position]))
        differences.append(entry)
    if not differences:
        return PASS, []
    near_ties = compression in BNB_NAMES and all(
        d.get("relative_gap", float("inf")) < NEAR_TIE_RELATIVE for d in differences
    )
    return (NEAR_TIE if near_ties else FAIL), differences


def _describe(differences: list[dict[str, Any]]) -> str:
    parts = []
    for d in differences[:4]:
        gap = f", top-2 gap {d['gap']:.4g} ({d['relative_gap']:.2e} relative)" if "gap" in d else " (length)"
        parts.append(f"row/prompt {d['row']} differs at new token {d['position']}{gap}")
    more = f" (+{len(differences) - 4} more)" if len(differences) > 4 else ""
    return "; ".join(parts) + more


def _worst(statuses: Sequence[str]) -> str:
    for status in (FAIL, UNSUPPORTED, NEAR_TIE):
        if status in statuses:
            return status
    return PASS


# -- the checks --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Context:
    """What every check of one compression needs.

    Attributes:
        report: where results go.
        compression: the compression name.
        device: the device.
        target: the target model.
        draft: the draft model.
        tokenizer: the target's tokenizer.
        max_new_tokens: new tokens per greedy call.
        compile_options: the `CompileOptions` of the compiled loop's checks.
        seed: base seed.
    """

    report: Report
    compression: str
    device: str
    target: Any
    draft: Any
    tokenizer: Any
    max_new_tokens: int
    compile_options: Any
    seed: int

    def generate(self, input_ids: Any, attention_mask: Any, generator: Any = None, **kwargs: Any) -> Any:
        """`target.generate`, alone or with the draft and `generator`."""
        extra = {} if generator is None else {"assistant_model": self.draft, "candidate_generator": generator}
        return self.target.generate(input_ids, attention_mask=attention_mask, **extra, **kwargs)

    def add(self, check: str, cell: str, status: str, detail: str = "", **data: Any) -> None:
        self.report.add(self.compression, check, cell, status, detail, **data)


def warmup_check(ctx: Context, prompt_length: int, max_new_tokens: int) -> None:
    """Times `SpecKVGenerator(compile=...).warmup` (both models, every feed length) and records its graphs.

    Args:
        ctx: the compression's context.
        prompt_length: the longest prompt that compiled calls will get.
        max_new_tokens: the most new tokens they will generate.
    """
    from speckv_hf import SpecKVGenerator

    generator = SpecKVGenerator(compile=ctx.compile_options)
    before = generator._compiled.graphs
    entry: dict[str, Any] = {
        "compression": ctx.compression,
        "prompt_length": prompt_length,
        "max_new_tokens": max_new_tokens,
        "compile_options": repr(ctx.compile_options),
    }
    try:
        _synchronize(ctx.device)
        start = time.perf_counter()
        seconds = generator.warmup(ctx.target, ctx.draft, prompt_length=prompt_length, max_new_tokens=max_new_tokens)
        _synchronize(ctx.device)
        wall = time.perf_counter() - start
    except Exception as exc:
        entry.update(_error(exc))
        ctx.report.document["warmups"].append(entry)
        ctx.add("warmup", "compiled", UNSUPPORTED, _short(exc), **_error(exc))
        return
    graphs = generator._compiled.graphs
    entry.update(seconds=seconds, synchronized_seconds=wall, graphs=graphs, graphs_compiled=graphs - before)
    ctx.report.document["warmups"].append(entry)
    ctx.add(
        "warmup",
        "compiled",
        PASS,
        f"{wall:.1f} s, {graphs - before} graphs compiled ({graphs} in the process), prompt_length={prompt_length}",
        seconds=seconds,
        synchronized_seconds=wall,
        graphs=graphs,
    )


def greedy_checks(ctx: Context, prompts: Sequence[Any]) -> None:
    """Target-alone greedy against `SpecKVGenerator(POLICY)` greedy, per policy, eager and compiled loop.

    Args:
        ctx: the compression's context.
        prompts: `EncodedPrompt`s (batch 1 each).
    """
    from speckv_hf import SpecKVGenerator

    kwargs = {"do_sample": False, "max_new_tokens": ctx.max_new_tokens}
    references = [ctx.generate(p.input_ids, p.attention_mask, **kwargs) for p in prompts]
    for loop in ("eager", "compiled"):
        for policy in POLICIES:
            cell = f"{loop} {policy}"
            try:
                generator = SpecKVGenerator(policy, compile=ctx.compile_options if loop == "compiled" else False)
                statuses, differences, accepted, drafted = [], [], 0, 0
                for index, (prompt, expected) in enumerate(zip(prompts, references, strict=True)):
                    out = ctx.generate(prompt.input_ids, prompt.attention_mask, generator, **kwargs)
                    stats = generator.last_stats
                    drafted += stats.drafted_tokens
                    accepted += stats.accepted_tokens
                    status, found = compare_rows(
                        ctx.target, ctx.compression, prompt.input_ids, prompt.attention_mask, expected, out
                    )
                    statuses.append(status if stats.compiled == (loop == "compiled") else FAIL)
                    differences += [{**d, "row": index, "prompt_id": prompt.item.id} for d in found]
            except Exception as exc:
                status = UNSUPPORTED if loop == "compiled" else FAIL
                ctx.add("greedy", cell, status, _short(exc), **_error(exc))
                continue
            status = _worst(statuses)
            detail = f"{len(prompts)} prompts, {accepted}/{drafted} drafted tokens accepted"
            if differences:
                detail += "; " + _describe(differences)
            if FAIL in statuses and not differences:
                detail += f"; the calls did not run in the {loop} loop (GenerationStats.compiled)"
            ctx.add("greedy", cell, status, detail, differences=differences, drafted=drafted, accepted=accepted)


def batch_checks(ctx: Context, texts: Sequence[str]) -> None:
    """A left-padded batch: target-alone batched greedy against `SpecKVGenerator(POLICY)`, eager and compiled.

    Args:
        ctx: the compression's context.
        texts: the prompts (4).
    """
    from speckv_hf import SpecKVGenerator

    side = ctx.tokenizer.padding_side
    ctx.tokenizer.padding_side = "left"
    try:
        batch = ctx.tokenizer(list(texts), padding=True, return_tensors="pt").to(ctx.device)
    finally:
        ctx.tokenizer.padding_side = side
    ids, mask = batch.input_ids, batch.attention_mask
    kwargs = {"do_sample": False, "max_new_tokens": ctx.max_new_tokens}
    expected = ctx.generate(ids, mask, **kwargs)
    for loop in ("eager", "compiled"):
        for policy in POLICIES:
            cell = f"{loop} {policy} batch={len(texts)}"
            try:
                generator = SpecKVGenerator(policy, compile=ctx.compile_options if loop == "compiled" else False)
                out = ctx.generate(ids, mask, generator, **kwargs)
                stats = generator.last_stats
            except Exception as exc:
                status = UNSUPPORTED if loop == "compiled" else FAIL
                ctx.add("batch", cell, status, _short(exc), **_error(exc))
                continue
            status, differences = compare_rows(ctx.target, ctx.compression, ids, mask, expected, out)
            detail = f"padded length {ids.shape[1]}, {stats.accepted_tokens}/{stats.drafted_tokens} accepted"
            if stats.compiled != (loop == "compiled") or stats.batch_size != ids.shape[0]:
                status, detail = FAIL, f"{detail}; ran compiled={stats.compiled}, batch_size={stats.batch_size}"
            if differences:
                detail += "; " + _describe(differences)
            ctx.add("batch", cell, status, detail, differences=differences, batch_size=int(ids.shape[0]))


def perturbed_gap(
    target: Any,
    input_ids: Any,
    prefix: Sequence[int],
    seed: int,
    position: int,
    tokens: tuple[int, int],
) -> dict[str, Any]:
    """The top-2 gap of the target's Gumbel-perturbed logits where two coupled-sampling outputs first differ.

    The call's noise is rebuilt as the loop draws it (`GumbelNoise`, seeded from torch's global RNG right after
    `torch.manual_seed(seed)`); the rebuild counts only when the perturbed top-2 are the two differing tokens.

    Args:
        target: the target model.
        input_ids (`torch.LongTensor` of shape `(1, length)`): the prompt.
        prefix: the new tokens both outputs share.
        seed: the seed of both calls.
        position: the first differing new token's index.
        tokens: the two differing tokens.

    Returns:
        `perturbed_gap`, `relative_gap` (over the top perturbed score's magnitude), `perturbed_top2` and
        `reconstructed` (whether the rebuild is trusted).
    """
    import torch

    from speckv_hf.decoding.coupling import GumbelNoise

    extra = torch.tensor([list(prefix)], dtype=input_ids.dtype, device=input_ids.device)
    ids = torch.cat((input_ids, extra), dim=1)
    with torch.no_grad():
        logits = target(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float()
    torch.manual_seed(seed)
    noise = GumbelNoise(1, logits.numel(), logits.device).at([0], [position])[0]
    values, indices = (logits + noise.to(logits.dtype)).topk(2)
    gap = float(values[0] - values[1])
    top2 = [int(i) for i in indices]
    return {
        "perturbed_gap": gap,
        "relative_gap": gap / max(abs(float(values[0])), 1e-6),
        "perturbed_top2": top2,
        "reconstructed": set(top2) == set(tokens),
    }


def coupled_checks(ctx: Context, prompts: Sequence[Any]) -> None:
    """Coupled sampling (`SpecKVGenerator("fixed:3")`, sampling "auto"): same seed, same tokens, eager or compiled.

    For bitsandbytes targets a difference at a near-tie of the perturbed logits is `PASS-near-tie` (see
    [`perturbed_gap`][]).

    Args:
        ctx: the compression's context.
        prompts: `EncodedPrompt`s (one seed each).
    """
    import torch

    from speckv_hf import SpecKVGenerator

    # No warper: the loop's perturbed scores are the raw logits plus noise, which `perturbed_gap` rebuilds.
    kwargs = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "max_new_tokens": ctx.max_new_tokens}
    eager = SpecKVGenerator("fixed:3")
    outputs = []
    try:
        for index, prompt in enumerate(prompts):
            torch.manual_seed(ctx.seed + index)
            outputs.append(ctx.generate(prompt.input_ids, prompt.attention_mask, eager, **kwargs))
        scheme = eager.last_stats.verification
    except Exception as exc:
        ctx.add("coupled", "eager fixed:3", FAIL, _short(exc), **_error(exc))
        return
    try:
        compiled = SpecKVGenerator("fixed:3", compile=ctx.compile_options)
        differences = []
        for index, (prompt, expected) in enumerate(zip(prompts, outputs, strict=True)):
            torch.manual_seed(ctx.seed + index)
            out = ctx.generate(prompt.input_ids, prompt.attention_mask, compiled, **kwargs)
            length = prompt.input_ids.shape[1]
            reference, tokens = expected[0, length:].tolist(), out[0, length:].tolist()
            position = first_difference(reference, tokens)
            if position is not None:
                differences.append(
                    {"prompt_id": prompt.item.id, "position": position, "expected": reference, "got": tokens}
                )
                if position < min(len(reference), len(tokens)):
                    pair = (reference[position], tokens[position])
                    differences[-1].update(
                        perturbed_gap(
                            ctx.target, prompt.input_ids, reference[:position], ctx.seed + index, position, pair
                        )
                    )
    except Exception as exc:
        ctx.add("coupled", "compiled vs eager fixed:3", UNSUPPORTED, _short(exc), **_error(exc))
        return
    detail = f"{len(prompts)} seeded prompts, verification={scheme}"
    for d in differences:
        detail += f"; {d['prompt_id']} differs at new token {d['position']}"
        if "perturbed_gap" in d:
            trusted = "" if d["reconstructed"] else ", noise rebuild not confirmed"
            detail += f" (perturbed top-2 gap {d['perturbed_gap']:.4g}, {d['relative_gap']:.2e} relative{trusted})"
    near_ties = ctx.compression in BNB_NAMES and all(
        d.get("reconstructed") and d["relative_gap"] < NEAR_TIE_RELATIVE for d in differences
    )
    status = FAIL if scheme != "coupled" else PASS if not differences else NEAR_TIE if near_ties else FAIL
    ctx.add("coupled", "compiled vs eager fixed:3", status, detail, differences=differences, verification=scheme)


def chi_square_pvalue(counts: Any, probabilities: Any) -> tuple[float, int]:
    """Pearson's chi-square test of counts against probabilities, cells expected below 5 lumped into one.

    Args:
        counts: observed counts per cell (a 1-D tensor).
        probabilities: the expected distribution over the same cells.

    Returns:
        The p-value and the number of cells tested.
    """
    import torch
    from scipy.stats import chisquare

    observed = counts.double().cpu()
    expected = probabilities.double().cpu() * observed.sum()
    big = expected >= 5
    obs = torch.cat((observed[big], observed[~big].sum()[None]))
    exp = torch.cat((expected[big], expected[~big].sum()[None]))
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    exp = exp * (obs.sum() / exp.sum())  # equal totals, as scipy requires
    if len(obs) < 2:
        return 1.0, len(obs)
    return float(chisquare(obs.numpy(), exp.numpy()).pvalue), len(obs)


def distribution_checks(ctx: Context, prompt_ids: Any, rows: int) -> None:
    """Speculative sampling keeps the target's distribution: one call of `rows` rows of one prompt, first tokens
    against the target's softmax (chi-square), in the compiled and the eager loop.

    Args:
        ctx: the compression's context.
        prompt_ids (`torch.LongTensor` of shape `(1, length)`): the prompt.
        rows: rows of the call.
    """
    import torch

    from speckv_hf import SpecKVGenerator

    with torch.no_grad():
        logits = ctx.target(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids)).logits[0, -1]
        target_probs = torch.softmax(logits.double(), -1)
        draft_logits = ctx.draft(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids)).logits[0, -1]
        draft_probs = torch.softmax(draft_logits.double(), -1)
    ids = prompt_ids.repeat(rows, 1)
    options = dataclasses.replace(ctx.compile_options, cache_step=SAMPLING_CACHE_STEP)
    for loop in ("compiled", "eager"):
        cell = f"{loop} fixed:2 speculative rows={rows}"
        generator = SpecKVGenerator(
            "fixed:2", sampling="speculative", compile=options if loop == "compiled" else False
        )
        torch.manual_seed(ctx.seed)
        try:
            out = ctx.generate(
                ids,
                torch.ones_like(ids),
                generator,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=SAMPLING_NEW_TOKENS,
            )
        except Exception as exc:
            ctx.add("distribution", cell, UNSUPPORTED if loop == "compiled" else FAIL, _short(exc), **_error(exc))
            continue
        stats = generator.last_stats
        first = out[:, prompt_ids.shape[1]]
        counts = torch.bincount(first.cpu(), minlength=target_probs.numel())[: target_probs.numel()]
        p_value, cells = chi_square_pvalue(counts, target_probs)
        draft_p_value, _ = chi_square_pvalue(counts, draft_probs)
        drafted, accepted = stats.drafted_tokens, stats.accepted_tokens
        ok = p_value > P_VALUE_MIN and drafted > 0 and stats.verification == "speculative"
        detail = (
            f"chi-square p={p_value:.3g} over {cells} cells (against the draft's softmax: p={draft_p_value:.3g}), "
            f"{accepted}/{drafted} drafted tokens accepted"
        )
        if drafted == 0:
            detail += "; nothing was drafted, the check is vacuous"
        ctx.add(
            "distribution",
            cell,
            PASS if ok else FAIL,
            detail,
            p_value=p_value,
            cells=cells,
            draft_p_value=draft_p_value,
            drafted=drafted,
            accepted=accepted,
            verification=stats.verification,
            top_counts=[
                [int(t), int(counts[t]), float(target_probs[t]) * rows] for t in counts.double().topk(10).indices
            ],
        )


# -- the bench --------------------------------------------------------------------------------------------------
def _cell(calls: Sequence[Any], reference: Sequence[Any]) -> str:
    from speckv_hf.bench.paired import paired_ratios, quartiles

    ratios = paired_ratios(calls, reference)
    if not ratios:
        return "n/a"
    q1, median, q3 = quartiles(ratios)
    return f"{median:.2f}× ({q1:.2f}–{q3:.2f})"


def bench_table(compression: str, records: Sequence[Any], settings: dict[str, Any]) -> tuple[str, list[dict]]:
    """The Markdown table of one compression's bench calls, and its rows as data.

    Args:
        compression: the compression name.
        records: the `CallRecord`s of every run (`repeat` is the run's index).
        settings: the run's settings.

    Returns:
        The table, and one dictionary per method (median tokens/s, paired ratios' quartiles, differing outputs).
    """
    from speckv_hf.bench.paired import paired_ratios, quartiles

    by_method: dict[str, list[Any]] = defaultdict(list)
    for record in records:
        by_method[record.method].append(record)
    runs = len({r.repeat for r in records})
    prompts = len({r.prompt_id for r in records})
    lines = [
        f"**{compression}, greedy, {settings['device']}**: {prompts} prompts × {runs} runs, "
        f"{settings['max_new_tokens']} new tokens. Paired per call, median (IQR); tokens/s is the median call's:",
        "",
        "| method | tokens/s | over target-only | over target-compiled | outputs ≠ target-only |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = []
    for method, calls in by_method.items():
        speed = statistics.median(c.tokens_per_second for c in calls)
        differ = sum(getattr(c, "differs", False) for c in calls)
        over_target = _cell(calls, by_method["target-only"]) if method != "target-only" else "1.00×"
        compiled = by_method.get("target-compiled", [])
        over_compiled = (_cell(calls, compiled) if compiled else "n/a") if method != "target-compiled" else "1.00×"
        lines.append(f"| {method} | {speed:.1f} | {over_target} | {over_compiled} | {differ}/{len(calls)} |")
        row: dict[str, Any] = {"method": method, "calls": len(calls), "median_tokens_per_s": speed, "differ": differ}
        for name, against in (("over_target_only", "target-only"), ("over_target_compiled", "target-compiled")):
            ratios = paired_ratios(calls, by_method.get(against, []))
            row[name] = list(quartiles(ratios)) if ratios and method != against else None
        rows.append(row)
    lines.append("")
    return "\n".join(lines), rows


def bench(ctx: Context, prompts: Sequence[Any], methods_spec: str, repeats: int, settings: dict[str, Any]) -> None:
    """`run_benchmark` `repeats` times (one generator per method per run), summarised and kept call by call.

    A run that raises is retried without the compiled methods, which are then `UNSUPPORTED`.

    Args:
        ctx: the compression's context.
        prompts: `EncodedPrompt`s.
        methods_spec: the methods, comma-separated (`parse_methods`).
        repeats: runs.
        settings: the script's settings (for the table's header).
    """
    from speckv_hf.bench.harness import run_benchmark
    from speckv_hf.bench.methods import parse_methods

    methods = parse_methods(methods_spec)
    entry: dict[str, Any] = {"compression": ctx.compression, "methods": [m.name for m in methods], "calls": []}
    ctx.report.document["bench"].append(entry)
    records: list[Any] = []
    for index in range(repeats):
        try:
            run, reference = run_benchmark(
                ctx.target,
                ctx.draft,
                prompts,
                methods,
                max_new_tokens=ctx.max_new_tokens,
                seed=ctx.seed + 100 * index,
            )
        except Exception as exc:
            dropped = [m.name for m in methods if m.compiled]
            if not dropped:
                ctx.add("bench", f"run {index}", FAIL, _short(exc), **_error(exc))
                return
            ctx.add("bench", ", ".join(dropped), UNSUPPORTED, f"run {index} raised: {_short(exc)}", **_error(exc))
            methods = [m for m in methods if not m.compiled]
            entry["methods"] = [m.name for m in methods]
            entry["unsupported"] = dropped
            records = [r for r in records if r.method not in dropped]
            try:
                run, reference = run_benchmark(
                    ctx.target,
                    ctx.draft,
                    prompts,
                    methods,
                    max_new_tokens=ctx.max_new_tokens,
                    seed=ctx.seed + 100 * index,
                )
            except Exception as again:
                ctx.add("bench", f"run {index}", FAIL, _short(again), **_error(again))
                return
        for record in run:
            record.repeat = index
            record.differs = record.output != reference[record.prompt_id]
        records += run
        entry["calls"] = [{**dataclasses.asdict(r), "differs": r.differs} for r in records]
        ctx.report.write()
    table, rows = bench_table(ctx.compression, records, settings)
    entry["summary"] = rows
    entry["table"] = table
    print(table, flush=True)
    differ = sum(r["differ"] for r in rows)
    ctx.add(
        "bench",
        f"{len(methods)} methods x {repeats} runs",
        PASS,
        f"{len(records)} calls measured; {differ} outputs differ from target-only greedy (info, not a check)",
    )


# -- main ---------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with `--quick`'s settings (or the full ones) filled in where an option is not given.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).

    Returns:
        The settings.
    """
    import torch

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--compression", default="fp32,int8,nf4", help="comma-separated compression names")
    parser.add_argument("--prompts-per-task", type=int, help="bench prompts per task of the embedded suite (2)")
    parser.add_argument("--check-prompts", type=int, default=5, help="prompts of the greedy and coupled checks")
    parser.add_argument("--max-new-tokens", type=int, help="new tokens per call (64)")
    parser.add_argument("--repeats", type=int, help="runs of the bench matrix (3)")
    parser.add_argument("--rows", type=int, help="rows of the distribution check's call (2000)")
    parser.add_argument("--methods", help="the bench's methods (default: the full matrix)")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode of the compiled loop's checks (reduce-overhead: CUDA graphs, CUDA only)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-bench", action="store_true", help="run the checks only")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a dry run")
    parser.add_argument("--out", default="gpu-check.json", help="the JSON file written")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.compile_mode in ("reduce-overhead",) and not args.device.startswith("cuda"):
        parser.error("--compile-mode reduce-overhead captures CUDA graphs: it needs --device cuda.")
    if min(args.prompts_per_task, args.check_prompts, args.max_new_tokens, args.repeats, args.rows) < 1:
        parser.error("--prompts-per-task, --check-prompts, --max-new-tokens, --repeats and --rows must be >= 1.")
    return args


def check_compression(report: Report, args: argparse.Namespace, compression: str, compile_options: Any) -> None:
    """Every check of one compression (loading it first).

    Args:
        report: where results go.
        args: the settings.
        compression: the compression name.
        compile_options: the compiled loop's `CompileOptions`.
    """
    from speckv_hf.bench.harness import encode_prompts
    from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
    from speckv_hf.bench.prompts import demo_prompts
    from speckv_hf.demo import CATEGORIES

    print(f"\n== {compression} on {args.device} ==", flush=True)
    try:
        pair = load_pair_for(compression, None, None, args.device)
    except Exception as exc:
        report.add(compression, "load", "embedded pair", FAIL, _short(exc), **_error(exc))
        return
    items = demo_prompts(args.prompts_per_task)
    prompts = encode_prompts(pair.tokenizer, items, args.device)
    per_task = -(-args.check_prompts // len(CATEGORIES))  # one prompt per task first, then a second, ...
    check_prompts = encode_prompts(pair.tokenizer, demo_prompts(per_task), args.device)[: args.check_prompts]
    longest = max(int(p.input_ids.shape[1]) for p in [*prompts, *check_prompts])
    report.add(
        compression,
        "load",
        "embedded pair",
        PASS,
        f"target {type(pair.target).__name__} on {next(pair.target.parameters()).device}, "
        f"{len(prompts)} bench prompts, {len(check_prompts)} check prompts, longest {longest} tokens",
    )
    ctx = Context(
        report=report,
        compression=compression,
        device=args.device,
        target=pair.target,
        draft=pair.draft,
        tokenizer=pair.tokenizer,
        max_new_tokens=args.max_new_tokens,
        compile_options=compile_options,
        seed=args.seed,
    )
    steps: list[tuple[str, Callable[[], None]]] = [
        ("warmup", lambda: warmup_check(ctx, longest, args.max_new_tokens)),
        ("greedy", lambda: greedy_checks(ctx, check_prompts)),
        ("batch", lambda: batch_checks(ctx, [p.item.text for p in check_prompts[:4]] or [items[0].text])),
        ("coupled", lambda: coupled_checks(ctx, check_prompts)),
        (
            "distribution",
            lambda: distribution_checks(ctx, check_prompts[0].input_ids[:, :SAMPLING_PROMPT_TOKENS], args.rows),
        ),
    ]
    if not args.skip_bench:
        steps.append(("bench", lambda: bench(ctx, prompts, args.methods, args.repeats, vars(args))))
    with quiet_transformers():
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # a bug of the check itself, or an error outside the guarded calls
                report.add(compression, name, "(the check raised)", FAIL, _short(exc), **_error(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs every check and writes the JSON.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).

    Returns:
        The exit status: 1 when any check failed, else 0.
    """
    args = parse_args(argv)
    import torch

    from speckv_hf import CompileOptions

    if args.threads:
        torch.set_num_threads(args.threads)
    compile_options = CompileOptions(
        backend="inductor", mode=None if args.compile_mode == "default" else args.compile_mode
    )
    settings: dict[str, Any] = dict(vars(args))
    settings["compile_options"] = repr(compile_options)
    settings["bench_compile_note"] = (
        "the bench's compiled:POLICY methods use compile=True (run_benchmark builds them), whatever --compile-mode"
    )
    report = Report(Path(args.out), {"environment": environment(args.device), "settings": settings})
    env = report.document["environment"]
    print(
        f"torch {env['torch']}, transformers {env['transformers']}, bitsandbytes {env['bitsandbytes']}, "
        f"device {args.device} ({env['cuda_device'] or platform.processor() or 'cpu'}), commit {env['commit'][:12]}",
        flush=True,
    )
    report.write()
    started = time.perf_counter()
    for compression in [c.strip() for c in args.compression.split(",") if c.strip()]:
        check_compression(report, args, compression, compile_options)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    failed = [c for c in report.document["checks"] if c["status"] == FAIL]
    unsupported = [c for c in report.document["checks"] if c["status"] == UNSUPPORTED]
    report.document["summary"] = {status: report.count(status) for status in (PASS, NEAR_TIE, FAIL, UNSUPPORTED)} | {
        "seconds": time.perf_counter() - started
    }
    report.document["finished"] = True
    report.write()
    print("\n== summary ==")
    print(", ".join(f"{report.count(s)} {s}" for s in (PASS, NEAR_TIE, FAIL, UNSUPPORTED)))
    if unsupported:
        print("!! UNSUPPORTED (not failures; the compiled loop raised, error text in the JSON):")
        for c in unsupported:
            print(f"!!   {c['compression']} {c['check']} {c['cell']}: {c['detail']}")
    for c in failed:
        print(f"FAILED: {c['compression']} {c['check']} {c['cell']}: {c['detail']}")
    print(f"results: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
