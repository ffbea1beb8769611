"""The SpecKV paper's predictor (arXiv 2605.02888): its inputs, and its weights converted without pickle.

The paper publishes its predictor as a scikit-learn `MLPRegressor` pickle and as an `.npz` of its weights:
`W1` (6, 16), `b1` (16,), `W2` (16, 1), `b2` (1,), a ReLU hidden layer and a linear output, reading one row of
`PAPER_FEATURES` per step and predicting the acceptance rate of a step of γ tokens. [`load_paper_npz`][] reads the
`.npz` (never a pickle: `allow_pickle=False`), and `GammaPredictor.from_paper_npz` turns it into a `GammaPredictor` of
kind `"paper"`, which `save_pretrained` writes as config.json + model.safetensors + card like any other. Whoever
holds the scikit-learn model exports it with
`np.savez(path, W1=m.coefs_[0], b1=m.intercepts_[0], W2=m.coefs_[1], b2=m.intercepts_[1])`.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .loading import PredictorLoadError

__all__ = ["PAPER_ARRAYS", "PAPER_ARXIV", "load_paper_npz", "paper_comp_enc", "paper_features", "paper_source"]

PAPER_ARXIV = "2605.02888"
#: The arrays of the paper's `.npz` and their shapes (scikit-learn's `coefs_[i]` is `(in, out)`).
PAPER_ARRAYS: dict[str, tuple[int, ...]] = {"W1": (6, 16), "b1": (16,), "W2": (16, 1), "b2": (1,)}
#: Bits per nat: the paper's entropies are in bits, `TokenSignals.entropy` in nats.
BITS_PER_NAT = 1.0 / math.log(2.0)
_EXPORT = "np.savez(path, W1=m.coefs_[0], b1=m.intercepts_[0], W2=m.coefs_[1], b2=m.intercepts_[1])"


def paper_features(
    mean_entropy: float, mean_confidence: float, max_entropy: float, min_confidence: float, comp_enc: int, gamma: int
) -> tuple[float, ...]:
    """One row of `PAPER_FEATURES`, from a step's aggregates as `StepSignals` holds them.

    Args:
        mean_entropy: mean entropy of the drafted tokens' distributions, in **nats** (converted to bits here).
        mean_confidence: mean probability of the drafted tokens.
        max_entropy: largest entropy, in nats (converted to bits).
        min_confidence: smallest probability of a drafted token.
        comp_enc: the target's compression, see [`paper_comp_enc`][].
        gamma: tokens drafted in the step.

    Returns:
        The six feature values, in `PAPER_FEATURES` order.
    """
    return (
        float(mean_entropy) * BITS_PER_NAT,
        float(mean_confidence),
        float(max_entropy) * BITS_PER_NAT,
        float(min_confidence),
        float(comp_enc),
        float(gamma),
    )


def paper_comp_enc(compression: Any) -> int:
    """The paper's `comp_enc` of a target's compression: fp16 (any float) 0, int8 1, nf4 (any 4-bit) 2.

    Reads `quantized`, `label`, `method` and `bits` of a `CompressionInfo` defensively, so new backends map by their
    bits: other 5-8-bit methods give 1, other 4-bit-or-less methods 2.

    Args:
        compression: the target's `CompressionInfo` (`PolicyContext.compression`).

    Returns:
        0, 1 or 2.

    Raises:
        ValueError: for a quantized target whose bits are unknown or above 8; pass `comp_enc=` to the policy.
    """
    method = str(getattr(compression, "method", "none") or "none").lower()
    label = str(getattr(compression, "label", "") or "").lower()
    quantized = getattr(compression, "quantized", method != "none")
    if not quantized:
        return 0
    if label == "int8" or method in {"bnb-int8", "int8"}:
        return 1
    if label in {"nf4", "fp4", "int4"} or method in {"bnb-nf4", "bnb-fp4"}:
        return 2
    bits = getattr(compression, "bits", None)
    if isinstance(bits, int) and 0 < bits <= 4:
        return 2
    if isinstance(bits, int) and 4 < bits <= 8:
        return 1
    raise ValueError(
        f"the paper's comp_enc covers fp16 (0), int8 (1) and nf4 (2); the target's compression {compression} "
        f"(method {method!r}, bits {bits!r}) maps to none: pass comp_enc=0, 1 or 2 to the speckv-paper policy"
    )


def load_paper_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads and checks the paper's weights, without ever unpickling.

    Args:
        path: an `.npz` with exactly the arrays of `PAPER_ARRAYS`, finite floating-point values.

    Returns:
        The arrays by name, as float64 (`W1` (6, 16), `b1` (16,), `W2` (16, 1), `b2` (1,)).

    Raises:
        PredictorLoadError: for a missing or unreadable file, a pickle, an object array, a missing or unexpected
            array, a wrong shape or dtype, or a non-finite value; the message names which.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictorLoadError(f"no file {path}: export the paper's scikit-learn model with {_EXPORT}")
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as error:  # neither .npz nor .npy: numpy would have to unpickle it
        raise PredictorLoadError(
            f"{path} is not an .npz: numpy would have to unpickle it ({error}), and pickles (such as the scikit-learn "
            f"model itself) are never loaded. Export the model's weights with {_EXPORT}"
        ) from error
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise PredictorLoadError(f"cannot read {path} as an .npz ({error}): export it again with {_EXPORT}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise PredictorLoadError(f"{path} holds one array, not an .npz of {sorted(PAPER_ARRAYS)}: use {_EXPORT}")
    with archive:
        missing = [name for name in PAPER_ARRAYS if name not in archive.files]
        unexpected = sorted(set(archive.files) - set(PAPER_ARRAYS))
        if missing or unexpected:
            raise PredictorLoadError(
                f"{path} must hold exactly {list(PAPER_ARRAYS)}: missing {missing}, unexpected {unexpected}. "
                f"Export it with {_EXPORT}"
            )
        arrays = {}
        for name, shape in PAPER_ARRAYS.items():
            try:
                array = archive[name]
            except ValueError as error:  # an object array needs pickle
                raise PredictorLoadError(
                    f"{name} in {path} is a pickled object array ({error}): save it as a float array with {_EXPORT}"
                ) from error
            if array.dtype.kind != "f":
                raise PredictorLoadError(f"{name} in {path} has dtype {array.dtype}; it must be floating point")
            if array.shape != shape:
                raise PredictorLoadError(
                    f"{name} in {path} has shape {array.shape}, the paper's predictor has {shape}: is it the paper's "
                    "6-16-1 MLPRegressor?"
                )
            if not np.isfinite(array).all():
                raise PredictorLoadError(f"{name} in {path} has {int((~np.isfinite(array)).sum())} non-finite values")
            arrays[name] = array.astype(np.float64)
    return arrays


def paper_source(path: str | os.PathLike[str]) -> dict[str, str]:
    """What a converted paper predictor records about its source: the paper, the `.npz` file and its SHA-256."""
    path = Path(path)
    return {
        "source": f"SpecKV paper, arXiv {PAPER_ARXIV} (https://arxiv.org/abs/{PAPER_ARXIV})",
        "npz": path.name,
        "npz_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "output": "acceptance rate of a step of gamma tokens (linear; clip to [0, 1])",
    }
