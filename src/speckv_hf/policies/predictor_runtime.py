"""A `GammaPredictor` as the `speckv` and `speckv-paper` policies run it: loaded once, then plain numpy.

Both policies evaluate the predictor's MLP in numpy with preallocated buffers (a decision must cost microseconds,
not a torch dispatch); [`numpy_layers`][] gives them its layers with the feature normalization folded in.
[`load_predictor`][] turns a policy's `predictor=` argument (a model, a folder or Hub id, or None for the one that
ships with the package) into a model and a name for `config()`; [`packaged_predictor_path`][] finds a shipped one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_predictor", "numpy_layers", "packaged_predictor_path"]


def packaged_predictor_path(folder: str, fix: str) -> Path:
    """The folder of a predictor that ships inside the package.

    Args:
        folder: its path inside the package, e.g. `"predictors/default"`.
        fix: what to do instead, ending the error message.

    Returns:
        The folder, holding model.safetensors.

    Raises:
        FileNotFoundError: when the package was installed without it.
    """
    path = Path(str(resources.files("speckv_hf").joinpath(folder)))
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no {folder.rpartition('/')[2]} predictor at {path}: {fix}")
    return path


def load_predictor(
    predictor: Any,
    revision: str | None,
    default_path: Callable[[], Path],
    expected_features: Sequence[str] | None = None,
) -> tuple[Any, str]:
    """The model a policy runs, and how `config()` names it.

    Args:
        predictor: a `GammaPredictor`, a local folder or Hub id to load one from (strictly), or None for
            `default_path()`.
        revision: the Hub revision when `predictor` is a Hub id.
        default_path: the folder of the package's predictor, called only for `predictor=None`.
        expected_features: the features the loaded predictor must read, in order (checked while loading); None
            for no check.

    Returns:
        `(model, source)`: source is `"default"`, the folder or Hub id given, or for a model its `repo_id` or
        `npz` metadata (else `"in-memory"`).

    Raises:
        ValueError: for a `predictor` of another type.
        PredictorLoadError: for a checkpoint that cannot be loaded.
        PredictorSchemaError: for one that reads other features than `expected_features`.
    """
    from ..predictor.model import GammaPredictor

    if isinstance(predictor, GammaPredictor):
        metadata = predictor.metadata
        return predictor, str(metadata.get("repo_id") or metadata.get("npz") or "in-memory")
    if predictor is None:
        path, source = default_path(), "default"
    elif isinstance(predictor, (str, os.PathLike)):
        path, source = predictor, str(predictor)
    else:
        raise ValueError(f"predictor must be a GammaPredictor, a folder or Hub id, or None; got {predictor!r}")
    return GammaPredictor.from_pretrained(path, revision=revision, expected_features=expected_features), source


def numpy_layers(model: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """The MLP's linear layers as float64 numpy `(weight (out, in), bias (out,))` pairs, the input normalization
    folded into the first: `W (x - mean) / std + b = (W / std) x + (b - W mean / std)` (identity for the paper's
    predictor, folded anyway so no checkpoint runs differently).

    Args:
        model: a `GammaPredictor` (any device).

    Returns:
        One pair per linear layer, in order.
    """
    import torch

    linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)]
    layers = [
        (m.weight.detach().double().cpu().numpy().copy(), m.bias.detach().double().cpu().numpy().copy())
        for m in linears
    ]
    mean = model.feature_mean.detach().double().cpu().numpy()
    std = model.feature_std.detach().double().cpu().numpy()
    weight, bias = layers[0]
    layers[0] = (weight / std, bias - (weight / std) @ mean)
    return layers
