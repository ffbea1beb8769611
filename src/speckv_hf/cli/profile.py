"""`speckv profile`: assisted generation of a pair over prompts, written as token and step Parquet records."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from ._common import fail, split_list

DEFAULT_PROMPTS_PER_TASK = 6
# The first index profiled per category of the embedded suite: `speckv bench` holds out prompts 0-2.
DEFAULT_PROMPTS_OFFSET = 3


def profile(
    out: Path | None = typer.Option(
        None, help="Records folder: tokens/ and steps/ Parquet datasets and profile.json (an earlier run is resumed)."
    ),
    target: str | None = typer.Option(
        None, help="Target model: a local folder or a Hub id (default: the embedded pair)."
    ),
    draft: str | None = typer.Option(None, help="Draft model: a local folder or a Hub id (with --target)."),
    prompts: Path | None = typer.Option(
        None, help='JSON Lines file of {"task": ..., "prompt": ...} (default: the embedded suite).'
    ),
    prompts_per_task: int | None = typer.Option(
        None,
        min=1,
        help=f"Prompts per task: the first N of each task of --prompts (default: all), or of each category of the "
        f"embedded suite from index {DEFAULT_PROMPTS_OFFSET} (default: {DEFAULT_PROMPTS_PER_TASK}; bench holds out "
        f"0-{DEFAULT_PROMPTS_OFFSET - 1}).",
    ),
    compression: str = typer.Option(
        "fp32",
        help="Comma-separated target compressions: fp32, fp16, bf16, int8, nf4, fp4 (bitsandbytes, also bnb-int8, "
        "...), quanto-int8, quanto-int4, quanto-int2, quanto-float8, torchao-int8, torchao-int8-dynamic, "
        "torchao-int4 (GPU).",
    ),
    settings: str = typer.Option(
        "fixed:8,fixed:12", help="Comma-separated policies to profile: fixed:K, adaptive, heuristic, confidence."
    ),
    sampling: str = typer.Option("greedy,sample", help="Decoding modes each setting runs in: greedy, sample."),
    max_new_tokens: int = typer.Option(64, min=1, help="Tokens to generate per prompt."),
    seed: int = typer.Option(0, help="Base seed of the sampled calls (each seeded from it and the prompt id)."),
    hidden_states: bool = typer.Option(
        False, "--hidden-states", help="Record the draft's last hidden state per drafted token (for pair predictors)."
    ),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Run assisted generation of a pair over prompts and write one row per drafted token and per step.

    Writes OUT/tokens/ and OUT/steps/ (Parquet datasets, one shard per prompt, compression and setting).

    Rerun the same command to resume an interrupted run: the units already done are skipped.

    Under `accelerate launch` or `torchrun`, the units are split across the processes.
    """
    if target is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded pair never needs the network
    if out is None:
        fail("pass --out DIR: the folder the records go to (created if missing; an earlier run there is resumed).")
    from ..bench.prompts import PromptsFileError
    from ..training.plan import ProfileSettingsError, plan_profile
    from ..training.profile import run_profile

    # Every check before any model loads.
    try:
        plan = plan_profile(
            out,
            target=target,
            draft=draft,
            prompts=prompts,
            prompts_per_task=prompts_per_task or (DEFAULT_PROMPTS_PER_TASK if prompts is None else None),
            prompts_offset=DEFAULT_PROMPTS_OFFSET,
            compressions=split_list(compression),
            settings=split_list(settings),
            sampling=split_list(sampling),
            max_new_tokens=max_new_tokens,
            seed=seed,
            hidden_states=hidden_states,
        )
    except (ValueError, ImportError, PromptsFileError, ProfileSettingsError) as error:
        fail(str(error))
    summary = run_profile(plan, device=device)
    Console().print(summary.line(), highlight=False, soft_wrap=True)
