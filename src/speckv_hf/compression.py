"""What the target's compression is: floating-point dtype or a quantization method transformers knows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["COMPRESSIONS", "CompressionInfo", "detect_compression", "quantization_config"]

#: Compression names the command line accepts (`bnb-int8` is an alias of `int8`, `bnb-nf4` of `nf4`, ...).
COMPRESSIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "nf4", "fp4", "bnb-int8", "bnb-nf4", "bnb-fp4")

_DTYPE_NAMES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
}


@dataclass(frozen=True)
class CompressionInfo:
    """The compression of a model.

    Attributes:
        method: `"none"` for a floating-point model, `"bnb-int8"`, `"bnb-nf4"`, `"bnb-fp4"` for bitsandbytes, or
            transformers' `quant_method` name for other methods (e.g. `"gptq"`, `"awq"`, `"torchao"`).
        dtype: name of the compute dtype (`"fp32"`, `"fp16"`, `"bf16"`).
        bits: bits per weight of the quantized linear layers (16 or 32 when not quantized).
    """

    method: str
    dtype: str
    bits: int

    @property
    def quantized(self) -> bool:
        """Whether the weights are quantized."""
        return self.method != "none"

    @property
    def label(self) -> str:
        """Short label, as the SpecKV paper names its settings: `fp16`, `int8`, `nf4`, ..."""
        if not self.quantized:
            return self.dtype
        return self.method.removeprefix("bnb-")

    def __str__(self) -> str:
        return self.label if not self.quantized else f"{self.label} (compute {self.dtype})"


def _config_value(config: Any, key: str, default: Any = None) -> Any:
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _bnb_layer_kind(model: torch.nn.Module) -> str | None:
    """Finds bitsandbytes layers in a model that carries no quantization_config (e.g. quantized by hand)."""
    for module in model.modules():
        name = type(module).__name__
        if name == "Linear8bitLt":
            return "bnb-int8"
        if name in {"Linear4bit", "LinearNF4", "LinearFP4"}:
            quant_type = getattr(getattr(module, "weight", None), "quant_type", "nf4")
            return f"bnb-{quant_type}"
    return None


def detect_compression(model: torch.nn.Module) -> CompressionInfo:
    """Detects how a model is compressed.

    Reads `quantization_config` (on the model or its config) first, then falls back to the layer types, then to
    the parameters' dtype.

    Args:
        model: a transformers model (or any `torch.nn.Module`).

    Returns:
        The model's `CompressionInfo`.
    """
    config = getattr(model, "config", None)
    qconfig = getattr(model, "quantization_config", None) or _config_value(config, "quantization_config")
    dtype = getattr(model, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    method = "none"
    bits = torch.finfo(dtype).bits if dtype.is_floating_point else 32
    if qconfig is not None:
        quant_method = _config_value(qconfig, "quant_method", "unknown")
        quant_method = str(getattr(quant_method, "value", quant_method)).lower()  # an enum in transformers
        if quant_method in {"bitsandbytes", "bits_and_bytes"}:
            if _config_value(qconfig, "load_in_8bit", False):
                method, bits = "bnb-int8", 8
            else:
                method, bits = f"bnb-{_config_value(qconfig, 'bnb_4bit_quant_type', 'nf4')}", 4
            compute = _config_value(qconfig, "bnb_4bit_compute_dtype", None)
            if isinstance(compute, torch.dtype) and method != "bnb-int8":
                dtype = compute
        else:
            method = quant_method
            bits = int(_config_value(qconfig, "bits", 0) or _config_value(qconfig, "w_bit", 0) or 0)
    else:
        layer_kind = _bnb_layer_kind(model)
        if layer_kind is not None:
            method, bits = layer_kind, 8 if layer_kind == "bnb-int8" else 4
    return CompressionInfo(method=method, dtype=_DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch.")), bits=bits)


def quantization_config(label: str) -> Any:
    """The `BitsAndBytesConfig` for a compression label, to load a target as the SpecKV paper's settings.

    Args:
        label: `"fp32"`, `"fp16"`, `"bf16"` (no quantization: returns None), `"int8"` or `"nf4"` / `"fp4"`
            (bitsandbytes; also spelled `"bnb-int8"`, `"bnb-nf4"`, `"bnb-fp4"`).

    Returns:
        A `transformers.BitsAndBytesConfig`, or None for floating-point labels.

    Raises:
        ValueError: for an unknown label.
        ImportError: when bitsandbytes is missing for a quantized label.
    """
    if label not in COMPRESSIONS:
        raise ValueError(f"unknown compression {label!r}: choose one of {', '.join(COMPRESSIONS)}.")
    if label in {"fp32", "fp16", "bf16"}:
        return None
    label = label.removeprefix("bnb-")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ImportError(f"{label} targets need bitsandbytes: pip install 'speckv-hf[quant]'.") from error
    from transformers import BitsAndBytesConfig

    if label == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=label, bnb_4bit_compute_dtype=torch.float32)
