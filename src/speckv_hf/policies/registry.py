"""Policies by name: the built-in ones and any a third party registers.

`get_policy("fixed:4")`, `get_policy("speckv", predictor="org/predictor")`; `register_policy("mine", MyPolicy)`
makes `SpecKVGenerator("mine")` and `speckv bench --methods mine` work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import ConfidencePolicy, DraftPolicy, FixedPolicy, HeuristicPolicy
from .marginal import AdaptivePolicy
from .paper import PaperPolicy
from .speckv import SpeckvPolicy

__all__ = ["available_policies", "get_policy", "register_policy"]

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
    """Names accepted by [`get_policy`]."""
    return sorted(_POLICIES)


def get_policy(policy: str | DraftPolicy, **kwargs: Any) -> DraftPolicy:
    """Builds a policy from its name, or returns a policy object unchanged.

    Args:
        policy: a registered name (`"adaptive"`, `"confidence"`, `"fixed"`, `"heuristic"`, `"speckv"`,
            `"speckv-paper"`, ...),
            `"fixed:K"` as a shorthand for `FixedPolicy(K)`, or a `DraftPolicy` instance.
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
    name, _, arg = policy.partition(":")
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {policy!r}: choose one of {available_policies()} or pass a DraftPolicy.")
    if arg:
        if name != "fixed" or not arg.isdigit():
            raise ValueError(f"bad policy spec {policy!r}: only 'fixed:K' takes an argument, e.g. 'fixed:4'.")
        kwargs["num_tokens"] = int(arg)
    try:
        policy_object = _POLICIES[name](**kwargs)
    except TypeError as error:
        raise ValueError(f"invalid settings for policy {name!r}: {error}") from None
    if not isinstance(policy_object, DraftPolicy):
        returned = type(policy_object).__name__
        raise TypeError(f"the factory registered as {name!r} returned {returned}, not a DraftPolicy.")
    return policy_object
