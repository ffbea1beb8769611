"""What a `GammaPredictor`'s config.json holds: the kinds of predictor, and the checks of its settings.

`GammaPredictor(...)` checks its arguments with [`validate_config`][] before building anything, and
`GammaPredictor.from_pretrained` checks a saved config.json with [`check_saved_config`][] before reading weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..core.validation import is_int
from .features import FEATURE_SCHEMA_VERSION, PAPER_FEATURES, PAPER_SCHEMA_VERSION
from .loading import PredictorLoadError

__all__ = ["PAPER_KIND", "PREDICTOR_KINDS", "SCHEMA_VERSIONS", "check_saved_config", "validate_config"]

#: The kinds `speckv train` fits.
PREDICTOR_KINDS = ("portable", "pair")
#: The SpecKV paper's predictor: converted from its weights (`from_paper_npz`), never trained here.
PAPER_KIND = "paper"
#: The feature schema version each kind reads.
SCHEMA_VERSIONS = {
    "portable": FEATURE_SCHEMA_VERSION,
    "pair": FEATURE_SCHEMA_VERSION,
    PAPER_KIND: PAPER_SCHEMA_VERSION,
}


def check_saved_config(config: dict[str, Any], model_id: str) -> None:
    """Checks a saved config.json before its predictor is built: the keys a `GammaPredictor` writes, and the feature
    schema version this speckv-hf computes for its kind.

    Args:
        config: the parsed config.json.
        model_id: the folder or Hub id it came from, for the messages.

    Raises:
        PredictorLoadError: for a missing key or another schema version, naming what to do.
    """
    missing_keys = [key for key in ("features", "schema_version") if key not in config]
    if missing_keys:
        raise PredictorLoadError(f"config.json of {model_id!r} lacks {missing_keys}: is it a GammaPredictor?")
    expected_version = SCHEMA_VERSIONS.get(config.get("kind", "portable"), FEATURE_SCHEMA_VERSION)
    if config["schema_version"] != expected_version:
        redo = "convert it again (from_paper_npz)" if config.get("kind") == PAPER_KIND else "retrain the predictor"
        raise PredictorLoadError(
            f"{model_id!r} was trained on feature schema version {config['schema_version']}, this speckv-hf "
            f"computes version {expected_version}: {redo} with this speckv-hf "
            f"{'' if config.get('kind') == PAPER_KIND else '(speckv train)'}, or upgrade speckv-hf to a release "
            f"that computes version {config['schema_version']}"
        )


def validate_config(
    features: Sequence[str],
    hidden_sizes: Sequence[int],
    kind: str,
    hidden_state_dim: int,
    schema_version: int | None,
    metadata: dict[str, Any] | None,
    init_seed: int,
) -> tuple[tuple[str, ...], tuple[int, ...], int, dict[str, Any]]:
    """Checks `GammaPredictor`'s constructor arguments (see its docstring for each).

    Returns:
        `(features, hidden_sizes, schema_version, metadata)`: features and hidden sizes as tuples, the schema version
        (the kind's when None was given) and a JSON round-tripped copy of metadata.

    Raises:
        ValueError: naming the argument and what it must be.
    """
    if isinstance(features, str) or not isinstance(features, Sequence) or len(features) == 0:
        raise ValueError(f"features must be a non-empty list of names, e.g. list(PORTABLE_FEATURES); got {features!r}")
    if not all(isinstance(name, str) and name for name in features):
        raise ValueError(f"feature names must be non-empty strings; got {list(features)!r}")
    duplicates = sorted({name for name in features if list(features).count(name) > 1})
    if duplicates:
        raise ValueError(f"features must be unique; {duplicates} appear more than once")
    if isinstance(hidden_sizes, str) or not isinstance(hidden_sizes, Sequence):
        raise ValueError(f"hidden_sizes must be a list of layer widths, e.g. [32, 32]; got {hidden_sizes!r}")
    if not all(is_int(size) and size > 0 for size in hidden_sizes):
        raise ValueError(f"hidden_sizes must be positive integers, e.g. [32, 32]; got {list(hidden_sizes)!r}")
    if kind not in SCHEMA_VERSIONS:
        raise ValueError(
            f"kind must be one of {list(PREDICTOR_KINDS)} (trained) or {PAPER_KIND!r} (from_paper_npz); got {kind!r}"
        )
    if not is_int(hidden_state_dim) or hidden_state_dim < 0:
        raise ValueError(f"hidden_state_dim must be a non-negative integer; got {hidden_state_dim!r}")
    if kind == "pair" and hidden_state_dim == 0:
        raise ValueError("kind='pair' reads the draft's hidden state: pass hidden_state_dim=<draft hidden size>")
    if kind != "pair" and hidden_state_dim != 0:
        raise ValueError(f"kind={kind!r} reads no hidden state: drop hidden_state_dim or use kind='pair'")
    if kind == PAPER_KIND and tuple(features) != PAPER_FEATURES:
        raise ValueError(f"kind='paper' reads the paper's features {list(PAPER_FEATURES)}; got {list(features)!r}")
    expected_version = SCHEMA_VERSIONS[kind]
    if schema_version is None:
        schema_version = expected_version
    if schema_version != expected_version:
        raise ValueError(
            f"schema_version {schema_version!r} is not the one this speckv-hf computes for kind={kind!r} "
            f"({expected_version}): leave it at its default"
        )
    if not is_int(init_seed):
        raise ValueError(f"init_seed must be an integer; got {init_seed!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict or None; got {type(metadata).__name__}")
    try:
        metadata = json.loads(json.dumps(metadata or {}, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"metadata goes in config.json and must be JSON-serializable ({error}): convert the values to "
            "str, int, float, bool, list or dict"
        ) from error
    return tuple(features), tuple(int(size) for size in hidden_sizes), schema_version, metadata
