"""Reading a saved predictor's files strictly: model.safetensors only (never a pickle), every tensor with its shape.

`GammaPredictor.from_pretrained` builds the model from config.json, then reads its weights here; the SpecKV paper's
`.npz` import (`speckv_hf.predictor.paper`) raises the same error.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

__all__ = ["DOWNLOAD_KWARGS", "PREDICTOR_SOURCE", "PredictorLoadError", "check_state_dict", "weights_file"]

#: Download settings older huggingface_hub releases pass to `_from_pretrained`, forwarded to the download.
DOWNLOAD_KWARGS = ("proxies", "resume_download")
#: What a predictor argument can be, as error messages say it.
PREDICTOR_SOURCE = (
    "a predictor folder written by `speckv train` or GammaPredictor.save_pretrained (config.json and "
    "model.safetensors), or a Hub repo id such as 'namespace/name'"
)


class PredictorLoadError(ValueError):
    """A saved predictor cannot be loaded: wrong schema version, mismatched tensors or an unreadable file."""


def weights_file(model_id: str, *, revision: str | None, **download_kwargs: Any) -> str:
    """Path of model.safetensors in a local folder or the Hub repository (downloaded or from the cache)."""
    safetensors_name, pickle_name = constants.SAFETENSORS_SINGLE_FILE, constants.PYTORCH_WEIGHTS_NAME
    refusal = (
        f"GammaPredictor only loads {safetensors_name} (never pickled {pickle_name}): re-save it with save_pretrained"
    )
    if os.path.isdir(model_id):
        path = os.path.join(model_id, safetensors_name)
        if os.path.isfile(path):
            return path
        found = f"only {pickle_name}" if os.path.exists(os.path.join(model_id, pickle_name)) else "no weights"
        raise PredictorLoadError(f"{model_id} holds {found}. {refusal}")
    try:
        return hf_hub_download(repo_id=model_id, filename=safetensors_name, revision=revision, **download_kwargs)
    except LocalEntryNotFoundError as error:
        raise PredictorLoadError(
            f"{safetensors_name} of {model_id!r} (revision {revision or 'main'}) is not in the local cache and "
            "downloads are off (HF_HUB_OFFLINE or local_files_only): download it once while online"
        ) from error
    except EntryNotFoundError as error:
        raise PredictorLoadError(
            f"{model_id!r} (revision {revision or 'main'}) has no {safetensors_name}. {refusal}"
        ) from error


def check_state_dict(expected: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], weights_file: str) -> None:
    """Raises `PredictorLoadError` naming every missing, unexpected or wrongly shaped tensor."""
    problems = []
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    for name in sorted(set(expected) & set(loaded)):
        if loaded[name].shape != expected[name].shape:
            problems.append(
                f"{name} has shape {tuple(loaded[name].shape)} in the file, the config expects "
                f"{tuple(expected[name].shape)}"
            )
    if problems:
        raise PredictorLoadError(
            f"{weights_file} does not match its config.json: {'; '.join(problems)}. The weights and the config come "
            "from different predictors: save both together with save_pretrained"
        )
