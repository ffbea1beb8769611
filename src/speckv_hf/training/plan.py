"""A `speckv profile` run's plan: its settings and units, checked (with an earlier run in the folder) before any model
loads.

[`plan_profile`][] validates the inputs into a [`ProfilePlan`][], and
[`run_profile`][speckv_hf.training.profile.run_profile] runs it. A unit is one `generate()` call, keyed by
`(prompt_id, compression, setting)`; `OUT/profile.json` holds the run's settings, and [`check_earlier_run`][] refuses
to resume a run with other ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bench.prompts import PromptItem, demo_prompts, first_per_task, read_prompts_jsonl
from ..decoding.generator import SpecKVGenerator
from .records import RECORDS_SCHEMA_VERSION, unit_shard_name

__all__ = [
    "DEFAULT_SAMPLING",
    "DEFAULT_SETTINGS",
    "SETTINGS_FILE",
    "ProfilePlan",
    "ProfileSettingsError",
    "Setting",
    "Unit",
    "check_earlier_run",
    "plan_profile",
]

DEFAULT_SETTINGS: tuple[str, ...] = ("fixed:8", "fixed:12")
DEFAULT_SAMPLING: tuple[str, ...] = ("greedy", "sample")
SETTINGS_FILE = "profile.json"
_SAMPLE_SUFFIX = "+sample"
_INFORMATIONAL = ("speckv_hf_version",)  # written to profile.json, not compared on resume


class ProfileSettingsError(ValueError):
    """The output folder holds a profile run with other settings."""


@dataclass(frozen=True)
class Setting:
    """A profiled setting: a policy spec and the decoding mode.

    Attributes:
        policy: the policy spec given to `SpecKVGenerator`, e.g. `fixed:8`.
        do_sample: sample instead of greedy decoding.
    """

    policy: str
    do_sample: bool

    @property
    def name(self) -> str:
        """The records' `setting` column: the policy spec, with `+sample` for sampled runs."""
        return self.policy + (_SAMPLE_SUFFIX if self.do_sample else "")


@dataclass(frozen=True)
class Unit:
    """One profiled `generate()` call.

    Attributes:
        prompt: the prompt.
        compression: the target's compression name.
        setting: the setting.
    """

    prompt: PromptItem
    compression: str
    setting: Setting

    @property
    def shard_name(self) -> str:
        """File name of the unit's shards (deterministic, see `speckv_hf.training.records.unit_shard_name`)."""
        return unit_shard_name(self.prompt.id, self.compression, self.setting.name)


@dataclass(frozen=True)
class ProfilePlan:
    """A validated profile run, before any model loads (build it with [`plan_profile`][]).

    Attributes:
        out: the records folder.
        target: the target's folder or Hub id (None for the embedded pair).
        draft: the draft's folder or Hub id.
        prompts: the prompts.
        prompts_source: where the prompts came from, for `profile.json`.
        compressions: target compressions, in run order.
        settings: settings, in run order.
        max_new_tokens: tokens generated per call.
        seed: base seed of the sampled calls.
        hidden_states: whether token rows carry the draft's hidden state.
    """

    out: Path
    target: str | None
    draft: str | None
    prompts: tuple[PromptItem, ...]
    prompts_source: str
    compressions: tuple[str, ...]
    settings: tuple[Setting, ...]
    max_new_tokens: int
    seed: int
    hidden_states: bool

    @property
    def pair(self) -> str:
        """The records' `pair` column: `"target | draft"` as given."""
        return f"{self.target or 'embedded'} | {self.draft or 'embedded'}"

    def run_settings(self) -> dict[str, Any]:
        """What `profile.json` holds; a resumed run must have the same (version aside)."""
        from ..__about__ import __version__

        digest = hashlib.sha256(json.dumps([[p.id, p.task, p.text] for p in self.prompts]).encode()).hexdigest()
        return {
            "records_schema_version": RECORDS_SCHEMA_VERSION,
            "pair": self.pair,
            "compressions": list(self.compressions),
            "settings": [s.name for s in self.settings],
            "prompts": {"source": self.prompts_source, "count": len(self.prompts), "sha256": digest},
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "hidden_states": self.hidden_states,
            "speckv_hf_version": __version__,
        }

    def units(self) -> list[Unit]:
        """Every unit of the run, by compression, then setting, then prompt."""
        return [Unit(p, c, s) for c in self.compressions for s in self.settings for p in self.prompts]


def plan_profile(
    out: str | Path,
    *,
    target: str | None = None,
    draft: str | None = None,
    prompts: str | Path | Sequence[PromptItem] | None = None,
    prompts_per_task: int | None = None,
    prompts_offset: int = 3,
    compressions: Sequence[str] = ("fp32",),
    settings: Sequence[str] = DEFAULT_SETTINGS,
    sampling: Sequence[str] = DEFAULT_SAMPLING,
    max_new_tokens: int = 64,
    seed: int = 0,
    hidden_states: bool = False,
) -> ProfilePlan:
    """Checks a run's inputs, and an earlier run in `out`, without loading any model.

    Args:
        out: the records folder (created when the run starts).
        target: the target's folder or Hub id; None, with `draft` None, for the embedded pair.
        draft: the draft's folder or Hub id.
        prompts: a JSON Lines prompts file, a list of `PromptItem`, or None for the embedded suite.
        prompts_per_task: with the embedded suite, prompts per category (6 by default); with a prompts file or
            list, the first N prompts of each task (all by default).
        prompts_offset: with the embedded suite, the first index taken per category (the default 3 leaves out
            the prompts `speckv bench` holds out, 0-2).
        compressions: target compressions (`speckv_hf.compression.detection.COMPRESSIONS`).
        settings: policy specs, e.g. `fixed:8`, `adaptive`.
        sampling: `greedy` and/or `sample`; each setting runs in each mode.
        max_new_tokens: tokens generated per call.
        seed: base seed of the sampled calls (each seeded from it and the prompt id).
        hidden_states: also record the draft's last hidden state per drafted token.

    Returns:
        The plan, for [`run_profile`][speckv_hf.training.profile.run_profile].

    Raises:
        ValueError: for bad inputs, with the fix (`PromptsFileError` for a bad prompts file).
        ImportError: when a compression's backend is missing.
        ProfileSettingsError: when `out` holds a run with other settings.
    """
    from ..bench.pairs import check_compressions

    if (target is None) != (draft is None):
        raise ValueError("pass both --target and --draft (or neither, for the embedded pair).")
    check_compressions(list(compressions))
    if not settings:
        raise ValueError("no setting given: pass at least one policy, e.g. --settings fixed:8.")
    for spec in settings:
        try:
            if _SAMPLE_SUFFIX in spec:
                raise ValueError(f"pick sampled runs with --sampling sample, not {_SAMPLE_SUFFIX!r} in the setting")
            SpecKVGenerator(spec)
        except ValueError as error:
            raise ValueError(f"bad setting {spec!r}: {error}") from None
    modes = {"greedy": False, "sample": True}
    if not sampling or any(mode not in modes for mode in sampling):
        raise ValueError(f"bad sampling {list(sampling)}: pass greedy, sample or greedy,sample.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if prompts is None:
        per_task = prompts_per_task or 6
        items = demo_prompts(per_task, prompts_offset)
        source = f"embedded suite, {per_task} per category from index {prompts_offset}"
    elif isinstance(prompts, (str, Path)):
        items, source = read_prompts_jsonl(prompts), str(prompts)
    else:
        items, source = list(prompts), "given"
        if not items or len({p.id for p in items}) != len(items):
            raise ValueError("prompts must be a non-empty list with unique ids.")
    if prompts is not None and prompts_per_task is not None:
        items, source = first_per_task(items, prompts_per_task), f"{source}, first {prompts_per_task} per task"
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: pass a folder (created if missing).")
    plan = ProfilePlan(
        out=out,
        target=target,
        draft=draft,
        prompts=tuple(items),
        prompts_source=source,
        compressions=tuple(compressions),
        settings=tuple(Setting(spec, modes[mode]) for spec in settings for mode in sampling),
        max_new_tokens=max_new_tokens,
        seed=seed,
        hidden_states=hidden_states,
    )
    check_earlier_run(plan)
    return plan


def check_earlier_run(plan: ProfilePlan) -> bool:
    """Checks an earlier run in the plan's folder: its `profile.json` must hold the same settings (version aside).

    Args:
        plan: the run about to start.

    Returns:
        Whether `out/profile.json` exists (a run to resume).

    Raises:
        ProfileSettingsError: when it holds other settings, or is not a profile settings file.
    """
    path = plan.out / SETTINGS_FILE
    if not path.is_file():
        return False
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ProfileSettingsError(f"{path} is not a profile settings file ({error}): pass another --out.") from None
    expected = json.loads(json.dumps(plan.run_settings()))
    differing = [key for key in expected if key not in _INFORMATIONAL and found.get(key) != expected[key]]
    if differing:
        details = "; ".join(f"{key}: {found.get(key)!r} there, {expected[key]!r} now" for key in differing)
        raise ProfileSettingsError(
            f"{plan.out} holds a profile run with other settings ({details}): pass another --out for a new run, "
            "or the same settings to resume that one."
        )
    return True
