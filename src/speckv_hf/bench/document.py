"""The JSON document of a `speckv bench` run: the machine, the settings and the summaries, versioned.

The document is versioned (`schema_version`) and described by the JSON Schema in
`speckv_hf/schemas/bench.schema.json` (see [`bench_schema`][]); `docs/benchmarks.md` documents every field.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata, resources
from typing import Any

from .summary import CompressionSummary, MethodSummary

__all__ = ["SCHEMA_VERSION", "bench_schema", "build_document", "machine_info", "summaries_from_document"]

SCHEMA_VERSION = 1


def machine_info() -> dict[str, Any]:
    """The machine and library versions a run happened on (the `machine` object of the JSON)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for package in ("speckv-hf", "torch", "transformers", "accelerate", "huggingface-hub", "bitsandbytes"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def build_document(
    settings: dict[str, Any],
    results: Sequence[MethodSummary],
    compressions: Sequence[CompressionSummary],
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document of a `speckv bench` run (validates against [`bench_schema`][]).

    Args:
        settings: the run's settings (models, prompts, methods, lengths, ...).
        results: every method summary.
        compressions: every compression summary.
        machine: the machine (measured now by default).

    Returns:
        A JSON-serializable dictionary.
    """
    document = {
        "schema": "speckv-bench",
        "schema_version": SCHEMA_VERSION,
        "machine": machine if machine is not None else machine_info(),
        "settings": settings,
        "results": [asdict(r) for r in results],
        "compressions": [asdict(c) for c in compressions],
    }
    return json.loads(json.dumps(document))  # int keys of histograms become strings, tuples lists


def summaries_from_document(document: dict[str, Any]) -> tuple[list[MethodSummary], list[CompressionSummary]]:
    """Reads the summaries back from a JSON document (e.g. to plot an earlier run again).

    Args:
        document: what [`build_document`][] returned, as loaded from the `--json` file.

    Returns:
        The method summaries and the compression summaries.

    Raises:
        ValueError: for a document of another schema version.
    """
    if document.get("schema") != "speckv-bench" or document.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"not a speckv bench document of schema version {SCHEMA_VERSION}: rerun speckv bench with this version."
        )

    def histogram(value: dict[str, int] | None) -> dict[int, int] | None:
        return None if value is None else {int(k): v for k, v in value.items()}

    results = [
        MethodSummary(
            **{
                **row,
                "iqr_tokens_per_s": tuple(row["iqr_tokens_per_s"]),
                "iqr_speedup": tuple(row["iqr_speedup"]),
                "gamma_histogram": histogram(row["gamma_histogram"]),
                "accepted_histogram": histogram(row["accepted_histogram"]),
            }
        )
        for row in document["results"]
    ]
    return results, [CompressionSummary(**entry) for entry in document["compressions"]]


def bench_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the document [`build_document`][] writes."""
    text = resources.files("speckv_hf").joinpath("schemas/bench.schema.json").read_text(encoding="utf-8")
    return json.loads(text)
