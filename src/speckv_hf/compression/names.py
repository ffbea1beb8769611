"""The compression names the command line accepts, and the transformers quantization config each one builds.

Each name is built the way users load a quantized model: `BitsAndBytesConfig`, `QuantoConfig`, or `TorchAoConfig`
with one of torchao's config objects. Backends import only when their name is asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["COMPRESSIONS", "check_runs_on", "load_dtype", "quantization_config"]


@dataclass(frozen=True)
class _Backend:
    module: str  # what must import
    package: str  # what pip installs
    extra: str  # the speckv-hf extra that installs it


_BNB = _Backend("bitsandbytes", "bitsandbytes", "quant")
_QUANTO = _Backend("optimum.quanto", "optimum-quanto", "quanto")
_TORCHAO = _Backend("torchao", "torchao", "torchao")


def _bnb(kind: str) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import BitsAndBytesConfig

        if kind == "int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_compute_dtype=torch.float32)

    return build


def _quanto(weights: str) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import QuantoConfig

        return QuantoConfig(weights=weights)

    return build


def _torchao(config_name: str) -> Callable[[], Any]:
    def build() -> Any:
        import torchao.quantization
        from transformers import TorchAoConfig

        return TorchAoConfig(getattr(torchao.quantization, config_name)())

    return build


#: name -> (backend or None for floating point, config builder)
_NAMES: dict[str, tuple[_Backend | None, Callable[[], Any] | None]] = {
    "fp32": (None, None),
    "fp16": (None, None),
    "bf16": (None, None),
    "int8": (_BNB, _bnb("int8")),
    "nf4": (_BNB, _bnb("nf4")),
    "fp4": (_BNB, _bnb("fp4")),
    "bnb-int8": (_BNB, _bnb("int8")),
    "bnb-nf4": (_BNB, _bnb("nf4")),
    "bnb-fp4": (_BNB, _bnb("fp4")),
    "quanto-int8": (_QUANTO, _quanto("int8")),
    "quanto-int4": (_QUANTO, _quanto("int4")),
    "quanto-int2": (_QUANTO, _quanto("int2")),
    "quanto-float8": (_QUANTO, _quanto("float8")),
    "torchao-int8": (_TORCHAO, _torchao("Int8WeightOnlyConfig")),
    "torchao-int8-dynamic": (_TORCHAO, _torchao("Int8DynamicActivationInt8WeightConfig")),
    "torchao-int4": (_TORCHAO, _torchao("Int4WeightOnlyConfig")),
}

#: Compression names the command line accepts (`int8`, `nf4`, `fp4` are the bitsandbytes ones, also spelled
#: `bnb-int8`, ...).
COMPRESSIONS: tuple[str, ...] = tuple(_NAMES)

# Names that load but cannot run on a CPU, found by trying (torch 2.13, torchao 0.18): torchao's int4 weight-only
# layouts each need a GPU kernel ("plain" fails with "Requires mslk >= 1.0.0", "plain_int32" with
# "Int4PlainInt32Tensor does not support device 'cpu' yet", "tile_packed_to_4d" wants CUDA bf16).
_NEEDS_CUDA = {"torchao-int4": "quanto-int4 (or bnb-nf4) on CPU"}

# The dtype a name's target loads in: fp32 next to the fp32 draft, except torchao's int4 kernels, which take bf16.
_LOAD_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "torchao-int4": torch.bfloat16}


def _check_name(name: str) -> None:
    if name not in _NAMES:
        raise ValueError(f"unknown compression {name!r}: choose one of {', '.join(COMPRESSIONS)}.")


def quantization_config(label: str) -> Any:
    """The transformers quantization config of a compression name, to load a target with it.

    Args:
        label: a name from `COMPRESSIONS`: `"fp32"`, `"fp16"`, `"bf16"` (no quantization: returns None);
            bitsandbytes `"int8"`, `"nf4"`, `"fp4"` (also `"bnb-int8"`, ...); optimum-quanto `"quanto-int8"`,
            `"quanto-int4"`, `"quanto-int2"`, `"quanto-float8"` (weights only); torchao `"torchao-int8"`
            (int8 weight-only), `"torchao-int8-dynamic"` (int8 dynamic activations and int8 weights),
            `"torchao-int4"` (int4 weight-only, GPU only).

    Returns:
        A `BitsAndBytesConfig`, `QuantoConfig` or `TorchAoConfig`, or None for floating-point names.

    Raises:
        ValueError: for an unknown name.
        ImportError: when the name's backend is not installed (the message names the extra to install).
    """
    _check_name(label)
    backend, build = _NAMES[label]
    if backend is None or build is None:
        return None
    try:
        found = importlib.util.find_spec(backend.module) is not None
    except ModuleNotFoundError:  # a missing parent package, e.g. no `optimum` at all
        found = False
    if not found:
        raise ImportError(
            f"{label} targets need {backend.package}: pip install {backend.package} (from a clone of speckv-hf: "
            f"pip install -e '.[{backend.extra}]', or '.[quant]' for every quantization backend)."
        )
    return build()


def load_dtype(label: str) -> torch.dtype:
    """The dtype a target loads in for a compression name (the draft uses it too, for floating-point names).

    Args:
        label: a name from `COMPRESSIONS`.

    Returns:
        `torch.float16` / `torch.bfloat16` for those names and torchao's int4, else `torch.float32`.

    Raises:
        ValueError: for an unknown name.
    """
    _check_name(label)
    return _LOAD_DTYPES.get(label, torch.float32)


def check_runs_on(label: str, device: str) -> None:
    """Refuses, before any model loads, a compression that cannot run on the device.

    Args:
        label: a name from `COMPRESSIONS`.
        device: `"cpu"`, `"cuda"`, `"cuda:1"`, ...

    Raises:
        ValueError: for an unknown name, or one whose kernels need a GPU on a CPU (the message names what to use).
    """
    _check_name(label)
    if label in _NEEDS_CUDA and not str(device).startswith("cuda"):
        raise ValueError(
            f"{label} does not run on {device}: torchao's int4 weight-only kernels need a CUDA GPU. "
            f"Use {_NEEDS_CUDA[label]}, or pass --device cuda."
        )
