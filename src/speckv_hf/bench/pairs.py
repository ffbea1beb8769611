"""Loading a target/draft pair the way users load it, for the command line (`speckv bench`, `speckv demo`).

With no model arguments the embedded demo pair is used, offline. Otherwise both models load with
`AutoModelForCausalLM.from_pretrained` from a local folder or a Hub id, the target with the quantization config
that [`quantization_config`][] builds from a compression name, the draft in floating point.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..compression.detection import COMPRESSIONS, check_runs_on, quantization_config
from ..compression.names import load_dtype
from ..core.validation import local_or_hub_id

__all__ = [
    "LoadedPair",
    "check_compressions",
    "default_device",
    "load_pair_for",
    "pair_sources",
    "quiet_transformers",
]

_BNB_NAMES = {"int8", "nf4", "fp4", "bnb-int8", "bnb-nf4", "bnb-fp4"}
_MODEL_SOURCE = (
    "a model folder written by save_pretrained (config.json and the weights), or a Hub model id such as "
    "'Qwen/Qwen2.5-0.5B'"
)


@dataclass
class LoadedPair:
    """A loaded target/draft pair.

    Attributes:
        target: the target model, in eval mode.
        draft: the draft model, in eval mode.
        tokenizer: the target's tokenizer.
        target_name: where the target came from (a path or Hub id, `"embedded"` for the demo pair).
        draft_name: where the draft came from.
        compression: the compression name the target was loaded with.
    """

    target: Any
    draft: Any
    tokenizer: Any
    target_name: str
    draft_name: str
    compression: str


def default_device() -> str:
    """`"cuda"` when a GPU is visible, else `"cpu"`."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silences transformers' and huggingface_hub's progress bars, info logs and warnings while loading and
    generating, and restores them after."""
    import transformers
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    verbosity = transformers.logging.get_verbosity()
    bars_were_disabled = are_progress_bars_disabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    disable_progress_bars()
    # torchao, when installed, is imported by from_pretrained and logs its optional kernels and pytree warnings.
    loggers = [logging.getLogger(name) for name in ("accelerate", "bitsandbytes", "torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
        if not bars_were_disabled:
            enable_progress_bars()
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def check_compressions(names: list[str], device: str | None = None) -> None:
    """Checks compression names, that their backends import and that they run on the device, before any model
    loads.

    Args:
        names: compression names (`speckv_hf.compression.detection.COMPRESSIONS`).
        device: the device the target will run on (default: [`default_device`][]).

    Raises:
        ValueError: for no name, an unknown one, or one that cannot run on the device (the message says what to
            use instead).
        ImportError: when a backend is missing (the message names the extra to install).
    """
    if not names:
        raise ValueError("no compression given: pass at least one, e.g. --compression fp32.")
    device = device or default_device()
    for name in names:
        if name not in COMPRESSIONS:
            raise ValueError(f"unknown compression {name!r}: choose from {', '.join(COMPRESSIONS)}.")
        with quiet_transformers():  # importing a backend can log warnings about optional kernels
            quantization_config(name)
        check_runs_on(name, device)


def pair_sources(target: str, draft: str) -> tuple[str, str]:
    """What to load a user's pair from, checked before any work: local folders (`~` expanded) or Hub repo ids.

    Raises:
        FileNotFoundError: for a local path that does not exist ("no such folder", naming the fix).
        NotADirectoryError: for a local path that is a file.
    """
    return local_or_hub_id(target, _MODEL_SOURCE), local_or_hub_id(draft, _MODEL_SOURCE)


def load_pair_for(
    compression: str = "fp32",
    target: str | None = None,
    draft: str | None = None,
    device: str | None = None,
) -> LoadedPair:
    """Loads a target (with a compression) and its draft.

    Args:
        compression: a name from `speckv_hf.compression.detection.COMPRESSIONS` (`fp32`, `bf16`, `int8`, `nf4`,
            `quanto-int4`, `torchao-int8`, ...).
        target: a local folder or Hub id; None (with `draft` None) for the embedded pair.
        draft: a local folder or Hub id for the draft.
        device: `"cpu"` or `"cuda"` (default: [`default_device`][]). Quantized targets load with `device_map`.

    Returns:
        The loaded pair.

    Raises:
        ValueError: when only one of `target` and `draft` is given, for an unknown compression, or for one that
            cannot run on the device.
        FileNotFoundError: for a `target` or `draft` that can only be a local path (absolute, `./`, `../`, `~`,
            ...) and does not exist; NotADirectoryError for one that is a file. Both before any model loads.
        ImportError: when the compression's backend is not installed (the message names the extra).
    """
    if (target is None) != (draft is None):
        raise ValueError("pass both --target and --draft (or neither, for the embedded pair).")
    if target is not None and draft is not None:
        target, draft = pair_sources(target, draft)
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}: choose from {', '.join(COMPRESSIONS)}.")
    device = device or default_device()
    check_runs_on(compression, device)
    qconfig = quantization_config(compression)  # raises ImportError before any loading
    dtype = load_dtype(compression)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if target is None:
        from ..demo import pair_path

        target_path, draft_path, local_only = str(pair_path("target")), str(pair_path("draft")), True
        target_name = draft_name = "embedded"
    else:
        target_path, draft_path, local_only = target, draft, False
        target_name, draft_name = target, draft
    with quiet_transformers():
        if qconfig is not None:
            # bitsandbytes keeps the checkpoint's dtype for what it does not quantize (as it always has here);
            # quanto and torchao quantize from, and compute in, the dtype they are given.
            dtype_kwargs = {} if compression in _BNB_NAMES else {"dtype": dtype}
            target_model = AutoModelForCausalLM.from_pretrained(
                target_path,
                quantization_config=qconfig,
                device_map=device,
                local_files_only=local_only,
                **dtype_kwargs,
            )
        else:
            target_model = AutoModelForCausalLM.from_pretrained(
                target_path, dtype=dtype, local_files_only=local_only
            ).to(device)
        # The draft runs in the target's floating-point dtype (fp32 next to a quantized target).
        draft_model = AutoModelForCausalLM.from_pretrained(draft_path, dtype=dtype, local_files_only=local_only).to(
            device
        )
        tokenizer = AutoTokenizer.from_pretrained(target_path, local_files_only=local_only)
    return LoadedPair(
        target=target_model.eval(),
        draft=draft_model.eval(),
        tokenizer=tokenizer,
        target_name=target_name,
        draft_name=draft_name,
        compression=compression,
    )
