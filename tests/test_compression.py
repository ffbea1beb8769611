"""Compression detection from quantization configs (objects and config.json dicts), and the command-line names."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AwqConfig, BitsAndBytesConfig, GPTQConfig, LlamaForCausalLM, QuantoConfig

from speckv_hf.bench.pairs import check_compressions
from speckv_hf.compression.detection import (
    COMPRESSIONS,
    CompressionInfo,
    check_runs_on,
    compression_from_config,
    detect_compression,
    quantization_config,
)

from .conftest import llama_config


def _read(qconfig) -> tuple[str, int, str]:
    info = compression_from_config(qconfig)
    return info.label, info.bits, info.method


def test_existing_callers_keep_working():
    info = CompressionInfo(method="bnb-int8", dtype="fp16", bits=8)
    assert (info.label, str(info), info.quantized, info.activation_bits) == ("int8", "int8 (compute fp16)", True, None)
    assert CompressionInfo(method="none", dtype="bf16", bits=16).label == "bf16"


@pytest.mark.parametrize(
    ("qconfig", "expected"),
    [
        (BitsAndBytesConfig(load_in_8bit=True), ("int8", 8, "bnb-int8")),
        (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"), ("nf4", 4, "bnb-nf4")),
        (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4"), ("fp4", 4, "bnb-fp4")),
        (QuantoConfig(weights="int8"), ("quanto-int8", 8, "quanto")),
        (QuantoConfig(weights="int4"), ("quanto-int4", 4, "quanto")),
        (QuantoConfig(weights="int2"), ("quanto-int2", 2, "quanto")),
        (QuantoConfig(weights="float8"), ("quanto-float8", 8, "quanto")),
        (QuantoConfig(weights="int8", activations="int8"), ("quanto-int8-aint8", 8, "quanto")),
        (QuantoConfig(weights="int4", activations="float8"), ("quanto-int4-afloat8", 4, "quanto")),
    ],
)
def test_config_objects_and_their_dicts(qconfig, expected):
    assert _read(qconfig) == expected
    assert _read(qconfig.to_dict()) == expected  # as read back from config.json


def test_bnb_compute_dtype_from_dict():
    qconfig = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    ).to_dict()
    assert isinstance(qconfig["bnb_4bit_compute_dtype"], str)
    assert str(compression_from_config(qconfig, dtype="fp32")) == "nf4 (compute bf16)"


def test_quanto_activations_bits():
    info = compression_from_config(QuantoConfig(weights="int8", activations="float8"))
    assert (info.weights, info.activations, info.activation_bits, info.dynamic) == ("int8", "float8", 8, False)


@pytest.mark.parametrize(
    ("quant_type", "expected"),
    [
        ({"_type": "Int8WeightOnlyConfig", "_version": 2, "_data": {"group_size": None}}, ("torchao-int8", 8)),
        ({"_type": "Int8DynamicActivationInt8WeightConfig", "_data": {}}, ("torchao-int8-dynamic", 8)),
        ({"_type": "Int4WeightOnlyConfig", "_data": {"group_size": 128}}, ("torchao-int4", 4)),
        ({"_type": "Float8DynamicActivationFloat8WeightConfig", "_data": {}}, ("torchao-float8-dynamic", 8)),
        ({"_type": "Float8DynamicActivationInt4WeightConfig", "_data": {}}, ("torchao-int4-afloat8-dynamic", 4)),
        ({"_type": "Int8StaticActivationInt8WeightConfig", "_data": {}}, ("torchao-int8-aint8", 8)),
        (
            {"_type": "IntxWeightOnlyConfig", "_data": {"weight_dtype": {"_type": "torch.dtype", "_data": "int4"}}},
            ("torchao-int4", 4),
        ),
    ],
)
def test_torchao_dicts_without_torchao(quant_type, expected):
    # What TorchAoConfig.to_dict() writes to config.json: readable without importing torchao.
    info = compression_from_config({"quant_method": "torchao", "quant_type": {"default": quant_type}})
    assert (info.label, info.bits) == expected


def test_torchao_legacy_string():
    info = compression_from_config({"quant_method": "torchao", "quant_type": "int8_dynamic_activation_int8_weight"})
    assert (info.label, info.activations, info.dynamic) == ("torchao-int8-dynamic", "int8", True)


def test_torchao_config_objects():
    torchao_quantization = pytest.importorskip("torchao.quantization", reason="torchao is the 'quant' extra")
    from transformers import TorchAoConfig

    for config, label in [
        (torchao_quantization.Int8WeightOnlyConfig(), "torchao-int8"),
        (torchao_quantization.Int8DynamicActivationInt8WeightConfig(), "torchao-int8-dynamic"),
        (torchao_quantization.Int4WeightOnlyConfig(group_size=32), "torchao-int4"),
        (torchao_quantization.IntxWeightOnlyConfig(weight_dtype=torch.int4), "torchao-int4"),
    ]:
        qconfig = TorchAoConfig(config)
        assert _read(qconfig)[0] == label
        assert _read(qconfig.to_dict())[0] == label


@pytest.mark.parametrize(
    ("qconfig", "expected"),
    [
        # HqqConfig needs hqq installed to construct: these are the dicts it writes.
        ({"quant_method": "hqq", "quant_config": {"weight_quant_params": {"nbits": 4, "group_size": 64}}}, 4),
        ({"quant_method": "hqq", "nbits": 2}, 2),
        (
            {
                "quant_method": "hqq",
                "quant_config": {
                    "self_attn.q_proj": {"weight_quant_params": {"nbits": 8}},
                    "mlp.up_proj": {"weight_quant_params": {"nbits": 3}},
                    "mlp.down_proj": {"weight_quant_params": {"nbits": 3}},
                },
            },
            3,  # the most common width of a per-layer config
        ),
    ],
)
def test_hqq(qconfig, expected):
    assert _read(qconfig) == (f"hqq-int{expected}", expected, "hqq")


def test_gptq_and_awq():
    gptq = GPTQConfig(bits=4)
    assert _read(gptq) == ("gptq-int4", 4, "gptq")
    assert _read(gptq.to_dict())[:2] == ("gptq-int4", 4)
    assert _read({"quant_method": "gptq", "bits": 3, "checkpoint_format": "gptq_v2"}) == ("gptq-int3", 3, "gptq")
    assert compression_from_config({"quant_method": "gptq", "bits": 8, "format": "gptq"}).format == "gptq"
    assert _read(AwqConfig(bits=4)) == ("awq-int4", 4, "awq")
    assert _read({"quant_method": "awq", "w_bit": 4, "version": "gemm"}) == ("awq-int4", 4, "awq")


def test_compressed_tensors():
    w4a16 = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "int"}, "targets": ["Linear"]}},
    }
    info = compression_from_config(w4a16)
    assert (info.label, info.bits, info.format, info.activations) == (
        "compressed-tensors-int4",
        4,
        "pack-quantized",
        None,
    )
    fp8_dynamic = {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "config_groups": {
            "group_0": {
                "weights": {"num_bits": 8, "type": "float"},
                "input_activations": {"num_bits": 8, "type": "float", "dynamic": True},
            }
        },
    }
    assert _read(fp8_dynamic) == ("compressed-tensors-float8-dynamic", 8, "compressed-tensors")


def test_other_methods_by_their_bit_fields():
    assert _read({"quant_method": "eetq", "weights": "int8"}) == ("eetq-int8", 8, "eetq")
    assert _read({"quant_method": "fbgemm_fp8"}) == ("fbgemm_fp8-float8", 8, "fbgemm_fp8")
    assert _read({"quant_method": "spqr", "bits": 3}) == ("spqr-int3", 3, "spqr")


def test_detect_reads_the_model_config_dict():
    model = LlamaForCausalLM(llama_config(layers=1))
    model.config.quantization_config = QuantoConfig(weights="int4").to_dict()
    info = detect_compression(model)
    assert (info.label, info.bits, info.dtype) == ("quanto-int4", 4, "fp32")


def test_every_name_builds_a_config_detected_as_itself():
    for name in COMPRESSIONS:
        backend = {"int8": "bitsandbytes", "nf": "bitsandbytes", "fp4": "bitsandbytes", "bnb": "bitsandbytes"}
        module = next((m for prefix, m in backend.items() if name.startswith(prefix)), None)
        module = module or {"quanto": "optimum.quanto", "torchao": "torchao"}.get(name.split("-")[0])
        if module and importlib.util.find_spec(module.split(".")[0]) is None:
            continue
        qconfig = quantization_config(name)
        if name in {"fp32", "fp16", "bf16"}:
            assert qconfig is None
            continue
        assert compression_from_config(qconfig).label == name.removeprefix("bnb-")


def test_missing_backend_names_its_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    missing = {"optimum.quanto", "torchao", "bitsandbytes"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real_find_spec(name)
    )
    for name, extra in [("quanto-int4", "quanto"), ("torchao-int8", "torchao"), ("nf4", "quant")]:
        with pytest.raises(ImportError, match=rf"pip install -e '\.\[{extra}\]'"):
            check_compressions(["fp32", name], device="cpu")


def test_unknown_and_cpu_only_names_refused():
    with pytest.raises(ValueError, match="unknown compression 'int3'"):
        check_runs_on("int3", "cpu")
    with pytest.raises(ValueError, match=r"torchao-int4 does not run on cpu.*quanto-int4"):
        check_runs_on("torchao-int4", "cpu")
    check_runs_on("torchao-int4", "cuda")  # refused only where it cannot run
    check_runs_on("quanto-int2", "cpu")


def test_quanto_quantized_by_hand_is_found_by_layer_type():
    quanto = pytest.importorskip("optimum.quanto", reason="optimum-quanto is the 'quant' extra")
    model = LlamaForCausalLM(llama_config(layers=1))
    quanto.quantize(model, weights=quanto.qint4)
    info = detect_compression(model)
    assert (info.label, info.bits, info.activations) == ("quanto-int4", 4, None)
