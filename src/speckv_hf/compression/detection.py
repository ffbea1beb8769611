"""What the target's compression is: floating-point dtype, or a quantization method and its bit width.

Detection reads the model's `quantization_config`, as an object or as the dict it becomes after a round trip
through config.json, and never imports the backend, so a config from a backend that is not installed still reads.
The per-backend readers below each turn one method's fields into a `CompressionInfo`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .names import COMPRESSIONS, check_runs_on, quantization_config

__all__ = [
    "COMPRESSIONS",
    "CompressionInfo",
    "check_runs_on",
    "compression_from_config",
    "detect_compression",
    "quantization_config",
]

_DTYPE_NAMES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
}
_DTYPE_STRINGS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "half": "fp16"}
_BNB_LABELS = {"bnb-int8", "bnb-nf4", "bnb-fp4"}


@dataclass(frozen=True)
class CompressionInfo:
    """The compression of a model.

    Attributes:
        method: `"none"` for a floating-point model; `"bnb-int8"`, `"bnb-nf4"`, `"bnb-fp4"` for bitsandbytes (the
            names records have always carried); otherwise transformers' `quant_method` (`"quanto"`, `"torchao"`,
            `"hqq"`, `"gptq"`, `"awq"`, `"compressed-tensors"`, ...).
        dtype: name of the compute dtype (`"fp32"`, `"fp16"`, `"bf16"`).
        bits: bits per weight of the quantized linear layers (16 or 32 when not quantized, 0 when a method's
            config does not say).
        weights: the weights' format (`"int8"`, `"int4"`, `"int2"`, `"float8"`, `"nf4"`, `"fp4"`, ...); None when
            not quantized or not known.
        activations: the format activations are quantized to (`"int8"`, `"float8"`); None when they stay in
            `dtype`.
        dynamic: whether the activations are quantized per call from their own range (torchao's
            `Int8DynamicActivation...` configs, compressed-tensors' `dynamic: true`) rather than with fixed scales.
        format: the checkpoint or kernel format where the method names one (GPTQ `"gptq"`, AWQ `"gemm"`,
            compressed-tensors `"pack-quantized"`, ...).
    """

    method: str
    dtype: str
    bits: int
    weights: str | None = None
    activations: str | None = None
    dynamic: bool = False
    format: str | None = None

    @property
    def quantized(self) -> bool:
        """Whether the weights are quantized."""
        return self.method != "none"

    @property
    def activation_bits(self) -> int | None:
        """Bits per activation when activations are quantized, else None."""
        return _format_bits(self.activations) if self.activations else None

    @property
    def label(self) -> str:
        """Short name: the dtype (`fp16`), bitsandbytes as the SpecKV paper names it (`int8`, `nf4`, `fp4`), else
        `method-weights` with the activations after it: `quanto-int4`, `torchao-int8-dynamic`, `gptq-int4`,
        `quanto-int8-aint8`. The names `speckv bench --compression` accepts are these labels (or `bnb-` ones)."""
        if not self.quantized:
            return self.dtype
        if self.method in _BNB_LABELS:
            return self.method.removeprefix("bnb-")
        label = f"{self.method}-{self.weights}" if self.weights else self.method
        if self.activations and (self.activations != self.weights or not self.dynamic):
            label += f"-a{self.activations}"
        return label + ("-dynamic" if self.dynamic else "")

    def __str__(self) -> str:
        return self.label if not self.quantized else f"{self.label} (compute {self.dtype})"


def _config_value(config: Any, key: str, default: Any = None) -> Any:
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _enum_text(value: Any) -> str:
    """An enum's value (transformers' `QuantizationMethod`, torchao's packing formats), or the text itself."""
    return str(getattr(value, "value", value)).lower()


def _format_bits(name: str | None) -> int:
    """`"int4"` -> 4, `"float8"` -> 8, `"nf4"` -> 4; 0 when the name carries no width."""
    match = re.search(r"(\d+)", name or "")
    return int(match.group(1)) if match else 0


def _dtype_name(dtype: Any) -> str | None:
    """The short name of a dtype given as a `torch.dtype` or as config.json spells it (`"bfloat16"`)."""
    if isinstance(dtype, torch.dtype):
        return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))
    if isinstance(dtype, str):
        text = dtype.removeprefix("torch.")
        return _DTYPE_STRINGS.get(text, text)
    return None


def _info(method: str, dtype: str, weights: str | None, bits: int | None = None, **fields: Any) -> CompressionInfo:
    return CompressionInfo(method=method, dtype=dtype, bits=bits or _format_bits(weights), weights=weights, **fields)


def _bitsandbytes(qconfig: Any, dtype: str) -> CompressionInfo:
    if _config_value(qconfig, "load_in_8bit", False):
        return _info("bnb-int8", dtype, "int8")
    kind = str(_config_value(qconfig, "bnb_4bit_quant_type", "nf4"))
    compute = _dtype_name(_config_value(qconfig, "bnb_4bit_compute_dtype"))
    return _info(f"bnb-{kind}", compute or dtype, kind, 4)


def _quanto(qconfig: Any, dtype: str) -> CompressionInfo:
    # optimum-quanto spells its types "qint4"; transformers' QuantoConfig "int4".
    weights = str(_config_value(qconfig, "weights", "int8")).removeprefix("q")
    activations = _config_value(qconfig, "activations")
    return _info("quanto", dtype, weights, activations=str(activations).removeprefix("q") if activations else None)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _torchao_dtype_field(data: Any, key: str) -> str | None:
    """A torch dtype field of a torchao config, as an object's `torch.int4` or config_to_dict's
    `{"_type": "torch.dtype", "_data": "int4"}`."""
    value = _config_value(data, key)
    if isinstance(value, dict):
        value = value.get("_data")
    return str(value).removeprefix("torch.") if value is not None else None


def _torchao(qconfig: Any, dtype: str) -> CompressionInfo:
    quant_type = _config_value(qconfig, "quant_type")
    data: Any = {}
    if isinstance(quant_type, dict):  # config.json: {"default": {"_type": "Int8WeightOnlyConfig", "_data": {...}}}
        entry = quant_type.get("default", quant_type)
        name, data = _snake(str(entry.get("_type", "")).removesuffix("Config")), entry.get("_data", {})
    elif isinstance(quant_type, str):  # before torchao's config objects: "int8_weight_only" plus quant_type_kwargs
        name, data = quant_type.lower(), _config_value(qconfig, "quant_type_kwargs", {}) or {}
    else:
        name, data = _snake(type(quant_type).__name__.removesuffix("Config")), quant_type
    match = re.match(r"(?:(?P<act>[a-z]+\d*)_(?P<kind>dynamic|static)_activation_)?(?P<weights>[a-z]+\d*)", name)
    act, kind, weights = (match.group("act"), match.group("kind"), match.group("weights")) if match else (None,) * 3
    if weights in {"intx", "uintx"}:  # the width is a field: IntxWeightOnlyConfig(weight_dtype=torch.int4)
        weights = _torchao_dtype_field(data, "weight_dtype") or _torchao_dtype_field(data, "dtype") or weights
    return _info("torchao", dtype, weights, activations=act, dynamic=kind == "dynamic")


def _hqq(qconfig: Any, dtype: str) -> CompressionInfo:
    # HqqConfig keeps hqq's BaseQuantizeConfig dict: {"weight_quant_params": {"nbits": 4, ...}}, or one per layer
    # with dynamic_config; the most common width names the model.
    widths: list[int] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            params = node.get("weight_quant_params")
            if isinstance(params, dict) and params.get("nbits") is not None:
                widths.append(int(params["nbits"]))
            for key, value in node.items():
                if key != "weight_quant_params":
                    collect(value)

    collect(_config_value(qconfig, "quant_config"))
    nbits = Counter(widths).most_common(1)[0][0] if widths else _config_value(qconfig, "nbits")
    return _info("hqq", dtype, f"int{nbits}" if nbits else None, int(nbits or 0))


def _gptq_awq(method: str) -> Callable[[Any, str], CompressionInfo]:
    def read(qconfig: Any, dtype: str) -> CompressionInfo:
        bits = int(_config_value(qconfig, "bits", 0) or _config_value(qconfig, "w_bit", 0) or 0)
        fmt = _config_value(qconfig, "checkpoint_format") or _config_value(qconfig, "format")
        fmt = fmt or _config_value(qconfig, "version")
        return _info(method, dtype, f"int{bits}" if bits else None, bits, format=_enum_text(fmt) if fmt else None)

    return read


def _compressed_tensors(qconfig: Any, dtype: str) -> CompressionInfo:
    # transformers' CompressedTensorsConfig holds compressed_tensors' own QuantizationConfig under
    # `quantization_config`; the dict from config.json has its fields at the top.
    inner = _config_value(qconfig, "quantization_config")
    source = inner if _config_value(inner, "config_groups") is not None else qconfig
    groups = _config_value(source, "config_groups") or {}
    fmt = _config_value(source, "format")
    for group in groups.values() if isinstance(groups, dict) else []:
        weights = _config_value(group, "weights")
        if weights is None:
            continue
        kind = _enum_text(_config_value(weights, "type", "int"))
        bits = int(_config_value(weights, "num_bits", 0) or 0)
        activations = _config_value(group, "input_activations")
        act_name = None
        if activations is not None:
            act_kind = _enum_text(_config_value(activations, "type", "int"))
            act_name = f"{act_kind}{_config_value(activations, 'num_bits', '')}"
        return _info(
            "compressed-tensors",
            dtype,
            f"{kind}{bits}",
            bits,
            activations=act_name,
            dynamic=bool(activations is not None and _config_value(activations, "dynamic", False)),
            format=_enum_text(fmt) if fmt else None,
        )
    return _info("compressed-tensors", dtype, None, format=_enum_text(fmt) if fmt else None)


def _generic(method: str) -> Callable[[Any, str], CompressionInfo]:
    """Methods without a reader of their own: their bit width under the names transformers' configs use."""

    def read(qconfig: Any, dtype: str) -> CompressionInfo:
        for key in ("bits", "w_bit", "nbits", "num_bits", "weight_bits"):
            bits = _config_value(qconfig, key)
            if bits:
                return _info(method, dtype, f"int{int(bits)}", int(bits))
        weights = _config_value(qconfig, "weights")  # eetq: weights="int8"
        if isinstance(weights, str):
            return _info(method, dtype, weights)
        if "fp8" in method:  # fbgemm_fp8, fp8 (fine-grained)
            return _info(method, dtype, "float8")
        return _info(method, dtype, None)

    return read


_READERS: dict[str, Callable[[Any, str], CompressionInfo]] = {
    "bitsandbytes": _bitsandbytes,
    "bits_and_bytes": _bitsandbytes,
    "quanto": _quanto,
    "torchao": _torchao,
    "hqq": _hqq,
    "gptq": _gptq_awq("gptq"),
    "awq": _gptq_awq("awq"),
    "compressed-tensors": _compressed_tensors,
    "compressed_tensors": _compressed_tensors,
}


def compression_from_config(qconfig: Any, dtype: str = "fp32") -> CompressionInfo:
    """Reads a `quantization_config` without importing its backend.

    Args:
        qconfig: a transformers quantization config (`BitsAndBytesConfig`, `QuantoConfig`, `TorchAoConfig`,
            `HqqConfig`, `GPTQConfig`, `AwqConfig`, `CompressedTensorsConfig`, ...) or its dict from config.json.
        dtype: the model's floating-point dtype name, for methods whose config does not set the compute dtype.

    Returns:
        The `CompressionInfo` the config describes.
    """
    method = _enum_text(_config_value(qconfig, "quant_method", "unknown"))
    reader = _READERS.get(method, _generic(method))
    return reader(qconfig, dtype)


def _layer_compression(model: torch.nn.Module, dtype: str) -> CompressionInfo | None:
    """Finds quantized layers in a model that carries no quantization_config (quantized by hand)."""
    for module in model.modules():
        name = type(module).__name__
        if name == "Linear8bitLt":
            return _info("bnb-int8", dtype, "int8")
        if name in {"Linear4bit", "LinearNF4", "LinearFP4"}:
            kind = getattr(getattr(module, "weight", None), "quant_type", "nf4")
            return _info(f"bnb-{kind}", dtype, kind, 4)
        if name == "QLinear" and getattr(module, "weight_qtype", None) is not None:  # optimum.quanto.quantize()
            weights = str(getattr(module.weight_qtype, "name", module.weight_qtype)).removeprefix("q")
            activations = getattr(module, "activation_qtype", None)
            act_name = str(getattr(activations, "name", activations)).removeprefix("q") if activations else None
            return _info("quanto", dtype, weights, activations=act_name)
    return None


def detect_compression(model: torch.nn.Module) -> CompressionInfo:
    """Detects how a model is compressed.

    Reads `quantization_config` (on the model or its config) first, then falls back to the layer types
    (bitsandbytes, optimum-quanto), then to the parameters' dtype.

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
    dtype_name = _dtype_name(dtype) or "fp32"
    if qconfig is not None:
        return compression_from_config(qconfig, dtype_name)
    found = _layer_compression(model, dtype_name)
    if found is not None:
        return found
    bits = torch.finfo(dtype).bits if dtype.is_floating_point else 32
    return CompressionInfo(method="none", dtype=dtype_name, bits=bits)
