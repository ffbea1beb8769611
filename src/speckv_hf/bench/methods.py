"""The methods `speckv bench` compares, by name: target alone (eager or compiled), transformers' assisted generation
and prompt lookup, SpecKV policies (in the eager or the compiled loop) and the oracle."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..policies.base import DraftPolicy
from ..policies.registry import get_policy

__all__ = ["DEFAULT_METHODS", "HF_DEFAULTS", "HF_PROMPT_LOOKUP_TOKENS", "Method", "parse_methods"]

#: What `speckv bench` runs when `--methods` is not given (`fixed:1-8` stands for `fixed:1` ... `fixed:8`).
DEFAULT_METHODS: tuple[str, ...] = (
    "target-only",
    "hf-default",
    "hf-heuristic",
    "hf-prompt-lookup",
    "adaptive",
    "context+adaptive",
    "fixed:1-8",
    "oracle",
)

#: transformers' defaults for the assistant's generation config, set before every `hf-*` call.
HF_DEFAULTS = {
    "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant",
    "assistant_confidence_threshold": 0.4,
}

#: What `hf-prompt-lookup` passes as `prompt_lookup_num_tokens`: the value of transformers' documentation and
#: examples (generate() itself has no default: prompt lookup is off unless the argument is given).
HF_PROMPT_LOOKUP_TOKENS = 10


@dataclass(frozen=True)
class Method:
    """One method of the benchmark.

    Attributes:
        name: the name in tables and JSON (`target-only`, `hf-default`, `hf-heuristic`, `hf-fixed-K`,
            `hf-prompt-lookup`, `hf-prompt-lookup-N`, a SpecKV policy spec such as `adaptive` or `fixed:K`,
            `oracle` or `context+oracle`).
        kind: `"target"`, `"hf"` (transformers' assisted generation or prompt lookup), `"speckv"` or `"oracle"`.
        hf_settings: for `"hf"` with a draft model, the assistant's generation-config settings.
        policy: for `"speckv"`, the policy given to `SpecKVGenerator`.
        sampling: for `"speckv"`, `SpecKVGenerator(sampling=...)` in sampled runs; None for the run's own (so one
            run can interleave speculative and coupled sampling).
        prompt_lookup_num_tokens: for `hf-prompt-lookup[-N]`, transformers' `prompt_lookup_num_tokens`.
        compiled: `target-compiled` (transformers' static cache, its forward compiled) or `compiled:POLICY`
            (`SpecKVGenerator(POLICY, compile=True)`, the compiled loop).
    """

    name: str
    kind: str
    hf_settings: dict[str, Any] = field(default_factory=dict)
    policy: str | DraftPolicy | None = None
    sampling: str | None = None
    prompt_lookup_num_tokens: int | None = None
    compiled: bool = False


#: The hindsight oracles: the draft's runs (`oracle`), and the context's tokens the target keeps then the draft's runs
#: (`context+oracle`, the measuring stick of the context policies).
_ORACLES = ("oracle", "context+oracle")


def _hf_method(name: str) -> Method:
    if name == "hf-prompt-lookup" or name.startswith("hf-prompt-lookup-"):
        return _prompt_lookup_method(name)
    if name == "hf-default":
        return Method(name, "hf", {})
    if name == "hf-heuristic":
        settings = {"num_assistant_tokens": 20, "num_assistant_tokens_schedule": "heuristic"}
        return Method(name, "hf", {**settings, "assistant_confidence_threshold": 0.0})
    gamma = name.removeprefix("hf-fixed-")
    if not gamma.isdigit() or int(gamma) < 1:
        raise ValueError(
            f"bad method {name!r}: transformers' methods are hf-default, hf-heuristic, hf-fixed-K (constant γ, "
            "K >= 1), hf-prompt-lookup and hf-prompt-lookup-N."
        )
    settings = {"num_assistant_tokens": int(gamma), "num_assistant_tokens_schedule": "constant"}
    return Method(name, "hf", {**settings, "assistant_confidence_threshold": 0.0})


def _prompt_lookup_method(name: str) -> Method:
    """`hf-prompt-lookup[-N]`: transformers' prompt lookup decoding, `generate(prompt_lookup_num_tokens=N)` with no
    draft model (candidates are copied from earlier text; batch 1 only in transformers, as the harness runs)."""
    length = name.removeprefix("hf-prompt-lookup").removeprefix("-") or str(HF_PROMPT_LOOKUP_TOKENS)
    if not length.isdigit() or int(length) < 1:
        raise ValueError(
            f"bad method {name!r}: transformers' prompt lookup is written hf-prompt-lookup (N = "
            f"{HF_PROMPT_LOOKUP_TOKENS}) or hf-prompt-lookup-N with N >= 1 tokens."
        )
    return Method(name, "hf", prompt_lookup_num_tokens=int(length))


def parse_methods(specs: str | Iterable[str | Method]) -> list[Method]:
    """Parses method names; `target-only` is always included, first (speedups are relative to it).

    Args:
        specs: names, or one comma-separated string. `fixed:A-B` expands to `fixed:A` ... `fixed:B`, and
            `hf-fixed-A-B` likewise. `hf-prompt-lookup` is transformers' prompt lookup (no draft model) with
            `HF_PROMPT_LOOKUP_TOKENS` tokens, `hf-prompt-lookup-N` with N. `speckv@PATH_OR_REPO` runs a trained
            predictor (a folder written by `speckv train` or a Hub id), so a new predictor and the shipped one can
            run interleaved. `target-compiled` is the target alone with transformers' static cache and its forward
            compiled; `compiled:POLICY` (and `compiled:fixed:A-B`, `compiled:oracle`) runs in the compiled loop.
            `oracle` drafts the draft's runs known in hindsight; `context+oracle` takes the context's tokens the
            target keeps, then those runs (the measuring stick of the context policies).
            `Method` objects pass through (e.g. a SpecKV method with a policy object).

    Returns:
        The methods, without duplicates, in the given order after `target-only`.

    Raises:
        ValueError: for an unknown name, naming the accepted ones, or a predictor that cannot be loaded.
    """
    if isinstance(specs, str):
        specs = [part.strip() for part in specs.split(",") if part.strip()]
    methods = [Method("target-only", "target")]
    for spec in specs:
        for method in [spec] if isinstance(spec, Method) else _expand(spec):
            if method.name not in {m.name for m in methods}:
                methods.append(method)
    return methods


def _predictor_method(spec: str) -> Method:
    """`speckv@PATH_OR_REPO`: the policy that runs that trained predictor (`policy_from_pretrained`), loaded once
    here so that a bad path fails before any model loads."""
    from ..policies.registry import policy_from_pretrained

    name, _, source = spec.partition("@")
    if name != "speckv" or not source:
        raise ValueError(f"bad method {spec!r}: a trained predictor is written speckv@PATH_OR_REPO_ID.")
    try:
        policy = policy_from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"method {spec!r} cannot be built: {error}") from None
    return Method(spec, "speckv", policy=policy)


def _expand(spec: str) -> list[Method]:
    for head in ("fixed:", "hf-fixed-", "context+fixed:"):
        low, dash, high = spec.removeprefix(head).partition("-")
        if spec.startswith(head) and dash:
            if not (low.isdigit() and high.isdigit() and int(low) <= int(high)):
                raise ValueError(
                    f"bad method range {spec!r}: write e.g. fixed:1-8, hf-fixed-2-6 or context+fixed:1-8."
                )
            return [method for k in range(int(low), int(high) + 1) for method in _expand(f"{head}{k}")]
    if spec == "target-only":
        return [Method(spec, "target")]
    if spec == "target-compiled":
        return [Method(spec, "target", compiled=True)]
    if spec.startswith("compiled:"):
        inner = spec.removeprefix("compiled:")
        if inner in _ORACLES:
            return [Method(spec, "oracle", compiled=True)]
        if inner in {"target-only", "target-compiled"} or inner.startswith(("hf-", "compiled:")):
            raise ValueError(f"bad method {spec!r}: compiled: takes a SpecKV policy, e.g. compiled:adaptive.")
        return [
            Method(f"compiled:{method.name}", "speckv", policy=method.policy, compiled=True)
            for method in _expand(inner)
        ]
    if spec in _ORACLES:
        return [Method(spec, "oracle")]
    if spec.startswith("hf-"):
        return [_hf_method(spec)]
    if "@" in spec:
        return [_predictor_method(spec)]
    try:
        get_policy(spec)  # validates the spec (and loads a predictor); each run builds its own policy
    except OSError as error:
        raise ValueError(f"method {spec!r} cannot be built: {error}") from None
    except ValueError:
        raise ValueError(
            f"unknown method {spec!r}: use target-only, target-compiled, hf-default, hf-heuristic, hf-fixed-K, "
            "hf-prompt-lookup, hf-prompt-lookup-N, oracle, context+oracle, or a SpecKV "
            "policy (adaptive, heuristic, confidence, fixed:K; fixed:A-B for a range; context for context candidates "
            "alone, context+POLICY for context candidates then POLICY's drafts; speckv@PATH for a trained predictor; "
            "compiled:POLICY for POLICY in the compiled loop)."
        ) from None
    return [Method(spec, "speckv", policy=spec)]
