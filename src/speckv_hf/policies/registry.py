"""Policies by name: the built-in ones and any a third party registers.

`get_policy("fixed:4")`, `get_policy("speckv", predictor="org/predictor")`; `register_policy("mine", MyPolicy)`
makes `SpecKVGenerator("mine")` and `speckv bench --methods mine` work. `policy_from_pretrained` picks the policy
that runs a saved predictor from the checkpoint's kind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.validation import local_or_hub_id
from .base import ConfidencePolicy, DraftPolicy, FixedPolicy, HeuristicPolicy
from .context import ContextPolicy
from .marginal import AdaptivePolicy
from .paper import PaperPolicy
from .speckv import SpeckvPolicy

__all__ = ["available_policies", "get_policy", "policy_from_pretrained", "register_policy"]

_POLICIES: dict[str, Callable[..., DraftPolicy]] = {
    "adaptive": AdaptivePolicy,
    "confidence": ConfidencePolicy,
    "fixed": FixedPolicy,
    "heuristic": HeuristicPolicy,
    "speckv": SpeckvPolicy,
    "speckv-paper": PaperPolicy,
}


def register_policy(name: str, factory: Callable[..., DraftPolicy], *, overwrite: bool = False) -> None:
    """Makes a policy available by name.

    Args:
        name: the name (letters, digits, `-` and `_`; no `:`, which separates the argument of `fixed:K`).
        factory: a callable returning a `DraftPolicy` from keyword settings (usually the class).
        overwrite: replace an existing registration of the name.

    Raises:
        ValueError: for a malformed or already registered name.
    """
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"policy name {name!r} must be letters, digits, '-' or '_'.")
    if name in _POLICIES and not overwrite:
        raise ValueError(f"policy {name!r} is already registered: pass overwrite=True to replace it.")
    _POLICIES[name] = factory


def available_policies() -> list[str]:
    """Names accepted by [`get_policy`][]."""
    return sorted(_POLICIES)


def get_policy(policy: str | DraftPolicy, **kwargs: Any) -> DraftPolicy:
    """Builds a policy from its name, or returns a policy object unchanged.

    Args:
        policy: a registered name (`"adaptive"`, `"confidence"`, `"fixed"`, `"heuristic"`, `"speckv"`,
            `"speckv-paper"`, ...),
            `"fixed:K"` as a shorthand for `FixedPolicy(K)`, `"context"` for context candidates alone (no draft
            model), `"context+NAME"` for context candidates then NAME's drafted tokens (e.g. `"context+adaptive"`,
            `"context+fixed:4"`; see [`ContextPolicy`][]), or a `DraftPolicy` instance.
        **kwargs: settings passed to the policy's constructor.

    Returns:
        The policy.

    Raises:
        ValueError: for an unknown name or invalid settings.
        TypeError: for something that is neither a name nor a policy.
    """
    if isinstance(policy, DraftPolicy):
        if kwargs:
            raise ValueError("policy settings can only be given with a policy name, not with a policy object.")
        return policy
    if not isinstance(policy, str):
        raise TypeError(f"policy must be a name or a DraftPolicy, got {type(policy).__name__}.")
    if policy == "context" or policy.startswith("context+"):
        return _context_policy(policy, kwargs)
    name, _, arg = policy.partition(":")
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {policy!r}: choose one of {available_policies()} or pass a DraftPolicy.")
    if arg:
        if name != "fixed" or not arg.isdigit():
            raise ValueError(f"bad policy spec {policy!r}: only 'fixed:K' takes an argument, e.g. 'fixed:4'.")
        if "num_tokens" in kwargs:
            raise ValueError(f"policy {policy!r} sets num_tokens already: drop num_tokens={kwargs['num_tokens']!r}.")
        kwargs["num_tokens"] = int(arg)
    try:
        policy_object = _POLICIES[name](**kwargs)
    except TypeError as error:
        raise ValueError(f"invalid settings for policy {name!r}: {error}") from None
    if not isinstance(policy_object, DraftPolicy):
        returned = type(policy_object).__name__
        raise TypeError(f"the factory registered as {name!r} returned {returned}, not a DraftPolicy.")
    return policy_object


_CONTEXT_SETTINGS = ("max_context_tokens", "warmup_acceptance", "explore_every", "max_guesses", "guess_floor")


def _context_policy(spec: str, kwargs: dict[str, Any]) -> ContextPolicy:
    """`"context"` (context candidates alone) or `"context+NAME"` (context candidates, then NAME's drafts); the
    settings of `ContextPolicy` go to it, the others to NAME."""
    own = {k: kwargs.pop(k) for k in _CONTEXT_SETTINGS if k in kwargs}
    inner = spec.removeprefix("context").removeprefix("+")
    if spec != "context" and (not inner or inner == "context" or inner.startswith("context+")):
        raise ValueError(f"bad policy spec {spec!r}: write 'context' or 'context+NAME', e.g. 'context+adaptive'.")
    if not inner and kwargs:
        raise ValueError(f"invalid settings for policy 'context': {sorted(kwargs)} (it takes {_CONTEXT_SETTINGS}).")
    try:
        draft_policy = get_policy(inner, **kwargs) if inner else None
    except ValueError as error:
        raise ValueError(f"in policy {spec!r}: {error}") from None
    try:
        return ContextPolicy(draft_policy=draft_policy, **own)
    except TypeError as error:
        raise ValueError(f"invalid settings for policy {spec!r}: {error}") from None


def policy_from_pretrained(predictor: Any, *, revision: str | None = None, **policy_kwargs: Any) -> DraftPolicy:
    """The policy that runs a saved predictor: `speckv-paper` for a `"paper"` checkpoint, `speckv` otherwise.

    Args:
        predictor: a folder written by `save_pretrained`, a Hub repo id, or a `GammaPredictor`.
        revision: the Hub revision.
        **policy_kwargs: settings of the policy ([`PaperPolicy`][] or `SpeckvPolicy`).

    Returns:
        The policy.

    Raises:
        FileNotFoundError: for a local path that does not exist (see `GammaPredictor.from_pretrained`).
        PredictorLoadError: for a checkpoint that cannot be loaded (named in the message).
    """
    from ..predictor.config import PAPER_KIND
    from ..predictor.loading import PREDICTOR_SOURCE
    from ..predictor.model import GammaPredictor

    if isinstance(predictor, GammaPredictor):
        kind = predictor.kind
    else:
        # A missing folder is named before the kind is looked up (which would ask the Hub for it).
        predictor = local_or_hub_id(predictor, PREDICTOR_SOURCE)
        kind = _checkpoint_kind(predictor, revision)
    if kind == PAPER_KIND:
        return PaperPolicy(predictor=predictor, revision=revision, **policy_kwargs)
    return SpeckvPolicy(predictor=predictor, revision=revision, **policy_kwargs)


def _checkpoint_kind(predictor: str, revision: str | None) -> str | None:
    """The `kind` in a checkpoint's config.json; None when it cannot be read (the loader then names why)."""
    from huggingface_hub import constants, hf_hub_download

    try:
        if os.path.isdir(predictor):
            config_file = os.path.join(predictor, constants.CONFIG_NAME)
        else:
            config_file = hf_hub_download(predictor, constants.CONFIG_NAME, revision=revision)
        kind = json.loads(Path(config_file).read_text()).get("kind", "portable")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None
