"""`speckv profile`: assisted generation of a pair over prompts, written as token and step records.

A run profiles units: one unit is one `generate()` call, keyed by `(prompt_id, compression, setting)`. Each unit's
rows go to one Parquet shard in `OUT/tokens/` and one in `OUT/steps/` (see `speckv_hf.training.records` for the
columns),
named by a hash of the key and written atomically, token shard first: a unit is done when both exist. An
interrupted run resumes where it stopped; `OUT/profile.json` holds the run's settings, and a rerun with other
settings into the same folder fails (the run's plan, checked before any model loads: `speckv_hf.training.plan`).
Under `accelerate launch` (or `torchrun`) the units are split across the
processes, each writing its own units' shards into the same folders.

    from speckv_hf.training.profile import profile
    from speckv_hf.training.records import read_records

    profile("records/", prompts="prompts.jsonl", settings=["fixed:8"], max_new_tokens=64)
    tokens, steps = read_records("records/")
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.atomic import atomic_write
from ..core.stats import StepRecord
from ..decoding.generator import SpecKVGenerator
from .plan import SETTINGS_FILE, ProfilePlan, Unit, check_earlier_run, plan_profile
from .records import (
    STEP_SCHEMA,
    TOKEN_SCHEMA,
    completed_shards,
    records_folders,
    records_table,
    remove_orphans,
    write_shard,
)
from .rows import CallContext, call_rows

__all__ = ["ProfileSummary", "draft_hidden_states", "profile", "run_profile"]


@dataclass
class ProfileSummary:
    """What a run (or one process of it) did.

    Attributes:
        out: the records folder.
        units: units this process is responsible for.
        done: units profiled by this run.
        skipped: units already done by an earlier run.
        token_rows: token rows written.
        step_rows: step rows written.
        process_index: this process's index (0 without `accelerate launch`).
        num_processes: processes of the run.
    """

    out: Path
    units: int = 0
    done: int = 0
    skipped: int = 0
    token_rows: int = 0
    step_rows: int = 0
    process_index: int = 0
    num_processes: int = 1

    def line(self) -> str:
        """A one-line summary."""
        who = f"process {self.process_index + 1}/{self.num_processes}: " if self.num_processes > 1 else ""
        tokens, steps = records_folders(self.out)
        return (
            f"{who}{self.done} units profiled, {self.skipped} skipped (already done); {self.token_rows} token rows "
            f"and {self.step_rows} step rows written to {tokens} and {steps}"
        )


def run_profile(
    plan: ProfilePlan, *, device: str | None = None, progress: bool = True, console: Any = None
) -> ProfileSummary:
    """Profiles the plan's units not done yet, writing each unit's shards as it finishes.

    Under `accelerate launch` / `torchrun` (`WORLD_SIZE` > 1), this process takes every `num_processes`-th unit
    from its `process_index` on, and runs on its own GPU when `device` is not given; only process 0 writes
    `profile.json`.

    Args:
        plan: from [`plan_profile`][].
        device: `cpu`, `cuda` or `cuda:N` (default: this process's accelerator, else `cuda` when visible).
        progress: show a progress bar over units (on stderr).
        console: the `rich.console.Console` for the bar (default: stderr).

    Returns:
        What this process did.

    Raises:
        ProfileSettingsError: when `plan.out` holds a run with other settings.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..bench.harness import encode_prompts
    from ..bench.pairs import load_pair_for, quiet_transformers

    process_index, num_processes, device = _process_slot(device)
    tokens_folder, steps_folder = records_folders(plan.out)
    tokens_folder.mkdir(parents=True, exist_ok=True)
    steps_folder.mkdir(parents=True, exist_ok=True)
    if process_index == 0:
        for stale in plan.out.glob(f".{SETTINGS_FILE}.*.tmp"):  # left by a run killed while writing it
            stale.unlink(missing_ok=True)
    if not check_earlier_run(plan) and process_index == 0:
        text = json.dumps(plan.run_settings(), indent=2) + "\n"
        atomic_write(plan.out / SETTINGS_FILE, lambda stream: stream.write(text.encode("utf-8")))
    mine = plan.units()[process_index::num_processes]
    names = {unit.shard_name for unit in mine}
    remove_orphans(plan.out, names)
    done = completed_shards(plan.out) & names
    todo = [unit for unit in mine if unit.shard_name not in done]
    summary = ProfileSummary(plan.out, len(mine), 0, len(mine) - len(todo), 0, 0, process_index, num_processes)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    console = console or Console(stderr=True)
    # Off when stderr is no terminal (logs, pipes), where a transient bar leaves only a blank line.
    with Progress(*columns, console=console, transient=True, disable=not progress or not console.is_terminal) as bar:
        task = bar.add_task("profile", total=len(mine), completed=summary.skipped)
        for compression in plan.compressions:
            units = [unit for unit in todo if unit.compression == compression]
            if not units:
                continue
            bar.update(task, description=f"{compression}: loading the pair")
            pair = load_pair_for(compression, plan.target, plan.draft, device)
            model_device = next(pair.target.parameters()).device
            prompts = list({unit.prompt.id: unit.prompt for unit in units}.values())
            encoded = {p.item.id: p for p in encode_prompts(pair.tokenizer, prompts, model_device)}
            for unit in units:
                bar.update(task, description=f"{compression} {unit.setting.name}")
                with quiet_transformers():
                    token_rows, step_rows = _profile_unit(pair, encoded[unit.prompt.id], unit, plan)
                # Tokens first: a unit is done only once its step shard exists too.
                write_shard(records_table(token_rows, TOKEN_SCHEMA), tokens_folder / unit.shard_name)
                write_shard(records_table(step_rows, STEP_SCHEMA), steps_folder / unit.shard_name)
                summary.done += 1
                summary.token_rows += len(token_rows)
                summary.step_rows += len(step_rows)
                bar.advance(task)
            del pair, encoded
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return summary


def profile(out: str | Path, *, device: str | None = None, progress: bool = True, **settings: Any) -> ProfileSummary:
    """Plans and runs a profile (see [`plan_profile`][] for the settings, [`run_profile`][] for the run).

    Args:
        out: the records folder.
        device: see [`run_profile`][].
        progress: show a progress bar.
        **settings: the keyword arguments of [`plan_profile`][].

    Returns:
        What this process did.
    """
    return run_profile(plan_profile(out, **settings), device=device, progress=progress)


def _process_slot(device: str | None) -> tuple[int, int, str | None]:
    """`(process_index, num_processes, device)`; the process group exists only when launched distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if device is None and state.device.type != "cpu":
        device = str(state.device)
    return state.process_index, state.num_processes, device


def _profile_unit(pair: Any, prompt: Any, unit: Unit, plan: ProfilePlan) -> tuple[list[dict], list[dict]]:
    # Sampled records mean speculative sampling (accept with min(1, p/q)), as the shipped predictor was trained on.
    generator = SpecKVGenerator(unit.setting.policy, warm_start=False, sampling="speculative")
    # Sampled calls are reproducible per prompt, whatever ran before (resumed runs, other processes).
    torch.manual_seed((plan.seed * 1_000_003 + zlib.crc32(unit.prompt.id.encode("utf-8"))) % 2**32)
    with torch.no_grad():
        out = pair.target.generate(
            prompt.input_ids,
            attention_mask=prompt.attention_mask,
            assistant_model=pair.draft,
            candidate_generator=generator,
            max_new_tokens=plan.max_new_tokens,
            do_sample=unit.setting.do_sample,
        )
    stats = generator.last_stats
    if stats is None or not stats.steps:
        raise RuntimeError(f"generate() left no step records for prompt {unit.prompt.id!r}: is speckv_hf imported?")
    hidden = None
    if plan.hidden_states:
        hidden = draft_hidden_states(
            pair.draft, out[0], prompt.input_ids.shape[1], stats.steps, [step.drafted_ids for step in stats.steps]
        )
    context = CallContext(
        prompt_id=unit.prompt.id,
        task=unit.prompt.task,
        compression=unit.compression,
        setting=unit.setting.name,
        do_sample=unit.setting.do_sample,
        pair=plan.pair,
    )
    return call_rows(stats, context, hidden)


def draft_hidden_states(
    draft: torch.nn.Module,
    sequence: torch.Tensor,
    prompt_length: int,
    steps: Sequence[StepRecord],
    drafted_ids: Sequence[Sequence[int]],
) -> list[list[list[float]]]:
    """The draft's last-layer hidden state at each candidate's position (for a drafted token, the state that produced
    its distribution), computed post hoc.

    The token drafted at sequence index `i` was drafted from the hidden state at `i - 1`. Tokens up to the first
    rejection of a step read only tokens the call kept, so one teacher-forced draft forward over the final sequence
    gives theirs; tokens after it read rejected drafted tokens, so each step with such tokens gets one more forward
    over its prefix and its drafted tokens.

    Args:
        draft: the draft model.
        sequence (`torch.LongTensor` of shape `(length,)`): the prompt and the generated tokens.
        prompt_length: tokens of the prompt.
        steps: the call's step records.
        drafted_ids: per step, the candidate token ids, context candidates first (`len == step.gamma`).

    Returns:
        Per step, per candidate, the hidden state (`hidden_size` floats, as the LM head reads it).

    Raises:
        RuntimeError: when the steps do not add up to the sequence (the states would be misaligned).
    """
    produced = sum(step.tokens_produced for step in steps)
    if len(drafted_ids) != len(steps) or prompt_length + produced != sequence.shape[0]:
        raise RuntimeError(
            f"{len(steps)} steps producing {produced} tokens and {len(drafted_ids)} drafts do not match a sequence of "
            f"{sequence.shape[0]} tokens with a {prompt_length}-token prompt: hidden states cannot be aligned."
        )
    device = next(draft.parameters()).device
    sequence = sequence.to(device)
    final = _last_hidden(draft, sequence)
    states: list[list[list[float]]] = []
    start = prompt_length  # sequence index of the step's first drafted token
    for step, drafted in zip(steps, drafted_ids, strict=True):
        kept = sequence[start : start + step.accepted].tolist()
        if len(drafted) != step.gamma or list(drafted[: step.accepted]) != kept:
            raise RuntimeError(f"step {step.step}: drafted tokens do not match the output: hidden states misaligned.")
        rows = [final[start + p - 1] for p in range(min(step.accepted + 1, step.gamma))]
        if step.gamma > step.accepted + 1:
            branch = torch.cat((sequence[:start], torch.tensor(drafted[:-1], device=device)))
            hidden = _last_hidden(draft, branch)
            rows += [hidden[start + p - 1] for p in range(step.accepted + 1, step.gamma)]
        states.append([row.float().tolist() for row in rows])
        start += step.tokens_produced
    return states


def _last_hidden(draft: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """`(length, hidden_size)` last-layer hidden states of the draft over `ids` (one sequence, no cache)."""
    kwargs: dict[str, Any] = {"output_hidden_states": True, "use_cache": False}
    if "logits_to_keep" in inspect.signature(draft.forward).parameters:
        kwargs["logits_to_keep"] = 1  # the states are wanted, not a (length, vocab) logits tensor
    with torch.no_grad():
        return draft(input_ids=ids[None], **kwargs).hidden_states[-1][0]
