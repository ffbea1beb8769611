"""The methods `speckv bench` compares, by name: target alone (eager or compiled), transformers' assisted generation
and prompt lookup, SpecKV policies (in the eager or the compiled loop) and the oracle."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..policies.base import DraftPolicy
from ..policies.registry import get_policy

__all__ = [
    "DEFAULT_METHODS",
    "HF_DEFAULTS",
    "HF_PROMPT_LOOKUP_TOKENS",
    "Method",
    "check_methods",
    "parse_methods",
    "speckv_generator",
    "split_methods",
]

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
        settings: for `"speckv"`, further keyword arguments of `SpecKVGenerator` (its own settings, such as
            `context_memory`, or the policy's, such as `max_guesses`), written `POLICY[key=value,...]`.
    """

    name: str
    kind: str
    hf_settings: dict[str, Any] = field(default_factory=dict)
    policy: str | DraftPolicy | None = None
    sampling: str | None = None
    prompt_lookup_num_tokens: int | None = None
    compiled: bool = False
    settings: dict[str, Any] = field(default_factory=dict)


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


def split_methods(text: str) -> list[str]:
    """Splits a comma-separated list of method specs, keeping the commas inside a spec's settings
    (`context+adaptive[max_guesses=0,guess_floor=0.5]`), and drops blanks and repeats."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)  # a stray bracket is the spec's error, reported when it is parsed
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return list(dict.fromkeys(part.strip() for part in parts if part.strip()))


#: `SpecKVGenerator` arguments a method's settings cannot set: the method's name says them (`compiled:POLICY`), or
#: the run does (`--do-sample`), or they would make the measured calls differ from the others.
_RESERVED_SETTINGS = {
    "compile": "write compiled:POLICY for the compiled loop",
    "policy": "the policy is the method's name",
    "record_steps": "every SpecKV method records its steps",
}


def parse_methods(specs: str | Iterable[str | Method]) -> list[Method]:
    """Parses method names; `target-only` is always included, first (speedups are relative to it).

    Args:
        specs: names, or one comma-separated string (split by [`split_methods`][]). `fixed:A-B` expands to
            `fixed:A` ... `fixed:B`, and `hf-fixed-A-B` likewise. `hf-prompt-lookup` is transformers' prompt lookup
            (no draft model) with `HF_PROMPT_LOOKUP_TOKENS` tokens, `hf-prompt-lookup-N` with N.
            `speckv@PATH_OR_REPO` runs a trained predictor (a folder written by `speckv train` or a Hub id), so a
            new predictor and the shipped one can run interleaved. `target-compiled` is the target alone with
            transformers' static cache and its forward compiled; `compiled:POLICY` (and `compiled:fixed:A-B`,
            `compiled:oracle`) runs in the compiled loop. `oracle` drafts the draft's runs known in hindsight;
            `context+oracle` takes the context's tokens the target keeps, then those runs (the measuring stick of
            the context policies). A SpecKV method takes `SpecKVGenerator` settings in brackets,
            `POLICY[key=value,...]` (values are Python literals, `true`/`false`/`none` in any case, or a bare word
            for a text setting; checked against the types `SpecKVGenerator` declares):
            `context+adaptive[max_guesses=0]`, `context+adaptive[context_memory=4096]`,
            `adaptive[loop=transformers]`, `adaptive[sampling=coupled]`; a range's settings go to each method in
            it. `Method` objects pass through (e.g. a SpecKV method with a policy object).

    Returns:
        The methods, without duplicates, in the given order after `target-only`.

    Raises:
        ValueError: for an unknown name, naming the accepted ones, or a predictor that cannot be loaded.
    """
    if isinstance(specs, str):
        specs = split_methods(specs)
    methods = [Method("target-only", "target")]
    for spec in specs:
        for method in [spec] if isinstance(spec, Method) else _expand_with_settings(spec):
            if method.name not in {m.name for m in methods}:
                methods.append(method)
    return methods


def speckv_generator(method: Method, sampling: str = "auto") -> Any:
    """The `SpecKVGenerator` a SpecKV method runs with: its policy and settings, in the compiled loop for
    `compiled:`, sampling as `method.sampling` says or else as the run does (`sampling`)."""
    from ..decoding.generator import SpecKVGenerator

    return SpecKVGenerator(
        method.policy, sampling=method.sampling or sampling, compile=method.compiled, **method.settings
    )


def check_methods(methods: Iterable[Method], sampling: str = "auto") -> None:
    """Builds every SpecKV method's generator as a run with `sampling` would, so that a setting the run's sampling
    refuses (`loop=transformers` with coupled sampling, say) fails before any model loads.

    Raises:
        ValueError: naming the method and the fix.
    """
    for method in methods:
        if method.kind == "speckv":
            try:
                speckv_generator(method, sampling)
            except (ValueError, TypeError) as error:
                raise ValueError(f"method {method.name!r} cannot run here: {error}") from None


def _expand_with_settings(spec: str) -> list[Method]:
    """`_expand` of the spec's name, each method given the spec's settings (`NAME[key=value,...]`)."""
    name, settings, written = _split_settings(spec)
    methods = _expand(name)
    if not settings:
        return methods
    return [_with_settings(method, settings, written, spec) for method in methods]


def _split_settings(spec: str) -> tuple[str, dict[str, Any], str]:
    """`NAME[key=value,...]` -> `(NAME, settings, "key=value,...")`; a spec without brackets has no settings.

    Values are Python literals (`0`, `0.5`, `True`, `'text'`; `true`/`false`/`none` in any case too), or a bare word
    for the generator's text settings (`loop=transformers`); the written form drops the spaces around `=` and `,`.
    """
    if "[" not in spec and "]" not in spec:
        return spec, {}, ""
    name, _, rest = spec.partition("[")
    name, body = name.strip(), rest.removesuffix("]")
    if not name or not rest.endswith("]") or "[" in body or "]" in body:
        raise ValueError(
            f"bad method {spec!r}: settings are written NAME[key=value,...], e.g. context+adaptive[max_guesses=0]."
        )
    settings: dict[str, Any] = {}
    written = []
    for item in body.split(","):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not key.isidentifier() or not value:
            raise ValueError(
                f"bad setting {item.strip()!r} in method {spec!r}: write key=value, e.g. max_guesses=0 (a value holds "
                "no comma)."
            )
        if key in settings:
            raise ValueError(f"setting {key!r} is given twice in method {spec!r}: keep one.")
        if key in _RESERVED_SETTINGS:
            raise ValueError(f"method {spec!r} cannot set {key!r}: {_RESERVED_SETTINGS[key]}.")
        settings[key] = _setting_value(key, value, spec)
        written.append(f"{key}={value}")
    return name, settings, ",".join(written)


_WORDS = {"true": True, "false": False, "none": None}


def _setting_value(key: str, text: str, spec: str) -> Any:
    """A setting's value, checked against the type `SpecKVGenerator` declares for `key` (the policy checks its own
    settings when it is built)."""
    import inspect

    from ..decoding.generator import SpecKVGenerator

    parameter = inspect.signature(SpecKVGenerator.__init__).parameters.get(key)
    declared = str(parameter.annotation) if parameter is not None and parameter.kind is parameter.KEYWORD_ONLY else ""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lower() in _WORDS:
            value = _WORDS[text.lower()]
        elif declared == "str":
            return text  # a bare word: `loop=transformers`
        else:
            raise ValueError(
                f"setting {key}={text} in method {spec!r} is no Python value: write a number, True, False or None, "
                f"or quote text ({key}='...'); a value holds no comma."
            ) from None
    kinds = {"bool": (bool,), "int": (int,), "float": (int, float), "float | None": (int, float, type(None))}
    expected = kinds.get(declared)
    is_bool = isinstance(value, bool)
    if expected is not None and not (is_bool if declared == "bool" else isinstance(value, expected) and not is_bool):
        names = {"bool": "True or False", "int": "an integer", "float": "a number", "float | None": "a number or None"}
        raise ValueError(f"setting {key}={text} in method {spec!r}: {key} takes {names[declared]}.")
    return value


def _with_settings(method: Method, settings: dict[str, Any], written: str, spec: str) -> Method:
    """The SpecKV `method` with `settings`, checked by building its generator once (no model is touched)."""
    if method.kind != "speckv":
        raise ValueError(
            f"bad method {spec!r}: settings in brackets apply to SpecKV policies (e.g. "
            f"context+adaptive[max_guesses=0]), not to {method.name!r}."
        )
    settings = dict(settings)
    sampling = settings.pop("sampling", None)  # the method's own sampling scheme, as `Method.sampling`
    with_settings = Method(
        f"{method.name}[{written}]",
        "speckv",
        policy=method.policy,
        sampling=sampling,
        compiled=method.compiled,
        settings=settings,
    )
    try:
        speckv_generator(with_settings)
    except (ValueError, TypeError) as error:
        raise ValueError(f"method {spec!r} cannot be built: {error}") from None
    return with_settings


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
